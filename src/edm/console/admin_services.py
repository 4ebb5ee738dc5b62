"""Sending services (`/admin/services`, admins only): every service with its state, usage against its quota and
next reset (refreshed every 5 s from `GET /api/v1/admin/services`); creating one per provider with only that
provider's fields (`admin_services_fields`); a service's page with its health, the actions (enable, disable,
freeze, unfreeze, clear the back-off, a test send with the classified answer), the edit form (credentials are
write-only), the webhook URLs and secrets (added and removed: rotation with overlap) and the status log.

The same service functions as `/api/v1/admin/services` (src/edm/api/services.py), which write the status log and
the audit rows; anyone but an admin gets a 404 (`AdminViewer`).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edm.api.deps import IdPath, Session
from edm.clock import utc_now
from edm.console import admin_services_fields as fields
from edm.console.auth import AdminViewer, Viewer
from edm.console.charts import time_chart
from edm.console.errors import MESSAGES
from edm.console.forms import Form, read_form
from edm.console.i18n import N_, Catalogue
from edm.console.rendering import catalogue_of, render, zone_of
from edm.console.routing import new_router
from edm.db.session import end_transaction
from edm.email_services import health, history, probe, webhook_secrets
from edm.email_services import service as services
from edm.email_services.schemas import (
    FreezeBody,
    HealthHistoryOut,
    ServiceCreate,
    ServiceFields,
    TestSendBody,
    TestSendOut,
    UsageBody,
    WebhookSecretAddedOut,
    WebhookSecretBody,
)
from edm.errors import BadInput, Conflict, EdmError, InUse, NotFound
from edm.security.crypto import Vault

router = new_router()

NOTICES = {
    "created": N_("The sending service was created."),
    "saved": N_("The sending service was saved."),
    "enable": N_("The service is enabled."),
    "disable": N_("The service is disabled."),
    "freeze": N_("The service is frozen: it takes no work until it is unfrozen."),
    "unfreeze": N_("The service is unfrozen."),
    "clear-backoff": N_("The back-off was cleared."),
    "secret-removed": N_("The webhook secret was removed."),
    "usage": N_("Today's usage was corrected."),
    "archived": N_("The service was archived: it is hidden and its credentials are erased."),
}
ACTIONS = ("enable", "disable", "unfreeze", "clear-backoff")
STATES = {
    "available": N_("Available"),
    "disabled": N_("Disabled"),
    "frozen": N_("Frozen"),
    "throttled": N_("Backing off (throttled)"),
    "exhausted": N_("Backing off (provider quota)"),
    "daily_quota": N_("Daily quota used up"),
    "busy": N_("Busy"),
    "slot": N_("Waiting for its rate slot"),
    "unavailable": N_("Unavailable"),
}
FREEZE_REASONS = {
    "failures": N_("repeated failures"),
    "auth_config": N_("credentials or configuration refused"),
    "manual": N_("frozen by an admin"),
}
CLASSIFICATIONS = {
    "accepted": N_("Accepted"),
    "transient": N_("Temporary failure"),
    "throttled": N_("Throttled"),
    "quota_exhausted": N_("Provider quota used up"),
    "auth_config": N_("Credentials or configuration refused"),
    "permanent": N_("Refused for good"),
    "maybe_sent": N_("May have been sent"),
}
CHANGES = {
    "enabled": N_("Enabled"),
    "disabled": N_("Disabled"),
    "frozen": N_("Frozen"),
    "unfrozen": N_("Unfrozen"),
    "probe_succeeded": N_("Probe succeeded"),
    "probe_failed": N_("Probe failed"),
    "throttled": N_("Throttled"),
    "exhausted": N_("Provider quota used up"),
    "exhaustion_cleared": N_("Provider quota available again"),
    "usage_adjusted": N_("Usage corrected"),
    "config_updated": N_("Configuration changed"),
    "credentials_updated": N_("Credentials changed"),
    "backoff_cleared": N_("Back-off cleared"),
    "test_send": N_("Test send"),
}
WEBHOOK_KINDS = {
    "service": N_("This service's events (preferred)"),
    "provider": N_("Any service of this provider (the secret picks the service)"),
    "dsn": N_("Delivery status reports (DSN/ARF) of this SMTP service"),
    "legacy": N_("The original system's path"),
}
# The common fields of every service, in the form's order: (name, label, kind).
COMMON = (
    ("name", N_("Name"), "text"),
    ("label", N_("Label shown to users"), "text"),
    ("domain", N_("Sending domain"), "text"),
    ("daily_quota", N_("Daily quota"), "int"),
    ("sending_interval_seconds", N_("Seconds between sends"), "number"),
    ("max_concurrency", N_("Sends at once"), "int"),
    ("batch_size", N_("Recipients per call"), "int"),
    ("timezone", N_("Time zone of the quota reset"), "text"),
    ("quota_reset_time", N_("Quota reset time (HH:MM)"), "text"),
    ("weight", N_("Weight"), "int"),
    ("priority", N_("Priority"), "int"),
    ("request_timeout_seconds", N_("Request timeout (seconds)"), "int"),
)
# The services' English field messages (edm.email_services.service) → what a person reads beside the field.
SERVICE_MESSAGES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^must be a hostname"), N_("Enter a host name such as mail.example.com.")),
    (re.compile(r"^must be a number$"), N_("Enter a number.")),
    (re.compile(r"^must be between 0 and 86400$"), N_("Use a number from 0 to 86,400.")),
    (
        re.compile(r"^must be an integer from (?P<low>\d+) to (?P<high>\d+)$"),
        N_("Use a whole number from %(low)s to %(high)s."),
    ),
    (re.compile(r"^unknown time zone"), N_("Choose a time zone such as Europe/Berlin or UTC.")),
    (re.compile(r"^must be HH:MM$"), N_("Enter a time as HH:MM, e.g. 00:00.")),
    (re.compile(r"^is required$"), N_("This field is required.")),
    (re.compile(r"^unknown or unavailable provider"), N_("Choose one of the options.")),
    (re.compile(r"takes at most (?P<most>\d+) recipient"), N_("This provider takes at most %(most)s per call.")),
]
OPTIONS_REFUSED = N_("The provider refuses these settings: %(detail)s")
ARCHIVE_MAPPED = N_("It cannot be archived yet: %(mappings)s users may still send through it. Remove them first.")
ARCHIVE_BUSY = N_("It cannot be archived yet: a worker is sending through it. Try again in a moment.")
CREDENTIAL_REQUIRED = N_("This provider needs it.")


def _vault(request: Request) -> Vault:
    return Vault.from_settings(request.app.state.settings)


def _fake_allowed(request: Request) -> bool:
    return bool(request.app.state.settings.fake_provider_allowed)


def _forget_cached_targets(request: Request, provider: str) -> None:
    """As the API does: this process's webhook pipeline caches each provider's secrets for 5 s."""
    cache = getattr(request.app.state, "webhook_targets", None)
    if isinstance(cache, dict):
        cache.pop(provider, None)


def _translated(exc: EdmError) -> EdmError:
    """The service's field messages replaced by msgids with their parameters (the rest left as they are)."""
    details = []
    for detail in exc.details:
        message = str(detail.get("message", ""))
        if detail.get("field") == "options" and not detail.get("translated"):
            detail = {**detail, "message": OPTIONS_REFUSED, "params": {"detail": message}, "translated": True}
        else:
            for pattern, msgid in SERVICE_MESSAGES:
                found = pattern.search(message)
                if found and not detail.get("translated"):
                    detail = {**detail, "message": msgid, "params": found.groupdict(), "translated": True}
                    break
        details.append(detail)
    exc.details = details
    return exc


