"""The HTTP service's pages for people: the browser page at ``/ui`` and the API reference.

``/ui/`` serves ``service/ui/`` as plain static files (HTML, CSS, JavaScript; no build step, nothing
from a CDN, so it works on an offline machine); the page calls the JSON API it sits beside.
``web_routes()`` goes into the Starlette app ``service.http_service`` mounts at "/".
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

UI_DIR = Path(__file__).resolve().parent / "ui"


async def _to_ui(request: Request) -> Response:
    # Relative, so it also lands right behind a path prefix (a proxy serving us under /tta/).
    return RedirectResponse("ui/", status_code=307)


def web_routes() -> list[BaseRoute]:
    """``/ui`` -> ``/ui/`` and the static page under it."""
    return [
        Route("/ui", _to_ui, methods=["GET", "HEAD"]),
        Mount("/ui", app=StaticFiles(directory=UI_DIR, html=True), name="ui"),
    ]
