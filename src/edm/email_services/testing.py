"""Admin test of a service (SPEC §8.4): one real send to an address the admin typed, classified.

No database here: the API route reads the service, ends its transaction, calls `send_test`, then counts the
send toward today's usage. The rate slot is ignored (an admin is waiting), quota is not.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from edm.content.render import RenderedContent, html_to_text
from edm.dispatch.message import build_message
from edm.errors import BadInput
from edm.providers.base import Outcome, SendResult, ServiceConfig
from edm.providers.registry import build_adapter

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


async def send_test(config: ServiceConfig, *, service_name: str, to: str, from_local: str,
                    subject: str | None, html: str | None, fake_allowed: bool, unsubscribe_base: str) -> TestSendResult:
    """Send one `[TEST]` message through a freshly built adapter and classify the answer."""
    try:
        adapter = build_adapter(config, fake_allowed=fake_allowed)
    except ValueError as exc:
        raise BadInput.field("provider", str(exc)) from None
    key = str(uuid.uuid4())
    body = html or DEFAULT_HTML.format(name=_escape(service_name))
    content = RenderedContent(subject="[TEST] " + (subject or DEFAULT_SUBJECT.format(name=service_name)),
                              preheader="", html=body, text=html_to_text(body))
    try:
        message = build_message(
            key=key, task_id="test", user_id="admin", domain=config.domain, from_local=from_local,
            from_name="EDM test", to_address=to, to_name="", reply_to=None, content=content,
            unsubscribe_url=f"{unsubscribe_base}/u/test", with_mime=adapter.capabilities.needs_mime,
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
    return TestSendResult(classification=result.outcome.value, status=result.status,
                          provider_code=result.provider_code, message=result.message,
                          provider_message_id=result.provider_message_id, latency_ms=latency, message_key=key)


def usage_delta(classification: str) -> dict[str, int]:
    """How a test send counts toward today's usage: like any send (§7.4)."""
    if classification == Outcome.ACCEPTED:
        return {"accepted": 1}
    if classification == Outcome.MAYBE_SENT:
        return {"uncertain": 1}
    return {"failed": 1}


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
