"""Admin operations on sending services (shared by the API and the CLI). Every change writes a status-log
row; a change made by an admin or the CLI (an `actor`) also writes an audit row, without a secret: a
credential change records only which fields were given. Credentials are encrypted before they touch the
session and never leave it decrypted. Services flush, the entry point commits."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.clock import utc_now
from edm.dispatch import queue
from edm.email_services.schemas import ServiceOut
from edm.errors import BadInput, Conflict, InUse, NotFound
from edm.models.email_services import (
    EmailService,
    EmailServiceState,
    EmailServiceStatusLog,
    FreezeReason,
    StatusChange,
    UserServiceMapping,
)
from edm.models.tasks import SubTask
from edm.models.users import User
from edm.paging import Page
from edm.providers.base import ServiceConfig
from edm.providers.registry import PROVIDERS, build_adapter
from edm.security.crypto import Vault
from edm.system.service import Actor, audit
from edm.vocabulary.tasks import SendState

HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")
RESET = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
CONFIG_FIELDS = (
    "name",
    "label",
    "provider",
    "options",
    "domain",
    "sending_interval_seconds",
    "max_concurrency",
    "batch_size",
    "daily_quota",
    "timezone",
    "quota_reset_time",
    "weight",
    "priority",
    "backup_only",
    "is_enabled",
    "request_timeout_seconds",
)


def validate_config(values: dict[str, Any], *, fake_allowed: bool) -> dict[str, Any]:
    """Checked and normalized configuration values (BadInput names the field that is wrong)."""
    out = dict(values)
    if "provider" in out and (out["provider"] not in PROVIDERS or (out["provider"] == "fake" and not fake_allowed)):
        raise BadInput.field("provider", f"unknown or unavailable provider {out['provider']!r}")
    if "domain" in out:
        out["domain"] = str(out["domain"]).strip().lower()
        if not HOSTNAME.fullmatch(out["domain"]):
            raise BadInput.field("domain", "must be a hostname such as mail.example.com")
    if "sending_interval_seconds" in out:
        out["sending_interval_seconds"] = _interval(out["sending_interval_seconds"])
    _check_range(out, "max_concurrency", 1, 100)
    _check_range(out, "batch_size", 1, 1000)
    _check_range(out, "daily_quota", 1, 10**9)
    _check_range(out, "weight", 1, 1000)
    _check_range(out, "priority", 0, 99)
    _check_range(out, "request_timeout_seconds", 5, 300)
    if "timezone" in out:
        _check_zone(out["timezone"])
    if "quota_reset_time" in out and not RESET.fullmatch(str(out["quota_reset_time"])):
        raise BadInput.field("quota_reset_time", "must be HH:MM")
    for text_field, limit in (("name", 100), ("label", 100)):
        if text_field in out and not 1 <= len(str(out[text_field]).strip()) <= limit:
            raise BadInput.field(text_field, f"must be 1–{limit} characters")
    return out


def _interval(value: Any) -> Decimal:
    try:
        interval = Decimal(str(value)).quantize(Decimal("0.001"))
    except InvalidOperation:
        raise BadInput.field("sending_interval_seconds", "must be a number") from None
    if not Decimal(0) <= interval <= Decimal(86400):
        raise BadInput.field("sending_interval_seconds", "must be between 0 and 86400")
    return interval


def _check_range(values: dict[str, Any], key: str, low: int, high: int) -> None:
    if key in values and not (isinstance(values[key], int) and low <= values[key] <= high):
        raise BadInput.field(key, f"must be an integer from {low} to {high}")


def _check_zone(name: str) -> None:
    try:
        ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        raise BadInput.field("timezone", f"unknown time zone {name!r}") from None


def log_change(
    session: AsyncSession,
    service_id: int,
    change: str,
    *,
    old: Any = None,
    new: Any = None,
    reason: str | None = None,
    actor_user_id: int | None = None,
) -> None:
    session.add(
        EmailServiceStatusLog(
            service_id=service_id,
            change=change,
            old_value=_short(old),
            new_value=_short(new),
            reason=reason,
            actor_user_id=actor_user_id,
            at=utc_now(),
        )
    )


def _short(value: Any) -> str | None:
    return None if value is None else str(value)[:200]


async def audit_service(session: AsyncSession, actor: Actor, action: str, service_id: int, **details: Any) -> None:
    """One audit row about a service (`service.<action>`); `details` never holds a credential or a secret."""
    await audit(session, actor, action, target_type="email_service", target_id=service_id, details=details)


def _config_of(service: EmailService) -> dict[str, Any]:
    """The service's configuration as JSON-ready values (no credentials)."""
    values = {field: getattr(service, field) for field in CONFIG_FIELDS}
    values["sending_interval_seconds"] = float(values["sending_interval_seconds"])
    values["options"] = dict(values["options"] or {})
    return values


