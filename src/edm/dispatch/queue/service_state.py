"""A service's runtime state after an outcome batch: health samples, cool-downs, freezes and quota
exhaustion (decided by `availability.apply_results`), each change logged, and the admins alerted when a
person must act."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.dispatch import availability as av
from edm.dispatch.queue.claiming import Claim
from edm.dispatch.queue.snapshots import runtime_of
from edm.dispatch.service_day import next_reset
from edm.models.email_services import (
    EmailService,
    EmailServiceState,
    EmailServiceStatusLog,
    FreezeReason,
    StatusChange,
)
from edm.providers.base import SendResult
from edm.system import alerts
from edm.system.runtime_settings import Policy


async def lock_service_state(session: AsyncSession, service_id: int) -> EmailServiceState | None:
    """The service's state row, locked for this transaction (None when the service is gone). An outcome
    transaction takes it first, before any task or SubTask, in the same order as a claim."""
    state_row: EmailServiceState | None = await session.scalar(
        select(EmailServiceState)
        .where(EmailServiceState.service_id == service_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return state_row


async def update_service_state(
    session: AsyncSession,
    state_row: EmailServiceState | None,
    claim: Claim,
    results: Sequence[SendResult],
    now: dt.datetime,
    policy: Policy,
) -> list[str]:
    """Apply the batch's results to the claim's service (its row locked by `lock_service_state`); returns the
    kinds of change logged."""
    if state_row is None:
        return []
    change = av.apply_results(
        runtime_of(state_row),
        list(results),
        now=now,
        probe=claim.probe,
        policy=policy,
        next_reset=next_reset(now, timezone=claim.timezone, reset_time=claim.quota_reset_time),
    )
    for name in av.RuntimeState.__dataclass_fields__:
        setattr(state_row, name, getattr(change.state, name))
    for kind, old, new, reason in change.log:
        session.add(
            EmailServiceStatusLog(
                service_id=claim.service_id, change=kind, old_value=old, new_value=new, reason=reason, at=now
            )
        )
        await _alert_if_needed(session, claim.service_id, kind, new, reason)
    await session.flush()
    return [entry[0] for entry in change.log]


async def _alert_if_needed(
    session: AsyncSession, service_id: int, kind: str, new: str | None, reason: str | None
) -> None:
    """A person must act when credentials/configuration are refused or the provider quota is gone."""
    if not (kind == StatusChange.FROZEN and new == FreezeReason.AUTH_CONFIG) and kind != StatusChange.EXHAUSTED:
        return
    service = await session.get(EmailService, service_id)
    if service is None:
        return
    if kind == StatusChange.FROZEN and new == FreezeReason.AUTH_CONFIG:
        title = f"Service {service.name} frozen: the provider refused its credentials or configuration"
    elif kind == StatusChange.EXHAUSTED:
        title = f"Service {service.name} is out of provider quota until {new}"
    else:
        return
    await alerts.alert_admins(
        session, kind=f"service_{kind}", title=title, body=reason, link=f"/api/v1/admin/services/{service.id}"
    )
