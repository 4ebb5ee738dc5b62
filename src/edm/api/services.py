"""Admin routes for sending services, their webhook secrets and the user–service mappings, and /me/services.

Each route parses, authorizes and calls the email-services functions the CLI calls too; those write the status
log and the audit rows (credentials and webhook secrets never go in)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam

from edm.api.deps import Admin, AdminWriter, CurrentCaller, IdPath, IdQuery, Paging, Session
from edm.clock import utc_now
from edm.db.session import end_transaction
from edm.email_services import health, history, mappings, probe, webhook_secrets
from edm.email_services import service as services
from edm.email_services.schemas import (
    ExactServices,
    FreezeBody,
    HealthHistoryOut,
    MappingBody,
    MappingOut,
    MyServiceOut,
    ServiceActionOut,
    ServiceCreate,
    ServiceFields,
    ServiceHealthOut,
    ServiceOut,
    ServiceStateOut,
    StatusLogOut,
    TestSendBody,
    TestSendOut,
    UnsavedServiceTest,
    UsageBody,
    UsageOut,
    UserServicesOut,
    WebhookSecretAddedOut,
    WebhookSecretBody,
    WebhookSecretOut,
    WebhookSecretRemovedOut,
)
from edm.paging import PageOut, page_of
from edm.security.crypto import Vault

router = APIRouter(prefix="/api/v1", tags=["services"])


def _vault(request: Request) -> Vault:
    return Vault.from_settings(request.app.state.settings)


def _forget_cached_targets(request: Request, provider: str) -> None:
    """This process's webhook pipeline caches each provider's secrets for 5 s: drop the entry so the change
    applies to the next request here at once (other processes follow within those 5 s)."""
    cache = getattr(request.app.state, "webhook_targets", None)
    if isinstance(cache, dict):
        cache.pop(provider, None)


@router.get("/admin/services")
async def list_services(request: Request, session: Session, caller: Admin) -> list[ServiceStateOut]:
    return await health.service_states(session, _vault(request), now=utc_now())


@router.post("/admin/services", status_code=201)
async def create_service(body: ServiceCreate, request: Request, session: Session, caller: AdminWriter) -> ServiceOut:
    values, credentials = body.split()
    settings = request.app.state.settings
    svc = await services.create_service(
        session,
        _vault(request),
        values=values,
        credentials=credentials,
        fake_allowed=settings.fake_provider_allowed,
        actor=caller.actor(request),
        default_timezone=settings.default_timezone,
    )
    return services.public_view(svc, _vault(request))


@router.get("/admin/services/{service_id}")
async def get_service(service_id: IdPath, request: Request, session: Session, caller: Admin) -> ServiceStateOut:
    return await health.service_state(session, _vault(request), service_id, now=utc_now())


@router.patch("/admin/services/{service_id}")
async def patch_service(
    service_id: IdPath, body: ServiceFields, request: Request, session: Session, caller: AdminWriter
) -> ServiceOut:
    values, credentials = body.split()
    svc = await services.update_service(
        session,
        _vault(request),
        service_id,
        values=values,
        credentials=credentials,
        fake_allowed=request.app.state.settings.fake_provider_allowed,
        actor=caller.actor(request),
    )
    if credentials:
        _forget_cached_targets(request, svc.provider)
    return services.public_view(svc, _vault(request))


@router.delete("/admin/services/{service_id}", status_code=204)
async def delete_service(service_id: IdPath, request: Request, session: Session, caller: AdminWriter) -> Response:
    """Archive the service (disabled, credentials erased, hidden, kept for history). 409 `in_use` while
    mappings exist or SubTasks are allocated to it."""
    svc = await services.archive_service(session, service_id, actor=caller.actor(request))
    _forget_cached_targets(request, svc.provider)
    return Response(status_code=204)


@router.post("/admin/services/{service_id}/freeze")
async def freeze_service(
    service_id: IdPath, body: FreezeBody, request: Request, session: Session, caller: AdminWriter
) -> ServiceActionOut:
    await services.freeze(session, service_id, reason=body.reason, actor=caller.actor(request))
    return ServiceActionOut(service_id=service_id, done="freeze")


@router.post("/admin/services/{service_id}/usage")
async def set_usage(
    service_id: IdPath, body: UsageBody, request: Request, session: Session, caller: AdminWriter
) -> UsageOut:
    delta = await services.set_used_today(
        session, service_id, used=body.used_today, actor=caller.actor(request), reason=body.reason
    )
    return UsageOut(service_id=service_id, used_today=body.used_today, adjustment_delta=delta)


@router.post("/admin/services/{service_id}/test-send")
async def test_send(
    service_id: IdPath, body: TestSendBody, request: Request, session: Session, caller: AdminWriter
) -> TestSendOut:
    """Send one test message now (ignoring the rate slot), report its classification, count it as usage."""
    actor = caller.actor(request)
    await end_transaction(session)  # end the authentication transaction: the send is a network call
    settings = request.app.state.settings
    result = await probe.test_saved_service(
        request.app.state.sessionmaker,
        _vault(request),
        service_id,
        to=body.to,
        from_local=body.from_local_part,
        subject=body.subject,
        html=body.html,
        fake_allowed=settings.fake_provider_allowed,
        unsubscribe_base=settings.effective_tracking_url,
        actor=actor,
    )
    return TestSendOut.model_validate(result)


@router.post("/admin/services/test")
async def test_unsaved(
    body: UnsavedServiceTest, request: Request, session: Session, caller: AdminWriter
) -> TestSendOut:
    """The same check for a configuration that is not saved; nothing is stored."""
    await end_transaction(session)  # end the authentication transaction: the send is a network call
    settings = request.app.state.settings
    result = await probe.test_unsaved_service(
        body.configuration(),
        body.credentials,
        to=body.to,
        from_local=body.from_local_part,
        subject=body.subject,
        html=body.html,
        fake_allowed=settings.fake_provider_allowed,
        unsubscribe_base=settings.effective_tracking_url,
    )
    return TestSendOut.model_validate(result)


@router.get("/admin/services/{service_id}/health")
async def service_health(service_id: IdPath, request: Request, session: Session, caller: Admin) -> ServiceHealthOut:
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


@router.get("/admin/services/{service_id}/health/history")
async def service_health_history(
    service_id: IdPath, session: Session, caller: Admin, window: history.Window = "24h"
) -> HealthHistoryOut:
    """The service's send attempts over the last 24 hours by the hour (`window=24h`) or the last 7 days by six
    hours (`7d`), UTC-aligned: attempts, accepted, accept rate, average latency and errors by class per point, and
    the totals. The last point holds the current hour."""
    return await history.health_history(session, service_id, window=window, now=utc_now())


@router.get("/admin/services/{service_id}/webhook-secrets")
async def list_webhook_secrets(
    service_id: IdPath, request: Request, session: Session, caller: Admin
) -> list[WebhookSecretOut]:
    """Masked: id, the last 4 characters, added_at, expires_at. The values are never returned."""
    return await webhook_secrets.list_webhook_secrets(session, _vault(request), service_id)


@router.post("/admin/services/{service_id}/webhook-secrets", status_code=201)
async def add_webhook_secret(
    service_id: IdPath, body: WebhookSecretBody, request: Request, session: Session, caller: AdminWriter
) -> WebhookSecretAddedOut:
    """Add a secret; every stored secret keeps verifying (rotation). The value is in this answer only."""
    view, value = await webhook_secrets.add_webhook_secret(
        session,
        _vault(request),
        service_id,
        value=body.value,
        expires_at=body.expires_at,
        actor=caller.actor(request),
    )
    _forget_cached_targets(request, (await services.get_service(session, service_id)).provider)
    return WebhookSecretAddedOut(**view.model_dump(), value=value)


@router.delete("/admin/services/{service_id}/webhook-secrets/{secret_id}")
async def remove_webhook_secret(
    service_id: IdPath,
    secret_id: Annotated[str, PathParam(max_length=64)],
    request: Request,
    session: Session,
    caller: AdminWriter,
) -> WebhookSecretRemovedOut:
    """Webhooks signed with it stop verifying (at once in this process, within 5 s in the others)."""
    removed = await webhook_secrets.remove_webhook_secret(
        session, _vault(request), service_id, secret_id, actor=caller.actor(request)
    )
    _forget_cached_targets(request, (await services.get_service(session, service_id)).provider)
    return removed


# After the fixed sub-paths above: `{action}` would otherwise match `test-send`.
@router.post("/admin/services/{service_id}/{action}")
async def service_action(
    service_id: IdPath,
    action: Literal["enable", "disable", "unfreeze", "clear-backoff"],
    request: Request,
    session: Session,
    caller: AdminWriter,
) -> ServiceActionOut:
    actor = caller.actor(request)
    if action in ("enable", "disable"):
        await services.set_enabled(session, service_id, enabled=action == "enable", actor=actor)
    elif action == "unfreeze":
        await services.unfreeze(session, service_id, actor=actor)
    else:
        await services.clear_backoff(session, service_id, actor=actor)
    return ServiceActionOut(service_id=service_id, done=action)


@router.get("/admin/status-log")
async def status_log(
    session: Session, caller: Admin, page: Paging, service_id: IdQuery = None
) -> PageOut[StatusLogOut]:
    """Services' state changes, newest first (the cursor continues to older rows)."""
    rows = await services.status_log(session, page, service_id=service_id)
    return PageOut[StatusLogOut].model_validate(page_of([StatusLogOut.model_validate(r) for r in rows], page))


