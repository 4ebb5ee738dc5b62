"""Admin routes for sending services and mappings, and /me/services (SPEC §15.3, §16.3)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from edm.addresses import normalize_email
from edm.api.deps import Admin, AdminWriter, Caller, CurrentCaller, Id, IdPath, IdQuery, Paging, Session
from edm.clock import utc_now
from edm.dispatch import queue
from edm.email_services import health
from edm.email_services import probe as testing
from edm.email_services import service as services
from edm.models.email_services import EmailServiceStatusLog, UserServiceMapping
from edm.paging import page_of
from edm.providers.base import ServiceConfig
from edm.security.crypto import Vault
from edm.system.service import Actor, audit

router = APIRouter(prefix="/api/v1", tags=["services"])


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServiceFields(Strict):
    name: str | None = Field(None, min_length=1, max_length=100)
    label: str | None = Field(None, min_length=1, max_length=100)
    provider: str | None = None
    options: dict[str, Any] | None = None
    domain: str | None = Field(None, max_length=253)
    sending_interval_seconds: Decimal | None = Field(None, ge=0, le=86400)
    max_concurrency: int | None = Field(None, ge=1, le=100)
    batch_size: int | None = Field(None, ge=1, le=1000)
    daily_quota: int | None = Field(None, ge=1)
    timezone: str | None = None
    quota_reset_time: str | None = Field(None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    weight: int | None = Field(None, ge=1, le=1000)
    priority: int | None = Field(None, ge=0, le=99)
    backup_only: bool | None = None
    is_enabled: bool | None = None
    request_timeout_seconds: int | None = Field(None, ge=5, le=300)
    credentials: dict[str, Any] | None = None


class ServiceCreate(ServiceFields):
    name: str = Field(..., min_length=1, max_length=100)
    provider: str
    domain: str = Field(..., max_length=253)


class FreezeBody(Strict):
    reason: str = Field(..., min_length=1, max_length=500)


class UsageBody(Strict):
    used_today: int = Field(..., ge=0)


class MappingBody(Strict):
    user_ids: list[Id] = Field(..., min_length=1, max_length=500)
    service_ids: list[Id] = Field(..., min_length=1, max_length=500)
    is_active: bool = True


class TestSendBody(Strict):
    to: str = Field(..., min_length=3, max_length=320, description="the address to send the test to")
    from_local_part: str = Field("test", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._+-]+$")
    subject: str | None = Field(None, max_length=200)
    html: str | None = Field(None, max_length=100_000)


class UnsavedServiceTest(ServiceCreate, TestSendBody):
    """A configuration not saved yet, plus the test message."""


class ExactServices(Strict):
    service_ids: list[Id] = Field(..., max_length=500)


def _vault(request: Request) -> Vault:
    return Vault.from_settings(request.app.state.settings)


def _split(body: ServiceFields) -> tuple[dict[str, Any], dict[str, Any] | None]:
    values = body.model_dump(exclude_unset=True)
    credentials = values.pop("credentials", None)
    return values, credentials


# -- audit ------------------------------------------------------------------------------------------------
# Every admin write here leaves an audit row (the status log keeps the service's own history as well).
# Credentials and webhook secrets never go in: a credential change records only which fields were given.


def _audit_actor(request: Request, caller: Caller) -> Actor:
    return Actor(caller.id, caller.kind, request.client.host if request.client else None)


def _config_of(service: Any) -> dict[str, Any]:
    """The service's configuration as JSON-ready values (no credentials)."""
    values = {field: getattr(service, field) for field in services.CONFIG_FIELDS}
    values["sending_interval_seconds"] = float(values["sending_interval_seconds"])
    values["options"] = dict(values["options"] or {})
    return values


def _config_changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """{field: {"old", "new"}} for what moved; for `options`, only the names of the options that changed."""
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
    """The names of the credential fields an update set (an empty value keeps the stored one)."""
    return sorted(k for k, v in (credentials or {}).items() if v not in (None, ""))


async def _audit_service(
    session: Session, request: Request, caller: Caller, action: str, service_id: int, **details: Any
) -> None:
    await audit(
        session,
        _audit_actor(request, caller),
        action,
        target_type="email_service",
        target_id=service_id,
        details=details,
    )


@router.get("/admin/services")
async def list_services(request: Request, session: Session, caller: Admin) -> list[dict[str, Any]]:
    snaps = await queue.snapshot_services(session, now=utc_now())
    return [{**services.public_view(s.service, _vault(request)), **health.runtime_view(s)} for s in snaps]


