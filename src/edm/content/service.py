"""Templates, preview, the variable catalogue and senders (docs/templates.md). Services flush, never commit.

Templates are compiled on every save, so a syntax error is a 422 with its line at save time and never a
surprise at send time. Preview runs the same `CompiledTemplate.render` the workers run. Compiling and
rendering run on the render threads (`off_loop`): a template that takes its whole time limit does not hold
up the event loop.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import jinja2
from jinja2 import nodes
from jinja2.meta import find_undeclared_variables
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.addresses import normalize_email
from edm.clock import utc_now
from edm.contacts.attribute_keys import user_keys
from edm.contacts.common import assign, saved
from edm.contacts.fields import check_text
from edm.contacts.memberships import contact_tags
from edm.content.markdown import MAX_MARKDOWN_BYTES, markdown_to_html
from edm.content.render import (
    CONTACT_FIELDS,
    SAMPLE_CONTACT,
    CompiledTemplate,
    RenderedContent,
    RenderError,
    RenderLimitExceeded,
    build_context,
    compile_template,
    off_loop,
    time_limit,
)
from edm.content.schemas import (
    AttributeOut,
    FilterOut,
    PreviewOut,
    SenderOut,
    TemplateSummaryOut,
    VariableOut,
    VariablesOut,
)
from edm.db.dialect import escape_like
from edm.db.owned import get_own
from edm.errors import BadInput, Conflict, InUse
from edm.models.contacts import Contact
from edm.models.content import Sender, Template
from edm.models.email_services import EmailService, UserServiceMapping
from edm.models.tasks import Task, TaskTemplate
from edm.paging import MAX_ID, CountedPageOut, Page, page_of
from edm.system import runtime_settings
from edm.vocabulary.tasks import TaskStatus

MAX_HTML_BYTES = 2 * 1024 * 1024
MAX_TEXT_BYTES = 1024 * 1024
TEMPLATE_FIELDS = frozenset(
    {"name", "description", "subject", "preheader", "html", "text", "inline_css", "markdown", "editor"}
)
# The template editor's modes (docs/templates.md#editor-modes); "markdown" exactly when the Markdown source is kept.
EDITOR_MODES = ("html", "rich", "markdown")
# A template used by a task in these statuses is still read from the template itself (not a snapshot).
TEMPLATE_LOCKING_STATUSES = (TaskStatus.DRAFT, TaskStatus.SCHEDULED)
TERMINAL_TASK_STATUSES = (TaskStatus.COMPLETED, TaskStatus.CANCELLED, TaskStatus.CLOSED)
LOCAL_PART = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
PREVIEW_UNSUBSCRIBE_URL = "https://unsubscribe.invalid/preview"
MAX_ATTRIBUTE_KEYS = 1000

OwnedRow = TypeVar("OwnedRow", Template, Sender)
RowOut = TypeVar("RowOut", TemplateSummaryOut, SenderOut)


# --------------------------------------------------------------------------------------------------------
# What templates and senders share: a page of a user's rows by id, and the row reloaded after a write
# --------------------------------------------------------------------------------------------------------


async def _owned_page(
    session: AsyncSession,
    model: type[OwnedRow],
    conditions: list[Any],
    *,
    page: Page,
    out: type[RowOut],
    include_total: bool,
) -> CountedPageOut[RowOut]:
    """One page by id of the rows matching `conditions` (which name the owner), and their count when asked."""
    after = model.id > min(page.after_id or 0, MAX_ID)
    query = select(model).where(*conditions, after).order_by(model.id).limit(page.limit + 1)
    result = page_of(list(await session.scalars(query)), page)
    total = None
    if include_total:
        total = int(await session.scalar(select(func.count()).select_from(model).where(*conditions)) or 0)
    items = [out.model_validate(row) for row in result["items"]]
    return CountedPageOut(items=items, next_cursor=result["next_cursor"], total=total)


async def _reloaded(session: AsyncSession, row: OwnedRow) -> OwnedRow:
    """The row after a write, with the values the database set loaded now rather than lazily on a later read."""
    await session.refresh(row)
    return row


# --------------------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------------------


def _check_size(field: str, value: str | None, limit: int) -> None:
    if value is not None and len(value.encode("utf-8", "surrogatepass")) > limit:
        raise BadInput.field(field, f"must be at most {limit} bytes")


def clean_template_values(values: Mapping[str, Any], *, partial: bool = False) -> dict[str, Any]:
    """Validate the given fields against docs/templates.md#templates-and-senders (all required ones unless
    `partial`)."""
    unknown = sorted(set(values) - TEMPLATE_FIELDS)
    if unknown:
        raise BadInput.field(unknown[0], "unknown field")
    out: dict[str, Any] = {}
    for field, limit, required in (
        ("name", 200, True),
        ("description", 1000, False),
        ("subject", 998, True),
        ("preheader", 255, False),
    ):
        if field in values or (required and not partial):
            out[field] = check_text(field, values.get(field), limit, required=required)
    out |= _markdown_and_editor(values, partial=partial)
    for field, limit, required in (("html", MAX_HTML_BYTES, True), ("text", MAX_TEXT_BYTES, False)):
        if field in out:
            continue  # the HTML converted from the Markdown source
        if field in values or (required and not partial):
            out[field] = _source(field, values.get(field), limit, required=required)
    if "inline_css" in values:
        if not isinstance(values["inline_css"], bool):
            raise BadInput.field("inline_css", "must be true or false")
        out["inline_css"] = values["inline_css"]
    return out


def _markdown_and_editor(values: Mapping[str, Any], *, partial: bool) -> dict[str, Any]:
    """`markdown` (Markdown source: `html` becomes its conversion, and `editor` "markdown") or `html` (written
    directly: any Markdown source is dropped), and the editor mode. Which mode to keep when only `html` changes on
    an update is left to `update_template`, which knows the stored one."""
    out: dict[str, Any] = {}
    editor = values.get("editor")
    if editor is not None and editor not in EDITOR_MODES:
        raise BadInput.field("editor", "must be html, rich or markdown")
    if values.get("markdown") is not None:
        if values.get("html") is not None:
            raise BadInput.field("markdown", "give either html or markdown, not both")
        if editor not in (None, "markdown"):
            raise BadInput.field("editor", "a template with markdown opens in the markdown editor")
        out["markdown"] = _source("markdown", values["markdown"], MAX_MARKDOWN_BYTES, required=True)
        out["html"] = markdown_to_html(out["markdown"])
        _check_size("html", out["html"], MAX_HTML_BYTES)
        out["editor"] = "markdown"
        return out
    if "markdown" in values or values.get("html") is not None or editor in ("html", "rich"):
        out["markdown"] = None  # the HTML is written directly now: a Markdown source would no longer match it
    if editor == "markdown" and (not partial or "markdown" in out):
        raise BadInput.field("markdown", "the markdown editor needs the markdown source")
    if editor is not None:
        out["editor"] = editor
    elif not partial:
        out["editor"] = "html"
    return out


def _source(field: str, value: Any, limit: int, *, required: bool) -> str | None:
    """Template source is kept as written (no trimming), but must not be blank when required."""
    if value is None:
        if not required:
            return None
        raise BadInput.field(field, "required")
    if not isinstance(value, str):
        raise BadInput.field(field, "must be a string")
    if "\x00" in value:
        raise BadInput.field(field, "must not contain NUL characters")
    _check_size(field, value, limit)
    if not value.strip():
        if required:
            raise BadInput.field(field, "must not be empty")
        return None
    return value


def compile_values(values: Mapping[str, Any], *, inline_css: bool = False) -> CompiledTemplate:
    """Compile subject, html, text and preheader; raises TemplateSyntaxError (422, line in details)."""
    return compile_template(
        subject=values["subject"],
        html=values["html"],
        text=values.get("text"),
        preheader=values.get("preheader"),
        inline_css=inline_css,
    )


async def get_template(session: AsyncSession, *, user_id: int, template_id: int) -> Template:
    return await get_own(session, Template, user_id=user_id, object_id=template_id, what="template")


async def create_template(session: AsyncSession, *, user_id: int, values: Mapping[str, Any]) -> Template:
    """`values`: name, subject, html or markdown (required), description, preheader, text, inline_css, editor."""
    data = await off_loop(clean_template_values, values)  # a Markdown conversion may take a while
    await off_loop(compile_values, data)
    await _refuse_template_name(session, user_id=user_id, name=data["name"])
    template = Template(user_id=user_id, inline_css=data.pop("inline_css", True), **data)
    if not await saved(session, lambda: session.add(template)):
        raise _name_taken()
    return await _reloaded(session, template)


async def update_template(
    session: AsyncSession, *, user_id: int, template_id: int, changes: Mapping[str, Any]
) -> Template:
    template = await get_template(session, user_id=user_id, template_id=template_id)
    data = await off_loop(clean_template_values, changes, partial=True)
    if "markdown" in data and data["markdown"] is None and "editor" not in data and template.editor == "markdown":
        data["editor"] = "html"  # the HTML was written directly: the Markdown source is gone
    if data.get("editor") == "markdown" and "markdown" not in data and template.markdown is None:
        raise BadInput.field("markdown", "the markdown editor needs the markdown source")
    merged = {f: getattr(template, f) for f in ("subject", "html", "text", "preheader")} | data
    await off_loop(compile_values, merged)
    if "name" in data and data["name"] != template.name:
        await _refuse_template_name(session, user_id=user_id, name=data["name"])
    if not await saved(session, lambda: assign(template, data)):
        raise _name_taken()
    return await _reloaded(session, template)


def _name_taken(existing_id: int | None = None) -> Conflict:
    extra = {"existing_id": existing_id} if existing_id is not None else {}
    return Conflict(
        "a template with this name already exists", details=[{"field": "name", "message": "already exists"}], **extra
    )


async def _refuse_template_name(session: AsyncSession, *, user_id: int, name: str) -> None:
    existing = await session.scalar(select(Template.id).where(Template.user_id == user_id, Template.name == name))
    if existing is not None:
        raise _name_taken(existing)


async def duplicate_template(
    session: AsyncSession, *, user_id: int, template_id: int, name: str | None = None
) -> Template:
    """A copy named `name`, or "<name> (copy)", "<name> (copy 2)", … when none is given."""
    source = await get_template(session, user_id=user_id, template_id=template_id)
    values = {f: getattr(source, f) for f in TEMPLATE_FIELDS - {"name"}}
    if source.markdown is not None:
        del values["html"]  # converted again from the Markdown
    values["name"] = name if name is not None else await _copy_name(session, user_id=user_id, name=source.name)
    return await create_template(session, user_id=user_id, values=values)


async def _copy_name(session: AsyncSession, *, user_id: int, name: str) -> str:
    pattern = f"{escape_like(name[:180])} (copy%"
    taken = set(
        await session.scalars(
            select(Template.name).where(Template.user_id == user_id, Template.name.like(pattern, escape="\\"))
        )
    )
    candidate, n = f"{name[:180]} (copy)", 2
    while candidate in taken:
        candidate, n = f"{name[:180]} (copy {n})", n + 1
    return candidate


async def delete_template(session: AsyncSession, *, user_id: int, template_id: int) -> None:
    """409 in_use (listing the tasks) while a draft or scheduled task uses it; snapshots keep later tasks whole."""
    template = await get_template(session, user_id=user_id, template_id=template_id)
    rows = (
        await session.execute(
            select(Task.id, Task.name, Task.status)
            .join(TaskTemplate, TaskTemplate.task_id == Task.id)
            .where(
                TaskTemplate.template_id == template.id,
                Task.user_id == user_id,
                Task.status.in_(TEMPLATE_LOCKING_STATUSES),
            )
            .distinct()
            .order_by(Task.id)
        )
    ).all()
    if rows:
        raise InUse(
            "the template is used by draft or scheduled tasks",
            details=[{"field": "tasks", "message": f"used by {len(rows)} task(s)"}],
            tasks=[{"id": i, "name": n, "status": s} for i, n, s in rows],
        )
    await session.execute(delete(Template).where(Template.id == template.id, Template.user_id == user_id))


async def template_page(
    session: AsyncSession, *, user_id: int, page: Page, q: str | None = None, include_total: bool = False
) -> CountedPageOut[TemplateSummaryOut]:
    """Templates by id, without their sources; `q` is a case-insensitive substring of the name."""
    conditions = _template_conditions(user_id, q)
    return await _owned_page(
        session, Template, conditions, page=page, out=TemplateSummaryOut, include_total=include_total
    )


def _template_conditions(user_id: int, q: str | None) -> list[Any]:
    conditions: list[Any] = [Template.user_id == user_id]
    if q and q.strip():
        conditions.append(Template.name.ilike(f"%{escape_like(q.strip())}%", escape="\\"))
    return conditions


# --------------------------------------------------------------------------------------------------------
# Variables and preview
# --------------------------------------------------------------------------------------------------------

VARIABLES: tuple[tuple[str, str], ...] = (
    *((f"contact.{f}", f"the contact's {f.replace('_', ' ')}") for f in CONTACT_FIELDS),
    ("contact.attributes.<key>", "a custom attribute of the contact"),
    ("contact.tags", "tag names of the contact (explicit and implied parents)"),
    ("name", "alias of contact.name"),
    ("email", "alias of contact.email"),
    ("sender.display_name", "From display name at send time"),
    ("sender.email", "From address at send time"),
    ("task.name", "the task's name"),
    ("task.scheduled_at", "when the task is scheduled"),
    ("org.name", "organization name (settings)"),
    ("org.postal_address", "organization postal address (settings)"),
    ("unsubscribe_url", "the recipient's unsubscribe link"),
    ("view_in_browser_url", "web view of the message (only with the optional view page)"),
    ("now", "send time in the task's time zone"),
)
_KNOWN_MEMBERS: dict[str, frozenset[str]] = {
    "contact": frozenset({*CONTACT_FIELDS, "attributes", "tags"}),
    "sender": frozenset({"display_name", "email"}),
    "task": frozenset({"name", "scheduled_at"}),
    "org": frozenset({"name", "postal_address"}),
}
_KNOWN_ROOTS = frozenset({*_KNOWN_MEMBERS, "name", "email", "unsubscribe_url", "view_in_browser_url", "now"})
_PARSER = jinja2.Environment()  # parsing only (the sources were already compiled by the sandbox)
_BUILTINS = frozenset(_PARSER.globals) | {"namespace"}


async def attribute_keys(session: AsyncSession, *, user_id: int) -> list[str]:
    """The custom attribute keys the user's contacts have carried (`contact_attribute_keys`, kept as contacts are
    written: an index range, not a scan of every contact's JSON; it may still name a key no contact has any more)."""
    return await user_keys(session, user_id=user_id, limit=MAX_ATTRIBUTE_KEYS)


