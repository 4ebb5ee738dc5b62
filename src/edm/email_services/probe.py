"""Admin test of a service (docs/providers.md#creating-a-service): one real send to an address the admin typed,
classified.

`send_test` touches no database. `test_saved_service` is the whole use case for a saved service, shared by
the API and the CLI: it reads the service in one transaction, sends with none open (no network call inside a
transaction), then counts the send toward today's usage, logs it and audits it in a second one. The rate
slot is ignored (an admin is waiting); the quota is not. `test_unsaved_service` checks a configuration that
is not saved: nothing is stored.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.addresses import normalize_email
from edm.clock import utc_now
from edm.content.render import RenderedContent, html_to_text
from edm.db.session import unit_of_work
from edm.dispatch import queue
from edm.dispatch.compose import config_of
from edm.dispatch.message import build_message
from edm.dispatch.service_day import service_day
from edm.email_services import service as services
from edm.errors import BadInput
from edm.models.email_services import StatusChange
from edm.observability import mask_email
from edm.providers.base import Outcome, SendResult, ServiceConfig
from edm.providers.registry import build_adapter
from edm.security.crypto import Vault
from edm.system.service import Actor

DEFAULT_SUBJECT = "EDM test of service {name}"
DEFAULT_HTML = "<p>This is a test message sent by EDM to check the sending service <b>{name}</b>.</p>"


@dataclass(frozen=True, slots=True)
class TestSendResult:
    classification: str
    status: int | None
    provider_code: str | None
    message: str
    provider_message_id: str | None
    latency_ms: int
    message_key: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def send_test(
    config: ServiceConfig,
    *,
    service_name: str,
    to: str,
    from_local: str,
    subject: str | None,
    html: str | None,
    fake_allowed: bool,
    unsubscribe_base: str,
) -> TestSendResult:
    """Send one `[TEST]` message through a freshly built adapter and classify the answer."""
    try:
        adapter = build_adapter(config, fake_allowed=fake_allowed)
    except ValueError as exc:
        raise BadInput.field("provider", str(exc)) from None
    key = str(uuid.uuid4())
    body = html or DEFAULT_HTML.format(name=_escape(service_name))
    content = RenderedContent(
        subject="[TEST] " + (subject or DEFAULT_SUBJECT.format(name=service_name)),
        preheader="",
        html=body,
        text=html_to_text(body),
    )
    try:
        message = build_message(
            key=key,
            task_id="test",
            user_id="admin",
            domain=config.domain,
            from_local=from_local,
            from_name="EDM test",
            to_address=to,
            to_name="",
            reply_to=None,
            content=content,
            unsubscribe_url=f"{unsubscribe_base}/u/test",
            with_mime=adapter.capabilities.needs_mime,
        )
    except ValueError as exc:
        await adapter.aclose()
        raise BadInput.field("to", str(exc)) from None
    started = time.perf_counter()
    try:
        result: SendResult = (await adapter.send([message]))[0]
    finally:
        await adapter.aclose()
    latency = result.latency_ms or int((time.perf_counter() - started) * 1000)
    return TestSendResult(
        classification=result.outcome.value,
        status=result.status,
        provider_code=result.provider_code,
        message=result.message,
        provider_message_id=result.provider_message_id,
        latency_ms=latency,
        message_key=key,
    )


async def test_saved_service(
    sessionmaker: async_sessionmaker[AsyncSession],
    vault: Vault,
    service_id: int,
    *,
    to: str,
    from_local: str = "test",
    subject: str | None = None,
    html: str | None = None,
    fake_allowed: bool,
    unsubscribe_base: str,
    actor: Actor,
) -> TestSendResult:
    async with sessionmaker() as session:
        service = await services.get_service(session, service_id)
        config = config_of(service, vault)
        name, timezone, reset_time = service.name, service.timezone, service.quota_reset_time
    address = normalize_email(to, field="to").original
    result = await send_test(
        config,
        service_name=name,
        to=address,
        from_local=from_local,
        subject=subject,
        html=html,
        fake_allowed=fake_allowed,
        unsubscribe_base=unsubscribe_base,
    )
    async with unit_of_work(sessionmaker) as session:
        day = service_day(utc_now(), timezone=timezone, reset_time=reset_time)
        await queue.upsert_usage(session, service_id=service_id, day=day, deltas=usage_delta(result.classification))
        services.log_change(
            session,
            service_id,
            StatusChange.TEST_SEND,
            new=result.classification,
            reason=f"test send to {mask_email(address)}: {result.message}"[:500],
            actor_user_id=actor.user_id,
        )
        await services.audit_service(
            session,
            actor,
            "service.test_send",
            service_id,
            to=mask_email(address),
            classification=result.classification,
        )
    return result


async def test_unsaved_service(
    values: dict[str, Any],
    credentials: dict[str, Any] | None,
    *,
    to: str,
    from_local: str,
    subject: str | None,
    html: str | None,
    fake_allowed: bool,
    unsubscribe_base: str,
) -> TestSendResult:
    """The same check for a configuration (`values`, `credentials`) that is not saved; nothing is stored."""
    values = services.validate_config(values, fake_allowed=fake_allowed)
    config = ServiceConfig(
        service_id=0,
        provider=values["provider"],
        domain=values["domain"],
        credentials=dict(credentials or {}),
        options=dict(values.get("options") or {}),
        max_concurrency=1,
        batch_size=1,
        request_timeout_seconds=float(values.get("request_timeout_seconds") or 30),
    )
    return await send_test(
        config,
        service_name=values["name"],
        to=normalize_email(to, field="to").original,
        from_local=from_local,
        subject=subject,
        html=html,
        fake_allowed=fake_allowed,
        unsubscribe_base=unsubscribe_base,
    )


def usage_delta(classification: str) -> dict[str, int]:
    """How a test send counts toward today's usage: like any send (docs/sending.md#daily-quota-and-the-service-day)."""
    if classification == Outcome.ACCEPTED:
        return {"accepted": 1}
    if classification == Outcome.MAYBE_SENT:
        return {"uncertain": 1}
    return {"failed": 1}


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
