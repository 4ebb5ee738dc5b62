"""File uploads of the import endpoints (contacts, suppressions): refused as early as possible.

By headers before the body is read (wrong type 415, declared size over the limit 413), then by the stored
size and the first bytes: a zip container (an XLSX sheet) is refused with a message saying what to do.
"""

from __future__ import annotations

from fastapi import HTTPException, Request
from starlette.datastructures import FormData, UploadFile

from edm.errors import BadInput

MULTIPART_SLACK = 1024 * 1024  # boundaries and option fields around the file


def refuse_early(request: Request, limit: int) -> None:
    """Refuse by headers before the body is read: wrong type (415) or a declared size over the limit (413)."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise HTTPException(415, "send the file as multipart/form-data")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + MULTIPART_SLACK:
        raise HTTPException(413, f"the file is larger than {limit} bytes")


def check_upload(upload: UploadFile, limit: int) -> None:
    if upload.size is not None and upload.size > limit:
        raise HTTPException(413, f"the file is larger than {limit} bytes")
    head = upload.file.read(4)
    upload.file.seek(0)
    if head.startswith(b"PK\x03\x04"):  # a zip container: XLSX (not read yet) or another archive
        raise HTTPException(415, "only CSV files can be imported for now: save the sheet as CSV")


async def csv_form(request: Request, fields: frozenset[str] | set[str], limit: int) -> tuple[FormData, UploadFile]:
    """The multipart form of an import and its `file`, after every check above; unknown fields are 422."""
    refuse_early(request, limit)
    form = await request.form(max_files=1, max_fields=len(fields) + 100)
    unknown = sorted(set(form.keys()) - set(fields))
    if unknown:
        raise BadInput.field(unknown[0], "unknown field")
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise BadInput.field("file", "a CSV file is required")
    check_upload(upload, limit)
    return form, upload