# Filters the catalogue points out: how to write a fallback for a value a contact may lack.
FILTERS: tuple[tuple[str, str, str], ...] = (
    (
        "default",
        "{{ contact.first_name | default('there') }}",
        "the fallback when the value is missing, null, empty or only spaces (a variable that is empty for a "
        "contact renders as nothing); default('there', true) also replaces 0, false and empty lists",
    ),
)


async def template_variables(session: AsyncSession, *, user_id: int) -> VariablesOut:
    """The catalogue of docs/templates.md#variables plus the custom attribute keys present in the user's contacts."""
    keys = await attribute_keys(session, user_id=user_id)
    return VariablesOut(
        variables=[VariableOut(name=n, description=d) for n, d in VARIABLES],
        custom_attributes=[AttributeOut(name=f"contact.attributes.{k}", key=k) for k in keys],
        filters=[FilterOut(name=n, example=e, description=d) for n, e, d in FILTERS],
    )


def used_variables(*sources: str | None) -> list[str]:
    """Dotted variable paths the sources read (`contact.first_name`, `unsubscribe_url`), sorted."""
    paths: set[str] = set()
    for source in sources:
        if source:
            paths |= _paths(_PARSER.parse(source))
    return sorted(p for p in paths if not any(other.startswith(p + ".") for other in paths))


