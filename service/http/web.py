"""The HTTP service's pages for people: the browser page at ``/ui`` and the API reference.

``/ui/`` serves ``service/http/ui/`` as plain static files (HTML, CSS, JavaScript; no build step,
nothing from a CDN, so it works on an offline machine); the page calls the JSON API it sits beside.
``/`` is Swagger UI (the copy BentoML ships) over ``/docs.json``, this service's OpenAPI document
(``service.http.openapi``). ``web_routes(...)`` goes into the Starlette app ``service.http.service``
mounts at "/"; BentoML's mounts are matched before its own ``/`` and ``/docs.json``, so these
replace BentoML's generic page and document.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from service.http.openapi import openapi_document

UI_DIR = Path(__file__).resolve().parent / "ui"
_documents: dict[str, dict] = {}  # default model -> the OpenAPI document (built once per process)


async def _to_ui(request: Request) -> Response:
    # Relative, so it also lands right behind a path prefix (a proxy serving us under /tta/).
    return RedirectResponse("ui/", status_code=307)


async def _api_reference(request: Request) -> Response:
    return FileResponse(UI_DIR / "api.html")


def web_routes(service_spec: Callable[[], dict[str, Any]], oip_app: Starlette) -> list[BaseRoute]:
    """``/`` (API reference), ``/docs.json``, ``/ui`` -> ``/ui/`` and the static page under it.

    ``service_spec`` returns BentoML's OpenAPI spec of the service's own APIs and ``oip_app`` is
    the mounted ``/v2`` app: given, not imported, so this module does not import the service.
    """

    async def docs_json(request: Request) -> Response:
        import bentoml

        core = bentoml.get_current_service().core
        default_model = core.config.default_model
        if default_model not in _documents:
            _documents[default_model] = openapi_document(
                service_spec(), default_model=default_model,
                default_classes=core.get_model(default_model).classes,
                oip_routes=oip_app.routes)
        return JSONResponse(_documents[default_model])

    return [
        Route("/", _api_reference, methods=["GET", "HEAD"]),
        Route("/docs.json", docs_json, methods=["GET"]),
        Route("/ui", _to_ui, methods=["GET", "HEAD"]),
        Mount("/ui", app=StaticFiles(directory=UI_DIR, html=True), name="ui"),
    ]
