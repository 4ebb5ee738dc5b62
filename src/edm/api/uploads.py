"""File uploads of the import endpoints (contacts, suppressions): refused as early as possible.

By headers before the body is read (wrong type 415, declared size over the limit 413), then while the body
streams in: once it passes the limit (plus a little room for the boundaries and option fields) the request
is answered 413 at once, without reading the rest, and what was received is discarded, so nothing is stored.
Then by the file's exact size and, for CSV-only endpoints, its first bytes: a zip container (an XLSX sheet)
is refused with a message saying what to do.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection
from contextlib import aclosing

from fastapi import HTTPException, Request
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from edm.errors import BadInput

MULTIPART_SLACK = 1024 * 1024  # boundaries and option fields around the file
FORM_SLACK = 64 * 1024  # the same for an import form: a boundary, two part headers and a few short options


def refuse_early(request: Request, limit: int, *, slack: int = MULTIPART_SLACK) -> None:
    """Refuse by headers before the body is read: wrong type (415) or a declared size over the limit (413)."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise HTTPException(415, "send the file as multipart/form-data")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + slack:
        raise _too_large(limit)


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"the file is larger than {limit} bytes")


async def read_form(request: Request, *, limit: int, fields: Collection[str]) -> FormData:
    """The multipart form of an upload whose file may hold `limit` bytes, read under a byte budget: 413 as
    soon as the body passes it (a missing or false Content-Length changes nothing). The caller closes the
    form (its files are spooled to memory, then to an anonymous temporary file)."""
    refuse_early(request, limit, slack=FORM_SLACK)
    parser = MultiPartParser(request.headers, _within(request, limit), max_files=1, max_fields=len(fields) + 100)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise HTTPException(400, exc.message) from None
    upload = form.get("file")
    if isinstance(upload, UploadFile) and upload.size is not None and upload.size > limit:
        await form.close()
        raise _too_large(limit)
    return form


async def _within(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    received = 0
    async with aclosing(request.stream()) as chunks:
        async for chunk in chunks:
            received += len(chunk)
            if received > limit + FORM_SLACK:
                raise _too_large(limit)  # the parser closes the spooled file; the rest is never read
            yield chunk


def check_upload(upload: UploadFile, limit: int) -> None:
    if upload.size is not None and upload.size > limit:
        raise HTTPException(413, f"the file is larger than {limit} bytes")
    head = upload.file.read(4)
    upload.file.seek(0)
    if head.startswith(b"PK\x03\x04"):  # a zip container: XLSX (not read yet) or another archive
        raise HTTPException(415, "only CSV files can be imported for now: save the sheet as CSV")


async def csv_form(request: Request, fields: frozenset[str] | set[str], limit: int) -> tuple[FormData, UploadFile]:
    """The multipart form of an import and its `file`, after every check above; unknown fields are 422.
    The caller closes the form."""
    form = await read_form(request, limit=limit, fields=fields)
    try:
        unknown = sorted(set(form.keys()) - set(fields))
        if unknown:
            raise BadInput.field(unknown[0], "unknown field")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise BadInput.field("file", "a CSV file is required")
        check_upload(upload, limit)
    except Exception:
        await form.close()
        raise
    return form, upload