def _paths(ast: nodes.Template) -> set[str]:
    free = find_undeclared_variables(ast) - _BUILTINS
    paths = {name for name in free}
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        chain = _chain(node)
        if chain and chain[0] in free:
            paths.add(".".join(chain))
    return paths


def _chain(node: nodes.Node) -> list[str] | None:
    """`contact.attributes["city"]` -> ["contact", "attributes", "city"]; None for computed lookups."""
    if isinstance(node, nodes.Name):
        return [node.name]
    if isinstance(node, nodes.Getattr):
        base = _chain(node.node)
        return base + [node.attr] if base else None
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
        base = _chain(node.node)
        return base + [node.arg.value] if base else None
    return None


def unknown_variables(paths: list[str], attribute_names: set[str]) -> list[str]:
    """Paths that no context provides: they render as empty text."""
    return [p for p in paths if not _known(p.split("."), attribute_names)]


def _known(parts: list[str], attribute_names: set[str]) -> bool:
    root = parts[0]
    if root not in _KNOWN_ROOTS:
        return False
    if len(parts) == 1 or root not in _KNOWN_MEMBERS:
        return True
    if parts[1] not in _KNOWN_MEMBERS[root]:
        return False
    if root == "contact" and parts[1] == "attributes" and len(parts) > 2:
        return parts[2] in attribute_names
    return True