def _config_values(form: Form, *, creating: bool) -> dict[str, Any]:
    """The common fields typed (an empty number is left out: the default, or the stored value, stays)."""
    values: dict[str, Any] = {}
    for name, _label, _kind in COMMON:
        text = form[name]
        if text or name in ("name", "domain") or (name == "label" and not creating):
            values[name] = text
    values["backup_only"] = bool(form["backup_only"])
    return values


# ---- the list ------------------------------------------------------------------------------------------------


@router.get("/admin/services")
async def service_list(request: Request, session: Session, viewer: AdminViewer) -> Response:
    rows = await health.service_states(session, _vault(request), now=utc_now())
    notice = request.query_params.get("notice", "")
    catalogue = catalogue_of(request)
    context = {
        "services": rows,
        "states": STATES,
        "freeze_reasons": FREEZE_REASONS,
        "provider_labels": fields.provider_labels(catalogue.gettext),
        "notice": catalogue.gettext(NOTICES[notice]) if notice in NOTICES else "",
    }
    return render(request, "admin/services_list.html", context)


# ---- create --------------------------------------------------------------------------------------------------


def _known_provider(request: Request, provider: str) -> bool:
    return provider in {p.provider for p in fields.providers(fake_allowed=_fake_allowed(request))}


async def _new_page(request: Request, provider: str, form: Form, *, status: int = 200) -> HTMLResponse:
    spec = fields.provider_form(provider) if provider else None
    context = {
        "providers": fields.providers(fake_allowed=_fake_allowed(request)),
        "spec": spec,
        "provider": provider,
        "form": form,
        "common": COMMON,
        "creating": True,
        "credentials_hint": {},
        "provider_labels": fields.provider_labels(catalogue_of(request).gettext),
    }
    return render(request, "admin/services_new.html", context, status=status)


