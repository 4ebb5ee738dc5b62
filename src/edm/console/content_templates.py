"""Templates (`/templates`): the list, and the editor (`/templates/new`, `/templates/{id}`) with its live preview,
variable catalogue, media picker and test send — the service functions behind `/api/v1/templates`,
`/api/v1/templates/preview`, `/api/v1/template-variables`, `/api/v1/media` and
`/api/v1/templates/{id}/test-send` (docs/console.md#what-it-offers-today).

The preview is rendered by the same preview service as `POST /api/v1/templates/preview`, for sample data or one
of the viewer's contacts: on the editor's GET (so it works without JavaScript and for read-only accounts), and as
the user types (htmx posts the editor's fields to `/templates/preview`, which answers the preview pane). The
rendered mail is shown in an `<iframe sandbox="" srcdoc="…">`: no script runs in it and it has an opaque origin.
A srcdoc document inherits the page's content security policy, so the editor's pages allow inline styles (mail
HTML is styled inline) and https images (a mail's images); scripts stay `'self'` only.

The source is edited in one of three modes over the one stored HTML (docs/templates.md#editor-modes): HTML (the
`html` text area, highlighted by the vendored CodeMirror), rich text (the vendored Quill writes its HTML into the
same text area) or Markdown (the `markdown` text area; the server converts it, `edm.content.markdown`). The mode is
the form's `editor` field, stored with the template; without JavaScript the text areas are plain fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edm.api.deps import IdPath, Session
from edm.console.auth import CurrentViewer, Viewer
from edm.console.errors import message_for
from edm.console.forms import Form, read_form
from edm.console.i18n import N_, Catalogue
from edm.console.media_library import thumbnail
from edm.console.rendering import CONTENT_SECURITY_POLICY, catalogue_of, render
from edm.console.routing import new_router
from edm.contacts import service as contacts
from edm.contacts.filters import ContactFilter
from edm.content import media as media_service
from edm.content import service
from edm.content.markdown import MAX_MARKDOWN_BYTES, markdown_to_html
from edm.content.render import off_loop
from edm.content.schemas import PreviewOut, TemplateCreate, TemplateOut, TemplateUpdate, VariablesOut
from edm.db.session import end_transaction
from edm.errors import BadInput, Conflict, EdmError, NotFound
from edm.paging import Page, decode_cursor_or_first
from edm.tasks import proof_sends

router = new_router()

PER_PAGE = 50
PICKER_CONTACTS = 100  # the contact picker lists the first ones; the preview takes any of the viewer's contacts
PICKER_MEDIA = 60
# The editor's pages: a srcdoc frame inherits this policy, and mail HTML carries inline styles and remote images.
EDITOR_POLICY = CONTENT_SECURITY_POLICY.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'").replace(
    "img-src 'self' data:", "img-src 'self' data: https:"
)
NOTICES = {
    "created": N_("The template was created."),
    "saved": N_("The template was saved."),
    "deleted": N_("The template was deleted."),
    "test_queued": N_("The test message is queued; it is sent before any campaign."),
}
# The preview service's English warnings → what a person reads (a pattern's groups fill the placeholders).
WARNINGS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^no unsubscribe link"), N_("No unsubscribe link: a footer with one will be added.")),
    (re.compile(r"^no postal address"), N_("No postal address is configured: the footer will lack it.")),
    (re.compile(r"^no text part"), N_("No text part: it will be made from the HTML.")),
    (
        re.compile(r"^unknown variables render as empty text: (?P<names>.*)$"),
        N_("Unknown variables show as nothing: %(names)s"),
    ),
    (re.compile(r"^(?P<name>\S+) is empty for the sample contact$"), N_("%(name)s is empty for the sample contact.")),
    (re.compile(r"^(?P<name>\S+) is empty for this contact$"), N_("%(name)s is empty for this contact.")),
]
LIMITS = {
    "time": N_("it took too long"),
    "size": N_("its output is too large"),
    "work": N_("it does too much work"),
    "depth": N_("it nests too deeply"),
}
EDITOR_MODES = {
    "html": N_("HTML"),
    "rich": N_("Rich text"),
    "markdown": N_("Markdown"),
}
# Markup rich text (Quill) would drop or rewrite: the editor keeps such a template in HTML mode and asks before a
# switch (the same test as template-editor.js).
RICH_TEXT_LOSSY = re.compile(
    r"<(table|style|div|span|center|font|!--|head|body|html)\b|\sstyle\s*=|\sclass\s*=|\{%|\{#", re.IGNORECASE
)
TEST_SEND_LIMIT = N_("You have used today's %(limit)s test recipients; the limit resets at midnight UTC.")


@dataclass
class Preview:
    """What the preview pane shows: the rendered mail, or why there is none."""

    out: PreviewOut | None = None
    warnings: list[str] = field(default_factory=list)
    error: str = ""  # a syntax error, a render error or a render limit, translated


def _editor_response(request: Request, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    return render(
        request, "content/editor.html", context, status=status, headers={"Content-Security-Policy": EDITOR_POLICY}
    )


# ---- the list -----------------------------------------------------------------------------------------------


@router.get("/templates")
async def templates(
    request: Request,
    session: Session,
    viewer: CurrentViewer,
    q: str | None = None,
    cursor: str | None = None,
    notice: str | None = None,
) -> Response:
    return await _list_page(request, session, viewer, q=q, cursor=cursor, notice=notice)


async def _list_page(
    request: Request,
    session: Session,
    viewer: Viewer,
    *,
    q: str | None = None,
    cursor: str | None = None,
    notice: str | None = None,
    error: str = "",
    status: int = 200,
) -> HTMLResponse:
    query = (q or "").replace("\x00", "").strip()[:200] or None
    after, cursor = decode_cursor_or_first(cursor)
    found = await service.template_page(
        session, user_id=viewer.id, page=Page(PER_PAGE, after), q=query, include_total=cursor is None
    )
    context = {
        "templates": found.items,
        "total": found.total,
        "next_cursor": found.next_cursor,
        "first_page": cursor is None,
        "q": query or "",
        "notice": catalogue_of(request).gettext(NOTICES[notice]) if notice in NOTICES else "",
        "error": error,
    }
    return render(request, "content/list.html", context, status=status)


@router.post("/templates/{template_id}/delete")
async def delete_template(template_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    try:
        await service.delete_template(session, user_id=viewer.id, template_id=template_id)
    except Conflict as exc:  # in_use: a draft or scheduled campaign uses it
        error = message_for(catalogue_of(request), exc)
        return await _list_page(request, session, viewer, status=exc.status, error=error)
    return RedirectResponse("/templates?notice=deleted", status_code=303)


# ---- the editor ---------------------------------------------------------------------------------------------


def _mode(form: Form) -> str:
    return form["editor"] if form["editor"] in EDITOR_MODES else "html"


def _template_values(form: Form) -> dict[str, Any]:
    mode = _mode(form)
    markdown = mode == "markdown"
    return {
        "name": form["name"],
        "subject": form["subject"],
        "preheader": form["preheader"] or None,
        "html": None if markdown else form.get("html"),
        "markdown": form.get("markdown") if markdown else None,
        "editor": mode,
        "text": form.get("text") or None,
        "inline_css": form["inline_css"] == "on",
    }


def _form_of(template: TemplateOut) -> Form:
    mode = template.editor if template.editor in EDITOR_MODES else "html"
    if mode == "rich" and RICH_TEXT_LOSSY.search(template.html):
        mode = "html"  # changed through the API since: rich text would lose some of it
    return Form(
        {
            "name": template.name,
            "subject": template.subject,
            "preheader": template.preheader or "",
            "html": template.html,
            "markdown": template.markdown or "",
            "editor": mode,
            "text": template.text or "",
            "inline_css": "on" if template.inline_css else "",
        }
    )


async def _read_editor_form(request: Request) -> Form:
    """The editor's fields, the sources as typed (not trimmed); in Markdown mode `html` is the conversion."""
    form = await read_form(request)
    for name in ("html", "markdown", "text"):
        form.values[name] = await _raw(request, name)
    if _mode(form) == "markdown":
        form.values["html"] = await _converted(form.get("markdown"))
    return form