@dataclass(frozen=True)
class PreviewSource:
    subject: str
    html: str
    text: str | None = None
    preheader: str | None = None
    inline_css: bool = True


async def preview(
    session: AsyncSession,
    *,
    user_id: int,
    source: PreviewSource,
    contact_id: int | None = None,
    sender_id: int | None = None,
    unsubscribe_url: str = PREVIEW_UNSUBSCRIBE_URL,
) -> PreviewOut:
    """Render unsaved or saved content for one of the user's contacts, or sample data.

    An entry point that can end its transaction before rendering should call `prepare_preview`, end it,
    then `render_preview`: the render may take its whole time limit and needs no database."""
    job = await prepare_preview(
        session,
        user_id=user_id,
        source=source,
        contact_id=contact_id,
        sender_id=sender_id,
        unsubscribe_url=unsubscribe_url,
    )
    return await render_preview(job)


@dataclass(frozen=True)
class PreviewJob:
    """Everything a preview renders with, read from the database beforehand."""

    values: dict[str, Any]
    inline_css: bool
    context: dict[str, Any]
    sample_data: bool
    footer_html: str
    postal_address: str
    attribute_names: frozenset[str]


async def prepare_preview(
    session: AsyncSession,
    *,
    user_id: int,
    source: PreviewSource,
    contact_id: int | None = None,
    sender_id: int | None = None,
    unsubscribe_url: str = PREVIEW_UNSUBSCRIBE_URL,
) -> PreviewJob:
    """The database reads of a preview: the contact (or sample data), sender, settings, attribute keys."""
    values = clean_template_values(
        {
            "name": "preview",
            "subject": source.subject,
            "html": source.html,
            "text": source.text,
            "preheader": source.preheader,
        }
    )
    contact = await _preview_contact(session, user_id=user_id, contact_id=contact_id)
    org = await runtime_settings.load(session)
    now = utc_now()
    context = build_context(
        contact=contact,
        sender=await _preview_sender(session, user_id=user_id, sender_id=sender_id),
        task={"name": "Preview", "scheduled_at": now},
        org={"name": org.org_name, "postal_address": org.compliance_postal_address},
        unsubscribe_url=unsubscribe_url,
        now=now,
    )
    return PreviewJob(
        values,
        source.inline_css,
        context,
        contact_id is None,
        org.compliance_footer_html,
        org.compliance_postal_address,
        frozenset(await attribute_keys(session, user_id=user_id)),
    )


