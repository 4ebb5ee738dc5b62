"""Admin operations on sending services and user–service mappings (SPEC §15.3). Every change writes a
status-log row. Credentials are encrypted before they touch the session and never leave it decrypted."""

from __future__ import annotations

import datetime as dt
import re
import secrets
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.clock import utc_now
from edm.dispatch import queue
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
from edm.providers.base import ServiceConfig
from edm.providers.registry import PROVIDERS, build_adapter
from edm.security.crypto import Vault
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


async def create_service(
    session: AsyncSession,
    vault: Vault,
    *,
    values: dict[str, Any],
    credentials: dict[str, Any] | None,
    fake_allowed: bool,
    actor_user_id: int | None = None,
    default_timezone: str = "UTC",
) -> EmailService:
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
    log_change(session, service.id, StatusChange.CONFIG_UPDATED, new="created", actor_user_id=actor_user_id)
    await session.flush()
    return service


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
    actor_user_id: int | None = None,
) -> EmailService:
    service = await get_service(session, service_id)
    values = validate_config(values, fake_allowed=fake_allowed)
    if {"provider", "options", "batch_size", "domain"} & values.keys():
        merged_values = {**{k: getattr(service, k) for k in ("provider", "domain", "options", "batch_size")}, **values}
        await check_adapter_config(merged_values, {}, fake_allowed=fake_allowed)
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
                session, service.id, change, old=f"{key}={old}", new=f"{key}={value}", actor_user_id=actor_user_id
            )
    if credentials:
        # An empty credential field keeps the stored value (write-only credentials, SPEC §15.3).
        merged = {
            **vault.decrypt_json(service.credentials_encrypted),
            **{k: v for k, v in credentials.items() if v not in (None, "")},
        }
        service.credentials_encrypted = vault.encrypt_json(merged)
        log_change(session, service.id, StatusChange.CREDENTIALS_UPDATED, actor_user_id=actor_user_id)
    await session.flush()
    return service


async def state_of(session: AsyncSession, service_id: int) -> EmailServiceState:
    state = await session.scalar(
        select(EmailServiceState).where(EmailServiceState.service_id == service_id).with_for_update()
    )
    if state is None:
        raise NotFound("service not found")
    return state


async def freeze(session: AsyncSession, service_id: int, *, reason: str, actor_user_id: int | None) -> None:
    await get_service(session, service_id)
    state = await state_of(session, service_id)
    state.frozen, state.frozen_reason, state.frozen_until = True, FreezeReason.MANUAL, None
    log_change(
        session, service_id, StatusChange.FROZEN, new=FreezeReason.MANUAL, reason=reason, actor_user_id=actor_user_id
    )
    await session.flush()


async def unfreeze(session: AsyncSession, service_id: int, *, actor_user_id: int | None) -> None:
    await get_service(session, service_id)
    state = await state_of(session, service_id)
    old = state.frozen_reason
    state.frozen, state.frozen_reason, state.frozen_until = False, None, None
    state.freeze_level, state.consecutive_failures, state.probe_in_flight = 0, 0, False
    log_change(session, service_id, StatusChange.UNFROZEN, old=old, new="active", actor_user_id=actor_user_id)
    await session.flush()


async def clear_backoff(session: AsyncSession, service_id: int, *, actor_user_id: int | None) -> None:
    await get_service(session, service_id)
    state = await state_of(session, service_id)
    state.throttled_until, state.throttle_level, state.exhausted_until = None, 0, None
    log_change(session, service_id, StatusChange.BACKOFF_CLEARED, actor_user_id=actor_user_id)
    await session.flush()


async def set_used_today(
    session: AsyncSession, service_id: int, *, used: int, actor_user_id: int | None, now: dt.datetime | None = None
) -> int:
    """Admin correction of today's usage: the difference goes into `adjustment` (SPEC §7.4)."""
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
        log_change(session, service_id, StatusChange.USAGE_ADJUSTED, old=current, new=used, actor_user_id=actor_user_id)
    return delta


async def _allocated(session: AsyncSession, service_id: int) -> int:
    return int(
        await session.scalar(
            select(func.count()).where(SubTask.service_id == service_id, SubTask.send_state == SendState.ALLOCATED)
        )
        or 0
    )


