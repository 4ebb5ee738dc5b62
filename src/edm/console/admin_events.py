"""Events (`/admin/events`, admins only): what arrived that EDM could not attribute and the webhook elements it
could not read (unmatched events, `bad_element` with its error), or every event — filtered by source, match status,
match reason and type, paged by cursor —, and one event's page with its details and the payload as received
(escaped, cut past a length with a note). The same queries as `GET /api/v1/admin/events[/{id}]` (docs/events.md).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import Response

from edm.api.deps import IdPath, Session
from edm.console.auth import AdminViewer
from edm.console.forms import Form
from edm.console.i18n import N_
from edm.console.rendering import catalogue_of, render
from edm.console.routing import new_router
from edm.events.queries import EventFilter, events_page, get_event
from edm.events.schemas import EventDetailOut, EventOut
from edm.models.events import MatchReason, MatchStatus
from edm.paging import Page, decode_cursor_or_first, page_of
from edm.vocabulary.events import EventType

router = new_router()

PER_PAGE = 50
RAW_SHOWN = 20_000  # characters of the payload shown on the page; the rest is cut with a note
FIELDS = ("source", "match_status", "match_reason", "event_type")
MATCH_STATUS = {
    "unmatched": N_("Unmatched"),
    "pending": N_("Pending"),
    "matched": N_("Matched"),
    "ignored": N_("Ignored"),
}
MATCH_REASON = {
    "unknown_subtask": N_("No such recipient"),
    "no_id": N_("No id to look up"),
    "ambiguous_provider_id": N_("The provider's id names several recipients"),
    "provider_mismatch": N_("Never sent through this service"),
    "never_sent": N_("Never sent"),
    "bad_element": N_("Could not be read (webhook failure)"),
    "not_a_report": N_("Not a bounce or complaint report"),
    "provider_tracking": N_("The provider's own open or click"),
    "inbound": N_("Inbound reply"),
}
CHOOSE = N_("Choose one of the options.")
SOURCE_FORMAT = N_("Use at most %(max_length)s characters.")
if set(MATCH_STATUS) != set(MatchStatus) or set(MATCH_REASON) != set(MatchReason):
    raise ImportError("the console's match statuses or reasons differ from the events model's")


def _filters(request: Request) -> tuple[Form, EventFilter | None]:
    """The filter form from the URL (unmatched events unless the URL says otherwise) and the query's filter; None
    (and the errors in the form) when one is bad."""
    params = request.query_params
    form = Form({name: params.get(name, "").strip() for name in FIELDS})
    if "match_status" not in params:
        form.values["match_status"] = "unmatched"
    catalogue = catalogue_of(request)
    errors: dict[str, str] = {}
    if form["match_status"] and form["match_status"] not in MATCH_STATUS:
        errors["match_status"] = catalogue.gettext(CHOOSE)
    if form["match_reason"] and form["match_reason"] not in MATCH_REASON:
        errors["match_reason"] = catalogue.gettext(CHOOSE)
    if form["event_type"] and form["event_type"] not in set(EventType):
        errors["event_type"] = catalogue.gettext(CHOOSE)
    if len(form["source"]) > 16 or "\x00" in form["source"]:
        errors["source"] = catalogue.gettext(SOURCE_FORMAT) % {"max_length": 16}
    if errors:
        form.errors = errors
        form.error = catalogue.gettext(N_("Some fields need your attention."))
        return form, None
    return form, EventFilter(
        source=form["source"] or None,
        match_status=form["match_status"] or None,
        match_reason=form["match_reason"] or None,
        event_type=form["event_type"] or None,
    )


@router.get("/admin/events")
async def event_list(request: Request, session: Session, viewer: AdminViewer) -> Response:
    form, filters = _filters(request)
    cursor = request.query_params.get("cursor")
    after, cursor = decode_cursor_or_first(cursor)
    kept = {name: form[name] for name in FIELDS if form[name] or name == "match_status"}
    events: list[EventOut] = []
    next_cursor = None
    if filters is not None:
        page = Page(PER_PAGE, after)
        result = page_of(await events_page(session, filters, page), page)
        events = [EventOut.model_validate(e) for e in result["items"]]
        next_cursor = result["next_cursor"]
    context = {
        "form": form,
        "events": events,
        "first_page": cursor is None,
        "query": urlencode(kept),
        "next_cursor": next_cursor,
        "next_query": urlencode({**kept, "cursor": next_cursor or ""}),
        "statuses": MATCH_STATUS,
        "reasons": MATCH_REASON,
        "types": [t.value for t in EventType],
    }
    return render(request, "admin/events.html", context, status=422 if form.errors else 200)


def _shown_payload(raw: Any) -> tuple[str, int]:
    """The payload as indented JSON, cut at RAW_SHOWN characters, and its full length."""
    text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, indent=2, sort_keys=True, default=str)
    return text[:RAW_SHOWN], len(text)


@router.get("/admin/events/{event_id}")
async def event_page(event_id: IdPath, request: Request, session: Session, viewer: AdminViewer) -> Response:
    event = EventDetailOut.model_validate(await get_event(session, event_id))
    payload, length = _shown_payload(event.raw)
    context: dict[str, Any] = {
        "event": event,
        "payload": payload,
        "payload_length": length,
        "payload_cut": length > RAW_SHOWN,
        "shown": RAW_SHOWN,
        "details": json.dumps(event.details, ensure_ascii=False, indent=2, sort_keys=True, default=str)
        if event.details
        else "",
        "statuses": MATCH_STATUS,
        "reasons": MATCH_REASON,
    }
    return render(request, "admin/event.html", context)