async def render_preview(job: PreviewJob) -> PreviewOut:
    """Compile and render on a render thread (see `off_loop`); a template that does not render is a 422."""
    rendered = await off_loop(_render_preview, job.values, job.inline_css, job.context, job.footer_html)
    content = rendered.content
    unknown = unknown_variables(rendered.paths, set(job.attribute_names))
    warnings = _warnings(rendered.compiled, job.values, unknown, job.postal_address)
    warnings += empty_variable_warnings(rendered.paths, job.context, sample=job.sample_data, unknown=unknown)
    return PreviewOut(
        subject=content.subject,
        preheader=content.preheader,
        html=content.html,
        text=content.text,
        links=_links(content.html),
        variables=rendered.paths,
        unknown_variables=unknown,
        sample_data=job.sample_data,
        warnings=warnings,
    )


@dataclass(frozen=True)
class _RenderedPreview:
    compiled: CompiledTemplate
    content: RenderedContent
    paths: list[str]


def _render_preview(
    values: Mapping[str, Any], inline_css: bool, context: Mapping[str, Any], footer_html: str
) -> _RenderedPreview:
    """Compile and render under one deadline (on a render thread: see `off_loop`)."""
    with time_limit():
        compiled = compile_values(values, inline_css=inline_css)
        try:
            content = compiled.render(context, footer_html=footer_html)
        except RenderError as exc:
            raise render_failed(exc) from None
    paths = used_variables(values["subject"], values["html"], values.get("text"), values.get("preheader"))
    return _RenderedPreview(compiled, content, paths)