@router.get("/admin/services/new")
async def new_service(request: Request, viewer: AdminViewer, provider: str = "") -> Response:
    if provider and not _known_provider(request, provider):
        provider = ""
    defaults = {"max_concurrency": "2", "batch_size": "1", "daily_quota": "1000", "sending_interval_seconds": "1"}
    form = Form(defaults)
    if provider:
        form.values.update(fields.option_values(fields.provider_form(provider), {}))
    return await _new_page(request, provider, form)


@router.post("/admin/services/new")
async def create_service(request: Request, session: Session, viewer: AdminViewer) -> Response:
    form = await read_form(request)
    provider = form["provider"]
    if not _known_provider(request, provider):
        form.errors["provider"] = catalogue_of(request).gettext(fields.NOT_A_CHOICE)
        return await _new_page(request, "", form, status=422)
    spec = fields.provider_form(provider)
    catalogue = catalogue_of(request)
    try:
        options = fields.read_options(spec, form.values, {})
        credentials = fields.read_credentials(spec, form.values)
        missing = [f for f in spec.credentials if f.required and f.name not in credentials]
        if missing:
            raise form.invalid(f"cred_{missing[0].name}", CREDENTIAL_REQUIRED)
        body = form.parse(
            ServiceCreate,
            **_config_values(form, creating=True),
            provider=provider,
            options=options,
            credentials=credentials or None,
        )
        values, creds = body.split()
        settings = request.app.state.settings
        async with session.begin_nested():
            svc = await services.create_service(
                session,
                _vault(request),
                values=values,
                credentials=creds,
                fake_allowed=settings.fake_provider_allowed,
                actor=viewer.actor(request),
                default_timezone=settings.default_timezone,
            )
    except fields.OptionError as exc:
        form.errors[exc.field] = catalogue.gettext(exc.message)
        form.error = catalogue.gettext(MESSAGES["validation_error"])
        return await _new_page(request, provider, form, status=422)
    except (BadInput, Conflict) as exc:
        form.fail(catalogue, _translated(exc))
        return await _new_page(request, provider, form, status=exc.status)
    return RedirectResponse(f"/admin/services/{svc.id}?notice=created", status_code=303)


# ---- one service ---------------------------------------------------------------------------------------------


