"""Contact imports (`/contacts/import`, `/contacts/imports`, `/contacts/imports/{id}`): upload a CSV or XLSX file,
preview its first 20 rows and map its columns, choose the options, then follow the import live — the service
functions behind `/api/v1/contacts/imports*`.

The preview is posted by htmx (which sends the CSRF header, so the upload is read under the size limit) and
replaces only the preview section: the chosen file stays in its input and the mapping chosen there is posted
with the import. Without JavaScript the preview page asks to choose the file again. The progress page polls
`GET /api/v1/contacts/imports/{id}` every 5 s while the import runs, and reloads itself when it ends.

Register this router before `contacts.router`: `/contacts/import` must not be read as `/contacts/{id}`.
"""

from __future__ import annotations

from typing import Any

from babel.numbers import format_decimal
from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import FormData, UploadFile

from edm.api import uploads
from edm.api.deps import IdPath, Session
from edm.console.auth import CSRF_FIELD, CurrentViewer, Viewer
from edm.console.forms import Form
from edm.console.i18n import N_, Catalogue
from edm.console.rendering import catalogue_of, render
from edm.console.routing import new_router
from edm.contacts import imports, tags
from edm.contacts.importer import Column, ImportOptions, Preview
from edm.contacts.schemas import ImportOut
from edm.errors import BadInput, EdmError
from edm.paging import MAX_ID, Page, decode_cursor_or_first

router = new_router()

PAGE_SIZE = 50
FIELDS = {"file", "mode", "encoding", "delimiter", "sheet", "tag_ids", "ignore_unknown_columns", CSRF_FIELD}
MAX_COLUMNS = 200
MAPPING_FIELDS = {f"{kind}_{i}" for kind in ("map", "header") for i in range(MAX_COLUMNS)}
OPTION_FIELDS = {"encoding", "delimiter", "sheet", "tag_ids", "mode"}

STATUS = {
    "queued": N_("Waiting for a worker"),
    "running": N_("Running"),
    "completed": N_("Completed"),
    "failed": N_("Failed"),
    "cancelled": N_("Cancelled"),
}
FINISHED = ("completed", "failed", "cancelled")
MODES = {
    "skip_existing": N_("Skip addresses that exist already"),
    "update_existing": N_("Update contacts that exist already"),
}
DELIMITERS = {"": N_("Detect"), ",": N_("Comma (,)"), ";": N_("Semicolon (;)"), "tab": N_("Tab")}
# Mapping targets: the contact fields an import writes (contacts.importer.FIELDS), in the order people think.
TARGETS = {
    "email": N_("Email"),
    "first_name": N_("First name"),
    "last_name": N_("Last name"),
    "name": N_("Full name"),
    "username": N_("Username"),
    "phone": N_("Phone"),
    "company": N_("Company"),
    "position": N_("Position"),
    "tiktok_unique_id": N_("TikTok ID"),
    "instagram_id": N_("Instagram ID"),
    "youtube_id": N_("YouTube ID"),
    "source": N_("Source"),
    "status": N_("Status"),
    "timezone": N_("Time zone"),
    "tags": N_("Tags (names separated by commas)"),
}
FIELD_ERRORS = {
    "file": N_("Choose a CSV or XLSX file with a header row and an email column."),
    "mapping": N_("Map one column to Email, and each field to one column only."),
}


def _size(catalogue: Catalogue, limit: int) -> str:
    return format_decimal(round(limit / (1024 * 1024), 1), locale=catalogue.locale) + " MB"


def _too_large(catalogue: Catalogue, limit: int) -> str:
    return catalogue.gettext(N_("The file is larger than %(size)s.")) % {"size": _size(catalogue, limit)}


async def _upload_form(request: Request, limit: int) -> FormData:
    """The multipart form. Posted by htmx (the CSRF header sent), it is read under the size limit (413 at
    once); a plain form post was read by the CSRF check already, and its file is measured here."""
    if request.headers.get("x-csrf-token"):
        return await uploads.read_form(request, limit=limit, fields=FIELDS | MAPPING_FIELDS)
    form = await request.form()
    upload = form.get("file")
    if isinstance(upload, UploadFile) and upload.size is not None and upload.size > limit:
        raise HTTPException(413)
    return form


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _kept(form: FormData) -> Form:
    """What was chosen, to show again (never the file: a browser cannot be given one back)."""
    values = {name: _text(form, name) for name in ("mode", "encoding", "delimiter", "sheet", "ignore_unknown_columns")}
    return Form(values)


