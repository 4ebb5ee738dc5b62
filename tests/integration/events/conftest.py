"""Fixtures for the webhook and event tests: a task really sent through the fake provider, the ASGI app,
and provider-side signing (keys generated per test run, as the providers' own tooling would sign)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from edm.app import create_app
from edm.db.session import unit_of_work
from edm.events import apply as event_apply
from edm.models.events import Event
from edm.models.tasks import SubTask, Task
from edm.worker.jobs import EVENTS_LOOPS
from tests import factories
from tests.helpers import settings_for
from tests.integration.dispatch.conftest import DispatchKit

# Derived, not generated: the same key whichever way this module is imported.
SENDGRID_KEY = ec.derive_private_key(0x5E4D6121D, ec.SECP256R1())
SENDGRID_PUBLIC = base64.b64encode(
    SENDGRID_KEY.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
).decode()
MAILGUN_KEY = "mailgun-signing-key-for-tests"
ENGAGELAB_KEY = "engagelab-app-key-for-tests"


def engagelab_headers(*, key: str = ENGAGELAB_KEY, timestamp: int | None = None) -> dict[str, str]:
    """EngageLab's HMAC form: HMAC-SHA256(app key, timestamp), hex
    (docs/providers.md#webhooks-where-events-come-back)."""
    ts = str(timestamp or int(time.time()))
    return {
        "Content-Type": "application/json",
        "X-WebHook-Timestamp": ts,
        "X-WebHook-AppKey": "app",
        "X-WebHook-Signature": hmac.new(key.encode(), ts.encode(), hashlib.sha256).hexdigest(),
    }


def sendgrid_headers(
    body: bytes, *, key: ec.EllipticCurvePrivateKey = SENDGRID_KEY, timestamp: int | None = None
) -> dict[str, str]:
    ts = str(timestamp or int(time.time()))
    signature = key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Timestamp": ts,
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
    }


def mailgun_body(event_data: dict[str, Any], *, token: str, key: str = MAILGUN_KEY) -> bytes:
    ts = str(int(time.time()))
    signature = hmac.new(key.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()
    return orjson.dumps(
        {"signature": {"timestamp": ts, "token": token, "signature": signature}, "event-data": event_data}
    )


@dataclass
class EventKit:
    dkit: DispatchKit
    engine: AsyncEngine
    client: httpx.AsyncClient
    user_id: int = 0
    service_ids: dict[str, int] = field(default_factory=dict)
    # What EDM's outbound HTTP calls (SNS certificates, subscription confirmations) find: URL -> body.
    outbound_pages: dict[str, bytes] = field(default_factory=dict)
    outbound_requests: list[str] = field(default_factory=list)

    def serve(self, request: httpx.Request) -> httpx.Response:
        self.outbound_requests.append(str(request.url))
        page = self.outbound_pages.get(str(request.url))
        return httpx.Response(200, content=page) if page is not None else httpx.Response(404)

    async def add_service(
        self, name: str, provider: str, *, credentials: dict[str, Any] | None = None, **options: Any
    ) -> int:
        async with unit_of_work(self.sessionmaker) as session:
            service_id = await factories.service(
                session, self.dkit.settings, name, provider=provider, credentials=credentials, options=options
            )
        self.service_ids[provider] = service_id
        return service_id

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        return self.dkit.sessionmaker

    async def send_task(
        self,
        recipients: int,
        *,
        fake_options: dict[str, Any] | None = None,
        until_uncertain: bool = False,
        html: str | None = None,
    ) -> tuple[int, list[SubTask]]:
        """A task of `recipients` contacts sent through the fake provider until it completes (or, with
        `until_uncertain`, until every SubTask is uncertain)."""
        settings = self.dkit.settings
        async with unit_of_work(self.sessionmaker) as session:
            self.user_id = await factories.user(session, "alice", credit=100000)
            sender = await factories.sender(session, self.user_id)
            template = await factories.template(session, self.user_id, **({"html": html} if html else {}))
            await factories.contacts(session, self.user_id, recipients, prefix="rcpt")
            self.service_ids["fake"] = await factories.service(
                session, settings, "fake-esp", provider="fake", options=fake_options or {}, map_to=[self.user_id]
            )
            self.service_ids["sendgrid"] = await factories.service(
                session,
                settings,
                "sg",
                provider="sendgrid",
                credentials={"api_key": "SG.x", "webhook_secrets": [SENDGRID_PUBLIC]},
            )
            self.service_ids["mailgun"] = await factories.service(
                session,
                settings,
                "mg",
                provider="mailgun",
                credentials={"api_key": "key-x", "webhook_secrets": [MAILGUN_KEY]},
            )
            self.service_ids["engagelab"] = await factories.service(
                session,
                settings,
                "el",
                provider="engagelab",
                credentials={"api_user": "u", "api_key": "k", "webhook_secrets": [ENGAGELAB_KEY]},
            )
            task_id = await factories.task(
                session, self.user_id, sender_id=sender, template_ids=[template], rule={"type": "all_contacts"}
            )

        async def reached() -> bool:
            if until_uncertain:
                return await self.dkit.count(task_id, "uncertain") == recipients
            return await self.dkit.status(task_id) == "completed"

        async with self.dkit.worker(run_jobs=True):
            await self.dkit.wait_for(reached, timeout=30, what="task sent")
        return task_id, await self.dkit.subtasks(task_id)

    async def apply(self, *, simulated_matches_any: bool = True) -> event_apply.ApplyCounts:
        """What the worker's `events` job does (its loops), run now (small batches, so batching is exercised)."""
        return await event_apply.drain(
            self.sessionmaker, simulated_matches_any=simulated_matches_any, batch=50, loops=EVENTS_LOOPS
        )

    async def events(self) -> list[Event]:
        async with self.sessionmaker() as session:
            return list(await session.scalars(select(Event).order_by(Event.id)))

    async def task_status(self, task_id: int) -> str:
        async with self.sessionmaker() as session:
            return str(await session.scalar(select(Task.status).where(Task.id == task_id)))


@pytest.fixture
async def ekit(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> AsyncIterator[EventKit]:
    dkit = DispatchKit(db_url, sessionmaker)
    pages: dict[str, bytes] = {}
    requests: list[str] = []
    kit_ref: list[EventKit] = []
    outbound = httpx.MockTransport(lambda request: kit_ref[0].serve(request))
    app = create_app(settings_for(db_url, time_scale=0.05), engine=engine, outbound_transport=outbound)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edm.test") as client:
            kit = EventKit(dkit, engine, client, outbound_pages=pages, outbound_requests=requests)
            kit_ref.append(kit)
            yield kit