async def _service_page(
    request: Request,
    session: Session,
    viewer: Viewer,
    service_id: int,
    *,
    form: Form | None = None,
    freeze_form: Form | None = None,
    test_form: Form | None = None,
    secret_form: Form | None = None,
    usage_form: Form | None = None,
    archive_error: str = "",
    test_result: TestSendOut | None = None,
    new_secret: WebhookSecretAddedOut | None = None,
    status: int = 200,
) -> HTMLResponse:
    vault = _vault(request)
    now = utc_now()
    svc = await services.get_service(session, service_id)
    view = services.public_view(svc, vault)
    spec = fields.provider_form(svc.provider)
    state = await health.service_health(
        session,
        vault,
        service_id,
        now=now,
        admin_timezone=viewer.timezone,
        base_url=request.app.state.settings.public_url,
    )
    secrets = await webhook_secrets.list_webhook_secrets(session, vault, service_id)
    if form is None:
        values = {name: str(getattr(view, name)) for name, _, _ in COMMON}
        values["sending_interval_seconds"] = f"{view.sending_interval_seconds:g}"
        values["backup_only"] = "on" if view.backup_only else ""
        values.update(fields.option_values(spec, view.options))
        form = Form(values)
    catalogue = catalogue_of(request)
    notice = request.query_params.get("notice", "")
    window = request.query_params.get("window", "24h")
    past = await history.health_history(
        session, service_id, window=window if window in history.WINDOWS else "24h", now=now
    )
    context = {
        "svc": view,
        "h": state,
        "history": _history_view(catalogue, past, viewer.timezone),
        "error_classes": history.ERROR_CLASSES,  # labelled by CLASSIFICATIONS
        "spec": spec,
        "form": form,
        "common": COMMON,
        "creating": False,
        "credentials_hint": view.credentials_hint,
        "freeze_form": freeze_form or Form(),
        "test_form": test_form or Form({"to": "", "from_local_part": "test"}),
        "secret_form": secret_form or Form(),
        "usage_form": usage_form or Form(),
        "archive_error": archive_error,
        "test_result": test_result,
        "new_secret": new_secret,
        "secrets": secrets,
        "states": STATES,
        "freeze_reasons": FREEZE_REASONS,
        "classifications": CLASSIFICATIONS,
        "changes": CHANGES,
        "webhook_kinds": WEBHOOK_KINDS,
        "provider_labels": fields.provider_labels(catalogue.gettext),
        "notice": catalogue.gettext(NOTICES[notice]) if notice in NOTICES else "",
    }
    return render(request, "admin/services_detail.html", context, status=status)


def _history_view(catalogue: Catalogue, past: HealthHistoryOut, timezone: str | None) -> dict[str, Any]:
    """The health history's two charts (attempts by answer; average latency) and totals, its times in the viewer's
    zone: hours over a day, days and hours over a week."""
    zone = zone_of(timezone)
    points = [
        {
            "at": p.start.astimezone(zone),
            "accepted": p.accepted,
            "service_errors": sum(n for c, n in p.errors.items() if c != "permanent"),
            "refused": p.errors.get("permanent", 0),
            "latency": p.latency_ms_avg,
        }
        for p in past.points
    ]
    hourly = past.step_hours == 1

    def chart(chart_id: str, title: str, series: list[tuple[str, str]]) -> dict[str, Any]:
        return time_chart(
            catalogue,
            chart_id=chart_id,
            title=title,
            points=points,
            series=series,
            moment=lambda p: p["at"],
            skeleton="Hm" if hourly else "MMMd Hm",
            x_label=N_("Hour") if hourly else N_("From"),
        )

    attempts = chart(
        "chart-attempts",
        N_("Attempts by answer"),
        [
            ("accepted", N_("Accepted")),
            ("service_errors", N_("Errors of the service")),
            ("refused", N_("Refused for good")),
        ],
    )
    latency = chart("chart-latency", N_("Average latency (ms)"), [("latency", N_("Average latency (ms)"))])
    latency["series"][0]["points"] = True  # an hour without attempts has no latency: a gap, so each value is marked
    return {"window": past.window, "totals": past.totals, "attempts": attempts, "latency": latency}


@router.get("/admin/services/{service_id}")
async def service_page(service_id: IdPath, request: Request, session: Session, viewer: AdminViewer) -> Response:
    return await _service_page(request, session, viewer, service_id)


