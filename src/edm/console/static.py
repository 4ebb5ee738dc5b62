"""The console's static files at `/static/…`, from `static/` in this package.

Pages reference them through `static_url("edm.css")` → `/static/edm.css?v=<content hash>`: a file's URL changes
whenever its content does, so the answer may be cached for a year (`immutable`); a request with another `v`
(a page rendered before an upgrade) gets the current file with `no-cache`. Only the files listed at start-up
with a known type are served; nothing else in the package is reachable.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from edm.errors import NotFound

STATIC_DIR = Path(__file__).parent / "static"
TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Asset:
    path: Path
    digest: str
    media_type: str


@functools.cache
def manifest() -> dict[str, Asset]:
    """Every servable file by its path under `static/` (posix), with its content hash."""
    found = {}
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file() and path.suffix in TYPES:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            found[path.relative_to(STATIC_DIR).as_posix()] = Asset(path, digest, TYPES[path.suffix])
    return found


def static_url(name: str) -> str:
    """The URL of a static file, with its content hash; a name that is not there fails at once."""
    asset = manifest()[name]
    return f"/static/{name}?v={asset.digest}"


router = APIRouter(include_in_schema=False)


@router.get("/static/{name:path}")
async def static_file(name: str, request: Request) -> Response:
    asset = manifest().get(name)
    if asset is None:
        raise NotFound("no such file")
    current = request.query_params.get("v") == asset.digest
    return FileResponse(
        asset.path, media_type=asset.media_type, headers={"Cache-Control": IMMUTABLE if current else "no-cache"}
    )
