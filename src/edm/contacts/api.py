"""HTTP routes for contacts, tags, CSV import and the recipient estimate (SPEC §13, §6.2, §16.3).

Thin: parse, call a service, shape the answer. Reads are open to every role; writes need `Writer`
(a write-scoped token of a non-read-only account). Admins may add `user_id` to list endpoints.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi import Body as BodyParam
from fastapi import Path as PathParam
from sqlalchemy.ext.asyncio import AsyncSession

from edm.api import uploads
from edm.api.deps import CurrentCaller, Paging, Session, Writer, page_of
from edm.clock import utc_now
from edm.contacts import service
from edm.contacts.importer import import_csv
from edm.contacts.models import Contact, ContactStatus
from edm.contacts.schemas import (
    MAX_ID,
    ContactCreate,
    ContactIds,
    ContactOut,
    ContactPage,
    ContactUpdate,
    EstimateOut,
    ImportReportOut,
    MembersChanged,
    TagCreate,
    TaggedOut,
    TagIds,
    TagNode,
    TagOut,
    TagPage,
    TagUpdate,
)
from edm.contacts.schemas import (
    Id as BodyId,
)
from edm.csvfmt import DELIMITERS
from edm.errors import BadInput
from edm.tasks.recipients import Rule, estimate, validate_rule

router = APIRouter(prefix="/api/v1", tags=["contacts"])

Id = Annotated[int, PathParam(ge=1, le=MAX_ID)]
OwnerId = Annotated[int | None, Query(ge=1, le=MAX_ID, description="admins only: another user's data")]
IMPORT_MAX_BYTES = 256 * 1024 * 1024  # EDM_IMPORT_MAX_BYTES default (§13.4)
_IMPORT_FIELDS = {"file", "mode", "encoding", "delimiter", "tag_ids"}


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


@router.get("/contacts", response_model=ContactPage)
async def list_contacts(
    session: Session, caller: CurrentCaller, page: Paging,
    q: Annotated[str | None, Query(max_length=200, description="substring of email, names, company, ids")] = None,
    status: Annotated[list[ContactStatus] | None, Query()] = None,
    tag_id: Annotated[list[BodyId] | None, Query(description="any of these tags (repeat the parameter)")] = None,
    untagged: bool = False,
    source: Annotated[str | None, Query(max_length=100)] = None,
    include_total: bool = False,
    user_id: OwnerId = None,
) -> dict[str, Any]:
    """Contacts by id ascending. Tags are "any of" and a parent tag includes its children's members."""
    owner = caller.owner_filter(user_id)
    filters = service.ContactFilter(q=_query_text("q", q), statuses=tuple(status or ()), tag_ids=tuple(tag_id or ()),
                                    untagged=untagged, source=_query_text("source", source))
    result = page_of(await service.list_contacts(session, user_id=owner, page=page, filters=filters), page)
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


@router.get("/contacts/{contact_id}", response_model=ContactOut)
async def get_contact(session: Session, caller: CurrentCaller, contact_id: Id) -> dict[str, Any]:
    contact = await service.get_contact(session, user_id=caller.id, contact_id=contact_id)
    return (await _contacts_out(session, [contact]))[0]


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
# Import
# --------------------------------------------------------------------------------------------------------

_IMPORT_FORM = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary"},
            "mode": {"type": "string", "enum": ["skip_existing", "update_existing"], "default": "skip_existing"},
            "encoding": {"type": "string", "description": "e.g. gb18030; default UTF-8 with or without BOM"},
            "delimiter": {"type": "string", "description": "',', ';' or 'tab'; default: detected"},
            "tag_ids": {"type": "array", "items": {"type": "integer"}, "description": "added to every row"},
        }}}}},
}  # fmt: skip


@router.post("/contacts/imports", status_code=201, response_model=ImportReportOut, openapi_extra=_IMPORT_FORM)
async def import_contacts(request: Request, session: Session, caller: Writer) -> dict[str, Any]:
    """Import a CSV file (multipart: `file` plus options).

    For now the file is processed synchronously inside this request and the answer is 201 with the full
    report (created, updated, skipped and the rejected rows with row number, column and reason). The spec's
    final form (§13.4: 202 with an import id, a background worker, progress, cancel) replaces this once the
    Import model and worker exist; the report shape stays the same.
    """
    limit = int(getattr(request.app.state.settings, "import_max_bytes", IMPORT_MAX_BYTES))
    form, upload = await uploads.csv_form(request, _IMPORT_FIELDS, limit)
    report = await import_csv(
        session, user_id=caller.id, stream=upload.file, mode=_form_text(form, "mode") or "skip_existing",
        encoding=_form_text(form, "encoding"), delimiter=_delimiter(_form_text(form, "delimiter")),
        tag_ids=_form_ids(form.getlist("tag_ids")),
    )
    return report.to_dict()