def render_failed(exc: RenderError) -> BadInput:
    """The 422 of a template that does not render; a limit it hit is named in `details[].limit`."""
    field, message = exc.part or "html", f"render error: {exc.message}"
    detail: dict[str, Any] = {"field": field, "message": message}
    if isinstance(exc, RenderLimitExceeded):
        detail["limit"] = exc.limit
    return BadInput(f"{field}: {message}", details=[detail])


def empty_variable_warnings(
    paths: Sequence[str], context: Mapping[str, Any], *, sample: bool, unknown: Sequence[str] = ()
) -> list[str]:
    """One warning per contact variable the template uses that is empty (missing, null or blank) for the
    previewed contact: it renders as nothing unless the template gives a fallback (`| default('…')`).
    Unknown variables have their own warning."""
    whom = "the sample contact" if sample else "this contact"
    empty = [
        p
        for p in paths
        if p not in unknown and _contact_value(p.split(".")) and _is_empty(_lookup(context, p.split(".")))
    ]
    return [f"{path} is empty for {whom}" for path in empty]


def _contact_value(parts: list[str]) -> bool:
    """`name`, `email`, `contact.<field>` and `contact.attributes.<key>`: data that varies per contact."""
    if parts[0] in ("name", "email"):
        return len(parts) == 1
    if parts[0] != "contact" or len(parts) < 2:
        return False
    return len(parts) >= 3 if parts[1] == "attributes" else parts[1] in CONTACT_FIELDS


_MISSING = object()


def _lookup(context: Mapping[str, Any], parts: list[str]) -> Any:
    value: Any = context
    for part in parts:
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _is_empty(value: Any) -> bool:
    return value is _MISSING or value is None or (isinstance(value, str) and not value.strip())


