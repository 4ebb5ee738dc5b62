"""Suppression routes (SPEC §10.5, §16.3): a user's own list under `/suppressions`, the global list under
`/admin/suppressions` (admins only). Both offer list, add, remove, check, CSV import and CSV export.

Thin: parse, call the service, shape the answer. Reads are open to every role (a user's list) or to admins
(the global list); writes need `Writer` / `AdminWriter`. A user learns of the global list only through the
check endpoint, which names the list and the reason, never the entry.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from edm.api import uploads
from edm.api.deps import Admin, AdminWriter, Caller, CurrentCaller, IdPath, Paging, Session, Writer
from edm.clock import utc_now
from edm.errors import BadInput
from edm.models.suppressions import Suppression
from edm.paging import MAX_ID, page_of
from edm.suppressions import csvio
from edm.suppressions import service as suppressions
from edm.suppressions.schemas import CheckOut, EntryCreate, EntryOut, EntryPage, ImportReportOut, RemovedOut
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


def _actor(caller: Caller, request: Request) -> Actor:
    return Actor(caller.id, "token", request.client.host if request.client else None)


def entry_view(entry: Suppression, now: dt.datetime) -> dict[str, Any]:
    body = {name: getattr(entry, name) for name in EntryOut.model_fields if name != "expired"}
    body["expired"] = entry.expires_at is not None and entry.expires_at <= now
    return body


# --------------------------------------------------------------------------------------------------------
# What both lists do
# --------------------------------------------------------------------------------------------------------


async def _list(
    session: Session, lst: SuppressionList, page: Any, filters: EntryFilter, include_total: bool
) -> dict[str, Any]:
    now = utc_now()
    rows = await suppressions.list_entries(session, lst, page=page, filters=filters, now=now)
    result = page_of(rows, page)
    result["items"] = [entry_view(e, now) for e in result["items"]]
    if include_total:
        result["total"] = await suppressions.count_entries(session, lst, filters=filters, now=now)
    return result


async def _add(session: Session, lst: SuppressionList, body: EntryCreate, actor: Actor) -> dict[str, Any]:
    now = utc_now()
    entry = suppressions.new_entry(
        email=body.email, domain=body.domain, note=body.note, expires_at=body.expires_at, now=now
    )
    return entry_view(await suppressions.add_entry(session, lst, entry, actor=actor, now=now), now)


async def _remove(
    session: Session, lst: SuppressionList, entry_id: int, reason: str | None, actor: Actor
) -> dict[str, Any]:
    cleared = await suppressions.remove_entry(session, lst, entry_id, reason=reason, actor=actor)
    return {"removed": 1, "contacts_cleared": cleared}


async def _import(request: Request, session: Session, lst: SuppressionList, caller: Caller) -> dict[str, Any]:
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
            actor=_actor(caller, request),
            now=utc_now(),
        )
    finally:
        await form.close()
    return report.to_dict()


def _export(request: Request, lst: SuppressionList, filters: EntryFilter, bom: bool, name: str) -> StreamingResponse:
    lines = csvio.export_lines(request.app.state.sessionmaker, lst, filters=filters, now=utc_now(), bom=bom)

    async def body() -> AsyncIterator[bytes]:
        async for line in lines:
            yield line.encode()

    return StreamingResponse(
        body(), media_type="text/csv; charset=utf-8", headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


def _check_view(result: suppressions.CheckResult, *, full_global: bool) -> dict[str, Any]:
    entries = []
    for entry in result.entries:
        shown = entry.scope == "user" or full_global
        message = "blocked by your list" if entry.scope == "user" else "blocked by the global list"
        item: dict[str, Any] = {"scope": entry.scope, "kind": entry.kind, "reason": entry.reason, "message": message}
        if shown:
            item.update(
                id=entry.id,
                value=entry.value,
                note=entry.note,
                expires_at=entry.expires_at,
                created_at=entry.created_at,
            )
        entries.append(item)
    contact = result.contact
    flags = (
        None
        if contact is None
        else {
            "id": contact.id,
            "status": contact.status,
            "unsubscribed_at": contact.unsubscribed_at,
            "hard_bounced_at": contact.hard_bounced_at,
            "complained_at": contact.complained_at,
            "blocking": result.contact_reasons,
        }
    )
    return {"email": result.email, "blocked": result.blocked, "entries": entries, "contact": flags}


# --------------------------------------------------------------------------------------------------------
# A user's own list
# --------------------------------------------------------------------------------------------------------


@router.get("/suppressions", response_model=EntryPage)
async def list_own(
    session: Session,
    caller: CurrentCaller,
    page: Paging,
    query: Annotated[ListQuery, Depends()],
    include_total: bool = False,
    user_id: OwnerId = None,
) -> dict[str, Any]:
    """The caller's list by id ascending (admins: another user's with `user_id`)."""
    lst = SuppressionList.of_user(caller.owner_filter(user_id))
    return await _list(session, lst, page, query.filters, include_total)


@router.post("/suppressions", status_code=201, response_model=EntryOut)
async def add_own(session: Session, caller: Writer, body: EntryCreate, request: Request) -> dict[str, Any]:
    """Add an address or a domain (reason `manual`). 409 with `existing_id` when it is already listed; an
    expired entry of the same value is renewed instead."""
    return await _add(session, SuppressionList.of_user(caller.id), body, _actor(caller, request))


@router.get("/suppressions/check", response_model=CheckOut)
async def check_own(
    session: Session,
    caller: CurrentCaller,
    email: Annotated[str, Query(min_length=1, max_length=320)],
    user_id: OwnerId = None,
) -> dict[str, Any]:
    """Is this address blocked for me, and by what: my entries and the global list's (address or domain, in
    force), plus my contact's flags that would also exclude it."""
    owner = caller.owner_filter(user_id)
    result = await suppressions.check(session, email, user_id=owner, now=utc_now())
    return _check_view(result, full_global=caller.is_admin)


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