def _form_text(form: Any, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadInput.field(name, "must be a text field")
    return value.strip() or None


def _delimiter(value: str | None) -> str | None:
    if value is not None and value.lower() in ("tab", "\\t"):
        return "\t"
    if value is not None and value not in DELIMITERS:
        raise BadInput.field("delimiter", "must be ',', ';' or 'tab'")
    return value


def _form_ids(values: list[Any]) -> list[int]:
    """`tag_ids` repeated or comma-separated."""
    ids: list[int] = []
    for value in values:
        for part in str(value).split(","):
            if part.strip():
                if not part.strip().isdigit() or not 0 < int(part) <= MAX_ID:
                    raise BadInput.field("tag_ids", f"not found: {part.strip()[:20]}")
                ids.append(int(part))
    return ids


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
    tag = await service.create_tag(session, user_id=caller.id, name=body.name, color=body.color,
                                   description=body.description, parent_id=body.parent_id)
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


@router.get("/tags/{tag_id}/contacts", response_model=ContactPage)
async def list_tag_members(
    session: Session, caller: CurrentCaller, tag_id: Id, page: Paging, explicit_only: bool = False,
    user_id: OwnerId = None,
) -> dict[str, Any]:
    """Members of a tag (for a parent: also its children's members, unless `explicit_only`)."""
    owner = caller.owner_filter(user_id)
    rows = await service.list_tag_members(session, user_id=owner, tag_id=tag_id, page=page,
                                          explicit_only=explicit_only)
    result = page_of(rows, page)
    result["items"] = await _contacts_out(session, result["items"])
    return result


@router.post("/tags/{tag_id}/contacts", response_model=MembersChanged)
async def add_tag_members(session: Session, caller: Writer, tag_id: Id, body: ContactIds) -> dict[str, Any]:
    added = await service.add_tag_members(session, user_id=caller.id, tag_id=tag_id, contact_ids=body.contact_ids)
    return {"added": added}


@router.delete("/tags/{tag_id}/contacts", response_model=MembersChanged)
async def remove_tag_members(session: Session, caller: Writer, tag_id: Id, body: ContactIds) -> dict[str, Any]:
    removed = await service.remove_tag_members(session, user_id=caller.id, tag_id=tag_id,
                                               contact_ids=body.contact_ids)
    return {"removed": removed}


# --------------------------------------------------------------------------------------------------------
# Recipient estimate
# --------------------------------------------------------------------------------------------------------


@router.post("/recipients/estimate", response_model=EstimateOut, tags=["tasks"])
async def estimate_recipients(
    session: Session, caller: CurrentCaller, body: Annotated[dict[str, Any], BodyParam()]
) -> dict[str, Any]:
    """How many contacts a recipient rule selects, sendable or excluded per reason (the §6.2 function)."""
    _refuse_impossible_ids(body)
    rule = Rule.parse(body)
    await validate_rule(session, user_id=caller.id, rule=rule)
    now = utc_now()
    result = await estimate(session, user_id=caller.id, rule=rule, now=now)
    return {**result, "credit_balance": caller.user.credit_balance, "computed_at": now}


def _refuse_impossible_ids(body: dict[str, Any]) -> None:
    """Ids outside BIGINT cannot exist; PostgreSQL would fail comparing them, so name them "not found" here."""
    for key in ("contact_ids", "include_tag_ids", "exclude_tag_ids"):
        value = body.get(key)
        if isinstance(value, list):
            bad = [v for v in value if isinstance(v, int) and not isinstance(v, bool) and not 0 < v <= MAX_ID]
            if bad:
                field = "recipient_rule.tag_ids" if key != "contact_ids" else "recipient_rule.contact_ids"
                raise BadInput.field(field, f"not found: {', '.join(map(str, bad[:10]))}")