@router.post("/admin/services/{service_id}")
async def save_service(service_id: IdPath, request: Request, session: Session, viewer: AdminViewer) -> Response:
    svc = await services.get_service(session, service_id)
    spec = fields.provider_form(svc.provider)
    form = await read_form(request)
    catalogue = catalogue_of(request)
    try:
        options = fields.read_options(spec, form.values, dict(svc.options or {}))
        credentials = fields.read_credentials(spec, form.values)
        body = form.parse(
            ServiceFields, **_config_values(form, creating=False), options=options, credentials=credentials or None
        )
        values, creds = body.split()
        async with session.begin_nested():
            await services.update_service(
                session,
                _vault(request),
                service_id,
                values=values,
                credentials=creds,
                fake_allowed=_fake_allowed(request),
                actor=viewer.actor(request),
            )
    except fields.OptionError as exc:
        form.errors[exc.field] = catalogue.gettext(exc.message)
        form.error = catalogue.gettext(MESSAGES["validation_error"])
        return await _service_page(request, session, viewer, service_id, form=form, status=422)
    except (BadInput, Conflict) as exc:
        form.fail(catalogue, _translated(exc))
        return await _service_page(request, session, viewer, service_id, form=form, status=exc.status)
    if creds:
        _forget_cached_targets(request, svc.provider)
    return RedirectResponse(f"/admin/services/{service_id}?notice=saved", status_code=303)


@router.post("/admin/services/{service_id}/freeze")
async def freeze_service(service_id: IdPath, request: Request, session: Session, viewer: AdminViewer) -> Response:
    form = await read_form(request)
    try:
        body = form.parse(FreezeBody, reason=form["reason"])
        async with session.begin_nested():
            await services.freeze(session, service_id, reason=body.reason, actor=viewer.actor(request))
    except BadInput as exc:
        form.fail(catalogue_of(request), exc)
        return await _service_page(request, session, viewer, service_id, freeze_form=form, status=exc.status)
    return RedirectResponse(f"/admin/services/{service_id}?notice=freeze", status_code=303)


@router.post("/admin/services/{service_id}/test-send")
async def test_send(service_id: IdPath, request: Request, session: Session, viewer: AdminViewer) -> Response:
    await services.get_service(session, service_id)  # a 404 for a service that does not exist
    form = await read_form(request)
    settings = request.app.state.settings
    try:
        body = form.parse(TestSendBody, to=form["to"], from_local_part=form["from_local_part"] or "test")
        actor = viewer.actor(request)
        await end_transaction(session)  # the send is a network call: no transaction held across it
        result = await probe.test_saved_service(
            request.app.state.sessionmaker,
            _vault(request),
            service_id,
            to=body.to,
            from_local=body.from_local_part,
            fake_allowed=settings.fake_provider_allowed,
            unsubscribe_base=settings.effective_tracking_url,
            actor=actor,
        )
    except BadInput as exc:
        form.fail(catalogue_of(request), exc)
        return await _service_page(request, session, viewer, service_id, test_form=form, status=exc.status)
    return await _service_page(
        request, session, viewer, service_id, test_form=form, test_result=TestSendOut.model_validate(result)
    )


@router.post("/admin/services/{service_id}/webhook-secrets")
async def add_secret(service_id: IdPath, request: Request, session: Session, viewer: AdminViewer) -> Response:
    form = await read_form(request)
    try:
        expires_at = _future_time(form, "expires_at", viewer)
        body = form.parse(WebhookSecretBody, value=form["value"] or None, expires_at=expires_at)
        async with session.begin_nested():
            view, value = await webhook_secrets.add_webhook_secret(
                session,
                _vault(request),
                service_id,
                value=body.value,
                expires_at=body.expires_at,
                actor=viewer.actor(request),
            )
    except BadInput as exc:
        form.fail(catalogue_of(request), exc)
        return await _service_page(request, session, viewer, service_id, secret_form=form, status=exc.status)
    _forget_cached_targets(request, (await services.get_service(session, service_id)).provider)
    added = WebhookSecretAddedOut(**view.model_dump(), value=value)
    return await _service_page(request, session, viewer, service_id, new_secret=added)