@router.post("/suppressions/import", response_model=ImportReportOut, openapi_extra=_IMPORT_FORM)
async def import_own(request: Request, session: Session, caller: Writer) -> dict[str, Any]:
    """Import a CSV (multipart `file`): good rows are added (reason `import`), bad rows reported by row."""
    return await _import(request, session, SuppressionList.of_user(caller.id), caller)


@router.get("/suppressions/{entry_id}", response_model=EntryOut)
async def get_own(session: Session, caller: CurrentCaller, entry_id: IdPath) -> dict[str, Any]:
    return entry_view(await suppressions.get_entry(session, SuppressionList.of_user(caller.id), entry_id), utc_now())


@router.delete("/suppressions/{entry_id}", response_model=RemovedOut)
async def remove_own(
    session: Session, caller: Writer, entry_id: IdPath, request: Request, reason: RemovalReason = None
) -> dict[str, Any]:
    """Remove an entry. An `unsubscribed` or `complaint` entry needs `reason`, and its removal clears that flag
    on your contact with the address. Audited."""
    return await _remove(session, SuppressionList.of_user(caller.id), entry_id, reason, _actor(caller, request))


# --------------------------------------------------------------------------------------------------------
# The global list (admins)
# --------------------------------------------------------------------------------------------------------


@router.get("/admin/suppressions", response_model=EntryPage, tags=["admin"])
async def list_global(
    session: Session, caller: Admin, page: Paging, query: Annotated[ListQuery, Depends()], include_total: bool = False
) -> dict[str, Any]:
    return await _list(session, GLOBAL, page, query.filters, include_total)


@router.post("/admin/suppressions", status_code=201, response_model=EntryOut, tags=["admin"])
async def add_global(session: Session, caller: AdminWriter, body: EntryCreate, request: Request) -> dict[str, Any]:
    """Add an address or a domain to the global list: no user's task reaches it. Audited."""
    return await _add(session, GLOBAL, body, _actor(caller, request))


@router.get("/admin/suppressions/check", response_model=CheckOut, tags=["admin"])
async def check_global(
    session: Session, caller: Admin, email: Annotated[str, Query(min_length=1, max_length=320)]
) -> dict[str, Any]:
    """The global list's entries that block this address (use `/suppressions/check?user_id=` for a user)."""
    return _check_view(await suppressions.check(session, email, user_id=None, now=utc_now()), full_global=True)


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


@router.post("/admin/suppressions/import", response_model=ImportReportOut, openapi_extra=_IMPORT_FORM, tags=["admin"])
async def import_global(request: Request, session: Session, caller: AdminWriter) -> dict[str, Any]:
    return await _import(request, session, GLOBAL, caller)


@router.get("/admin/suppressions/{entry_id}", response_model=EntryOut, tags=["admin"])
async def get_global(session: Session, caller: Admin, entry_id: IdPath) -> dict[str, Any]:
    return entry_view(await suppressions.get_entry(session, GLOBAL, entry_id), utc_now())


@router.delete("/admin/suppressions/{entry_id}", response_model=RemovedOut, tags=["admin"])
async def remove_global(
    session: Session, caller: AdminWriter, entry_id: IdPath, request: Request, reason: RemovalReason = None
) -> dict[str, Any]:
    """Remove a global entry. An `unsubscribed` or `complaint` entry needs `reason`, and its removal clears that
    flag on every user's contact with the address. Audited."""
    return await _remove(session, GLOBAL, entry_id, reason, _actor(caller, request))
