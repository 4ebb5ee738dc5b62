"""The media library (docs/media.md): JPEG, PNG and GIF images a user uploads and references by URL.

The type is decided by the file's first bytes (magic numbers), never by its name or the declared type; the
bytes are stored as uploaded (no conversion) in the database, so every API process can serve them. Public
URLs are `<public base>/media/<public_id>/<filename>`: the random `public_id` makes them unguessable, the
filename is sanitised so it is always one safe path segment.

Services take the caller's session and flush; the entry point commits.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from edm.content.schemas import MediaOut
from edm.db.owned import get_own
from edm.errors import BadInput
from edm.models.content import Media
from edm.paging import Page, PageOut, page_of

MAX_BYTES = 5 * 1024 * 1024  # docs/media.md#limits-and-rules
MAX_FILENAME = 255
# Magic numbers → content type. GIF has two versions; PNG's signature is the full 8 bytes.
SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif"}
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")  # control characters and path separators


class TooLarge(BadInput):
    """The file is over MAX_BYTES (413)."""

    status, code = 413, "too_large"


def sniff(data: bytes) -> str | None:
    """The image type the bytes start with, or None."""
    for magic, content_type in SIGNATURES:
        if data.startswith(magic):
            return content_type
    return None


def clean_filename(name: str | None, content_type: str) -> str:
    """One safe path segment: the last component of the offered name (a browser may send a full Windows
    path), without control characters, separators or leading dots, NFC-normalised, at most 255 characters
    (the extension kept). An empty result becomes `image.<ext>`."""
    raw = unicodedata.normalize("NFC", name or "")
    raw = re.split(r"[/\\]", raw)[-1]
    cleaned = _UNSAFE.sub("", raw).strip().lstrip(".").strip()
    cleaned = re.sub(r"\s+", " ", cleaned)
    if not cleaned:
        cleaned = "image" + EXTENSIONS[content_type]
    if len(cleaned) > MAX_FILENAME:
        stem, dot, ext = cleaned.rpartition(".")
        if dot and 0 < len(ext) <= 10:
            cleaned = stem[: MAX_FILENAME - len(ext) - 1] + "." + ext
        else:
            cleaned = cleaned[:MAX_FILENAME]
    return cleaned


def public_url(base_url: str, media: Media | MediaHead) -> str:
    return f"{base_url.rstrip('/')}/media/{media.public_id}/{quote(media.filename, safe='')}"


def view(media: Media, base_url: str) -> MediaOut:
    """What the API and the CLI show of an image: never the bytes."""
    return MediaOut(
        id=media.id,
        filename=media.filename,
        content_type=media.content_type,
        size=media.size,
        sha256=media.sha256,
        url=public_url(base_url, media),
        created_at=media.created_at,
    )


async def upload(session: AsyncSession, *, user_id: int, filename: str | None, data: bytes) -> Media:
    """Store one image. 413 over 5 MB; 422 when the bytes are not a JPEG, PNG or GIF (whatever the name)."""
    if len(data) > MAX_BYTES:
        raise TooLarge(
            f"file: the image is larger than {MAX_BYTES} bytes (5 MB)",
            details=[{"field": "file", "message": f"larger than {MAX_BYTES} bytes"}],
        )
    if not data:
        raise BadInput.field("file", "the file is empty")
    content_type = sniff(data)
    if content_type is None:
        raise BadInput.field("file", "is not a JPEG, PNG or GIF image (the type is checked by the file's content)")
    media = Media(
        user_id=user_id,
        public_id=secrets.token_hex(16),
        filename=clean_filename(filename, content_type),
        content_type=content_type,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        data=data,
    )
    session.add(media)
    await session.flush()
    return media


async def list_media(session: AsyncSession, *, user_id: int, limit: int, after_id: int | None) -> list[Media]:
    """One page by id (limit + 1 rows, for `page_of`), without loading the bytes."""
    query = select(Media).where(Media.user_id == user_id).order_by(Media.id).limit(limit + 1).options(defer(Media.data))
    if after_id is not None:
        query = query.where(Media.id > after_id)
    return list(await session.scalars(query))


async def media_page(session: AsyncSession, *, user_id: int, page: Page, base_url: str) -> PageOut[MediaOut]:
    rows = await list_media(session, user_id=user_id, limit=page.limit, after_id=page.after_id)
    return PageOut[MediaOut](**page_of([view(m, base_url) for m in rows], page))


async def get_media(session: AsyncSession, *, user_id: int, media_id: int) -> Media:
    return await get_own(session, Media, user_id=user_id, object_id=media_id, what="media")


async def delete_media(session: AsyncSession, *, user_id: int, media_id: int) -> None:
    media = await get_media(session, user_id=user_id, media_id=media_id)
    await session.delete(media)
    await session.flush()


@dataclass(frozen=True)
class MediaHead:
    """What the public endpoint needs before deciding between 304 and the bytes."""

    id: int
    public_id: str
    filename: str
    content_type: str
    sha256: str


async def find_public(session: AsyncSession, public_id: str, filename: str) -> MediaHead | None:
    """The image at /media/{public_id}/{filename}; the filename must match too (one canonical URL)."""
    if not 1 <= len(public_id) <= 32 or len(filename) > MAX_FILENAME:
        return None
    row = (
        await session.execute(
            select(Media.id, Media.public_id, Media.filename, Media.content_type, Media.sha256).where(
                Media.public_id == public_id
            )
        )
    ).first()
    if row is None or row.filename != filename:
        return None
    return MediaHead(row.id, row.public_id, row.filename, row.content_type, row.sha256)


async def data_of(session: AsyncSession, media_id: int) -> bytes:
    return bytes(await session.scalar(select(Media.data).where(Media.id == media_id)) or b"")
