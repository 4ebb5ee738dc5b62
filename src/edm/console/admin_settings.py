"""Settings (`/admin/settings`, admins only): every admin setting with its current value, its default, what it
does and who changed it last, and one form to change them. The same services as `GET` and `PATCH
/api/v1/admin/settings` (docs/operations.md#admin-settings): validated as a whole (a bad value changes nothing and
is shown beside its field, what was typed kept, 422), each changed key audited as `settings.update` with its old
and new value, and picked up by the workers within 30 s."""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edm.api.deps import Session
from edm.console.auth import AdminViewer
from edm.console.errors import field_message
from edm.console.forms import Form
from edm.console.i18n import N_
from edm.console.rendering import catalogue_of, render
from edm.console.routing import new_router
from edm.errors import BadInput
from edm.system.runtime_settings import KEYS, SCOPES, Strategy
from edm.system.service import settings_view, update_settings

router = new_router()

DESCRIPTIONS = {
    "allocation.strategy": N_("How a sending service is chosen: round robin, weighted, or by priority."),
    "autopause.max_bounce_rate": N_("A campaign pauses itself above this bounce rate (0–1)."),
    "autopause.max_failure_rate": N_("A campaign pauses itself above this failure rate (0–1)."),
    "autopause.min_sample": N_("Sends counted before the automatic pause looks at the rates."),
    "bounce.soft_limit": N_("Soft bounces in a row that suppress an address."),
    "capacity.service_unavailable_grace": N_("Seconds a campaign may have no usable service before it pauses."),
    "compliance.footer_html": N_(
        "Your own mail footer instead of the built-in one; must contain {{ unsubscribe_url }}."
    ),
    "compliance.postal_address": N_("The postal address in the footer; required to schedule in production."),
    "credit.low_threshold": N_("Stored, not used yet: the credit below which users are warned."),
    "freeze.base_cooldown": N_("Seconds a frozen service waits first."),
    "freeze.failure_threshold": N_("Failures in a row that freeze a service."),
    "freeze.max_cooldown": N_("The longest wait of a frozen service, in seconds."),
    "org.name": N_("Your organisation's name (the org.name template variable)."),
    "retention.audit_log_days": N_("Days the audit log is kept; 0 keeps it for ever."),
    "retention.events_days": N_(
        "Days events and tracking hits are kept (campaign figures stay); 0 keeps them for ever."
    ),
    "retention.import_errors_days": N_("Days the row errors of a finished import are kept; 0 keeps them for ever."),
    "retention.notifications_days": N_("Days notifications are kept, read or not; 0 keeps them for ever."),
    "retention.raw_payload_days": N_(
        "Days the raw payload of an event is kept (the event stays); 0 keeps it for ever."
    ),
    "retention.send_attempts_days": N_(
        "Days send attempts are kept (campaign figures stay; at least 8); 0 keeps them for ever."
    ),
    "retention.status_log_days": N_("Days the services' status log is kept; 0 keeps it for ever."),
    "retention.test_sends_days": N_("Days test sends are kept; 0 keeps them for ever."),
    "retention.unrouted_days": N_(
        "Days unrouted mail is kept after it was assigned or discarded; 0 keeps it for ever."
    ),
    "retry.base_delay": N_("Seconds before the first retry of a failed send."),
    "retry.max_attempts": N_("Counted failures before a recipient's send fails."),
    "retry.max_delay": N_("The longest wait between retries, in seconds."),
    "sending.paused": N_("Pause all sending (the queue page does the same)."),
    "suppression.complaint_scope": N_(
        "Where a complaint's automatic entry goes: the user's list, the global list, or nowhere."
    ),
    "suppression.hard_bounce_scope": N_(
        "Where a hard bounce's automatic entry goes: the user's list, the global list, or nowhere."
    ),
    "suppression.soft_bounce_scope": N_(
        "Where an entry for too many soft bounces goes: the user's list, the global list, or nowhere."
    ),
    "suppression.unsubscribe_scope": N_(
        "Where an unsubscribe's automatic entry goes: the user's list, the global list, or nowhere."
    ),
    "testsend.daily_limit": N_("Stored, not used yet: test recipients a user may send to per day."),
    "throttle.base_backoff": N_("Seconds a service waits first after a throttling answer."),
    "throttle.max_backoff": N_("The longest wait after throttling answers, in seconds."),
    "tracking.bot_user_agents": N_("More user agents of mail scanners, one a line (added to the built-in list)."),
    "tracking.click_burst_window": N_(
        "Clicks on several links within this many seconds are a machine's; 0 turns it off."
    ),
    "tracking.machine_click_window": N_("A click this many seconds after delivery is a machine's; 0 turns it off."),
    "tracking.machine_open_window": N_("An open this many seconds after delivery is a machine's; 0 turns it off."),
    "tracking.proxy_cidrs": N_("Networks of mail proxies, one a line (e.g. 66.102.0.0/20)."),
    "uncertain.auto_abandon_days": N_("Days after which an uncertain send is marked failed."),
    "uncertain.reconcile_window": N_("Stored, not used yet: seconds to wait before offering to retry uncertain sends."),
}
SCOPE_LABELS = {"user": N_("The user's list"), "global": N_("The global list"), "off": N_("Nowhere (off)")}
STRATEGY_LABELS = {"round_robin": N_("Round robin"), "weighted": N_("Weighted"), "priority": N_("Priority")}
YES_NO = {"true": N_("Yes"), "false": N_("No")}
# The service's English messages (runtime_settings.coerce) as msgids shown beside the field.
MESSAGES = (
    (re.compile(r"must not be negative"), N_("Enter a number of 0 or more.")),
    (re.compile(r"must be a whole number"), N_("Enter a whole number.")),
    (re.compile(r"must be a finite number|is too large"), N_("Enter a smaller number.")),
    (re.compile(r"0 \(keep for ever\) or at least"), N_("Enter 0 (keep for ever) or at least 8 days.")),
    (re.compile(r"must be one of"), N_("Choose one of the options.")),
    (re.compile(r"unsubscribe_url"), N_("The footer must contain {{ unsubscribe_url }}.")),
    (re.compile(r"is not an IP network"), N_("Enter networks such as 66.102.0.0/20, one a line.")),
    (re.compile(r"invalid value|list of strings"), N_("Enter a valid value.")),
)
SAVED = N_("The settings were saved. Workers use them within 30 seconds.")
UNCHANGED = N_("Nothing was changed.")
NOTICES = {"saved": SAVED, "unchanged": UNCHANGED}
WAS = "was:"  # hidden fields: what the form showed, so that only what the admin changed is sent
if set(DESCRIPTIONS) != set(KEYS) or set(SCOPE_LABELS) != set(SCOPES) or set(STRATEGY_LABELS) != set(Strategy):
    raise ImportError("the console's settings differ from edm.system.runtime_settings")


