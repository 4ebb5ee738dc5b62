"""HTTP routes of background contact imports (docs/import.md#api): create (202), list, progress, errors CSV, cancel.

Thin: parse the multipart form, call `contacts.imports`, shape the answer. Reads are open to every role;
creating and cancelling need `Writer`. Another user's import answers 404.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from starlette.datastructures import FormData, UploadFile

from edm import csvfmt
from edm.api import uploads
from edm.api.deps import CurrentCaller, Paging, Session, Writer
from edm.contacts import imports
from edm.contacts.importer import ImportOptions
from edm.contacts.schemas import ImportOut
from edm.errors import BadInput
from edm.paging import MAX_ID, PageOut

router = APIRouter(prefix="/api/v1", tags=["contacts"])

Id = Annotated[int, PathParam(ge=1, le=MAX_ID)]
FIELDS = {"file", "mode", "encoding", "delimiter", "sheet", "mapping", "tag_ids", "ignore_unknown_columns"}
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


_FORM = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "CSV or XLSX"},
            "mode": {"type": "string", "enum": ["skip_existing", "update_existing"], "default": "skip_existing"},
            "encoding": {"type": "string", "description": "CSV: e.g. gb18030; default UTF-8 with or without BOM"},
            "delimiter": {"type": "string", "description": "CSV: ',', ';' or 'tab'; default: detected"},
            "sheet": {"type": "string", "description": "XLSX: the sheet's name; default: the first"},
            "mapping": {"type": "string", "description": 'JSON {"header": "field" | "tags" | "attributes.<key>" '
                                                         '| "ignore"}'},
            "tag_ids": {"type": "array", "items": {"type": "integer"}, "description": "added to every row"},
            "ignore_unknown_columns": {"type": "boolean", "default": False},
        }}}}},
}  # fmt: skip


@router.post("/contacts/imports", status_code=202, openapi_extra=_FORM)
async def create_import(request: Request, session: Session, caller: Writer) -> ImportOut:
    """Queue an import of a CSV or XLSX file (multipart: `file` plus options). The header row is checked at
    once (422 naming the headers found when no column holds the email); a worker processes the rows."""
    limit = int(request.app.state.settings.import_max_bytes)
    form = await uploads.read_form(request, limit=limit, fields=FIELDS)  # 413 as soon as the body is too large
    try:
        upload = _upload(form)
        row = await imports.create_import(
            session,
            user_id=caller.id,
            filename=upload.filename or "upload",
            stream=upload.file,
            options=_options(form),
            max_bytes=limit,
        )
    finally:
        await form.close()
    return ImportOut.model_validate(row)


@router.get("/contacts/imports")
async def list_imports(session: Session, caller: CurrentCaller, page: Paging) -> PageOut[ImportOut]:
    return await imports.import_page(session, user_id=caller.id, page=page)


@router.get("/contacts/imports/{import_id}")
async def get_import(session: Session, caller: CurrentCaller, import_id: Id) -> ImportOut:
    """Progress: `processed` of `total_rows` (an estimate for CSV until the import completes) and the counts."""
    return ImportOut.model_validate(await imports.get_import(session, user_id=caller.id, import_id=import_id))


@router.get(
    "/contacts/imports/{import_id}/errors", response_class=Response, responses={200: {"content": {"text/csv": {}}}}
)
async def import_errors(session: Session, caller: CurrentCaller, import_id: Id) -> Response:
    """The rejected rows as CSV (row, column, value, message); at most 10 000 are stored per import."""
    body = await imports.errors_csv(session, user_id=caller.id, import_id=import_id)
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="import-{import_id}-errors.csv"'},
    )


@router.post("/contacts/imports/{import_id}/cancel")
async def cancel_import(session: Session, caller: Writer, import_id: Id) -> ImportOut:
    """queued or running -> cancelled (409 once finished). Rows already committed stay."""
    return ImportOut.model_validate(await imports.cancel_import(session, user_id=caller.id, import_id=import_id))


# --------------------------------------------------------------------------------------------------------
# The form
# --------------------------------------------------------------------------------------------------------


def _upload(form: FormData) -> UploadFile:
    unknown = sorted(set(form.keys()) - FIELDS)
    if unknown:
        raise BadInput.field(unknown[0], "unknown field")
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise BadInput.field("file", "a CSV or XLSX file is required")
    return upload


def _options(form: FormData) -> ImportOptions:
    return ImportOptions(
        mode=_text(form, "mode") or "skip_existing",
        encoding=_text(form, "encoding"),
        delimiter=_delimiter(_text(form, "delimiter")),
        sheet=_text(form, "sheet"),
        mapping=_mapping(_text(form, "mapping")),
        tag_ids=tuple(_ids(form.getlist("tag_ids"))),
        ignore_unknown_columns=_flag(form, "ignore_unknown_columns"),
    )


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadInput.field(name, "must be a text field")
    return value.strip() or None


def _delimiter(value: str | None) -> str | None:
    if value is not None and value.lower() in ("tab", "\\t"):
        return "\t"
    if value is not None and value not in csvfmt.DELIMITERS:
        raise BadInput.field("delimiter", "must be ',', ';' or 'tab'")
    return value


def _mapping(value: str | None) -> dict[str, str | None]:
    if value is None:
        return {}
    try:
        mapping = json.loads(value)
    except ValueError:
        raise BadInput.field("mapping", "must be a JSON object {column: field}") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str | None) for v in mapping.values()):
        raise BadInput.field("mapping", "must be a JSON object {column: field}")
    return mapping


def _flag(form: FormData, name: str) -> bool:
    value = (_text(form, name) or "").lower()
    if value not in TRUE + FALSE:
        raise BadInput.field(name, "must be true or false")
    return value in TRUE


def _ids(values: list[Any]) -> list[int]:
    """`tag_ids` repeated or comma-separated."""
    ids: list[int] = []
    for value in values:
        for part in str(value).split(","):
            if part.strip():
                if not part.strip().isdigit() or not 0 < int(part) <= MAX_ID:
                    raise BadInput.field("tag_ids", f"not found: {part.strip()[:20]}")
                ids.append(int(part))
    return ids