@router.get("/admin/mappings")
async def list_mappings(
    session: Session, caller: Admin, page: Paging, user_id: IdQuery = None, service_id: IdQuery = None
) -> PageOut[MappingOut]:
    rows = await mappings.list_mappings(session, page, user_id=user_id, service_id=service_id)
    return PageOut[MappingOut].model_validate(page_of([MappingOut.model_validate(m) for m in rows], page))


@router.post("/admin/mappings", status_code=201)
async def create_mappings(
    body: MappingBody, request: Request, session: Session, caller: AdminWriter
) -> list[MappingOut]:
    """Assign many services to many users in one call (one audit row for the call)."""
    created = await mappings.assign(
        session,
        user_ids=body.user_ids,
        service_ids=body.service_ids,
        is_active=body.is_active,
        actor=caller.actor(request),
    )
    return [MappingOut.model_validate(m) for m in created]


@router.delete("/admin/mappings/{mapping_id}", status_code=204)
async def delete_mapping(mapping_id: IdPath, request: Request, session: Session, caller: AdminWriter) -> Response:
    await mappings.delete_mapping(session, mapping_id, actor=caller.actor(request))
    return Response(status_code=204)


@router.put("/admin/users/{user_id}/services")
async def exact_services(
    user_id: IdPath, body: ExactServices, request: Request, session: Session, caller: AdminWriter
) -> UserServicesOut:
    ids = await mappings.set_user_services(
        session, user_id=user_id, service_ids=body.service_ids, actor=caller.actor(request)
    )
    return UserServicesOut(user_id=user_id, service_ids=ids)


@router.get("/me/services")
async def my_services(session: Session, caller: CurrentCaller) -> list[MyServiceOut]:
    """The caller's usable services as labels only: never credentials, limits or other users' usage."""
    return await mappings.usable_services(session, caller.id, now=utc_now())