def _kind(key: str) -> str:
    """How the field is drawn: bool, number, list, strategy, scope, html or text."""
    kind = str(KEYS[key].type)
    if kind == "bool":
        return "bool"
    if kind in ("int", "float"):
        return "number"
    if kind.startswith("tuple"):
        return "list"
    if key == "allocation.strategy":
        return "strategy"
    if key.endswith("_scope"):
        return "scope"
    return "html" if key == "compliance.footer_html" else "text"


def _text(value: Any) -> str:
    """A value as the form shows it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "—"
    return _text(value) if value != "" else "—"


async def _page(
    request: Request,
    session: Session,
    *,
    form: Form | None = None,
    was: dict[str, str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    catalogue = catalogue_of(request)
    settings = await settings_view(session)
    shown = {s["key"]: _text(s["value"]) for s in settings}
    if form is None:
        form = Form(dict(shown))
    rows = [
        {
            **s,
            "kind": _kind(s["key"]),
            "description": DESCRIPTIONS[s["key"]],
            "value_text": _shown(s["value"]),
            "default_text": _shown(s["default"]),
            "changed": s["value"] != s["default"],
        }
        for s in settings
    ]
    notice = request.query_params.get("notice", "")
    context = {
        "rows": rows,
        "form": form,
        "was": {**shown, **(was or {})},
        "scopes": SCOPE_LABELS,
        "strategies": STRATEGY_LABELS,
        "yes_no": YES_NO,
        "notice": catalogue.gettext(NOTICES[notice]) if notice in NOTICES else "",
    }
    return render(request, "admin/settings.html", context, status=status)


@router.get("/admin/settings")
async def settings_page(request: Request, session: Session, viewer: AdminViewer) -> Response:
    return await _page(request, session)


def _changes(form: Form, was: dict[str, str]) -> dict[str, Any]:
    """The values the admin changed in the form (`was` holds what the form showed: a field left alone never
    overwrites a change made meanwhile elsewhere, such as the queue page's pause), as the service understands them:
    booleans as booleans, whole numbers as integers, the rest as typed (it coerces text)."""
    changes: dict[str, Any] = {}
    for key in KEYS:
        if key not in form.values or (key in was and _same(form[key], was[key])):
            continue
        text = form[key]
        kind = _kind(key)
        if kind == "bool":
            changes[key] = {"true": True, "false": False}.get(text, text)
        elif kind == "number" and re.fullmatch(r"-?[0-9]+", text):
            changes[key] = int(text)
        else:
            changes[key] = text
    return changes


def _same(typed: str, shown: str) -> bool:
    return typed.replace("\r\n", "\n").strip() == shown.replace("\r\n", "\n").strip()


@router.post("/admin/settings")
async def save_settings(request: Request, session: Session, viewer: AdminViewer) -> Response:
    data = await request.form()
    # Settings keep their spaces and line breaks as typed (the footer's HTML): read the fields unstripped.
    fields = [(k, v) for k, v in data.multi_items() if isinstance(v, str) and k != "csrf_token"]
    form = Form({k: v for k, v in reversed(fields) if not k.startswith(WAS)})
    was = {k.removeprefix(WAS): v for k, v in reversed(fields) if k.startswith(WAS)}
    catalogue = catalogue_of(request)
    changes = _changes(form, was)
    try:
        if not changes:
            return RedirectResponse("/admin/settings?notice=unchanged", status_code=303)
        async with session.begin_nested():  # all or nothing, as PATCH /api/v1/admin/settings
            changed = await update_settings(session, changes, actor=viewer.actor(request))
    except BadInput as exc:
        for detail in exc.details:
            message = str(detail.get("message", ""))
            msgid = next((m for pattern, m in MESSAGES if pattern.search(message)), None)
            text = catalogue.gettext(msgid) if msgid else field_message(catalogue, message)
            form.errors.setdefault(str(detail.get("field")), text)
        form.error = catalogue.gettext(N_("Some fields need your attention."))
        return await _page(request, session, form=form, was=was, status=exc.status)
    return RedirectResponse(f"/admin/settings?notice={'saved' if changed else 'unchanged'}", status_code=303)
