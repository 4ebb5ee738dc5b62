"""Webhook secrets of a sending service: listing them masked, adding and removing them (audited), and the
secrets the webhook pipeline verifies requests with.

They live in the service's encrypted credentials under `webhook_secrets`, newest first (the fake provider's
emitter signs with the first), as strings or {"value", "expires_at"} objects; verification accepts every one
that has not expired, so a rotation is: add the new secret, switch the provider, remove the old one. Entries
written here also carry an `id` and `added_at`. A bare string (set through `edm service credentials`) is
listed as `legacy-<position>` until the next add or remove gives every entry an id.

Services: they flush, the entry point commits.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.clock import utc_now
from edm.email_services.schemas import WebhookSecretOut, WebhookSecretRemovedOut
from edm.email_services.service import audit_service, get_service, log_change, secret_entries, state_of
from edm.errors import BadInput, Conflict, NotFound
from edm.models.email_services import EmailService
from edm.providers.webhook import WebhookTarget
from edm.security.crypto import Vault
from edm.system.service import Actor

log = logging.getLogger("edm.webhooks")

SECRET_ADDED = "webhook_secret_added"
SECRET_REMOVED = "webhook_secret_removed"
MAX_WEBHOOK_SECRETS = 10


def _entry_value(entry: Any) -> str:
    return str(entry if isinstance(entry, str) else (entry.get("value") or ""))


def _entry_expiry(entry: Any) -> Any:
    return None if isinstance(entry, str) else entry.get("expires_at")


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


def secret_views(credentials: Mapping[str, Any], now: dt.datetime | None = None) -> list[WebhookSecretOut]:
    """The stored secrets, masked: id, the last 4 characters, added_at, expires_at, expired."""
    now = now or utc_now()
    return [
        WebhookSecretOut(
            id=_entry_id(entry, position),
            hint=mask_secret(_entry_value(entry)),
            added_at=None if isinstance(entry, str) else entry.get("added_at"),
            expires_at=_entry_expiry(entry),
            expired=_expired(_entry_expiry(entry), now),
        )
        for position, entry in enumerate(secret_entries(credentials))
    ]


def _expired(expires: Any, now: dt.datetime) -> bool:
    if not expires:
        return False
    try:
        until = dt.datetime.fromisoformat(str(expires).replace("Z", "+00:00"))
    except ValueError:
        return True  # an unreadable expiry: its secret is not trusted to verify anything
    return (until if until.tzinfo else until.replace(tzinfo=dt.UTC)) <= now


def active_secrets(credentials: Mapping[str, Any], now: dt.datetime) -> tuple[str, ...]:
    """The webhook secrets that verify requests now (not expired), in the configured order: several at once
    during a rotation."""
    return tuple(
        _entry_value(entry)
        for entry in secret_entries(credentials)
        if _entry_value(entry) and not _expired(_entry_expiry(entry), now)
    )


async def webhook_targets(
    session: AsyncSession, vault: Vault, provider: str, *, now: dt.datetime
) -> tuple[WebhookTarget, ...]:
    """Every live service of `provider` with the secrets that verify its webhooks now, by id. A service whose
    credentials cannot be decrypted has none (logged): its webhooks are refused, the others still verify."""
    services = await session.scalars(
        select(EmailService)
        .where(EmailService.provider == provider, EmailService.archived_at.is_(None))
        .order_by(EmailService.id)
    )
    targets = []
    for service in services:
        try:
            credentials = vault.decrypt_json(service.credentials_encrypted)
        except ValueError:
            log.error("webhook.credentials_unreadable", extra={"service_id": service.id})
            credentials = {}
        targets.append(
            WebhookTarget(
                service_id=service.id,
                provider=provider,
                secrets=active_secrets(credentials, now),
                options=dict(service.options or {}),
            )
        )
    return tuple(targets)


async def list_webhook_secrets(session: AsyncSession, vault: Vault, service_id: int) -> list[WebhookSecretOut]:
    service = await get_service(session, service_id)
    return secret_views(vault.decrypt_json(service.credentials_encrypted))


async def add_webhook_secret(
    session: AsyncSession,
    vault: Vault,
    service_id: int,
    *,
    value: str | None,
    expires_at: dt.datetime | None = None,
    actor: Actor,
) -> tuple[WebhookSecretOut, str]:
    """Store one more secret (first in the list), audited. Returns its masked view and the value (generated
    when not given), which the caller shows once: nothing returns it again."""
    service = await get_service(session, service_id)
    await state_of(session, service_id)  # serialize credential read-modify-writes on this service
    now = utc_now()
    generated = value is None
    value = (value or "").strip() or secrets.token_urlsafe(32)
    if len(value) < 8 or len(value) > 4096 or any(ord(c) < 32 for c in value):
        raise BadInput.field("value", "must be 8–4096 printable characters")
    if expires_at is not None and (expires_at.tzinfo is None or expires_at <= now):
        raise BadInput.field("expires_at", "must be a future time with a time zone")
    credentials = vault.decrypt_json(service.credentials_encrypted)
    entries = _with_ids(secret_entries(credentials))
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
        session, service_id, SECRET_ADDED, new=f"{entry['id']} {mask_secret(value)}", actor_user_id=actor.user_id
    )
    await audit_service(
        session, actor, "service.webhook_secret_added", service_id, secret_id=entry["id"], generated=generated
    )
    return secret_views({"webhook_secrets": [entry]}, now)[0], value


async def remove_webhook_secret(
    session: AsyncSession, vault: Vault, service_id: int, secret_id: str, *, actor: Actor
) -> WebhookSecretRemovedOut:
    """Forget one secret, audited: webhooks signed with it stop verifying (within the pipeline's 5 s cache)."""
    service = await get_service(session, service_id)
    await state_of(session, service_id)
    credentials = vault.decrypt_json(service.credentials_encrypted)
    current = secret_entries(credentials)
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
        actor_user_id=actor.user_id,
    )
    await audit_service(session, actor, "service.webhook_secret_removed", service_id, secret_id=secret_id)
    return WebhookSecretRemovedOut(id=secret_id, hint=mask_secret(_entry_value(removed)), remaining=len(rest))
