"""HTTP routes for contacts, tags and the recipient estimate (imports have theirs in `imports.py`).

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

from edm.api.deps import CurrentCaller, Paging, Session, Writer
from edm.clock import utc_now
from edm.contacts import activity, service, tags
from edm.contacts.bulk import BulkAction, run_bulk
from edm.contacts.export import export_csv
from edm.contacts.filters import ContactFilter, Sort, decode_sort_cursor, parse_attributes
from edm.contacts.schemas import (
    ActivityItemOut,
    BulkOut,
    BulkRequest,
    ContactCreate,
    ContactDetailOut,
    ContactIds,
    ContactOut,
    ContactQuery,
    ContactUpdate,
    MembersChangedOut,
    ResubscribeIn,
    SplitOut,
    TagCreate,
    TaggedOut,
    TagIds,
    TagMove,
    TagNodeOut,
    TagOut,
    TagSplit,
    TagUpdate,
)
from edm.contacts.schemas import (
    Id as BodyId,
)
from edm.contacts.split import SplitRequest, split_tag
from edm.errors import BadInput
from edm.models.contacts import ContactStatus
from edm.paging import MAX_ID, CountedPageOut, PageOut
from edm.tasks.recipients import estimate, validate_rule
from edm.tasks.schemas import EstimateOut, EstimateRequest

router = APIRouter(prefix="/api/v1", tags=["contacts"])

Id = Annotated[int, PathParam(ge=1, le=MAX_ID)]
OwnerId = Annotated[int | None, Query(ge=1, le=MAX_ID, description="admins only: another user's data")]


# --------------------------------------------------------------------------------------------------------
# Contacts
# --------------------------------------------------------------------------------------------------------


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
) -> ContactFilter:
    """The list filters from the query string (shared by the list and the export)."""
    attributes = [(k.removeprefix("attr."), v) for k, v in request.query_params.multi_items() if k.startswith("attr.")]
    return ContactFilter(
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


@router.get("/contacts")
async def list_contacts(
    request: Request,
    session: Session,
    caller: CurrentCaller,
    page: Paging,
    filters: Annotated[ContactFilter, Depends(list_filters)],
    sort: Annotated[
        str | None, Query(description="id, created, updated, email, name, last_activity; '-' = desc")
    ] = None,
    include_total: bool = False,
    user_id: OwnerId = None,
) -> CountedPageOut[ContactOut]:
    """Contacts in `sort` order (default: id ascending). Tags are "any of" and a parent tag includes its
    children's members. `attr.<key>=<value>` filters on a custom attribute (repeat for several keys)."""
    owner = caller.owner_filter(user_id)
    order = Sort.parse(sort)
    cursor = decode_sort_cursor(request.query_params.get("cursor"), order)
    return await service.contact_page(
        session, user_id=owner, page=page, filters=filters, sort=order, cursor=cursor, include_total=include_total
    )