def _options(form: FormData, kept: Form, *, mapping: dict[str, str | None]) -> ImportOptions:
    tag_ids = []
    for value in form.getlist("tag_ids"):
        if not isinstance(value, str) or not value.isdigit() or not 1 <= int(value) <= MAX_ID:
            raise kept.invalid("tag_ids", N_("Choose one of the options."))
        tag_ids.append(int(value))
    delimiter = kept["delimiter"]
    if delimiter not in DELIMITERS:
        raise kept.invalid("delimiter", N_("Choose one of the options."))
    mode = kept["mode"] or "skip_existing"
    if mode not in MODES:
        raise kept.invalid("mode", N_("Choose one of the options."))
    return ImportOptions(
        mode=mode,
        encoding=kept["encoding"] or None,
        delimiter="\t" if delimiter == "tab" else delimiter or None,
        sheet=kept["sheet"] or None,
        mapping=mapping,
        tag_ids=tuple(tag_ids),
        ignore_unknown_columns=kept["ignore_unknown_columns"] == "on",
    )


def _mapping(form: FormData) -> dict[str, str | None]:
    """{header: target} from the preview's selects (`map_<i>`, with the header in `header_<i>`)."""
    mapping: dict[str, str | None] = {}
    for i in range(MAX_COLUMNS):
        header, target = form.get(f"header_{i}"), form.get(f"map_{i}")
        if not isinstance(header, str) or not isinstance(target, str):
            continue
        mapping[header] = target
    return mapping


def _fail(catalogue: Catalogue, kept: Form, exc: EdmError) -> None:
    """An error of the upload beside its field: the console's own, or a service's as the file, the mapping or
    an option."""
    if exc.details and all(d.get("translated") for d in exc.details):
        kept.fail(catalogue, exc)
        return
    fields = {str(d.get("field", "")) for d in exc.details}
    if any(f.startswith("mapping") for f in fields):
        exc = kept.invalid("mapping", FIELD_ERRORS["mapping"])
    elif fields & OPTION_FIELDS:
        exc = kept.invalid(sorted(fields & OPTION_FIELDS)[0], N_("This value is not valid."))
    else:
        exc = kept.invalid("file", FIELD_ERRORS["file"])
    kept.fail(catalogue, exc)


def _target_options(column: Column, catalogue: Catalogue) -> list[tuple[str, str]]:
    options = [(key, catalogue.gettext(label)) for key, label in TARGETS.items()]
    key = column.target if column.kind == "attribute" else None
    if key:
        options.append((f"attributes.{key}", catalogue.gettext(N_("Custom attribute “%(key)s”")) % {"key": key}))
    options.append(("ignore", catalogue.gettext(N_("Leave out"))))
    return options


def _chosen(column: Column) -> str:
    if column.kind == "attribute":
        return f"attributes.{column.target}"
    return column.target


async def _page(
    request: Request,
    session: Session,
    viewer: Viewer,
    *,
    form: Form | None = None,
    preview: Preview | None = None,
    filename: str = "",
    tag_ids: tuple[int, ...] = (),
    reselect: bool = False,
    status: int = 200,
) -> HTMLResponse:
    catalogue = catalogue_of(request)
    limit = int(request.app.state.settings.import_max_bytes)
    tree = await tags.tag_tree(session, user_id=viewer.id, count_cap=1)  # names only
    tag_options = []
    for root in tree:
        tag_options.append((root.id, root.name))
        tag_options += [(child.id, f"{root.name} / {child.name}") for child in root.children]
    columns = []
    if preview is not None:
        for i, column in enumerate(preview.columns[:MAX_COLUMNS]):
            columns.append(
                {
                    "index": i,
                    "header": column.header,
                    "chosen": _chosen(column),
                    "options": _target_options(column, catalogue),
                }
            )
    context = {
        "form": form or Form({"mode": "skip_existing"}),
        "size_limit": _size(catalogue, limit),
        "limit_bytes": limit,
        "mode_options": [(k, catalogue.gettext(v)) for k, v in MODES.items()],
        "delimiter_options": [(k, catalogue.gettext(v)) for k, v in DELIMITERS.items()],
        "tag_options": tag_options,
        "chosen_tags": set(tag_ids),
        "preview": preview,
        "columns": columns,
        "filename": filename,
        "reselect": reselect,
    }
    return render(request, "contacts/import.html", context, status=status)