@router.post("/admin/services/{service_id}/webhook-secrets/{secret_id}/remove")
async def remove_secret(
    service_id: IdPath, secret_id: str, request: Request, session: Session, viewer: AdminViewer
) -> Response:
    if len(secret_id) > 64:
        raise NotFound("not found")
    await webhook_secrets.remove_webhook_secret(
        session, _vault(request), service_id, secret_id, actor=viewer.actor(request)
    )
    _forget_cached_targets(request, (await services.get_service(session, service_id)).provider)
    return RedirectResponse(f"/admin/services/{service_id}?notice=secret-removed", status_code=303)


def _future_time(form: Form, name: str, viewer: Viewer) -> dt.datetime | None:
    """The optional date and time typed in field `name`, in the viewer's time zone, as UTC; it must be ahead."""
    text = form[name]
    if not text:
        return None
    try:
        local = dt.datetime.fromisoformat(text)
    except ValueError:
        raise form.invalid(name, N_("Enter a valid date and time.")) from None
    if local.tzinfo is not None:
        raise form.invalid(name, N_("Enter a valid date and time."))
    at = local.replace(tzinfo=zone_of(viewer.timezone)).astimezone(dt.UTC)
    if at <= utc_now():
        raise form.invalid(name, N_("Choose a time in the future."))
    return at


@router.post("/admin/services/{service_id}/usage")
async def correct_usage(service_id: IdPath, request: Request, session: Session, viewer: AdminViewer) -> Response:
    """Today's usage set to what the admin counted (the difference is stored as the day's adjustment), with the
    reason, which the status log and the audit log keep."""
    await services.get_service(session, service_id)
    form = await read_form(request)
    try:
        if not form["usage_reason"]:  # the API may leave it out; an admin in the console says why
            raise form.invalid("usage_reason", N_("This field is required."))
        body = form.parse(UsageBody, used_today=form["used_today"], reason=form["usage_reason"])
        async with session.begin_nested():
            await services.set_used_today(
                session, service_id, used=body.used_today, reason=body.reason, actor=viewer.actor(request)
            )
    except BadInput as exc:
        form.fail(catalogue_of(request), exc, rename={"reason": "usage_reason"})
        return await _service_page(request, session, viewer, service_id, usage_form=form, status=exc.status)
    return RedirectResponse(f"/admin/services/{service_id}?notice=usage", status_code=303)


@router.post("/admin/services/{service_id}/archive")
async def archive(service_id: IdPath, request: Request, session: Session, viewer: AdminViewer) -> Response:
    """Archive: disabled, credentials erased, hidden from the lists. Refused beside the button while users are
    mapped to it or SubTasks are allocated to it."""
    try:
        async with session.begin_nested():
            await services.archive_service(session, service_id, actor=viewer.actor(request))
    except InUse as exc:
        mappings = int(exc.extra.get("mappings", 0))
        text = catalogue_of(request).gettext(ARCHIVE_MAPPED if mappings else ARCHIVE_BUSY)
        message = text % {"mappings": mappings} if mappings else text
        return await _service_page(request, session, viewer, service_id, archive_error=message, status=exc.status)
    return RedirectResponse("/admin/services?notice=archived", status_code=303)


# After the fixed sub-paths above: `{action}` would otherwise match them.
@router.post("/admin/services/{service_id}/{action}")
async def service_action(
    service_id: IdPath, action: str, request: Request, session: Session, viewer: AdminViewer
) -> Response:
    if action not in ACTIONS:
        raise NotFound("not found")
    actor = viewer.actor(request)
    if action in ("enable", "disable"):
        await services.set_enabled(session, service_id, enabled=action == "enable", actor=actor)
    elif action == "unfreeze":
        await services.unfreeze(session, service_id, actor=actor)
    else:
        await services.clear_backoff(session, service_id, actor=actor)
    return RedirectResponse(f"/admin/services/{service_id}?notice={action}", status_code=303)
