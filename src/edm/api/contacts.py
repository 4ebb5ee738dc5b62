"""HTTP routes for contacts, tags and the recipient estimate (imports: imports_api.py) (SPEC §13, §6.2, §16.3).

Thin: parse, call a service, shape the answer. Reads are open to every role; writes need `Writer`
(a write-scoped token of a non-read-only account). Admins may add `user_id` to list endpoints.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from edm.api.deps import CurrentCaller, Paging, Session, Writer
from edm.clock import utc_now
from edm.contacts import activity, service
from edm.contacts.bulk import BulkAction, run_bulk
from edm.contacts.export import export_csv
from edm.contacts.filters import Sort, decode_sort_cursor, encode_sort_cursor, parse_attributes
from edm.contacts.schemas import (
    MAX_ID,
    ActivityPage,
    BulkOut,
    BulkRequest,
    ContactCreate,
    ContactDetailOut,
    ContactIds,
    ContactOut,
    ContactPage,
    ContactQuery,
    ContactUpdate,
    MembersChanged,
    ResubscribeIn,
    SplitOut,
    TagCreate,
    TaggedOut,
    TagIds,
    TagMove,
    TagNode,
    TagOut,
    TagPage,
    TagSplit,
    TagUpdate,
)
from edm.contacts.schemas import (
    Id as BodyId,
)
from edm.contacts.split import SplitRequest, split_tag
from edm.errors import BadInput
from edm.models.contacts import Contact, ContactStatus
from edm.paging import page_of
from edm.system.service import Actor
from edm.tasks.recipients import EstimateOut, EstimateRequest, estimate, validate_rule

router = APIRouter(prefix="/api/v1", tags=["contacts"])

Id = Annotated[int, PathParam(ge=1, le=MAX_ID)]
OwnerId = Annotated[int | None, Query(ge=1, le=MAX_ID, description="admins only: another user's data")]


# --------------------------------------------------------------------------------------------------------
# Contacts
# --------------------------------------------------------------------------------------------------------


async def _contacts_out(session: AsyncSession, contacts: list[Contact]) -> list[dict[str, Any]]:
    tags = await service.contact_tags(session, [c.id for c in contacts])
    return [_contact_dict(c, tags.get(c.id, [])) for c in contacts]


def _contact_dict(contact: Contact, tags: list[dict[str, Any]]) -> dict[str, Any]:
    body = {name: getattr(contact, name) for name in ContactOut.model_fields if name != "tags"}
    body["tags"] = tags
    return body


async def _one_contact(session: AsyncSession, contact: Contact) -> dict[str, Any]:
    await session.refresh(contact)  # server-side values (updated_at) without a lazy load on the response path
    return (await _contacts_out(session, [contact]))[0]


def list_filters(
    request: Request,
    q: Annotated[str | None, Query(max_length=200, description="substring of email, names, company, ids")] = None,
    status: Annotated[list[ContactStatus] | None, Query()] = None,
    tag_id: Annotated[list[BodyId] | None, Query(description="any of these tags (repeat the parameter)")] = None,
    explicit_only: Annotated[bool, Query(description="a parent tag matches only its own members")] = False,
    untagged: bool = False,
    source: Annotated[str | None, Query(max_length=100)] = None,
    import_id: Annotated[BodyId | None, Query()] = None,
    created_from: Annotated[dt.datetime | None, Query(description="created at or after (ISO 8601)")] = None,
    created_to: Annotated[dt.datetime | None, Query(description="created before (ISO 8601)")] = None,
    suppressed: Annotated[bool | None, Query(description="flagged or on a suppression list (or not)")] = None,
    engaged_since: Annotated[dt.datetime | None, Query(description="opened or clicked at or after")] = None,
) -> service.ContactFilter:
    """The §13.1 filters from the query string (shared by the list and the export)."""
    attributes = [(k.removeprefix("attr."), v) for k, v in request.query_params.multi_items() if k.startswith("attr.")]
    return service.ContactFilter(
        q=_query_text("q", q),
        statuses=tuple(status or ()),
        tag_ids=tuple(tag_id or ()),
        untagged=untagged,
        source=_query_text("source", source),
        explicit_only=explicit_only,
        import_id=import_id,
        created_from=_aware("created_from", created_from),
        created_to=_aware("created_to", created_to),
        suppressed=suppressed,
        engaged_since=_aware("engaged_since", engaged_since),
        attributes=parse_attributes(attributes),
    )


def _aware(name: str, value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        raise BadInput.field(name, "must carry a time zone (e.g. 2026-01-31T00:00:00Z)")
    return value


@router.get("/contacts", response_model=ContactPage)
async def list_contacts(
    request: Request,
    session: Session,
    caller: CurrentCaller,
    page: Paging,
    filters: Annotated[service.ContactFilter, Depends(list_filters)],
    sort: Annotated[
        str | None, Query(description="id, created, updated, email, name, last_activity; '-' = desc")
    ] = None,
    include_total: bool = False,
    user_id: OwnerId = None,
) -> dict[str, Any]:
    """Contacts in `sort` order (default: id ascending). Tags are "any of" and a parent tag includes its
    children's members. `attr.<key>=<value>` filters on a custom attribute (repeat for several keys)."""
    owner = caller.owner_filter(user_id)
    order = Sort.parse(sort)
    cursor = decode_sort_cursor(request.query_params.get("cursor"), order)
    rows = await service.list_contacts(session, user_id=owner, page=page, filters=filters, sort=order, cursor=cursor)
    result = page_of(rows, page)
    if result["next_cursor"] is not None:
        result["next_cursor"] = encode_sort_cursor(result["items"][-1], order)
    result["items"] = await _contacts_out(session, result["items"])
    if include_total:
        result["total"] = await service.count_contacts(session, user_id=owner, filters=filters)
    return result