async def archive_service(session: AsyncSession, service_id: int, *, actor_user_id: int | None) -> None:
    service = await get_service(session, service_id)
    mappings = await session.scalar(select(func.count()).where(UserServiceMapping.service_id == service_id))
    if mappings or await _allocated(session, service_id):
        raise InUse("service still has mappings or allocated SubTasks", mappings=int(mappings or 0))
    service.archived_at, service.is_enabled, service.credentials_encrypted = utc_now(), False, None
    log_change(session, service_id, StatusChange.DISABLED, new="archived", actor_user_id=actor_user_id)
    await session.flush()


# ---- mappings -----------------------------------------------------------------------------------------


async def map_user(
    session: AsyncSession, *, user_id: int, service_id: int, actor_user_id: int | None = None, is_active: bool = True
) -> UserServiceMapping:
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


async def set_user_services(
    session: AsyncSession, *, user_id: int, service_ids: list[int], actor_user_id: int | None
) -> list[int]:
    """Make the user's active mappings exactly `service_ids` (SPEC §15.3)."""
    for service_id in service_ids:
        await map_user(session, user_id=user_id, service_id=service_id, actor_user_id=actor_user_id)
    existing = await session.scalars(select(UserServiceMapping).where(UserServiceMapping.user_id == user_id))
    for mapping in existing:
        if mapping.service_id not in service_ids:
            mapping.is_active = False
    await session.flush()
    return sorted(service_ids)


async def delete_mapping(session: AsyncSession, mapping_id: int) -> None:
    mapping = await session.get(UserServiceMapping, mapping_id)
    if mapping is None:
        raise NotFound("mapping not found")
    await session.delete(mapping)
    await session.flush()


def public_view(service: EmailService, vault: Vault) -> dict[str, Any]:
    """What an admin sees: configuration, `credentials_set` and a masked hint, never the secret."""
    creds = vault.decrypt_json(service.credentials_encrypted) if service.credentials_encrypted else {}
    hint = {k: ("…" + str(v)[-4:] if len(str(v)) > 4 else "…") for k, v in creds.items() if v}
    if creds.get("webhook_secrets"):  # a list: its text's tail could hold part of a secret; count them instead
        hint["webhook_secrets"] = f"{len(_secret_entries(creds))} stored"
    body = {field: getattr(service, field) for field in CONFIG_FIELDS}
    body["sending_interval_seconds"] = float(service.sending_interval_seconds)
    body.update(
        id=service.id,
        credentials_set=bool(creds),
        credentials_hint=hint,
        created_at=service.created_at,
        updated_at=service.updated_at,
    )
    return body


# ---- webhook secrets (SPEC §9.2, §15.3) -----------------------------------------------------------------
#
# They live in the service's encrypted credentials under `webhook_secrets`, newest first (the fake provider's
# emitter signs with the first), as strings or {"value", "expires_at"} objects; verification accepts every
# one that has not expired, so a rotation is: add the new secret, switch the provider, remove the old one.
# Entries written here also carry an `id` and `added_at`. A bare string (set through `edm service
# credentials`) is listed as `legacy-<position>` until the next add or remove gives every entry an id.

SECRET_ADDED = "webhook_secret_added"
SECRET_REMOVED = "webhook_secret_removed"
MAX_WEBHOOK_SECRETS = 10


def _secret_entries(credentials: dict[str, Any]) -> list[Any]:
    entries = credentials.get("webhook_secrets") or []
    return [entries] if isinstance(entries, str) else list(entries)


def _entry_value(entry: Any) -> str:
    return str(entry if isinstance(entry, str) else (entry.get("value") or ""))


def _entry_id(entry: Any, position: int) -> str:
    if isinstance(entry, dict) and entry.get("id"):
        return str(entry["id"])
    return f"legacy-{position}"


def _with_ids(entries: list[Any]) -> list[dict[str, Any]]:
    """Every entry as an object with an id (bare strings and id-less objects get a random one)."""
    out = []
    for entry in entries:
        item = {"value": entry} if isinstance(entry, str) else dict(entry)
        item.setdefault("id", secrets.token_hex(6))
        out.append(item)
    return out


def mask_secret(value: str) -> str:
    return "…" + value[-4:] if len(value) > 8 else "…"