async def _preview_contact(session: AsyncSession, *, user_id: int, contact_id: int | None) -> dict[str, Any]:
    if contact_id is None:
        return dict(SAMPLE_CONTACT)
    contact = None
    if 0 < contact_id <= MAX_ID:
        contact = await session.scalar(select(Contact).where(Contact.id == contact_id, Contact.user_id == user_id))
    if contact is None:
        raise BadInput.field("contact_id", f"not found: {contact_id}")
    data = {f: getattr(contact, f) for f in CONTACT_FIELDS}
    data["attributes"] = dict(contact.custom_attributes or {})
    data["tags"] = [t.name for t in (await contact_tags(session, [contact.id])).get(contact.id, [])]
    return data


async def _preview_sender(session: AsyncSession, *, user_id: int, sender_id: int | None) -> dict[str, Any]:
    """The chosen sender (else the user's first), at the domain of the user's first mapped service."""
    query = select(Sender).where(Sender.user_id == user_id, Sender.archived_at.is_(None)).order_by(Sender.id)
    if sender_id is not None:
        query = select(Sender).where(Sender.user_id == user_id, Sender.id == min(max(sender_id, 0), MAX_ID))
    sender = await session.scalar(query.limit(1))
    if sender is None and sender_id is not None:
        raise BadInput.field("sender_id", f"not found: {sender_id}")
    domain = (
        await session.scalar(
            select(EmailService.domain)
            .join(UserServiceMapping, UserServiceMapping.service_id == EmailService.id)
            .where(
                UserServiceMapping.user_id == user_id,
                UserServiceMapping.is_active.is_(True),
                EmailService.archived_at.is_(None),
            )
            .order_by(UserServiceMapping.id)
            .limit(1)
        )
        or "example.com"
    )
    if sender is None:
        return {"display_name": "Sample Sender", "email": f"news@{domain}"}
    return {"display_name": sender.display_name or "", "email": f"{sender.local_part}@{domain}"}


