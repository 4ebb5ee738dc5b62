"""Tags (`/tags`, `/tags/{id}`): the tree with member counts and a form to create a tag; a tag's page to rename,
recolor, describe, move or delete it, link to its members, and split its members into A/B groups — the service
functions behind `/api/v1/tags*`.

Tags nest one level deep (a root and its children); a child's members count as the parent's too, which the tree
shows as the root's total. Deleting a tag asks first, naming how many contacts lose it.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edm.api.deps import IdPath, Session
from edm.console.auth import CurrentViewer, Viewer
from edm.console.forms import Form, read_form
from edm.console.i18n import N_
from edm.console.rendering import catalogue_of, render
from edm.console.routing import new_router
from edm.contacts import tags
from edm.contacts.schemas import TagCreate, TagNodeOut, TagOut, TagSplit, TagUpdate
from edm.contacts.split import SplitRequest, split_tag
from edm.errors import BadInput, Conflict, EdmError
from edm.paging import LIST_COUNT_CAP as COUNT_CAP
from edm.paging import MAX_ID

router = new_router()


NOTICES = {
    "created": N_("The tag was created."),
    "saved": N_("The tag was saved."),
    "moved": N_("The tag was moved."),
    "deleted": N_("The tag was deleted."),
    "split": N_("The members were split into groups."),
}
# A service's field error (English) → what a person reads beside the field; "already exists" is errors.py's.
FIELD_ERRORS = {
    "name": N_("Use a name without “/”, of at most 64 characters."),
    "color": N_("Enter a colour as #rrggbb, e.g. #3366cc."),
    "parent_id": N_("Choose a top-level tag without child tags of its own: tags nest one level deep."),
    "ratios": N_("Enter one positive share per group, separated by commas, e.g. 50, 50."),
    "group_names": N_("Enter one distinct name per group, separated by commas."),
    "group_count": N_("Choose 2 to 10 groups."),
    "seed": N_("Enter a whole number."),
    "regroup": N_("The tag has split groups already: tick “Replace the groups” to split again."),
    "tag_id": N_("Only a top-level tag can be split."),
}


def _explain(exc: EdmError) -> EdmError:
    """The service's field errors with this page's messages (translated), its known ones left as they are."""
    details = []
    for detail in exc.details:
        name = str(detail.get("field", ""))
        if detail.get("translated") or detail.get("message") == "already exists" or name not in FIELD_ERRORS:
            details.append(detail)
        else:
            details.append({"field": name, "message": FIELD_ERRORS[name], "translated": True})
    exc.details = details
    return exc


def _flat(tree: list[TagNodeOut]) -> list[tuple[TagOut, TagNodeOut | None]]:
    """Every tag with its root (None for a root), in tree order."""
    rows: list[tuple[TagOut, TagNodeOut | None]] = []
    for root in tree:
        rows.append((root, None))
        rows += [(child, root) for child in root.children]
    return rows


def _parent_id(form: Form) -> int | None:
    text = form["parent_id"]
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_ID:
        raise form.invalid("parent_id", N_("Choose one of the options."))
    return int(text)


async def _list_page(
    request: Request, session: Session, viewer: Viewer, *, form: Form | None = None, status: int = 200
) -> HTMLResponse:
    catalogue = catalogue_of(request)
    tree = await tags.tag_tree(session, user_id=viewer.id, count_cap=COUNT_CAP)
    notice = request.query_params.get("notice")
    context = {
        "rows": _flat(tree),
        "count_cap": COUNT_CAP,
        "form": form or Form({"color": ""}),
        "parent_options": [("", catalogue.gettext(N_("None (a top-level tag)")))]
        + [(str(root.id), root.name) for root in tree],
        "notice": catalogue.gettext(NOTICES[notice]) if notice in NOTICES else "",
    }
    return render(request, "tags/list.html", context, status=status)


@router.get("/tags")
async def tags_page(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    return await _list_page(request, session, viewer)


@router.post("/tags")
async def create(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    form = await read_form(request)
    try:
        body = form.parse(
            TagCreate,
            name=form["name"],
            color=form["color"] or None,
            description=form["description"] or None,
            parent_id=_parent_id(form),
        )
        tag = await tags.create_tag(
            session,
            user_id=viewer.id,
            name=body.name,
            color=body.color,
            description=body.description,
            parent_id=body.parent_id,
        )
    except (BadInput, Conflict) as exc:
        form.fail(catalogue_of(request), _explain(exc))
        return await _list_page(request, session, viewer, form=form, status=exc.status)
    return RedirectResponse(f"/tags?notice=created#tag-{tag.id}", status_code=303)


# --------------------------------------------------------------------------------------------------------
# One tag
# --------------------------------------------------------------------------------------------------------


async def _tag_page(
    request: Request,
    session: Session,
    viewer: Viewer,
    tag_id: int,
    *,
    edit: Form | None = None,
    move: Form | None = None,
    split: Form | None = None,
    delete_error: str = "",
    status: int = 200,
) -> HTMLResponse:
    catalogue = catalogue_of(request)
    tag = await tags.tag_detail(session, user_id=viewer.id, tag_id=tag_id)
    tree = await tags.tag_tree(session, user_id=viewer.id, count_cap=COUNT_CAP)
    node = next((root for root in tree if root.id == tag.id), None)
    children = node.children if node is not None else []
    parent = next((root for root in tree if root.id == tag.parent_id), None)
    notice = request.query_params.get("notice")
    members = tag.total_member_count if tag.parent_id is None else tag.member_count
    context = {
        "tag": tag,
        "parent": parent,
        "children": children,
        "count_cap": COUNT_CAP,
        "members": members,
        "edit": edit or Form({"name": tag.name, "color": tag.color, "description": tag.description or ""}),
        "move": move or Form({"parent_id": str(tag.parent_id or "")}),
        "split": split or Form({"group_count": "2"}),
        "parent_options": [("", catalogue.gettext(N_("None (a top-level tag)")))]
        + [(str(root.id), root.name) for root in tree if root.id != tag.id],
        "group_options": [(str(n), str(n)) for n in range(2, 11)],
        "delete_error": delete_error,
        "notice": catalogue.gettext(NOTICES[notice]) if notice in NOTICES else "",
    }
    return render(request, "tags/detail.html", context, status=status)


@router.get("/tags/{tag_id}")
async def tag_page(tag_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    return await _tag_page(request, session, viewer, tag_id)


@router.post("/tags/{tag_id}")
async def save(tag_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    form = await read_form(request)
    try:
        body = form.parse(
            TagUpdate, name=form["name"], color=form["color"] or None, description=form["description"] or None
        )
        changes = body.model_dump(exclude_unset=True)
        if changes.get("color") is None:
            changes.pop("color", None)  # an emptied colour keeps the one the tag has
        await tags.update_tag(session, user_id=viewer.id, tag_id=tag_id, changes=changes)
    except (BadInput, Conflict) as exc:
        form.fail(catalogue_of(request), _explain(exc))
        return await _tag_page(request, session, viewer, tag_id, edit=form, status=exc.status)
    return RedirectResponse(f"/tags/{tag_id}?notice=saved", status_code=303)


@router.post("/tags/{tag_id}/move")
async def move(tag_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    form = await read_form(request)
    try:
        await tags.move_tag(session, user_id=viewer.id, tag_id=tag_id, parent_id=_parent_id(form))
    except (BadInput, Conflict) as exc:
        form.fail(catalogue_of(request), _explain(exc))
        return await _tag_page(request, session, viewer, tag_id, move=form, status=exc.status)
    return RedirectResponse(f"/tags/{tag_id}?notice=moved", status_code=303)


@router.post("/tags/{tag_id}/delete")
async def delete(tag_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    try:
        await tags.delete_tag(session, user_id=viewer.id, tag_id=tag_id)
    except Conflict as exc:  # in use: child tags, or a draft or scheduled campaign's recipients
        text = _in_use(exc)
        return await _tag_page(
            request, session, viewer, tag_id, delete_error=catalogue_of(request).gettext(text), status=409
        )
    return RedirectResponse("/tags?notice=deleted", status_code=303)


def _in_use(exc: EdmError) -> str:
    if exc.extra.get("children"):
        return N_("This tag has child tags: move or delete them first.")
    if exc.extra.get("tasks"):
        return N_("A draft or scheduled campaign sends to this tag: change its recipients first.")
    return N_("This is still in use.")


@router.post("/tags/{tag_id}/split")
async def split(tag_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    form = await read_form(request)
    try:
        body = form.parse(
            TagSplit,
            group_count=form["group_count"],
            ratios=_ratios(form),
            group_names=[n.strip() for n in form["group_names"].split(",")] if form["group_names"] else None,
            seed=form["seed"] or None,
            regroup=form["regroup"] == "on",
        )
        request_ = SplitRequest(
            group_count=body.group_count,
            ratios=tuple(body.ratios) if body.ratios else None,
            group_names=tuple(body.group_names) if body.group_names else None,
            seed=body.seed,
            regroup=body.regroup,
        )
        await split_tag(session, user_id=viewer.id, tag_id=tag_id, request=request_)
    except (BadInput, Conflict) as exc:
        form.fail(catalogue_of(request), _explain(exc), rename={"ratios.0": "ratios", "group_names.0": "group_names"})
        return await _tag_page(request, session, viewer, tag_id, split=form, status=exc.status)
    return RedirectResponse(f"/tags/{tag_id}?notice=split#children", status_code=303)


def _ratios(form: Form) -> list[Any] | None:
    """Shares as typed ("60, 40" or "0.6, 0.4") → ratios summing to 1."""
    if not form["ratios"]:
        return None
    try:
        shares = [float(part) for part in form["ratios"].split(",")]
    except ValueError:
        raise form.invalid("ratios", FIELD_ERRORS["ratios"]) from None
    total = sum(shares)
    if total <= 0 or any(s <= 0 for s in shares) or total != total or total == float("inf"):
        raise form.invalid("ratios", FIELD_ERRORS["ratios"])
    return [s / total for s in shares]
