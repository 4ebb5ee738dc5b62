"""HTTP routes for templates, preview, the variable catalogue and senders (docs/templates.md).

Reads (and previews) are open to every role; writes need `Writer`. Admins may add `user_id` to lists.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi import Path as PathParam

from edm.api.deps import CurrentCaller, Paging, Session, Writer
from edm.content import service
from edm.content.schemas import (
    DuplicateRequest,
    PreviewOptions,
    PreviewOut,
    PreviewRequest,
    SenderCreate,
    SenderOut,
    SenderUpdate,
    TemplateCreate,
    TemplateOut,
    TemplateSummaryOut,
    TemplateUpdate,
    VariablesOut,
)
from edm.db.session import end_transaction
from edm.errors import BadInput
from edm.paging import MAX_ID, CountedPageOut

router = APIRouter(prefix="/api/v1", tags=["content"])

Id = Annotated[int, PathParam(ge=1, le=MAX_ID)]
OwnerId = Annotated[int | None, Query(ge=1, le=MAX_ID, description="admins only: another user's data")]


# --------------------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------------------


@router.get("/templates")
async def list_templates(
    session: Session,
    caller: CurrentCaller,
    page: Paging,
    q: Annotated[str | None, Query(max_length=200, description="substring of the name")] = None,
    include_total: bool = False,
    user_id: OwnerId = None,
) -> CountedPageOut[TemplateSummaryOut]:
    """Templates by id, without their sources (GET /templates/{id} has them)."""
    owner = caller.owner_filter(user_id)
    if q is not None and "\x00" in q:
        raise BadInput.field("q", "must not contain NUL characters")
    return await service.template_page(session, user_id=owner, page=page, q=q, include_total=include_total)


@router.post("/templates", status_code=201)
async def create_template(session: Session, caller: Writer, body: TemplateCreate) -> TemplateOut:
    """422 `template_syntax_error` (with the part and line in details) when a part does not compile."""
    template = await service.create_template(session, user_id=caller.id, values=body.model_dump())
    return TemplateOut.model_validate(template)


@router.get("/templates/{template_id}")
async def get_template(session: Session, caller: CurrentCaller, template_id: Id) -> TemplateOut:
    return TemplateOut.model_validate(await service.get_template(session, user_id=caller.id, template_id=template_id))


@router.patch("/templates/{template_id}")
async def update_template(session: Session, caller: Writer, template_id: Id, body: TemplateUpdate) -> TemplateOut:
    changes = body.model_dump(exclude_unset=True)
    template = await service.update_template(session, user_id=caller.id, template_id=template_id, changes=changes)
    return TemplateOut.model_validate(template)


@router.delete("/templates/{template_id}", status_code=204)
async def delete_template(session: Session, caller: Writer, template_id: Id) -> Response:
    """409 `in_use` listing the draft or scheduled tasks that use the template."""
    await service.delete_template(session, user_id=caller.id, template_id=template_id)
    return Response(status_code=204)


@router.post("/templates/{template_id}/duplicate", status_code=201)
async def duplicate_template(
    session: Session, caller: Writer, template_id: Id, body: DuplicateRequest | None = None
) -> TemplateOut:
    name = body.name if body is not None else None
    template = await service.duplicate_template(session, user_id=caller.id, template_id=template_id, name=name)
    return TemplateOut.model_validate(template)


@router.post("/templates/preview")
async def preview_unsaved(session: Session, caller: CurrentCaller, body: PreviewRequest) -> PreviewOut:
    """Render content that is not saved (the editor's live preview)."""
    source = service.PreviewSource(
        subject=body.subject, html=body.html, text=body.text, preheader=body.preheader, inline_css=body.inline_css
    )
    job = await service.prepare_preview(
        session, user_id=caller.id, source=source, contact_id=body.contact_id, sender_id=body.sender_id
    )
    return await _render(session, job)


async def _render(session: Session, job: service.PreviewJob) -> PreviewOut:
    # The reads are done: end the transaction before rendering, which may take its whole time limit and
    # must not hold a connection (nor, on SQLite, the database's write lock) meanwhile.
    await end_transaction(session)
    return await service.render_preview(job)


@router.post("/templates/{template_id}/preview")
async def preview_template(
    session: Session, caller: CurrentCaller, template_id: Id, body: PreviewOptions | None = None
) -> PreviewOut:
    """Render a saved template for one of the caller's contacts (`contact_id`) or for sample data."""
    options = body or PreviewOptions()
    template = await service.get_template(session, user_id=caller.id, template_id=template_id)
    source = service.PreviewSource(
        subject=template.subject,
        html=template.html,
        text=template.text,
        preheader=template.preheader,
        inline_css=template.inline_css,
    )
    job = await service.prepare_preview(
        session, user_id=caller.id, source=source, contact_id=options.contact_id, sender_id=options.sender_id
    )
    return await _render(session, job)


@router.get("/template-variables")
async def template_variables(session: Session, caller: CurrentCaller) -> VariablesOut:
    """The catalogue of docs/templates.md#variables plus the custom attribute keys present in the caller's contacts."""
    return await service.template_variables(session, user_id=caller.id)


# --------------------------------------------------------------------------------------------------------
# Senders
# --------------------------------------------------------------------------------------------------------


@router.get("/senders")
async def list_senders(
    session: Session,
    caller: CurrentCaller,
    page: Paging,
    include_archived: bool = False,
    include_total: bool = False,
    user_id: OwnerId = None,
) -> CountedPageOut[SenderOut]:
    """Senders by id; archived ones only with `include_archived=true`."""
    owner = caller.owner_filter(user_id)
    return await service.sender_page(
        session, user_id=owner, page=page, include_archived=include_archived, include_total=include_total
    )


@router.post("/senders", status_code=201)
async def create_sender(session: Session, caller: Writer, body: SenderCreate) -> SenderOut:
    """409 when the local part is taken anywhere in the deployment (inbound mail must map to one user)."""
    sender = await service.create_sender(session, user_id=caller.id, values=body.model_dump(exclude_unset=True))
    return SenderOut.model_validate(sender)


@router.get("/senders/{sender_id}")
async def get_sender(session: Session, caller: CurrentCaller, sender_id: Id) -> SenderOut:
    return SenderOut.model_validate(await service.get_sender(session, user_id=caller.id, sender_id=sender_id))


@router.patch("/senders/{sender_id}")
async def update_sender(session: Session, caller: Writer, sender_id: Id, body: SenderUpdate) -> SenderOut:
    changes = body.model_dump(exclude_unset=True)
    sender = await service.update_sender(session, user_id=caller.id, sender_id=sender_id, changes=changes)
    return SenderOut.model_validate(sender)


@router.delete("/senders/{sender_id}", status_code=204)
async def delete_sender(session: Session, caller: Writer, sender_id: Id) -> Response:
    """Archives the sender (kept for history, hidden from lists); 409 `in_use` while an unfinished task uses it."""
    await service.delete_sender(session, user_id=caller.id, sender_id=sender_id)
    return Response(status_code=204)
