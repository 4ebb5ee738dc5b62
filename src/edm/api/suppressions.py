"""Suppression routes (docs/suppression.md): a user's own list under `/suppressions`, the global list under
`/admin/suppressions` (admins only). Both offer list, add, remove, check, CSV import and CSV export.

Thin: parse, call the service, shape the answer. Reads are open to every role (a user's list) or to admins
(the global list); writes need `Writer` / `AdminWriter`. A user learns of the global list only through the
check endpoint, which names the list and the reason, never the entry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal, get_args

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from edm.api import uploads
from edm.api.deps import Admin, AdminWriter, Caller, CurrentCaller, IdPath, Paging, Session, Writer
from edm.clock import utc_now
from edm.errors import BadInput
from edm.paging import MAX_ID, CountedPageOut, Page, page_of
from edm.suppressions import csvio
from edm.suppressions import service as suppressions
from edm.suppressions.schemas import CheckOut, EntryCreate, EntryOut, ImportReportOut, RemovedOut
from edm.suppressions.service import GLOBAL, REASONS, EntryFilter, SuppressionList
from edm.system.service import Actor

router = APIRouter(prefix="/api/v1", tags=["suppressions"])

Kind = Literal["address", "domain"]
Reason = Literal[
    "unsubscribed", "hard_bounce", "soft_bounce_limit", "complaint", "provider_suppressed", "manual", "import"
]
OwnerId = Annotated[int | None, Query(ge=1, le=MAX_ID, description="admins only: another user's list")]
RemovalReason = Annotated[
    str | None, Query(max_length=500, description="required for unsubscribed and complaint entries; audited")
]
IMPORT_MAX_BYTES = 256 * 1024 * 1024  # EDM_IMPORT_MAX_BYTES default
_IMPORT_FIELDS = {"file", "encoding"}
_IMPORT_FORM = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary",
                     "description": "CSV with an `email` or `domain` column, optional `note`, `expires_at`"},
            "encoding": {"type": "string", "description": "e.g. gb18030; default UTF-8 with or without BOM"},
        }}}}},
}  # fmt: skip
if set(get_args(Reason)) != set(REASONS):  # one vocabulary: the query parameter's and the service's
    raise ImportError("suppression reasons differ between api.py and service.py")


def _filters(kind: Kind | None, reason: list[Reason] | None, q: str | None, expired: bool | None) -> EntryFilter:
    if q is not None and "\x00" in q:
        raise BadInput.field("q", "must not contain NUL characters")
    return EntryFilter(kind=kind, reasons=tuple(reason or ()), q=q, expired=expired)


class ListQuery:
    """The list and export filters, shared by both lists."""

    def __init__(
        self,
        kind: Kind | None = None,
        reason: Annotated[list[Reason] | None, Query()] = None,
        q: Annotated[str | None, Query(max_length=200, description="substring of the value or note")] = None,
        expired: Annotated[bool | None, Query(description="true: expired only; false: in force")] = None,
    ):
        self.filters = _filters(kind, reason, q, expired)


# --------------------------------------------------------------------------------------------------------
# What both lists do
# --------------------------------------------------------------------------------------------------------


async def _list(
    session: Session, lst: SuppressionList, page: Page, filters: EntryFilter, include_total: bool
) -> CountedPageOut[EntryOut]:
    now = utc_now()
    rows = await suppressions.list_entries(session, lst, page=page, filters=filters, now=now)
    result = page_of(rows, page)
    total = await suppressions.count_entries(session, lst, filters=filters, now=now) if include_total else None
    items = [EntryOut.of(e, now) for e in result["items"]]
    return CountedPageOut[EntryOut](items=items, next_cursor=result["next_cursor"], total=total)


async def _add(session: Session, lst: SuppressionList, body: EntryCreate, actor: Actor) -> EntryOut:
    now = utc_now()
    entry = suppressions.new_entry(
        email=body.email, domain=body.domain, note=body.note, expires_at=body.expires_at, now=now
    )
    return EntryOut.of(await suppressions.add_entry(session, lst, entry, actor=actor, now=now), now)


async def _remove(
    session: Session, lst: SuppressionList, entry_id: int, reason: str | None, actor: Actor
) -> RemovedOut:
    cleared = await suppressions.remove_entry(session, lst, entry_id, reason=reason, actor=actor)
    return RemovedOut(removed=1, contacts_cleared=cleared)


async def _import(request: Request, session: Session, lst: SuppressionList, caller: Caller) -> ImportReportOut:
    limit = int(getattr(request.app.state.settings, "import_max_bytes", IMPORT_MAX_BYTES))
    form, upload = await uploads.csv_form(request, _IMPORT_FIELDS, limit)
    try:
        encoding = form.get("encoding")
        if encoding is not None and not isinstance(encoding, str):
            raise BadInput.field("encoding", "must be a text field")
        report = await csvio.import_csv(
            session,
            lst,
            upload.file,
            encoding=(encoding or "").strip() or None,
            actor=caller.actor(request),
            now=utc_now(),
        )
    finally:
        await form.close()
    return ImportReportOut.of(report)


def _export(request: Request, lst: SuppressionList, filters: EntryFilter, bom: bool, name: str) -> StreamingResponse:
    lines = csvio.export_lines(request.app.state.sessionmaker, lst, filters=filters, now=utc_now(), bom=bom)

    async def body() -> AsyncIterator[bytes]:
        async for line in lines:
            yield line.encode()

    return StreamingResponse(
        body(), media_type="text/csv; charset=utf-8", headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


# --------------------------------------------------------------------------------------------------------
# A user's own list
# --------------------------------------------------------------------------------------------------------


@router.get("/suppressions")
async def list_own(
    session: Session,
    caller: CurrentCaller,
    page: Paging,
    query: Annotated[ListQuery, Depends()],
    include_total: bool = False,
    user_id: OwnerId = None,
) -> CountedPageOut[EntryOut]:
    """The caller's list by id ascending (admins: another user's with `user_id`)."""
    lst = SuppressionList.of_user(caller.owner_filter(user_id))
    return await _list(session, lst, page, query.filters, include_total)


@router.post("/suppressions", status_code=201)
async def add_own(session: Session, caller: Writer, body: EntryCreate, request: Request) -> EntryOut:
    """Add an address or a domain (reason `manual`). 409 with `existing_id` when it is already listed; an
    expired entry of the same value is renewed instead."""
    return await _add(session, SuppressionList.of_user(caller.id), body, caller.actor(request))


@router.get("/suppressions/check")
async def check_own(
    session: Session,
    caller: CurrentCaller,
    email: Annotated[str, Query(min_length=1, max_length=320)],
    user_id: OwnerId = None,
) -> CheckOut:
    """Is this address blocked for me, and by what: my entries and the global list's (address or domain, in
    force), plus my contact's flags that would also exclude it."""
    owner = caller.owner_filter(user_id)
    result = await suppressions.check(session, email, user_id=owner, now=utc_now())
    return CheckOut.of(result, full_global=caller.is_admin)