@router.post("/admin/services", status_code=201)
async def create_service(
    body: ServiceCreate, request: Request, session: Session, caller: AdminWriter
) -> dict[str, Any]:
    values, credentials = _split(body)
    settings = request.app.state.settings
    svc = await services.create_service(
        session,
        _vault(request),
        values=values,
        credentials=credentials,
        fake_allowed=settings.fake_provider_allowed,
        actor_user_id=caller.id,
        default_timezone=settings.default_timezone,
    )
    await _audit_service(
        session,
        request,
        caller,
        "service.create",
        svc.id,
        name=svc.name,
        provider=svc.provider,
        domain=svc.domain,
        credential_fields=_credential_fields(credentials),
    )
    return services.public_view(svc, _vault(request))


@router.get("/admin/services/{service_id}")
async def get_service(service_id: IdPath, request: Request, session: Session, caller: Admin) -> dict[str, Any]:
    svc = await services.get_service(session, service_id)
    snap = next(s for s in await queue.snapshot_services(session, now=utc_now()) if s.service.id == svc.id)
    return {**services.public_view(svc, _vault(request)), **health.runtime_view(snap)}


@router.patch("/admin/services/{service_id}")
async def patch_service(
    service_id: IdPath, body: ServiceFields, request: Request, session: Session, caller: AdminWriter
) -> dict[str, Any]:
    values, credentials = _split(body)
    before = _config_of(await services.get_service(session, service_id))
    svc = await services.update_service(
        session,
        _vault(request),
        service_id,
        values=values,
        credentials=credentials,
        fake_allowed=request.app.state.settings.fake_provider_allowed,
        actor_user_id=caller.id,
    )
    changes = _config_changes(before, _config_of(svc))
    if changes:
        await _audit_service(session, request, caller, "service.update", svc.id, changes=changes)
    if _credential_fields(credentials):
        await _audit_service(
            session, request, caller, "service.credentials_update", svc.id, fields=_credential_fields(credentials)
        )
        _forget_cached_targets(request, svc.provider)
    return services.public_view(svc, _vault(request))


@router.delete("/admin/services/{service_id}", status_code=204)
async def delete_service(service_id: IdPath, request: Request, session: Session, caller: AdminWriter) -> Response:
    """Archive the service (disabled, credentials erased, hidden, kept for history). 409 `in_use` while
    mappings exist or SubTasks are allocated to it."""
    svc = await services.get_service(session, service_id)
    name, provider = svc.name, svc.provider
    await services.archive_service(session, service_id, actor_user_id=caller.id)
    await _audit_service(session, request, caller, "service.archive", service_id, name=name, provider=provider)
    _forget_cached_targets(request, provider)
    return Response(status_code=204)


@router.post("/admin/services/{service_id}/freeze")
async def freeze_service(
    service_id: IdPath, body: FreezeBody, request: Request, session: Session, caller: AdminWriter
) -> dict[str, Any]:
    await services.freeze(session, service_id, reason=body.reason, actor_user_id=caller.id)
    await _audit_service(session, request, caller, "service.freeze", service_id, reason=body.reason)
    return {"service_id": service_id, "done": "freeze"}


@router.post("/admin/services/{service_id}/usage")
async def set_usage(
    service_id: IdPath, body: UsageBody, request: Request, session: Session, caller: AdminWriter
) -> dict[str, Any]:
    delta = await services.set_used_today(session, service_id, used=body.used_today, actor_user_id=caller.id)
    await _audit_service(
        session, request, caller, "service.set_usage", service_id, used_today=body.used_today, adjustment_delta=delta
    )
    return {"service_id": service_id, "used_today": body.used_today, "adjustment_delta": delta}


@router.post("/admin/services/{service_id}/test-send")
async def test_send(
    service_id: IdPath, body: TestSendBody, request: Request, session: Session, caller: AdminWriter
) -> dict[str, Any]:
    """Send one test message now (ignoring the rate slot), report its classification, count it as usage."""
    await session.commit()  # end the authentication transaction: the send is a network call
    settings = request.app.state.settings
    result = await testing.test_saved_service(
        request.app.state.sessionmaker,
        _vault(request),
        service_id,
        to=body.to,
        from_local=body.from_local_part,
        subject=body.subject,
        html=body.html,
        fake_allowed=settings.fake_provider_allowed,
        unsubscribe_base=settings.effective_tracking_url,
        actor_user_id=caller.id,
    )
    return result.as_dict()


