"""The admin test send (docs/providers.md#creating-a-service) through the API: one real send to a typed address,
classified, counted as today's usage, logged — and never a reason to freeze the service. Also an unsaved configuration
(nothing stored) and an SMTP service against the real aiosmtpd sink."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.devtools.smtp_sink import SmtpSink
from edm.models.email_services import EmailService, EmailServiceState, EmailServiceStatusLog, ServiceDayUsage
from edm.models.users import Role
from edm.providers.fake import FakeAdapter
from tests.helpers import Account, api_client, make_account

FAKE = {
    "name": "fake-1",
    "provider": "fake",
    "domain": "fake.example.com",
    "sending_interval_seconds": 0,
    "max_concurrency": 2,
    "daily_quota": 1000,
}


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


async def create(client: httpx.AsyncClient, admin: Account, **overrides: Any) -> int:
    created = await client.post("/api/v1/admin/services", json={**FAKE, **overrides}, headers=admin.headers)
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


async def usage(sessionmaker: async_sessionmaker[AsyncSession], service_id: int) -> dict[str, int]:
    async with sessionmaker() as session:
        rows = (await session.scalars(select(ServiceDayUsage).where(ServiceDayUsage.service_id == service_id))).all()
    return {
        "accepted": sum(r.accepted for r in rows),
        "failed": sum(r.failed for r in rows),
        "uncertain": sum(r.uncertain for r in rows),
    }


async def logged_test_sends(
    sessionmaker: async_sessionmaker[AsyncSession], service_id: int
) -> list[EmailServiceStatusLog]:
    async with sessionmaker() as session:
        return list(
            await session.scalars(
                select(EmailServiceStatusLog)
                .where(EmailServiceStatusLog.service_id == service_id, EmailServiceStatusLog.change == "test_send")
                .order_by(EmailServiceStatusLog.id)
            )
        )


async def test_a_test_send_on_a_fake_service_is_accepted_counted_as_usage_and_logged(
    db_url: str, engine: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    async with api_client(db_url, engine) as client:
        sid = await create(client, admin)
        before = await usage(sessionmaker, sid)
        answer = await client.post(
            f"/api/v1/admin/services/{sid}/test-send", json={"to": "someone@example.org"}, headers=admin.headers
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["classification"] == "accepted"
        assert isinstance(body["latency_ms"], int) and body["latency_ms"] >= 0
        assert body["provider_message_id"] and body["provider_message_id"].startswith("fake-")
        # The simulated provider really took one message, to the typed address, marked as a test.
        [delivery] = FakeAdapter.deliveries_for(sid)
        assert delivery.to_address == "someone@example.org" and delivery.subject.startswith("[TEST] ")
        assert delivery.key == body["message_key"]

        after = await usage(sessionmaker, sid)
        assert after["accepted"] == before["accepted"] + 1 and after["failed"] == before["failed"]
        state = (await client.get(f"/api/v1/admin/services/{sid}", headers=admin.headers)).json()
        assert state["used_today"] == 1

        [entry] = await logged_test_sends(sessionmaker, sid)
        assert entry.new_value == "accepted" and entry.actor_user_id == admin.id
        assert "someone@example.org" not in (entry.reason or ""), "the status log must mask the address"
        logged = (await client.get(f"/api/v1/admin/status-log?service_id={sid}", headers=admin.headers)).json()["items"]
        assert logged[0]["change"] == "test_send"


async def test_an_auth_failure_in_a_test_send_is_reported_but_never_freezes_the_service(
    db_url: str, engine: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    async with api_client(db_url, engine) as client:
        sid = await create(client, admin, options={"auth_pct": 100})
        answer = await client.post(
            f"/api/v1/admin/services/{sid}/test-send", json={"to": "someone@example.org"}, headers=admin.headers
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["classification"], body["status"], body["provider_code"]) == ("auth_config", 401, "fake_auth")
        assert body["provider_message_id"] is None

        state = (await client.get(f"/api/v1/admin/services/{sid}", headers=admin.headers)).json()
        assert state["state"] == "available" and state["frozen_reason"] is None
        async with sessionmaker() as session:
            row = await session.get(EmailServiceState, sid)
            assert row is None or not row.frozen
        assert (await usage(sessionmaker, sid))["failed"] == 1  # counted like any send: a failure
        [entry] = await logged_test_sends(sessionmaker, sid)
        assert entry.new_value == "auth_config"


async def test_a_test_send_to_an_invalid_address_is_422_naming_the_to_field(
    db_url: str, engine: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    async with api_client(db_url, engine) as client:
        sid = await create(client, admin)
        bad = await client.post(
            f"/api/v1/admin/services/{sid}/test-send", json={"to": "not an address"}, headers=admin.headers
        )
        assert bad.status_code == 422, bad.text
        error = bad.json()["error"]
        assert error["message"].startswith("to: ") and "not a valid email address" in error["message"], bad.text
        assert [d["field"] for d in error["details"]] == ["to"]
    assert FakeAdapter.deliveries_for(sid) == []
    assert await usage(sessionmaker, sid) == {"accepted": 0, "failed": 0, "uncertain": 0}
    assert await logged_test_sends(sessionmaker, sid) == []


async def test_a_test_send_on_an_unknown_service_is_404(
    db_url: str, engine: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    async with api_client(db_url, engine) as client:
        missing = await client.post(
            "/api/v1/admin/services/999999/test-send", json={"to": "a@example.org"}, headers=admin.headers
        )
        assert missing.status_code == 404, missing.text
        assert missing.json()["error"]["code"] == "not_found"


async def test_a_test_send_by_a_non_admin_is_403_and_sends_nothing(
    db_url: str, engine: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    user = await make_account(sessionmaker, "alice")
    async with api_client(db_url, engine) as client:
        sid = await create(client, admin)
        forbidden = await client.post(
            f"/api/v1/admin/services/{sid}/test-send", json={"to": "a@example.org"}, headers=user.headers
        )
        assert forbidden.status_code == 403, forbidden.text
        unsaved = await client.post(
            "/api/v1/admin/services/test", headers=user.headers, json={**FAKE, "name": "draft", "to": "a@example.org"}
        )
        assert unsaved.status_code == 403, unsaved.text
    assert FakeAdapter.deliveries_for(sid) == [] and FakeAdapter.deliveries_for(0) == []
    assert await usage(sessionmaker, sid) == {"accepted": 0, "failed": 0, "uncertain": 0}
    assert await logged_test_sends(sessionmaker, sid) == []


async def test_an_unsaved_configuration_is_tested_without_storing_anything(
    db_url: str, engine: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    async with api_client(db_url, engine) as client:
        answer = await client.post(
            "/api/v1/admin/services/test",
            headers=admin.headers,
            json={**FAKE, "name": "draft", "to": "someone@example.org"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["classification"] == "accepted" and answer.json()["provider_message_id"]
        assert [d.to_address for d in FakeAdapter.deliveries_for(0)] == ["someone@example.org"]
        bad = await client.post(
            "/api/v1/admin/services/test", headers=admin.headers, json={**FAKE, "name": "draft", "to": "nope"}
        )
        assert bad.status_code == 422 and bad.json()["error"]["message"].startswith("to: "), bad.text
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(EmailService)) == 0
        assert await session.scalar(select(func.count()).select_from(ServiceDayUsage)) == 0
        assert await session.scalar(select(func.count()).select_from(EmailServiceStatusLog)) == 0


async def test_an_unsaved_smtp_configuration_sends_a_test_marked_message_to_the_relay(
    db_url: str, engine: Any, sessionmaker: async_sessionmaker[AsyncSession], sink: SmtpSink
) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    async with api_client(db_url, engine) as client:
        answer = await client.post(
            "/api/v1/admin/services/test",
            headers=admin.headers,
            json={
                "name": "relay",
                "provider": "smtp",
                "domain": "mail.example.com",
                "to": "someone@example.org",
                "options": {"host": sink.host, "port": sink.port, "security": "none"},
            },
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["classification"] == "accepted"
    assert await sink.wait_for_messages(1)
    [got] = sink.messages
    assert got.rcpt_tos == ("someone@example.org",)
    assert got.subject is not None and got.subject.startswith("[TEST] ")
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(EmailService)) == 0


async def test_a_test_send_through_an_smtp_service_arrives_at_the_relay_marked_test(
    db_url: str, engine: Any, sessionmaker: async_sessionmaker[AsyncSession], sink: SmtpSink
) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    async with api_client(db_url, engine) as client:
        sid = await create(
            client,
            admin,
            name="relay",
            provider="smtp",
            domain="mail.example.com",
            options={"host": sink.host, "port": sink.port, "security": "none"},
        )
        answer = await client.post(
            f"/api/v1/admin/services/{sid}/test-send",
            headers=admin.headers,
            json={"to": "someone@example.org", "subject": "hello relay"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["classification"] == "accepted"
    assert await sink.wait_for_messages(1)
    [got] = sink.messages
    assert got.rcpt_tos == ("someone@example.org",)
    assert got.subject == "[TEST] hello relay"
    assert (await usage(sessionmaker, sid))["accepted"] == 1
