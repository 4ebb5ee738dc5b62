"""Images (`/media`): upload, the list with thumbnails and each public URL to copy, delete — the service functions
behind `/api/v1/media` (docs/console.md#what-it-offers-today). The template editor's image picker lists the same
images (content_templates.py).

Thumbnails use the path of the public URL (`/media/<id>/<name>`, served by this app), so they show whatever host
the public URL names; the URL to copy and the one inserted into templates is the full public URL.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile

from edm.api.deps import IdPath, Session
from edm.console.auth import CurrentViewer, Viewer
from edm.console.forms import Form
from edm.console.i18n import N_
from edm.console.rendering import catalogue_of, render
from edm.console.routing import new_router
from edm.content import media as media_service
from edm.errors import BadInput
from edm.paging import Page, decode_cursor_or_first

router = new_router()

PER_PAGE = 48
NOTICES = {"uploaded": N_("The image was uploaded."), "deleted": N_("The image was deleted.")}
# The media service's English details for the `file` field → what a person reads.
FILE_MESSAGES = (
    ("larger than", N_("The image is larger than 5 MB.")),
    ("is not a JPEG, PNG or GIF", N_("Choose a JPEG, PNG or GIF image.")),
    ("the file is empty", N_("The file is empty.")),
)
CHOOSE_FILE = N_("Choose an image file.")


def thumbnail(url: str) -> str:
    """The public URL's path: the image as this app serves it, whatever host the public URL names."""
    return urlsplit(url).path


async def _page(
    request: Request,
    session: Session,
    viewer: Viewer,
    *,
    cursor: str | None = None,
    form: Form | None = None,
    status: int = 200,
    notice: str | None = None,
) -> HTMLResponse:
    after, cursor = decode_cursor_or_first(cursor)
    base_url = str(request.app.state.settings.effective_tracking_url)
    found = await media_service.media_page(session, user_id=viewer.id, page=Page(PER_PAGE, after), base_url=base_url)
    context = {
        "images": found.items,
        "next_cursor": found.next_cursor,
        "first_page": cursor is None,
        "form": form or Form(),
        "notice": catalogue_of(request).gettext(NOTICES[notice]) if notice in NOTICES else "",
        "thumbnail": thumbnail,
        "max_mb": media_service.MAX_BYTES // (1024 * 1024),
    }
    return render(request, "media/list.html", context, status=status)


@router.get("/media")
async def media(
    request: Request, session: Session, viewer: CurrentViewer, cursor: str | None = None, notice: str | None = None
) -> Response:
    return await _page(request, session, viewer, cursor=cursor, notice=notice)


@router.post("/media")
async def upload(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    """One image (multipart field `file`), checked by the media service: type by content, at most 5 MB."""
    form = Form()
    catalogue = catalogue_of(request)
    upload = (await request.form()).get("file")
    try:
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise BadInput.field("file", "no file")
        if upload.size is not None and upload.size > media_service.MAX_BYTES:
            raise media_service.TooLarge("too large", details=[{"field": "file", "message": "larger than 5 MB"}])
        data = await upload.read(media_service.MAX_BYTES + 1)
        await media_service.upload(session, user_id=viewer.id, filename=upload.filename, data=data)
    except BadInput as exc:
        detail = str(exc.details[0].get("message", "")) if exc.details else ""
        msgid = next((m for key, m in FILE_MESSAGES if key in detail), CHOOSE_FILE)
        form.errors["file"] = catalogue.gettext(msgid)
        return await _page(request, session, viewer, form=form, status=exc.status)
    return RedirectResponse("/media?notice=uploaded", status_code=303)


@router.post("/media/{media_id}/delete")
async def delete(media_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    await media_service.delete_media(session, user_id=viewer.id, media_id=media_id)
    return RedirectResponse("/media?notice=deleted", status_code=303)