@router.get(
    "/suppressions/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "RFC 4180 CSV"}},
)
async def export_own(
    request: Request,
    caller: CurrentCaller,
    query: Annotated[ListQuery, Depends()],
    bom: bool = False,
    user_id: OwnerId = None,
) -> StreamingResponse:
    """CSV of the list (same filters as the list): email, domain, reason, note, expires_at, created_at."""
    lst = SuppressionList.of_user(caller.owner_filter(user_id))
    return _export(request, lst, query.filters, bom, "suppressions.csv")


@router.post("/suppressions/import", openapi_extra=_IMPORT_FORM)
async def import_own(request: Request, session: Session, caller: Writer) -> ImportReportOut:
    """Import a CSV (multipart `file`): good rows are added (reason `import`), bad rows reported by row."""
    return await _import(request, session, SuppressionList.of_user(caller.id), caller)


@router.get("/suppressions/{entry_id}")
async def get_own(session: Session, caller: CurrentCaller, entry_id: IdPath) -> EntryOut:
    return EntryOut.of(await suppressions.get_entry(session, SuppressionList.of_user(caller.id), entry_id), utc_now())


@router.delete("/suppressions/{entry_id}")
async def remove_own(
    session: Session, caller: Writer, entry_id: IdPath, request: Request, reason: RemovalReason = None
) -> RemovedOut:
    """Remove an entry. An `unsubscribed` or `complaint` entry needs `reason`, and its removal clears that flag
    on your contact with the address. Audited."""
    return await _remove(session, SuppressionList.of_user(caller.id), entry_id, reason, caller.actor(request))


# --------------------------------------------------------------------------------------------------------
# The global list (admins)
# --------------------------------------------------------------------------------------------------------


@router.get("/admin/suppressions", tags=["admin"])
async def list_global(
    session: Session, caller: Admin, page: Paging, query: Annotated[ListQuery, Depends()], include_total: bool = False
) -> CountedPageOut[EntryOut]:
    return await _list(session, GLOBAL, page, query.filters, include_total)


@router.post("/admin/suppressions", status_code=201, tags=["admin"])
async def add_global(session: Session, caller: AdminWriter, body: EntryCreate, request: Request) -> EntryOut:
    """Add an address or a domain to the global list: no user's task reaches it. Audited."""
    return await _add(session, GLOBAL, body, caller.actor(request))


@router.get("/admin/suppressions/check", tags=["admin"])
async def check_global(
    session: Session, caller: Admin, email: Annotated[str, Query(min_length=1, max_length=320)]
) -> CheckOut:
    """The global list's entries that block this address (use `/suppressions/check?user_id=` for a user)."""
    return CheckOut.of(await suppressions.check(session, email, user_id=None, now=utc_now()), full_global=True)


@router.get(
    "/admin/suppressions/export",
    response_class=StreamingResponse,
    tags=["admin"],
    responses={200: {"content": {"text/csv": {}}, "description": "RFC 4180 CSV"}},
)
async def export_global(
    request: Request, caller: Admin, query: Annotated[ListQuery, Depends()], bom: bool = False
) -> StreamingResponse:
    return _export(request, GLOBAL, query.filters, bom, "global-suppressions.csv")


@router.post("/admin/suppressions/import", openapi_extra=_IMPORT_FORM, tags=["admin"])
async def import_global(request: Request, session: Session, caller: AdminWriter) -> ImportReportOut:
    return await _import(request, session, GLOBAL, caller)


@router.get("/admin/suppressions/{entry_id}", tags=["admin"])
async def get_global(session: Session, caller: Admin, entry_id: IdPath) -> EntryOut:
    return EntryOut.of(await suppressions.get_entry(session, GLOBAL, entry_id), utc_now())


@router.delete("/admin/suppressions/{entry_id}", tags=["admin"])
async def remove_global(
    session: Session, caller: AdminWriter, entry_id: IdPath, request: Request, reason: RemovalReason = None
) -> RemovedOut:
    """Remove a global entry. An `unsubscribed` or `complaint` entry needs `reason`, and its removal clears that
    flag on every user's contact with the address. Audited."""
    return await _remove(session, GLOBAL, entry_id, reason, caller.actor(request))
