"""HTTP routes of the media library (docs/media.md#api).

`router` (mounted with the other API routers): upload, list, get and delete the caller's images. Every role
may read; uploads and deletes need `Writer`. Another user's image answers 404.

`public_router` (mounted by `app.py`, no authentication): `GET|HEAD /media/{public_id}/{filename}` serves the
stored bytes unchanged with their stored type, a year of immutable caching, the sha256 as `ETag` (304 on a
matching `If-None-Match`) and `nosniff`. Unknown ids, or a filename that does not match, answer 404.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.datastructures import UploadFile

from edm.api.deps import CurrentCaller, IdPath, Paging, Session, Writer
from edm.api.uploads import refuse_early
from edm.content import media as media_service
from edm.content.schemas import MediaOut
from edm.errors import BadInput, NotFound
from edm.paging import PageOut

router = APIRouter(prefix="/api/v1", tags=["media"])
public_router = APIRouter(include_in_schema=False)

CACHE_FOREVER = "public, max-age=31536000, immutable"


def _base_url(request: Request) -> str:
    return str(request.app.state.settings.effective_tracking_url)


@router.post("/media", status_code=201, summary="Upload a JPEG, PNG or GIF image (multipart field `file`, ≤ 5 MB)")
async def upload_media(request: Request, session: Session, caller: Writer) -> MediaOut:
    refuse_early(request, media_service.MAX_BYTES)
    form = await request.form(max_files=1, max_fields=10)
    unknown = sorted(set(form.keys()) - {"file"})
    if unknown:
        raise BadInput.field(unknown[0], "unknown field")
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise BadInput.field("file", "an image file is required (multipart field `file`)")
    if upload.size is not None and upload.size > media_service.MAX_BYTES:
        raise media_service.TooLarge(
            f"file: the image is larger than {media_service.MAX_BYTES} bytes (5 MB)",
            details=[{"field": "file", "message": "larger than 5 MB"}],
        )
    data = await upload.read(media_service.MAX_BYTES + 1)
    created = await media_service.upload(session, user_id=caller.id, filename=upload.filename, data=data)
    return media_service.view(created, _base_url(request))


@router.get("/media", summary="The caller's images, by id (paginated)")
async def list_media(request: Request, session: Session, caller: CurrentCaller, page: Paging) -> PageOut[MediaOut]:
    return await media_service.media_page(session, user_id=caller.id, page=page, base_url=_base_url(request))


@router.get("/media/{media_id}")
async def get_media(media_id: IdPath, request: Request, session: Session, caller: CurrentCaller) -> MediaOut:
    found = await media_service.get_media(session, user_id=caller.id, media_id=media_id)
    return media_service.view(found, _base_url(request))


@router.delete("/media/{media_id}", status_code=204)
async def delete_media(media_id: IdPath, session: Session, caller: Writer) -> Response:
    """The public URL stops working at once (mails already sent that reference it show a broken image)."""
    await media_service.delete_media(session, user_id=caller.id, media_id=media_id)
    return Response(status_code=204)


@public_router.api_route("/media/{public_id}/{filename}", methods=["GET", "HEAD"])
async def serve_media(public_id: str, filename: str, request: Request, session: Session) -> Response:
    head = await media_service.find_public(session, public_id, filename)
    if head is None:
        raise NotFound("no such image")
    etag = f'"{head.sha256}"'
    headers = {"ETag": etag, "Cache-Control": CACHE_FOREVER, "X-Content-Type-Options": "nosniff"}
    if _matches(request.headers.get("if-none-match"), head.sha256):
        return Response(status_code=304, headers=headers)
    body = await media_service.data_of(session, head.id)
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(body))
        return Response(status_code=200, headers=headers, media_type=head.content_type)
    return Response(body, headers=headers, media_type=head.content_type)


def _matches(if_none_match: str | None, sha256: str) -> bool:
    """RFC 9110 §13.1.2: `*`, or any listed (weak or strong) tag equal to ours."""
    if not if_none_match:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/").strip('"') == sha256:
            return True
    return False