def _config_changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """{field: {"old", "new"}} for what moved; for `options`, only the names of the options that changed (their
    values may be anything, a secret included)."""
    changes: dict[str, Any] = {}
    for field, old in before.items():
        new = after[field]
        if old == new:
            continue
        if field == "options":
            changes[field] = {"changed": sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))}
        else:
            changes[field] = {"old": old, "new": new}
    return changes


def _credential_fields(credentials: dict[str, Any] | None) -> list[str]:
    """The names of the credential fields a change set (an empty value keeps the stored one)."""
    return sorted(k for k, v in (credentials or {}).items() if v not in (None, ""))


async def create_service(
    session: AsyncSession,
    vault: Vault,
    *,
    values: dict[str, Any],
    credentials: dict[str, Any] | None,
    fake_allowed: bool,
    actor: Actor | None = None,
    default_timezone: str = "UTC",
) -> EmailService:
    """A new service. `actor` is the admin or the CLI creating it (audited); None for set-up code (seeding,
    tests), which is no admin action."""
    values = validate_config({"timezone": default_timezone, **values}, fake_allowed=fake_allowed)
    for required in ("name", "provider", "domain"):
        if not values.get(required):
            raise BadInput.field(required, "is required")
    if await session.scalar(select(EmailService.id).where(EmailService.name == values["name"])):
        raise Conflict("a service with this name exists", details=[{"field": "name", "message": "already exists"}])
    await check_adapter_config(values, credentials or {}, fake_allowed=fake_allowed)
    count = await session.scalar(select(func.count()).select_from(EmailService))
    values.setdefault("label", f"Channel {int(count or 0) + 1}")
    service = EmailService(**values, credentials_encrypted=vault.encrypt_json(credentials or {}))
    session.add(service)
    await session.flush()
    session.add(EmailServiceState(service_id=service.id))
    log_change(session, service.id, StatusChange.CONFIG_UPDATED, new="created", actor_user_id=_user_of(actor))
    await session.flush()
    if actor is not None:
        await audit_service(
            session,
            actor,
            "service.create",
            service.id,
            name=service.name,
            provider=service.provider,
            domain=service.domain,
            credential_fields=_credential_fields(credentials),
        )
    return service


def _user_of(actor: Actor | None) -> int | None:
    return None if actor is None else actor.user_id


async def check_adapter_config(values: dict[str, Any], credentials: dict[str, Any], *, fake_allowed: bool) -> None:
    """Build (and close) the provider's adapter once, so options it refuses (an unknown region, a bad bounce
    domain, fake events without a URL) and a batch size above what the provider takes fail when saved, not
    at the first send."""
    config = ServiceConfig(
        service_id=0,
        provider=values["provider"],
        domain=values["domain"],
        credentials=credentials,
        options=dict(values.get("options") or {}),
        batch_size=int(values.get("batch_size") or 1),
    )
    try:
        adapter = build_adapter(config, fake_allowed=fake_allowed)
    except ValueError as exc:
        raise BadInput.field("options", str(exc)) from None
    try:
        most = adapter.capabilities.max_batch
        if config.batch_size > most:
            raise BadInput.field("batch_size", f"{config.provider} takes at most {most} recipient(s) per call")
    finally:
        await adapter.aclose()


async def get_service(session: AsyncSession, service_id: int) -> EmailService:
    service = await session.get(EmailService, service_id)
    if service is None or service.archived_at is not None:
        raise NotFound("service not found")
    return service


async def find_service(session: AsyncSession, name_or_id: str) -> EmailService:
    if name_or_id.isdigit():
        return await get_service(session, int(name_or_id))
    service = await session.scalar(
        select(EmailService).where(EmailService.name == name_or_id, EmailService.archived_at.is_(None))
    )
    if service is None:
        raise NotFound(f"service {name_or_id!r} not found")
    return service