def _query_text(name: str, value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise BadInput.field(name, "must not contain NUL characters")
    return value


@router.post("/contacts", status_code=201, response_model=ContactOut)
async def create_contact(session: Session, caller: Writer, body: ContactCreate) -> dict[str, Any]:
    values = body.model_dump(exclude={"tag_ids"})
    contact = await service.create_contact(session, user_id=caller.id, values=values, tag_ids=body.tag_ids)
    return await _one_contact(session, contact)


@router.post("/contacts/bulk", response_model=BulkOut)
async def bulk_contacts(session: Session, caller: Writer, body: BulkRequest) -> dict[str, Any]:
    """tag | untag | set_status | delete on `ids` (≤ 10,000) or on every contact matching `filter`.
    Delete by filter needs `expected_count` equal to the current match count (else 409 with `current_count`)."""
    if (body.ids is None) == (body.filter is None):
        raise BadInput.field("ids", "give either ids or a filter (an empty filter {} means every contact)")
    action = BulkAction(
        action=body.action,
        ids=tuple(body.ids) if body.ids is not None else None,
        filters=query_filter(body.filter) if body.filter is not None else service.ContactFilter(),
        tag_ids=tuple(body.tag_ids),
        status=body.status,
        expected_count=body.expected_count,
    )
    return await run_bulk(session, user_id=caller.id, request=action)


def query_filter(query: ContactQuery) -> service.ContactFilter:
    return service.ContactFilter(
        q=query.q,
        statuses=tuple(query.status),
        tag_ids=tuple(query.tag_ids),
        explicit_only=query.explicit_only,
        untagged=query.untagged,
        source=query.source,
        import_id=query.import_id,
        created_from=_aware("filter.created_from", query.created_from),
        created_to=_aware("filter.created_to", query.created_to),
        suppressed=query.suppressed,
        attributes=parse_attributes(list(query.attributes.items())),
        engaged_since=_aware("filter.engaged_since", query.engaged_since),
    )


@router.get(
    "/contacts/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "CSV, streamed"}},
)
async def export_contacts(
    request: Request,
    session: Session,
    caller: CurrentCaller,
    filters: Annotated[service.ContactFilter, Depends(list_filters)],
    id: Annotated[list[BodyId] | None, Query(max_length=10_000, description="a selection (repeat)")] = None,
    bom: Annotated[bool, Query(description="start with a UTF-8 BOM (for spreadsheets)")] = False,
    user_id: OwnerId = None,
) -> StreamingResponse:
    """The list's filters (or a selection of ids) as CSV: standard fields, tags as `Parent/Child` names,
    suppression flags, `attr.<key>` columns. RFC 4180 with the formula guard; header only when empty."""
    owner = caller.owner_filter(user_id)
    if id:
        ids = await service.require_own(session, Contact, user_id=owner, ids=id, field="id")
        filters = dataclasses.replace(filters, ids=tuple(ids))
    sessionmaker = request.app.state.sessionmaker

    async def body() -> AsyncIterator[bytes]:
        async for piece in export_csv(sessionmaker, user_id=owner, filters=filters, bom=bom):
            yield piece.encode()

    name = f"contacts-{utc_now():%Y%m%d-%H%M%S}.csv"
    return StreamingResponse(
        body(), media_type="text/csv; charset=utf-8", headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


@router.get("/contacts/{contact_id}", response_model=ContactDetailOut)
async def get_contact(session: Session, caller: CurrentCaller, contact_id: Id) -> dict[str, Any]:
    """The contact with explicit and implied tags and its suppression state (blocking entries first)."""
    contact = await service.get_contact(session, user_id=caller.id, contact_id=contact_id)
    body = (await _contacts_out(session, [contact]))[0]
    body["suppression"] = await activity.suppression_state(session, contact)
    return body


@router.get("/contacts/{contact_id}/activity", response_model=ActivityPage)
async def contact_activity(
    session: Session,
    caller: CurrentCaller,
    contact_id: Id,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """The contact's SubTasks (task, send and delivery state, times) and their events, newest first."""
    items, next_cursor = await activity.activity(
        session, user_id=caller.id, contact_id=contact_id, limit=limit, cursor=cursor
    )
    return {"items": items, "next_cursor": next_cursor}


@router.post("/contacts/{contact_id}/resubscribe", response_model=ContactDetailOut)
async def resubscribe_contact(
    request: Request, session: Session, caller: Writer, contact_id: Id, body: ResubscribeIn
) -> dict[str, Any]:
    """Clear the unsubscribe (flag and the own list's `unsubscribed` entry); the reason is audited."""
    actor = Actor(caller.id, "token", request.client.host if request.client else None)
    contact = await activity.resubscribe(
        session, user_id=caller.id, contact_id=contact_id, reason=body.reason, actor=actor
    )
    out = await _one_contact(session, contact)
    out["suppression"] = await activity.suppression_state(session, contact)
    return out


@router.patch("/contacts/{contact_id}", response_model=ContactOut)
async def update_contact(session: Session, caller: Writer, contact_id: Id, body: ContactUpdate) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    contact = await service.update_contact(session, user_id=caller.id, contact_id=contact_id, changes=changes)
    return await _one_contact(session, contact)


@router.delete("/contacts/{contact_id}", status_code=204)
async def delete_contact(session: Session, caller: Writer, contact_id: Id) -> Response:
    await service.delete_contact(session, user_id=caller.id, contact_id=contact_id)
    return Response(status_code=204)


@router.post("/contacts/{contact_id}/tags", response_model=TaggedOut)
async def tag_contact(session: Session, caller: Writer, contact_id: Id, body: TagIds) -> dict[str, Any]:
    """Add explicit tags to one contact (a child tag implies its parent; the parent is not written)."""
    added = await service.tag_contact(session, user_id=caller.id, contact_id=contact_id, tag_ids=body.tag_ids)
    return {"added": added}


@router.delete("/contacts/{contact_id}/tags/{tag_id}", status_code=204)
async def untag_contact(session: Session, caller: Writer, contact_id: Id, tag_id: Id) -> Response:
    await service.untag_contact(session, user_id=caller.id, contact_id=contact_id, tag_id=tag_id)
    return Response(status_code=204)


# --------------------------------------------------------------------------------------------------------
# Tags
# --------------------------------------------------------------------------------------------------------


@router.get("/tags", response_model=TagPage)
async def list_tags(
    session: Session, caller: CurrentCaller, page: Paging, include_total: bool = False, user_id: OwnerId = None
) -> dict[str, Any]:
    """Tags by id, with explicit member counts (and, for roots, the distinct total including children)."""
    owner = caller.owner_filter(user_id)
    result = page_of(await service.list_tags(session, user_id=owner, page=page), page)
    if include_total:
        result["total"] = await service.count_tags(session, user_id=owner)
    return result


@router.post("/tags", status_code=201, response_model=TagOut)
async def create_tag(session: Session, caller: Writer, body: TagCreate) -> dict[str, Any]:
    tag = await service.create_tag(
        session,
        user_id=caller.id,
        name=body.name,
        color=body.color,
        description=body.description,
        parent_id=body.parent_id,
    )
    return await service.tag_detail(session, user_id=caller.id, tag_id=tag.id)


@router.get("/tags/tree", response_model=list[TagNode])
async def tag_tree(session: Session, caller: CurrentCaller, user_id: OwnerId = None) -> list[dict[str, Any]]:
    return await service.tag_tree(session, user_id=caller.owner_filter(user_id))


@router.get("/tags/{tag_id}", response_model=TagOut)
async def get_tag(session: Session, caller: CurrentCaller, tag_id: Id) -> dict[str, Any]:
    return await service.tag_detail(session, user_id=caller.id, tag_id=tag_id)


@router.patch("/tags/{tag_id}", response_model=TagOut)
async def update_tag(session: Session, caller: Writer, tag_id: Id, body: TagUpdate) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    tag = await service.update_tag(session, user_id=caller.id, tag_id=tag_id, changes=changes)
    await session.refresh(tag)
    return await service.tag_detail(session, user_id=caller.id, tag_id=tag.id)


@router.delete("/tags/{tag_id}", status_code=204)
async def delete_tag(session: Session, caller: Writer, tag_id: Id) -> Response:
    """409 in_use while the tag has children or a draft/scheduled task's rule names it."""
    await service.delete_tag(session, user_id=caller.id, tag_id=tag_id)
    return Response(status_code=204)


@router.post("/tags/{tag_id}/move", response_model=TagOut)
async def move_tag(session: Session, caller: Writer, tag_id: Id, body: TagMove) -> dict[str, Any]:
    """Re-parent under a root tag (`parent_id`) or make it a root (`null`). A tag with children stays a root."""
    tag = await service.move_tag(session, user_id=caller.id, tag_id=tag_id, parent_id=body.parent_id)
    await session.refresh(tag)
    return await service.tag_detail(session, user_id=caller.id, tag_id=tag.id)


@router.post("/tags/{tag_id}/split", status_code=201, response_model=SplitOut)
async def split(session: Session, caller: Writer, tag_id: Id, body: TagSplit) -> dict[str, Any]:
    """A/B split (§13.3): the root tag's explicit members shuffled into `group_count` new child groups."""
    request = SplitRequest(
        group_count=body.group_count,
        ratios=tuple(body.ratios) if body.ratios else None,
        group_names=tuple(body.group_names) if body.group_names else None,
        seed=body.seed,
        regroup=body.regroup,
    )
    return await split_tag(session, user_id=caller.id, tag_id=tag_id, request=request)


@router.get("/tags/{tag_id}/contacts", response_model=ContactPage)
async def list_tag_members(
    session: Session,
    caller: CurrentCaller,
    tag_id: Id,
    page: Paging,
    explicit_only: bool = False,
    user_id: OwnerId = None,
) -> dict[str, Any]:
    """Members of a tag (for a parent: also its children's members, unless `explicit_only`)."""
    owner = caller.owner_filter(user_id)
    rows = await service.list_tag_members(session, user_id=owner, tag_id=tag_id, page=page, explicit_only=explicit_only)
    result = page_of(rows, page)
    result["items"] = await _contacts_out(session, result["items"])
    return result


@router.post("/tags/{tag_id}/contacts", response_model=MembersChanged)
async def add_tag_members(session: Session, caller: Writer, tag_id: Id, body: ContactIds) -> dict[str, Any]:
    added = await service.add_tag_members(session, user_id=caller.id, tag_id=tag_id, contact_ids=body.contact_ids)
    return {"added": added}


@router.delete("/tags/{tag_id}/contacts", response_model=MembersChanged)
async def remove_tag_members(session: Session, caller: Writer, tag_id: Id, body: ContactIds) -> dict[str, Any]:
    removed = await service.remove_tag_members(session, user_id=caller.id, tag_id=tag_id, contact_ids=body.contact_ids)
    return {"removed": removed}


# --------------------------------------------------------------------------------------------------------
# Recipient estimate
# --------------------------------------------------------------------------------------------------------


@router.post("/recipients/estimate", response_model=EstimateOut, tags=["tasks"])
async def estimate_recipients(session: Session, caller: CurrentCaller, body: EstimateRequest) -> dict[str, Any]:
    """How many contacts a recipient rule selects, sendable or excluded per reason: the same selection
    generation runs. The body is `{"recipient_rule": …}` exactly as in task creation (the bare rule object is
    accepted too)."""
    rule = body.recipient_rule.to_rule()
    await validate_rule(session, user_id=caller.id, rule=rule)
    now = utc_now()
    result = await estimate(session, user_id=caller.id, rule=rule, now=now)
    return {**result, "credit_balance": caller.user.credit_balance, "computed_at": now}
