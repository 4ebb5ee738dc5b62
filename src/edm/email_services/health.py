"""One service's health view for admins (docs/providers.md#the-health-view): state and reason, usage against the quota,
the next reset, limits, in-flight, recent error rate and latency, last success and error, webhook URLs, status log.

Every query is bounded: the service row and its state row by key, in-flight through the partial index on
allocated SubTasks, the usage row by (service, day), the status log through its service index (newest 20).
`send_attempts` has no index on (service_id, finished_at) and the schema is not ours to change here, so the
recent window is read by primary key from the newest end: at most the deployment's last `SCAN_ROWS` attempts
are looked at (`window_complete` says whether that covered the whole hour); latency percentiles use at most
the service's newest `LATENCY_SAMPLE` attempts of the window.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.dispatch import availability as av
from edm.dispatch import queue
from edm.email_services import service as services
from edm.email_services.schemas import ServiceHealthOut, ServiceStateOut, StatusLogEntryOut
from edm.email_services.webhook_secrets import secret_views
from edm.errors import NotFound
from edm.models.email_services import EmailServiceState, EmailServiceStatusLog
from edm.models.tasks import SendAttempt, SubTask
from edm.providers.base import Outcome
from edm.security.crypto import Vault
from edm.vocabulary.tasks import SendState

WINDOW = dt.timedelta(hours=1)
SCAN_ROWS = 50_000
LATENCY_SAMPLE = 2_000
STATUS_LOG_ROWS = 20
# Outcomes that say something about the service (not about one recipient): they make the error rate.
SERVICE_ERRORS = frozenset(
    {Outcome.TRANSIENT, Outcome.THROTTLED, Outcome.QUOTA_EXHAUSTED, Outcome.AUTH_CONFIG, Outcome.MAYBE_SENT}
)


def percentile(sorted_values: list[int], fraction: float) -> int | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(round(fraction * len(sorted_values), 9)))  # ceil(fraction × n), at least 1
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def runtime_view(s: queue.ServiceSnapshot) -> dict[str, Any]:
    """A service's state right now, from its snapshot: why it cannot take work (if so), usage and health."""
    return {
        "available": s.availability.eligible,
        "state": s.availability.reason or "available",
        "state_until": s.availability.until,
        "used_today": s.used_today,
        "in_flight": s.in_flight,
        "next_reset": s.next_reset,
        "frozen_reason": s.state.frozen_reason,
        "last_error": s.state.last_error,
        "last_success_at": s.state.last_success_at,
        "recent_success_rate": s.state.recent_success_rate,
        "latency_ms_ewma": s.state.latency_ms_ewma,
    }


async def service_states(session: AsyncSession, vault: Vault, *, now: dt.datetime) -> list[ServiceStateOut]:
    """Every service's configuration (no credentials) and its state right now."""
    return [_state_of(s, vault) for s in await queue.snapshot_services(session, now=now)]


async def service_state(session: AsyncSession, vault: Vault, service_id: int, *, now: dt.datetime) -> ServiceStateOut:
    service = await services.get_service(session, service_id)
    snapshot = next(s for s in await queue.snapshot_services(session, now=now) if s.service.id == service.id)
    return _state_of(snapshot, vault)


def _state_of(s: queue.ServiceSnapshot, vault: Vault) -> ServiceStateOut:
    return ServiceStateOut(**services.public_view(s.service, vault).model_dump(), **runtime_view(s))


def snapshot_view(s: queue.ServiceSnapshot) -> dict[str, Any]:
    """The dashboard's line for a service: identity, limits and `runtime_view` (no credentials)."""
    svc = s.service
    return {
        "id": svc.id,
        "name": svc.name,
        "label": svc.label,
        "provider": svc.provider,
        "enabled": svc.is_enabled,
        "daily_quota": svc.daily_quota,
        "quota_left_today": max(svc.daily_quota - s.used_today, 0),
        **runtime_view(s),
    }


def webhook_urls(base_url: str, provider: str, service_id: int) -> list[dict[str, str]]:
    """The URLs to paste into the provider's console."""
    base = base_url.rstrip("/")
    if provider == "smtp":
        return [
            {
                "kind": "dsn",
                "url": f"{base}/webhooks/smtp/{service_id}/dsn",
                "note": "POST raw DSN/ARF reports (message/rfc822) here",
            }
        ]
    urls = [
        {
            "kind": "service",
            "url": f"{base}/webhooks/{provider}/{service_id}",
            "note": "events of this service only (preferred)",
        },
        {
            "kind": "provider",
            "url": f"{base}/webhooks/{provider}",
            "note": "any service of this provider; the verifying secret picks the service",
        },
    ]
    if provider == "engagelab":
        urls.append({"kind": "legacy", "url": f"{base}/webhook/engagelab", "note": "the original system's path"})
    return urls