async def _converted(source: str) -> str:
    """The HTML of Markdown `source`, on the render threads; nothing when it is too large (saving refuses it)."""
    if len(source.encode("utf-8", "surrogatepass")) > MAX_MARKDOWN_BYTES:
        return ""
    return await off_loop(markdown_to_html, source)


def _contact_id(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() and 0 < int(value) < 2**63 else None


async def _picker(session: Session, viewer: Viewer, *, q: str, selected: int | None) -> list[Any]:
    """The contacts the preview picker offers: the first `PICKER_CONTACTS` matching `q` (the contact list's search:
    part of the address, a name, the company), and the selected one first when it is not among them, so that the
    picker always shows whom the preview is for."""
    filters = ContactFilter(q=q.strip()[:200] or None)
    page = await contacts.contact_page(session, user_id=viewer.id, page=Page(PICKER_CONTACTS, None), filters=filters)
    found: list[Any] = list(page.items)
    if selected is not None and all(c.id != selected for c in found):
        try:
            found = [await contacts.get_contact(session, user_id=viewer.id, contact_id=selected), *found]
        except NotFound:
            pass  # another user's or a deleted contact: the preview falls back to sample data
    return list(found)


@router.get("/templates/contact-options")
async def contact_options(
    request: Request, session: Session, viewer: CurrentViewer, contact_q: str = "", contact_id: str | None = None
) -> Response:
    """The preview picker's options for what was typed in its search field (htmx swaps them into the select)."""
    selected = _contact_id(contact_id)
    picker = await _picker(session, viewer, q=contact_q, selected=selected)
    context = {"contacts": picker, "contact_id": selected, "contact_q": contact_q}
    return render(request, "content/contact_options.html", context)


async def _editor(
    request: Request,
    session: Session,
    viewer: Viewer,
    *,
    template: TemplateOut | None,
    form: Form,
    status: int = 200,
    notice: str | None = None,
    test_form: Form | None = None,
) -> HTMLResponse:
    """The editor page; its preview is rendered last, after the transaction ended (a render may take 2 s)."""
    contact_id = _contact_id(form["contact_id"])
    picker = await _picker(session, viewer, q=form.get("contact_q") or "", selected=contact_id)
    variables = await service.template_variables(session, user_id=viewer.id)
    base_url = str(request.app.state.settings.effective_tracking_url)
    images = await media_service.media_page(
        session, user_id=viewer.id, page=Page(PICKER_MEDIA, None), base_url=base_url
    )
    catalogue = catalogue_of(request)
    preview = await _preview(session, viewer, catalogue, form, contact_id)
    context = {
        "template": template,
        "form": form,
        "test_form": test_form or Form(),
        "contacts": picker,
        "contact_options": [(str(c.id), c.email) for c in picker],
        "contact_q": form.get("contact_q") or "",
        "picker_size": PICKER_CONTACTS,
        "contact_id": contact_id,
        "variables": _catalogue(variables),
        "modes": [(mode, catalogue.gettext(label)) for mode, label in EDITOR_MODES.items()],
        "mode": _mode(form),
        "images": images.items,
        "thumbnail": thumbnail,
        "preview": preview,
        "notice": catalogue.gettext(NOTICES[notice]) if notice in NOTICES else "",
        "test_limit": proof_sends.DAILY_LIMIT,
    }
    return _editor_response(request, context, status)


def _catalogue(variables: VariablesOut) -> list[str]:
    """What the variable buttons insert: the catalogue's names, the contacts' attributes, the filter examples."""
    names = [f"{{{{ {v.name} }}}}" for v in variables.variables if "<" not in v.name]
    names += [f"{{{{ {a.name} }}}}" for a in variables.custom_attributes]
    return names + [f.example for f in variables.filters]


async def _preview(
    session: Session, viewer: Viewer, catalogue: Catalogue, form: Form, contact_id: int | None
) -> Preview:
    if not form.get("html").strip() or not form["subject"]:
        await end_transaction(session)
        return Preview()
    source = service.PreviewSource(
        subject=form["subject"],
        html=form.get("html"),
        text=form.get("text") or None,
        preheader=form["preheader"] or None,
        inline_css=form["inline_css"] == "on",
    )
    try:
        job = await service.prepare_preview(session, user_id=viewer.id, source=source, contact_id=contact_id)
        await end_transaction(session)  # the reads are done: no transaction (nor SQLite's lock) during the render
        out = await service.render_preview(job)
    except BadInput as exc:
        await end_transaction(session)
        return Preview(error=_render_error(catalogue, exc))
    return Preview(out, [_warning(catalogue, w) for w in out.warnings])


def _warning(catalogue: Catalogue, text: str) -> str:
    for pattern, msgid in WARNINGS:
        found = pattern.search(text)
        if found:
            return catalogue.gettext(msgid) % found.groupdict()
    return catalogue.gettext(text)


def _part(catalogue: Catalogue, name: str) -> str:
    parts = {"subject": N_("Subject"), "html": N_("HTML"), "text": N_("Text part"), "preheader": N_("Preheader")}
    return catalogue.gettext(parts.get(name, N_("HTML")))


def _render_error(catalogue: Catalogue, exc: BadInput) -> str:
    """A syntax error (part and line), a render limit, or another render error, in the viewer's language; the
    template engine's own words stay as they are, after the translated sentence."""
    return _detail_message(catalogue, exc, exc.details[0] if exc.details else {})


def _detail_message(catalogue: Catalogue, exc: EdmError, detail: dict[str, Any]) -> str:
    part = _part(catalogue, str(detail.get("field", "html")))
    message = str(detail.get("message", ""))
    if exc.code == "template_syntax_error":
        text = catalogue.gettext(N_("%(part)s, line %(line)s: syntax error."))
        return text % {"part": part, "line": detail.get("line") or "?"} + " " + message
    if "limit" in detail:
        reason = catalogue.gettext(LIMITS.get(str(detail["limit"]), LIMITS["work"]))
        return catalogue.gettext(N_("%(part)s stopped at a render limit: %(reason)s.")) % {
            "part": part,
            "reason": reason,
        }
    if detail.get("field") == "contact_id":
        return catalogue.gettext(N_("This contact does not exist, or it is not yours."))
    if message.startswith("render error: "):
        text = catalogue.gettext(N_("%(part)s could not be rendered:"))
        return text % {"part": part} + " " + message.removeprefix("render error: ")
    return message_for(catalogue, exc)


def _fail(catalogue: Catalogue, form: Form, exc: EdmError) -> None:
    if exc.code == "template_syntax_error":
        for detail in exc.details:
            form.errors.setdefault(str(detail.get("field")), _detail_message(catalogue, exc, detail))
        form.error = message_for(catalogue, exc)
    else:
        form.fail(catalogue, exc)
    if _mode(form) != "markdown":
        return
    if "html" in form.errors:  # the HTML made from the Markdown: its error shows beside the Markdown
        form.errors.setdefault("markdown", form.errors.pop("html"))
    if any(d.get("field") == "markdown" and d.get("message") in ("required", "must not be empty") for d in exc.details):
        form.errors["markdown"] = catalogue.gettext(N_("Write some Markdown first."))


@router.post("/templates/preview")
async def preview_pane(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    """The preview pane for the editor's unsaved fields (htmx swaps it in as the user types)."""
    form = await _read_editor_form(request)
    preview = await _preview(session, viewer, catalogue_of(request), form, _contact_id(form["contact_id"]))
    context = {"preview": preview}
    return render(request, "content/preview.html", context, headers={"Content-Security-Policy": EDITOR_POLICY})


@router.post("/templates/markdown")
async def markdown_html(request: Request, viewer: CurrentViewer) -> Response:
    """The HTML of the form's `markdown` field, as the Markdown mode saves it: what the editor shows when the user
    leaves Markdown mode for HTML or rich text."""
    source = await _raw(request, "markdown")
    if len(source.encode("utf-8", "surrogatepass")) > MAX_MARKDOWN_BYTES:
        return Response(status_code=422)
    return Response(await _converted(source), media_type="text/plain; charset=utf-8")


@router.get("/templates/new")
async def new_template(
    request: Request, session: Session, viewer: CurrentViewer, contact_id: str | None = None
) -> Response:
    form = Form({"inline_css": "on", "contact_id": contact_id or ""})
    return await _editor(request, session, viewer, template=None, form=form)


@router.post("/templates/new")
async def create_template(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    form = await _read_editor_form(request)
    try:
        body = form.parse(TemplateCreate, **_template_values(form))
        created = await service.create_template(session, user_id=viewer.id, values=body.model_dump())
    except (BadInput, Conflict) as exc:
        _fail(catalogue_of(request), form, exc)
        return await _editor(request, session, viewer, template=None, form=form, status=exc.status)
    return RedirectResponse(f"/templates/{created.id}?notice=created{_for(form)}", status_code=303)


def _for(form: Form) -> str:
    """The contact the preview was for, kept across the redirect after a save."""
    contact_id = _contact_id(form["contact_id"])
    return f"&contact_id={contact_id}" if contact_id else ""


async def _raw(request: Request, name: str) -> str:
    """A source field as typed: template code is kept as written, not trimmed."""
    value = (await request.form()).get(name)
    return value if isinstance(value, str) else ""


@router.get("/templates/{template_id}")
async def edit_template(
    template_id: IdPath,
    request: Request,
    session: Session,
    viewer: CurrentViewer,
    contact_id: str | None = None,
    contact_q: str = "",
    notice: str | None = None,
) -> Response:
    template = TemplateOut.model_validate(
        await service.get_template(session, user_id=viewer.id, template_id=template_id)
    )
    form = _form_of(template)
    form.values["contact_id"] = contact_id or ""
    form.values["contact_q"] = contact_q
    return await _editor(request, session, viewer, template=template, form=form, notice=notice)


@router.post("/templates/{template_id}")
async def save_template(template_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    template = TemplateOut.model_validate(
        await service.get_template(session, user_id=viewer.id, template_id=template_id)
    )
    form = await _read_editor_form(request)
    try:
        body = form.parse(TemplateUpdate, **_template_values(form))
        changes = body.model_dump()
        await service.update_template(session, user_id=viewer.id, template_id=template_id, changes=changes)
    except (BadInput, Conflict) as exc:
        _fail(catalogue_of(request), form, exc)
        return await _editor(request, session, viewer, template=template, form=form, status=exc.status)
    return RedirectResponse(f"/templates/{template_id}?notice=saved{_for(form)}", status_code=303)


@router.post("/templates/{template_id}/test-send")
async def test_send(template_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    """Queue the saved template for 1–5 addresses (the service behind POST /api/v1/templates/{id}/test-send)."""
    template = TemplateOut.model_validate(
        await service.get_template(session, user_id=viewer.id, template_id=template_id)
    )
    test_form = await read_form(request)
    catalogue = catalogue_of(request)
    emails = [e.strip() for e in re.split(r"[,;\s]+", test_form["emails"]) if e.strip()]
    send = proof_sends.TestSendRequest(
        template_id=template_id, emails=emails, contact_id=_contact_id(test_form["test_contact_id"])
    )
    try:
        plan = await proof_sends.plan(session, user_id=viewer.id, request=send)
        await end_transaction(session)
        await proof_sends.check_render(plan)
        await proof_sends.queue(session, user_id=viewer.id, plan=plan, actor=str(viewer.id))
    except proof_sends.TestSendLimitReached as exc:
        test_form.errors["emails"] = catalogue.gettext(TEST_SEND_LIMIT) % {
            "limit": exc.extra.get("limit", proof_sends.DAILY_LIMIT)
        }
        return await _test_failed(request, session, viewer, template, test_form, exc.status)
    except BadInput as exc:
        if any(d.get("field") == "emails" for d in exc.details):
            test_form.errors["emails"] = catalogue.gettext(N_("Enter 1 to 5 valid email addresses."))
        else:
            test_form.error = _render_error(catalogue, exc)
        return await _test_failed(request, session, viewer, template, test_form, exc.status)
    except (Conflict, EdmError) as exc:
        if exc.status >= 500 or exc.status in (403, 404):
            raise
        test_form.error = message_for(catalogue, exc)
        return await _test_failed(request, session, viewer, template, test_form, exc.status)
    return RedirectResponse(f"/templates/{template_id}?notice=test_queued#test-send", status_code=303)


async def _test_failed(
    request: Request, session: Session, viewer: Viewer, template: TemplateOut, test_form: Form, status: int
) -> HTMLResponse:
    form = _form_of(template)
    form.values["contact_id"] = test_form["test_contact_id"]
    return await _editor(request, session, viewer, template=template, form=form, status=status, test_form=test_form)