_HREF = re.compile(r"""<a\b[^>]*?\bhref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.IGNORECASE)


def _links(html: str) -> list[str]:
    found = (m.group(1) or m.group(2) or m.group(3) or "" for m in _HREF.finditer(html))
    return list(dict.fromkeys(link.strip() for link in found if link.strip()))


def _warnings(compiled: CompiledTemplate, values: Mapping[str, Any], unknown: list[str], postal: str) -> list[str]:
    warnings = []
    if not compiled.uses_unsubscribe_url:
        warnings.append("no unsubscribe link: a footer will be appended")
    if not postal.strip():
        warnings.append("no postal address is configured (org.postal_address): the footer will lack it")
    if not values.get("text"):
        warnings.append("no text part: it will be generated from the HTML")
    if unknown:
        warnings.append(f"unknown variables render as empty text: {', '.join(unknown)}")
    return warnings


# --------------------------------------------------------------------------------------------------------
# Senders
# --------------------------------------------------------------------------------------------------------


def check_local_part(value: Any) -> str:
    """1–64 of [A-Za-z0-9._-], no leading, trailing or double dot (docs/templates.md#templates-and-senders)."""
    local = check_text("local_part", value, 64, required=True)
    assert local is not None
    if not LOCAL_PART.fullmatch(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        raise BadInput.field("local_part", "must be 1–64 of A-Z a-z 0-9 . _ - without leading, trailing or double dots")
    return local


def clean_sender_values(values: Mapping[str, Any], *, partial: bool = False) -> dict[str, Any]:
    unknown = sorted(set(values) - {"local_part", "display_name", "reply_to"})
    if unknown:
        raise BadInput.field(unknown[0], "unknown field")
    out: dict[str, Any] = {}
    if "local_part" in values or not partial:
        out["local_part"] = check_local_part(values.get("local_part"))
        out["local_part_lower"] = out["local_part"].lower()
    if "display_name" in values:
        out["display_name"] = check_text("display_name", values["display_name"], 200)
    if "reply_to" in values:
        reply_to = check_text("reply_to", values["reply_to"], 320)
        out["reply_to"] = normalize_email(reply_to, field="reply_to").original if reply_to else None
    return out


async def get_sender(session: AsyncSession, *, user_id: int, sender_id: int) -> Sender:
    """Archived senders are still found here (tasks show them); lists hide them."""
    return await get_own(session, Sender, user_id=user_id, object_id=sender_id, what="sender")


async def create_sender(session: AsyncSession, *, user_id: int, values: Mapping[str, Any]) -> Sender:
    """`values`: local_part (required), display_name, reply_to. The local part is unique deployment-wide,
    case-insensitively; re-creating one of the user's own archived senders brings it back."""
    data = clean_sender_values(values)
    existing = await session.scalar(select(Sender).where(Sender.local_part_lower == data["local_part_lower"]))
    if existing is not None and existing.user_id == user_id and existing.archived_at is not None:
        assign(existing, {"display_name": None, "reply_to": None, **data, "archived_at": None})
        await session.flush()
        return await _reloaded(session, existing)
    if existing is not None:
        raise _local_part_taken()
    sender = Sender(user_id=user_id, **data)
    if not await saved(session, lambda: session.add(sender)):
        raise _local_part_taken()
    return await _reloaded(session, sender)


def _local_part_taken() -> Conflict:
    return Conflict(
        "this sender local part is already in use", details=[{"field": "local_part", "message": "already in use"}]
    )


async def update_sender(session: AsyncSession, *, user_id: int, sender_id: int, changes: Mapping[str, Any]) -> Sender:
    """Change display name or reply-to; a new local part also needs no unfinished task to be using it."""
    sender = await get_sender(session, user_id=user_id, sender_id=sender_id)
    if sender.archived_at is not None:
        raise Conflict("the sender is archived", details=[{"field": "id", "message": "archived"}])
    data = clean_sender_values(changes, partial=True)
    if "local_part" in data and data["local_part"] != sender.local_part:
        await _refuse_if_used(session, sender, "the local part of a sender used by unfinished tasks cannot change")
        taken = await session.scalar(
            select(Sender.id).where(Sender.local_part_lower == data["local_part_lower"], Sender.id != sender.id)
        )
        if taken is not None:
            raise _local_part_taken()
    if not await saved(session, lambda: assign(sender, data)):
        raise _local_part_taken()
    return await _reloaded(session, sender)


async def delete_sender(session: AsyncSession, *, user_id: int, sender_id: int) -> None:
    """409 in_use while a non-terminal task uses it; otherwise it is archived (kept for history)."""
    sender = await get_sender(session, user_id=user_id, sender_id=sender_id)
    if sender.archived_at is not None:
        return
    await _refuse_if_used(session, sender, "the sender is used by unfinished tasks")
    sender.archived_at = utc_now()
    await session.flush()


async def _refuse_if_used(session: AsyncSession, sender: Sender, message: str) -> None:
    rows = (
        await session.execute(
            select(Task.id, Task.name, Task.status)
            .where(
                Task.sender_id == sender.id, Task.user_id == sender.user_id, Task.status.not_in(TERMINAL_TASK_STATUSES)
            )
            .order_by(Task.id)
        )
    ).all()
    if rows:
        raise InUse(
            message,
            details=[{"field": "tasks", "message": f"used by {len(rows)} task(s)"}],
            tasks=[{"id": i, "name": n, "status": s} for i, n, s in rows],
        )


async def sender_page(
    session: AsyncSession, *, user_id: int, page: Page, include_archived: bool = False, include_total: bool = False
) -> CountedPageOut[SenderOut]:
    """Senders by id; archived ones only when asked."""
    conditions = _sender_conditions(user_id, include_archived)
    return await _owned_page(session, Sender, conditions, page=page, out=SenderOut, include_total=include_total)


def _sender_conditions(user_id: int, include_archived: bool) -> list[Any]:
    conditions: list[Any] = [Sender.user_id == user_id]
    if not include_archived:
        conditions.append(Sender.archived_at.is_(None))
    return conditions