def secret_views(credentials: dict[str, Any], now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """The stored secrets, masked: id, the last 4 characters, added_at, expires_at, expired."""
    now = now or utc_now()
    views = []
    for position, entry in enumerate(_secret_entries(credentials)):
        expires = None if isinstance(entry, str) else entry.get("expires_at")
        views.append(
            {
                "id": _entry_id(entry, position),
                "hint": mask_secret(_entry_value(entry)),
                "added_at": None if isinstance(entry, str) else entry.get("added_at"),
                "expires_at": expires,
                "expired": _expired(expires, now),
            }
        )
    return views


def _expired(expires: Any, now: dt.datetime) -> bool:
    if not expires:
        return False
    try:
        until = dt.datetime.fromisoformat(str(expires).replace("Z", "+00:00"))
    except ValueError:
        return True  # the webhook pipeline ignores an unreadable expiry's secret too
    return (until if until.tzinfo else until.replace(tzinfo=dt.UTC)) <= now


async def list_webhook_secrets(session: AsyncSession, vault: Vault, service_id: int) -> list[dict[str, Any]]:
    service = await get_service(session, service_id)
    return secret_views(vault.decrypt_json(service.credentials_encrypted))


async def add_webhook_secret(
    session: AsyncSession,
    vault: Vault,
    service_id: int,
    *,
    value: str | None,
    expires_at: dt.datetime | None = None,
    actor_user_id: int | None,
) -> tuple[dict[str, Any], str]:
    """Store one more secret (first in the list). Returns its masked view and the value (generated when not
    given), which the caller shows once: nothing returns it again."""
    service = await get_service(session, service_id)
    await state_of(session, service_id)  # serialize credential read-modify-writes on this service
    now = utc_now()
    value = (value or "").strip() or secrets.token_urlsafe(32)
    if len(value) < 8 or len(value) > 4096 or any(ord(c) < 32 for c in value):
        raise BadInput.field("value", "must be 8–4096 printable characters")
    if expires_at is not None and (expires_at.tzinfo is None or expires_at <= now):
        raise BadInput.field("expires_at", "must be a future time with a time zone")
    credentials = vault.decrypt_json(service.credentials_encrypted)
    entries = _with_ids(_secret_entries(credentials))
    if any(e.get("value") == value for e in entries):
        raise Conflict("this webhook secret is already stored", details=[{"field": "value", "message": "duplicate"}])
    if len(entries) >= MAX_WEBHOOK_SECRETS:
        raise Conflict(f"a service holds at most {MAX_WEBHOOK_SECRETS} webhook secrets: remove an old one first")
    entry: dict[str, Any] = {"id": secrets.token_hex(6), "value": value, "added_at": now.isoformat()}
    if expires_at is not None:
        entry["expires_at"] = expires_at.astimezone(dt.UTC).isoformat()
    credentials["webhook_secrets"] = [entry, *entries]
    service.credentials_encrypted = vault.encrypt_json(credentials)
    log_change(
        session, service_id, SECRET_ADDED, new=f"{entry['id']} {mask_secret(value)}", actor_user_id=actor_user_id
    )
    await session.flush()
    return secret_views({"webhook_secrets": [entry]}, now)[0], value


async def remove_webhook_secret(
    session: AsyncSession, vault: Vault, service_id: int, secret_id: str, *, actor_user_id: int | None
) -> dict[str, Any]:
    """Forget one secret: webhooks signed with it stop verifying (within the pipeline's 5 s cache)."""
    service = await get_service(session, service_id)
    await state_of(session, service_id)
    credentials = vault.decrypt_json(service.credentials_encrypted)
    current = _secret_entries(credentials)
    ids = [_entry_id(e, i) for i, e in enumerate(current)]
    if secret_id not in ids:
        raise NotFound(f"webhook secret {secret_id!r} not found")
    position = ids.index(secret_id)
    removed = current[position]
    rest = _with_ids([e for i, e in enumerate(current) if i != position])
    credentials["webhook_secrets"] = rest
    service.credentials_encrypted = vault.encrypt_json(credentials)
    log_change(
        session,
        service_id,
        SECRET_REMOVED,
        old=f"{secret_id} {mask_secret(_entry_value(removed))}",
        actor_user_id=actor_user_id,
    )
    await session.flush()
    return {"id": secret_id, "hint": mask_secret(_entry_value(removed)), "remaining": len(rest)}