@router.post("/admin/services/test")
async def test_unsaved(
    body: UnsavedServiceTest, request: Request, session: Session, caller: AdminWriter
) -> dict[str, Any]:
    """The same check for a configuration that is not saved; nothing is stored."""
    await session.commit()  # end the authentication transaction: the send is a network call
    settings = request.app.state.settings
    values = services.validate_config(
        body.model_dump(exclude_unset=True, exclude={"to", "from_local_part", "subject", "html", "credentials"}),
        fake_allowed=settings.fake_provider_allowed,
    )
    config = ServiceConfig(
        service_id=0,
        provider=values["provider"],
        domain=values["domain"],
        credentials=dict(body.credentials or {}),
        options=dict(values.get("options") or {}),
        max_concurrency=1,
        batch_size=1,
        request_timeout_seconds=float(values.get("request_timeout_seconds") or 30),
    )
    result = await testing.send_test(
        config,
        service_name=values["name"],
        to=_address(body.to),
        from_local=body.from_local_part,
        subject=body.subject,
        html=body.html,
        fake_allowed=settings.fake_provider_allowed,
        unsubscribe_base=settings.effective_tracking_url,
    )
    return result.as_dict()


def _address(value: str) -> str:
    return normalize_email(value, field="to").original


class WebhookSecretBody(Strict):
    value: str | None = Field(
        None,
        min_length=8,
        max_length=4096,
        description="the secret the provider gives you; omit it to have one generated",
    )
    expires_at: dt.datetime | None = Field(None, description="optional: stop accepting it after this time")


def _forget_cached_targets(request: Request, provider: str) -> None:
    """This process's webhook pipeline caches each provider's secrets for 5 s: drop the entry so the change
    applies to the next request here at once (other processes follow within those 5 s)."""
    cache = getattr(request.app.state, "webhook_targets", None)
    if isinstance(cache, dict):
        cache.pop(provider, None)


@router.get("/admin/services/{service_id}/health")
async def service_health(service_id: IdPath, request: Request, session: Session, caller: Admin) -> dict[str, Any]:
    """State and reason, usage and quota, next reset (UTC, the service's and the admin's zone), limits,
    in-flight, error rate and latency over the last hour, last success and error, webhook URLs, status log."""
    return await health.service_health(
        session,
        _vault(request),
        service_id,
        now=utc_now(),
        admin_timezone=caller.user.timezone,
        base_url=request.app.state.settings.public_url,
    )


@router.get("/admin/services/{service_id}/webhook-secrets")
async def list_webhook_secrets(
    service_id: IdPath, request: Request, session: Session, caller: Admin
) -> list[dict[str, Any]]:
    """Masked: id, the last 4 characters, added_at, expires_at. The values are never returned."""
    return await services.list_webhook_secrets(session, _vault(request), service_id)


@router.post("/admin/services/{service_id}/webhook-secrets", status_code=201)
async def add_webhook_secret(
    service_id: IdPath, body: WebhookSecretBody, request: Request, session: Session, caller: AdminWriter
) -> dict[str, Any]:
    """Add a secret; every stored secret keeps verifying (rotation). The value is in this answer only."""
    view, value = await services.add_webhook_secret(
        session, _vault(request), service_id, value=body.value, expires_at=body.expires_at, actor_user_id=caller.id
    )
    await audit(
        session,
        _audit_actor(request, caller),
        "service.webhook_secret_added",
        target_type="email_service",
        target_id=service_id,
        details={"secret_id": view["id"], "generated": body.value is None},
    )
    svc = await services.get_service(session, service_id)
    _forget_cached_targets(request, svc.provider)
    return {**view, "value": value}


@router.delete("/admin/services/{service_id}/webhook-secrets/{secret_id}")
async def remove_webhook_secret(
    service_id: IdPath,
    secret_id: Annotated[str, PathParam(max_length=64)],
    request: Request,
    session: Session,
    caller: AdminWriter,
) -> dict[str, Any]:
    """Webhooks signed with it stop verifying (at once in this process, within 5 s in the others)."""
    removed = await services.remove_webhook_secret(
        session, _vault(request), service_id, secret_id, actor_user_id=caller.id
    )
    await audit(
        session,
        _audit_actor(request, caller),
        "service.webhook_secret_removed",
        target_type="email_service",
        target_id=service_id,
        details={"secret_id": secret_id},
    )
    svc = await services.get_service(session, service_id)
    _forget_cached_targets(request, svc.provider)
    return removed


# After the fixed sub-paths above: `{action}` would otherwise match `test-send`.
@router.post("/admin/services/{service_id}/{action}")
async def service_action(
    service_id: IdPath,
    action: Literal["enable", "disable", "unfreeze", "clear-backoff"],
    request: Request,
    session: Session,
    caller: AdminWriter,
) -> dict[str, Any]:
    if action in ("enable", "disable"):
        await services.update_service(
            session,
            _vault(request),
            service_id,
            values={"is_enabled": action == "enable"},
            credentials=None,
            fake_allowed=True,
            actor_user_id=caller.id,
        )
    elif action == "unfreeze":
        await services.unfreeze(session, service_id, actor_user_id=caller.id)
    else:
        await services.clear_backoff(session, service_id, actor_user_id=caller.id)
    await _audit_service(session, request, caller, f"service.{action.replace('-', '_')}", service_id)
    return {"service_id": service_id, "done": action}