async def update_service(
    session: AsyncSession,
    vault: Vault,
    service_id: int,
    *,
    values: dict[str, Any],
    credentials: dict[str, Any] | None,
    fake_allowed: bool,
    actor: Actor | None = None,
) -> EmailService:
    """Change some configuration values and credentials (an empty credential field keeps the stored value:
    credentials are write-only). `actor` as for `create_service`: the configuration changes and the names of
    the credential fields set are audited."""
    service = await get_service(session, service_id)
    before = _config_of(service)
    values = validate_config(values, fake_allowed=fake_allowed)
    if {"provider", "options", "batch_size", "domain"} & values.keys():
        merged_values = {**{k: getattr(service, k) for k in ("provider", "domain", "options", "batch_size")}, **values}
        await check_adapter_config(merged_values, {}, fake_allowed=fake_allowed)
    _set_values(session, service, values, actor)
    if credentials:
        merged = {
            **vault.decrypt_json(service.credentials_encrypted),
            **{k: v for k, v in credentials.items() if v not in (None, "")},
        }
        service.credentials_encrypted = vault.encrypt_json(merged)
        log_change(session, service.id, StatusChange.CREDENTIALS_UPDATED, actor_user_id=_user_of(actor))
    await session.flush()
    if actor is not None:
        changes = _config_changes(before, _config_of(service))
        if changes:
            await audit_service(session, actor, "service.update", service.id, changes=changes)
        if _credential_fields(credentials):
            await audit_service(
                session, actor, "service.credentials_update", service.id, fields=_credential_fields(credentials)
            )
    return service


def _set_values(session: AsyncSession, service: EmailService, values: dict[str, Any], actor: Actor | None) -> None:
    """Assign the validated values, one status-log row per value that changed."""
    for key, value in values.items():
        old = getattr(service, key)
        if old != value:
            setattr(service, key, value)
            change = (
                StatusChange.ENABLED
                if key == "is_enabled" and value
                else (StatusChange.DISABLED if key == "is_enabled" else StatusChange.CONFIG_UPDATED)
            )
            log_change(
                session, service.id, change, old=f"{key}={old}", new=f"{key}={value}", actor_user_id=_user_of(actor)
            )


async def set_enabled(session: AsyncSession, service_id: int, *, enabled: bool, actor: Actor) -> None:
    """Enable or disable the service (audited as `service.enable` / `service.disable`, changed or not)."""
    service = await get_service(session, service_id)
    _set_values(session, service, {"is_enabled": enabled}, actor)
    await session.flush()
    await audit_service(session, actor, "service.enable" if enabled else "service.disable", service_id)


async def state_of(session: AsyncSession, service_id: int) -> EmailServiceState:
    state = await session.scalar(
        select(EmailServiceState).where(EmailServiceState.service_id == service_id).with_for_update()
    )
    if state is None:
        raise NotFound("service not found")
    return state


async def freeze(session: AsyncSession, service_id: int, *, reason: str, actor: Actor) -> None:
    await get_service(session, service_id)
    state = await state_of(session, service_id)
    state.frozen, state.frozen_reason, state.frozen_until = True, FreezeReason.MANUAL, None
    log_change(
        session, service_id, StatusChange.FROZEN, new=FreezeReason.MANUAL, reason=reason, actor_user_id=actor.user_id
    )
    await session.flush()
    await audit_service(session, actor, "service.freeze", service_id, reason=reason)


async def unfreeze(session: AsyncSession, service_id: int, *, actor: Actor) -> None:
    await get_service(session, service_id)
    state = await state_of(session, service_id)
    old = state.frozen_reason
    state.frozen, state.frozen_reason, state.frozen_until = False, None, None
    state.freeze_level, state.consecutive_failures, state.probe_in_flight = 0, 0, False
    log_change(session, service_id, StatusChange.UNFROZEN, old=old, new="active", actor_user_id=actor.user_id)
    await session.flush()
    await audit_service(session, actor, "service.unfreeze", service_id)


async def clear_backoff(session: AsyncSession, service_id: int, *, actor: Actor) -> None:
    await get_service(session, service_id)
    state = await state_of(session, service_id)
    state.throttled_until, state.throttle_level, state.exhausted_until = None, 0, None
    log_change(session, service_id, StatusChange.BACKOFF_CLEARED, actor_user_id=actor.user_id)
    await session.flush()
    await audit_service(session, actor, "service.clear_backoff", service_id)