@router.get("/contacts/import")
async def import_page(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    return await _page(request, session, viewer)


@router.post("/contacts/import/preview")
async def preview(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    catalogue = catalogue_of(request)
    limit = int(request.app.state.settings.import_max_bytes)
    htmx = bool(request.headers.get("hx-request"))  # htmx swaps only a 2xx answer: errors answer 200 to it
    kept = Form()
    try:
        form = await _upload_form(request, limit)
    except HTTPException as exc:
        if exc.status_code != 413:
            raise
        kept.errors["file"] = _too_large(catalogue, limit)
        return await _page(request, session, viewer, form=kept, status=200 if htmx else 413)
    try:
        kept = _kept(form)
        upload = form.get("file")
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise kept.invalid("file", N_("Choose a file."))
        options = _options(form, kept, mapping={})
        result = await imports.preview_import(upload.filename, upload.file, options=options)
    except BadInput as exc:
        _fail(catalogue, kept, exc)
        return await _page(request, session, viewer, form=kept, status=200 if htmx else 422)
    finally:
        await form.close()
    plain = not htmx
    return await _page(
        request,
        session,
        viewer,
        form=kept,
        preview=result,
        filename=upload.filename,
        tag_ids=options.tag_ids,
        reselect=plain,
    )


@router.post("/contacts/import")
async def start_import(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    catalogue = catalogue_of(request)
    limit = int(request.app.state.settings.import_max_bytes)
    kept = Form()
    try:
        form = await _upload_form(request, limit)
    except HTTPException as exc:
        if exc.status_code != 413:
            raise
        kept.errors["file"] = _too_large(catalogue, limit)
        return await _page(request, session, viewer, form=kept, status=413)
    try:
        kept = _kept(form)
        upload = form.get("file")
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise kept.invalid("file", N_("Choose a file."))
        options = _options(form, kept, mapping=_mapping(form))
        row = await imports.create_import(
            session, user_id=viewer.id, filename=upload.filename, stream=upload.file, options=options, max_bytes=limit
        )
    except BadInput as exc:
        _fail(catalogue, kept, exc)
        return await _page(request, session, viewer, form=kept, status=422)
    except imports.TooLarge:
        kept.errors["file"] = _too_large(catalogue, limit)
        return await _page(request, session, viewer, form=kept, status=413)
    finally:
        await form.close()
    return RedirectResponse(f"/contacts/imports/{row.id}", status_code=303)


# --------------------------------------------------------------------------------------------------------
# The imports and one import's progress
# --------------------------------------------------------------------------------------------------------


@router.get("/contacts/imports")
async def imports_list(
    request: Request, session: Session, viewer: CurrentViewer, cursor: str | None = None
) -> Response:
    after, cursor = decode_cursor_or_first(cursor)
    result = await imports.import_page(session, user_id=viewer.id, page=Page(PAGE_SIZE, after))
    context = {
        "imports": result.items,
        "next_url": f"/contacts/imports?cursor={result.next_cursor}" if result.next_cursor else "",
        "first_url": "/contacts/imports" if cursor else "",
        "status_labels": STATUS,
    }
    return render(request, "contacts/imports.html", context)


@router.get("/contacts/imports/{import_id}")
async def import_progress(import_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    row = ImportOut.model_validate(await imports.get_import(session, user_id=viewer.id, import_id=import_id))
    tag_names = {t.id: t.name for t in await _flat_tags(session, viewer)}
    context: dict[str, Any] = {
        "item": row,
        "finished": row.status in FINISHED,
        "status_labels": STATUS,
        "mode_labels": MODES,
        "tag_names": [tag_names.get(t, "") for t in row.options.get("tag_ids") or []],
        "notice": catalogue_of(request).gettext(N_("The import was cancelled."))
        if request.query_params.get("notice") == "cancelled"
        else "",
    }
    return render(request, "contacts/import_progress.html", context)


async def _flat_tags(session: Session, viewer: Viewer) -> list[Any]:
    tree = await tags.tag_tree(session, user_id=viewer.id, count_cap=1)  # names only
    return [t for root in tree for t in (root, *root.children)]


@router.post("/contacts/imports/{import_id}/cancel")
async def cancel(import_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    await imports.cancel_import(session, user_id=viewer.id, import_id=import_id)
    return RedirectResponse(f"/contacts/imports/{import_id}?notice=cancelled", status_code=303)