@router.get("/admin/status-log")
async def status_log(session: Session, caller: Admin, page: Paging, service_id: IdQuery = None) -> dict[str, Any]:
    """Services' state changes, newest first (the cursor continues to older rows)."""
    query = select(EmailServiceStatusLog).order_by(EmailServiceStatusLog.id.desc()).limit(page.limit + 1)
    if service_id:
        query = query.where(EmailServiceStatusLog.service_id == service_id)
    if page.after_id is not None:
        query = query.where(EmailServiceStatusLog.id < page.after_id)
    return page_of(
        [
            {
                "id": r.id,
                "service_id": r.service_id,
                "change": r.change,
                "old_value": r.old_value,
                "new_value": r.new_value,
                "reason": r.reason,
                "actor_user_id": r.actor_user_id,
                "at": r.at,
            }
            for r in await session.scalars(query)
        ],
        page,
    )


@router.get("/admin/mappings")
async def list_mappings(
    session: Session, caller: Admin, page: Paging, user_id: IdQuery = None, service_id: IdQuery = None
) -> dict[str, Any]:
    query = select(UserServiceMapping).order_by(UserServiceMapping.id).limit(page.limit + 1)
    if user_id:
        query = query.where(UserServiceMapping.user_id == user_id)
    if service_id:
        query = query.where(UserServiceMapping.service_id == service_id)
    if page.after_id is not None:
        query = query.where(UserServiceMapping.id > page.after_id)
    return page_of(
        [
            {"id": m.id, "user_id": m.user_id, "service_id": m.service_id, "is_active": m.is_active}
            for m in await session.scalars(query)
        ],
        page,
    )


@router.post("/admin/mappings", status_code=201)
async def create_mappings(
    body: MappingBody, request: Request, session: Session, caller: AdminWriter
) -> list[dict[str, Any]]:
    """Assign many services to many users in one call (one audit row for the call)."""
    created = []
    for user_id in body.user_ids:
        for service_id in body.service_ids:
            m = await services.map_user(
                session, user_id=user_id, service_id=service_id, actor_user_id=caller.id, is_active=body.is_active
            )
            created.append({"id": m.id, "user_id": m.user_id, "service_id": m.service_id, "is_active": m.is_active})
    await audit(
        session,
        _audit_actor(request, caller),
        "mapping.assign",
        target_type="mapping",
        details={
            "user_ids": body.user_ids,
            "service_ids": body.service_ids,
            "is_active": body.is_active,
            "mappings": len(created),
        },
    )
    return created


@router.delete("/admin/mappings/{mapping_id}", status_code=204)
async def delete_mapping(mapping_id: IdPath, request: Request, session: Session, caller: AdminWriter) -> Response:
    mapping = await session.get(UserServiceMapping, mapping_id)
    pair = None if mapping is None else {"user_id": mapping.user_id, "service_id": mapping.service_id}
    await services.delete_mapping(session, mapping_id)
    await audit(
        session,
        _audit_actor(request, caller),
        "mapping.delete",
        target_type="mapping",
        target_id=mapping_id,
        details=pair,
    )
    return Response(status_code=204)


@router.put("/admin/users/{user_id}/services")
async def exact_services(
    user_id: IdPath, body: ExactServices, request: Request, session: Session, caller: AdminWriter
) -> dict[str, Any]:
    ids = await services.set_user_services(
        session, user_id=user_id, service_ids=body.service_ids, actor_user_id=caller.id
    )
    await audit(
        session,
        _audit_actor(request, caller),
        "mapping.set_user_services",
        target_type="user",
        target_id=user_id,
        details={"service_ids": ids},
    )
    return {"user_id": user_id, "service_ids": ids}


@router.get("/me/services")
async def my_services(session: Session, caller: CurrentCaller) -> list[dict[str, Any]]:
    """The caller's usable services as labels only: never credentials, limits or other users' usage."""
    mapped = set(
        await session.scalars(
            select(UserServiceMapping.service_id).where(
                UserServiceMapping.user_id == caller.id, UserServiceMapping.is_active.is_(True)
            )
        )
    )
    return [
        {
            "id": s.service.id,
            "label": s.service.label,
            "domain": s.service.domain,
            "sending_now": s.availability.eligible or s.availability.slot_waiting,
        }
        for s in await queue.snapshot_services(session, now=utc_now())
        if s.service.id in mapped
    ]
