"""The HTTP service's pages for people: the browser page at ``/ui`` and the API reference.

``/ui/`` serves ``service/ui/`` as plain static files (HTML, CSS, JavaScript; no build step, nothing
from a CDN, so it works on an offline machine); the page calls the JSON API it sits beside.
``/`` is Swagger UI (the copy BentoML ships) over ``/docs.json``, this service's OpenAPI document
(``service.openapi``). ``web_routes()`` goes into the Starlette app ``service.http_service``
mounts at "/"; BentoML's mounts are matched before its own ``/`` and ``/docs.json``, so these
replace BentoML's generic page and document.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

UI_DIR = Path(__file__).resolve().parent / "ui"
_documents: dict[str, dict] = {}  # default model -> the OpenAPI document (built once per process)


async def _to_ui(request: Request) -> Response:
    # Relative, so it also lands right behind a path prefix (a proxy serving us under /tta/).
    return RedirectResponse("ui/", status_code=307)


async def _api_reference(request: Request) -> Response:
    return FileResponse(UI_DIR / "api.html")


async def _docs_json(request: Request) -> Response:
    import bentoml

    from service.http_service import Classifier, oip_routes
    from service.openapi import openapi_document

    core = bentoml.get_current_service().core
    default_model = core.config.default_model
    if default_model not in _documents:
        _documents[default_model] = openapi_document(
            Classifier.openapi_spec.asdict(), default_model=default_model,
            default_classes=core.get_model(default_model).classes,
            oip_routes=oip_routes.routes)
    return JSONResponse(_documents[default_model])


def web_routes() -> list[BaseRoute]:
    """``/`` (API reference), ``/docs.json``, ``/ui`` -> ``/ui/`` and the static page under it."""
    return [
        Route("/", _api_reference, methods=["GET", "HEAD"]),
        Route("/docs.json", _docs_json, methods=["GET"]),
        Route("/ui", _to_ui, methods=["GET", "HEAD"]),
        Mount("/ui", app=StaticFiles(directory=UI_DIR, html=True), name="ui"),
    ]