async def recent_attempts(session: AsyncSession, service_id: int, *, now: dt.datetime) -> dict[str, Any]:
    """Outcome counts and error rate of the service's attempts in the last hour, and latency percentiles of
    its newest `LATENCY_SAMPLE` attempts in that hour."""
    since = now - WINDOW
    floor = await session.scalar(select(SendAttempt.id).order_by(SendAttempt.id.desc()).offset(SCAN_ROWS).limit(1))
    where = [SendAttempt.service_id == service_id, SendAttempt.finished_at >= since]
    complete = True
    if floor is not None:
        where.append(SendAttempt.id > floor)
        oldest_scanned = await session.scalar(select(SendAttempt.finished_at).where(SendAttempt.id == floor))
        complete = oldest_scanned is None or oldest_scanned < since
    counts = await session.execute(
        select(SendAttempt.outcome, func.count()).where(*where).group_by(SendAttempt.outcome)
    )
    by_outcome = {str(outcome): int(count) for outcome, count in counts.all()}
    durations = sorted(
        int(d or 0)
        for d in await session.scalars(
            select(SendAttempt.duration_ms)
            .where(*where, SendAttempt.duration_ms.is_not(None))
            .order_by(SendAttempt.id.desc())
            .limit(LATENCY_SAMPLE)
        )
    )
    attempts = sum(by_outcome.values())
    errors = sum(count for outcome, count in by_outcome.items() if outcome in SERVICE_ERRORS)
    return {
        "window_started_at": since,
        "window_complete": complete,
        "attempts": attempts,
        "by_outcome": dict(sorted(by_outcome.items())),
        "errors": errors,
        "error_rate": round(errors / attempts, 4) if attempts else None,
        "latency_sample": len(durations),
        "latency_ms_p50": percentile(durations, 0.50),
        "latency_ms_p95": percentile(durations, 0.95),
    }


async def service_health(
    session: AsyncSession, vault: Vault, service_id: int, *, now: dt.datetime, admin_timezone: str | None, base_url: str
) -> ServiceHealthOut:
    service = await services.get_service(session, service_id)
    row = await session.scalar(
        select(EmailServiceState)
        .where(EmailServiceState.service_id == service_id)
        .execution_options(populate_existing=True)
    )
    if row is None:
        raise NotFound("service not found")
    state = queue.runtime_of(row)
    in_flight = int(
        await session.scalar(
            select(func.count()).where(SubTask.service_id == service_id, SubTask.send_state == SendState.ALLOCATED)
        )
        or 0
    )
    used = await queue.used_today(session, service, queue.day_of(service, now)) + in_flight
    reset = queue.reset_after(service, now)
    availability = av.availability(
        state, queue.limits_of(service), now=now, used_today=used, in_flight=in_flight, next_reset=reset
    )
    log_rows = await session.scalars(
        select(EmailServiceStatusLog)
        .where(EmailServiceStatusLog.service_id == service_id)
        .order_by(EmailServiceStatusLog.id.desc())
        .limit(STATUS_LOG_ROWS)
    )
    admin_zone = _zone(admin_timezone)
    quota = service.daily_quota  # the effective quota: no warm-up schedule is stored (warm-up is planned)
    credentials = vault.decrypt_json(service.credentials_encrypted) if service.credentials_encrypted else {}
    return ServiceHealthOut.model_validate(
        {
            "id": service.id,
            "name": service.name,
            "label": service.label,
            "provider": service.provider,
            "domain": service.domain,
            "is_enabled": service.is_enabled,
            "state": "available" if availability.eligible else (availability.reason or "unavailable"),
            "available": availability.eligible,
            "probe": availability.probe,
            "state_until": availability.until,
            "frozen_reason": state.frozen_reason,
            "consecutive_failures": state.consecutive_failures,
            "used_today": used,
            "effective_quota": quota,
            "remaining_today": max(0, quota - used),
            "next_reset": {
                "utc": reset,
                "service_local": reset.astimezone(_zone(service.timezone)),
                "service_timezone": service.timezone,
                "admin_local": reset.astimezone(admin_zone),
                "admin_timezone": admin_zone.key,
            },
            "sending_interval_seconds": float(service.sending_interval_seconds),
            "max_concurrency": service.max_concurrency,
            "batch_size": service.batch_size,
            "in_flight": in_flight,
            "recent": await recent_attempts(session, service_id, now=now),
            "last_success_at": state.last_success_at,
            "last_failure_at": state.last_failure_at,
            "last_error": state.last_error,
            "webhook_urls": webhook_urls(base_url, service.provider, service.id),
            "webhook_secrets": len(secret_views(credentials, now)),
            "status_log": [StatusLogEntryOut.model_validate(r) for r in log_rows],
        }
    )