def _query_text(name: str, value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise BadInput.field(name, "must not contain NUL characters")
    return value


@router.post("/contacts", status_code=201)
async def create_contact(session: Session, caller: Writer, body: ContactCreate) -> ContactOut:
    values = body.model_dump(exclude={"tag_ids"})
    contact = await service.create_contact(session, user_id=caller.id, values=values, tag_ids=body.tag_ids)
    return (await service.contact_views(session, [contact]))[0]


@router.post("/contacts/bulk")
async def bulk_contacts(session: Session, caller: Writer, body: BulkRequest) -> BulkOut:
    """tag | untag | set_status | delete on `ids` (≤ 10,000) or on every contact matching `filter`.
    Delete by filter needs `expected_count` equal to the current match count (else 409 with `current_count`)."""
    if (body.ids is None) == (body.filter is None):
        raise BadInput.field("ids", "give either ids or a filter (an empty filter {} means every contact)")
    action = BulkAction(
        action=body.action,
        ids=tuple(body.ids) if body.ids is not None else None,
        filters=query_filter(body.filter) if body.filter is not None else ContactFilter(),
        tag_ids=tuple(body.tag_ids),
        status=body.status,
        expected_count=body.expected_count,
    )
    return await run_bulk(session, user_id=caller.id, request=action)


def query_filter(query: ContactQuery) -> ContactFilter:
    return ContactFilter(
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
    filters: Annotated[ContactFilter, Depends(list_filters)],
    id: Annotated[list[BodyId] | None, Query(max_length=10_000, description="a selection (repeat)")] = None,
    bom: Annotated[bool, Query(description="start with a UTF-8 BOM (for spreadsheets)")] = False,
    user_id: OwnerId = None,
) -> StreamingResponse:
    """The list's filters (or a selection of ids) as CSV: standard fields, tags as `Parent/Child` names,
    suppression flags, `attr.<key>` columns. RFC 4180 with the formula guard; header only when empty."""
    owner = caller.owner_filter(user_id)
    if id:
        ids = await service.own_contact_ids(session, user_id=owner, ids=id, field="id")
        filters = dataclasses.replace(filters, ids=tuple(ids))
    sessionmaker = request.app.state.sessionmaker

    async def body() -> AsyncIterator[bytes]:
        async for piece in export_csv(sessionmaker, user_id=owner, filters=filters, bom=bom):
            yield piece.encode()

    name = f"contacts-{utc_now():%Y%m%d-%H%M%S}.csv"
    return StreamingResponse(
        body(), media_type="text/csv; charset=utf-8", headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


@router.get("/contacts/{contact_id}")
async def get_contact(session: Session, caller: CurrentCaller, contact_id: Id) -> ContactDetailOut:
    """The contact with explicit and implied tags and its suppression state (blocking entries first)."""
    contact = await service.get_contact(session, user_id=caller.id, contact_id=contact_id)
    return await activity.contact_detail(session, contact)


@router.get("/contacts/{contact_id}/activity")
async def contact_activity(
    session: Session,
    caller: CurrentCaller,
    contact_id: Id,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> PageOut[ActivityItemOut]:
    """The contact's SubTasks (task, send and delivery state, times) and their events, newest first."""
    return await activity.activity(session, user_id=caller.id, contact_id=contact_id, limit=limit, cursor=cursor)


@router.post("/contacts/{contact_id}/resubscribe")
async def resubscribe_contact(
    request: Request, session: Session, caller: Writer, contact_id: Id, body: ResubscribeIn
) -> ContactDetailOut:
    """Clear the unsubscribe (flag and the own list's `unsubscribed` entry); the reason is audited."""
    actor = caller.actor(request)
    contact = await activity.resubscribe(
        session, user_id=caller.id, contact_id=contact_id, reason=body.reason, actor=actor
    )
    return await activity.contact_detail(session, contact)


@router.patch("/contacts/{contact_id}")
async def update_contact(session: Session, caller: Writer, contact_id: Id, body: ContactUpdate) -> ContactOut:
    changes = body.model_dump(exclude_unset=True)
    contact = await service.update_contact(session, user_id=caller.id, contact_id=contact_id, changes=changes)
    return (await service.contact_views(session, [contact]))[0]


@router.delete("/contacts/{contact_id}", status_code=204)
async def delete_contact(session: Session, caller: Writer, contact_id: Id) -> Response:
    await service.delete_contact(session, user_id=caller.id, contact_id=contact_id)
    return Response(status_code=204)


@router.post("/contacts/{contact_id}/tags")
async def tag_contact(session: Session, caller: Writer, contact_id: Id, body: TagIds) -> TaggedOut:
    """Add explicit tags to one contact (a child tag implies its parent; the parent is not written)."""
    added = await tags.tag_contact(session, user_id=caller.id, contact_id=contact_id, tag_ids=body.tag_ids)
    return TaggedOut(added=added)


@router.delete("/contacts/{contact_id}/tags/{tag_id}", status_code=204)
async def untag_contact(session: Session, caller: Writer, contact_id: Id, tag_id: Id) -> Response:
    await tags.untag_contact(session, user_id=caller.id, contact_id=contact_id, tag_id=tag_id)
    return Response(status_code=204)


# --------------------------------------------------------------------------------------------------------
# Tags
# --------------------------------------------------------------------------------------------------------


@router.get("/tags")
async def list_tags(
    session: Session, caller: CurrentCaller, page: Paging, include_total: bool = False, user_id: OwnerId = None
) -> CountedPageOut[TagOut]:
    """Tags by id, with explicit member counts (and, for roots, the distinct total including children)."""
    return await tags.tag_page(session, user_id=caller.owner_filter(user_id), page=page, include_total=include_total)


@router.post("/tags", status_code=201)
async def create_tag(session: Session, caller: Writer, body: TagCreate) -> TagOut:
    tag = await tags.create_tag(
        session,
        user_id=caller.id,
        name=body.name,
        color=body.color,
        description=body.description,
        parent_id=body.parent_id,
    )
    return await tags.tag_detail(session, user_id=caller.id, tag_id=tag.id)


@router.get("/tags/tree")
async def tag_tree(session: Session, caller: CurrentCaller, user_id: OwnerId = None) -> list[TagNodeOut]:
    return await tags.tag_tree(session, user_id=caller.owner_filter(user_id))


@router.get("/tags/{tag_id}")
async def get_tag(session: Session, caller: CurrentCaller, tag_id: Id) -> TagOut:
    return await tags.tag_detail(session, user_id=caller.id, tag_id=tag_id)


@router.patch("/tags/{tag_id}")
async def update_tag(session: Session, caller: Writer, tag_id: Id, body: TagUpdate) -> TagOut:
    changes = body.model_dump(exclude_unset=True)
    tag = await tags.update_tag(session, user_id=caller.id, tag_id=tag_id, changes=changes)
    return await tags.tag_detail(session, user_id=caller.id, tag_id=tag.id)


@router.delete("/tags/{tag_id}", status_code=204)
async def delete_tag(session: Session, caller: Writer, tag_id: Id) -> Response:
    """409 in_use while the tag has children or a draft/scheduled task's rule names it."""
    await tags.delete_tag(session, user_id=caller.id, tag_id=tag_id)
    return Response(status_code=204)


@router.post("/tags/{tag_id}/move")
async def move_tag(session: Session, caller: Writer, tag_id: Id, body: TagMove) -> TagOut:
    """Re-parent under a root tag (`parent_id`) or make it a root (`null`). A tag with children stays a root."""
    tag = await tags.move_tag(session, user_id=caller.id, tag_id=tag_id, parent_id=body.parent_id)
    return await tags.tag_detail(session, user_id=caller.id, tag_id=tag.id)


@router.post("/tags/{tag_id}/split", status_code=201)
async def split(session: Session, caller: Writer, tag_id: Id, body: TagSplit) -> SplitOut:
    """A/B split: the root tag's explicit members shuffled into `group_count` new child groups."""
    request = SplitRequest(
        group_count=body.group_count,
        ratios=tuple(body.ratios) if body.ratios else None,
        group_names=tuple(body.group_names) if body.group_names else None,
        seed=body.seed,
        regroup=body.regroup,
    )
    return await split_tag(session, user_id=caller.id, tag_id=tag_id, request=request)


@router.get("/tags/{tag_id}/contacts")
async def list_tag_members(
    session: Session,
    caller: CurrentCaller,
    tag_id: Id,
    page: Paging,
    explicit_only: bool = False,
    user_id: OwnerId = None,
) -> CountedPageOut[ContactOut]:
    """Members of a tag (for a parent: also its children's members, unless `explicit_only`)."""
    owner = caller.owner_filter(user_id)
    return await tags.tag_members_page(session, user_id=owner, tag_id=tag_id, page=page, explicit_only=explicit_only)


@router.post("/tags/{tag_id}/contacts")
async def add_tag_members(session: Session, caller: Writer, tag_id: Id, body: ContactIds) -> MembersChangedOut:
    added = await tags.add_tag_members(session, user_id=caller.id, tag_id=tag_id, contact_ids=body.contact_ids)
    return MembersChangedOut(added=added)


@router.delete("/tags/{tag_id}/contacts")
async def remove_tag_members(session: Session, caller: Writer, tag_id: Id, body: ContactIds) -> MembersChangedOut:
    removed = await tags.remove_tag_members(session, user_id=caller.id, tag_id=tag_id, contact_ids=body.contact_ids)
    return MembersChangedOut(removed=removed)


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
