"""The interactive API docs (Swagger UI) at `/api/docs`, served entirely from the package.

FastAPI's built-in docs page loads Swagger UI's script and stylesheet from a CDN, so on a machine without
internet (an offline demo, a locked-down server) it is a blank page. Here the page references copies that ship
inside the package (`static/swagger/`, see `VENDORED.md` there), served under a path that carries Swagger UI's
version: the files behind a URL never change, so browsers may cache them for a year, and an upgrade changes
the URL.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from edm.errors import NotFound

SWAGGER_UI_VERSION = "5.36.0"
STATIC_DIR = Path(__file__).parent / "static" / "swagger"
DOCS_PATH = "/api/docs"
STATIC_PATH = f"{DOCS_PATH}/static/{SWAGGER_UI_VERSION}"
# The only files served from STATIC_DIR, with their content types (nothing else there is reachable).
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
IMMUTABLE = "public, max-age=31536000, immutable"

router = APIRouter(include_in_schema=False)


@router.get(DOCS_PATH)
async def api_docs(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    static = f"{root}{STATIC_PATH}"
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} API",
        swagger_js_url=f"{static}/swagger-ui-bundle.js",
        swagger_css_url=f"{static}/swagger-ui.css",
        swagger_favicon_url=f"{static}/favicon-32x32.png",
        # Swagger UI would otherwise send the OpenAPI document to validator.swagger.io for a badge.
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get(STATIC_PATH + "/{name}")
async def api_docs_asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no API docs file named {name!r}")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers={"Cache-Control": IMMUTABLE})