async def set_used_today(
    session: AsyncSession,
    service_id: int,
    *,
    used: int,
    actor: Actor,
    now: dt.datetime | None = None,
    reason: str | None = None,
) -> int:
    """Admin correction of today's usage: the difference goes into `adjustment` (returned); `reason`, when given,
    is kept in the status log and the audit log."""
    if used < 0:
        raise BadInput.field("used", "must be ≥ 0")
    service = await get_service(session, service_id)
    now = now or utc_now()
    await state_of(session, service_id)  # serialize with claims on this service
    day = queue.day_of(service, now)
    current = await queue.used_today(session, service, day) + await _allocated(session, service_id)
    delta = used - current
    if delta:
        await queue.upsert_usage(session, service_id=service_id, day=day, deltas={"adjustment": delta})
        log_change(
            session,
            service_id,
            StatusChange.USAGE_ADJUSTED,
            old=current,
            new=used,
            reason=reason,
            actor_user_id=actor.user_id,
        )
    why = {"reason": reason} if reason else {}
    await audit_service(session, actor, "service.set_usage", service_id, used_today=used, adjustment_delta=delta, **why)
    return delta


async def _allocated(session: AsyncSession, service_id: int) -> int:
    return int(
        await session.scalar(
            select(func.count()).where(SubTask.service_id == service_id, SubTask.send_state == SendState.ALLOCATED)
        )
        or 0
    )


async def archive_service(session: AsyncSession, service_id: int, *, actor: Actor) -> EmailService:
    """Disable the service, erase its credentials and hide it (kept for history). Refused (`InUse`) while
    mappings exist or SubTasks are allocated to it."""
    service = await get_service(session, service_id)
    mappings = await session.scalar(select(func.count()).where(UserServiceMapping.service_id == service_id))
    if mappings or await _allocated(session, service_id):
        raise InUse("service still has mappings or allocated SubTasks", mappings=int(mappings or 0))
    service.archived_at, service.is_enabled, service.credentials_encrypted = utc_now(), False, None
    log_change(session, service_id, StatusChange.DISABLED, new="archived", actor_user_id=actor.user_id)
    await session.flush()
    await audit_service(session, actor, "service.archive", service_id, name=service.name, provider=service.provider)
    return service


async def status_log(
    session: AsyncSession, page: Page, *, service_id: int | None = None
) -> list[EmailServiceStatusLog]:
    """Services' state changes, newest first: one page (limit + 1 rows, for `page_of`) older than the cursor."""
    query = select(EmailServiceStatusLog).order_by(EmailServiceStatusLog.id.desc()).limit(page.limit + 1)
    if service_id:
        query = query.where(EmailServiceStatusLog.service_id == service_id)
    if page.after_id is not None:
        query = query.where(EmailServiceStatusLog.id < page.after_id)
    return list(await session.scalars(query))


async def map_user(
    session: AsyncSession, *, user_id: int, service_id: int, actor_user_id: int | None = None, is_active: bool = True
) -> UserServiceMapping:
    """Let the user's tasks send through the service (or, `is_active=False`, no longer). Not audited: the admin
    operations of `edm.email_services.mappings` are, and set-up code calls this directly."""
    if await session.get(User, user_id) is None:
        raise BadInput.field("user_id", f"user {user_id} not found")
    await get_service(session, service_id)
    mapping = await session.scalar(
        select(UserServiceMapping).where(
            UserServiceMapping.user_id == user_id, UserServiceMapping.service_id == service_id
        )
    )
    if mapping is None:
        mapping = UserServiceMapping(
            user_id=user_id, service_id=service_id, is_active=is_active, created_by=actor_user_id
        )
        session.add(mapping)
    else:
        mapping.is_active = is_active
    await session.flush()
    return mapping


def secret_entries(credentials: Mapping[str, Any]) -> list[Any]:
    """The webhook secrets stored in a service's credentials, as stored (strings or objects): see
    `edm.email_services.webhook_secrets`."""
    entries = credentials.get("webhook_secrets") or []
    return [entries] if isinstance(entries, str) else list(entries)


def public_view(service: EmailService, vault: Vault) -> ServiceOut:
    """What an admin sees: configuration, `credentials_set` and a masked hint, never the secret."""
    creds = vault.decrypt_json(service.credentials_encrypted) if service.credentials_encrypted else {}
    hint = {k: ("…" + str(v)[-4:] if len(str(v)) > 4 else "…") for k, v in creds.items() if v}
    if creds.get("webhook_secrets"):  # a list: its text's tail could hold part of a secret; count them instead
        hint["webhook_secrets"] = f"{len(secret_entries(creds))} stored"
    return ServiceOut(
        **_config_of(service),
        id=service.id,
        credentials_set=bool(creds),
        credentials_hint=hint,
        created_at=service.created_at,
        updated_at=service.updated_at,
    )
