"""The admin health view of a service and its webhook secrets
(docs/providers.md#service-health-and-webhook-secret-rotation-admins), through the real ASGI app: figures checked
against rows the test writes (usage, in-flight SubTasks, send attempts inside and outside the last hour, the runtime
state, the status log), and secret rotation against the real webhook pipeline — a webhook signed with the old and with
the new secret both verify while both are stored, and the removed one stops verifying. Then the `edm service health` and
`edm service secrets` commands."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select, update

from edm.clock import utc_now
from edm.db.session import unit_of_work
from edm.dispatch import queue
from edm.email_services import health
from edm.models.email_services import EmailService, EmailServiceState, EmailServiceStatusLog, ServiceDayUsage
from edm.models.system import AuditLog
from edm.models.tasks import SendAttempt, SubTask
from edm.models.users import Role, User
from edm.tasks import generation
from tests import factories
from tests.helpers import Account, api_client, make_account, settings_for
from tests.integration.test_media import edm

ADMIN = "/api/v1/admin/services"


async def _world(db_url: str, sessionmaker: Any) -> tuple[int, int, list[int]]:
    """Two fake services mapped to one user, and ten generated SubTasks: (alpha id, beta id, subtask ids)."""
    settings = settings_for(db_url)
    world = await factories.world(
        sessionmaker,
        settings,
        recipients=10,
        services_=[
            {
                "name": "alpha",
                "daily_quota": 500,
                "timezone": "Asia/Shanghai",
                "quota_reset_time": "02:00",
                "sending_interval_seconds": 0.5,
                "max_concurrency": 3,
            },
            {"name": "beta"},
        ],
    )
    async with unit_of_work(sessionmaker) as session:
        task_id = await factories.task(
            session,
            world.user_id,
            sender_id=world.sender_id,
            template_ids=[world.template_id],
            rule={"type": "all_contacts"},
        )
    async with unit_of_work(sessionmaker) as session:
        await generation.generate(session, task_id, now=utc_now())
    async with unit_of_work(sessionmaker) as session:
        ids = list(await session.scalars(select(SubTask.id).where(SubTask.task_id == task_id).order_by(SubTask.id)))
    return world.service_ids[0], world.service_ids[1], ids


def _attempt(subtask_id: int, service_id: int, outcome: str, duration: int, at: dt.datetime) -> SendAttempt:
    return SendAttempt(
        subtask_id=subtask_id,
        attempt_no=1,
        service_id=service_id,
        started_at=at,
        finished_at=at,
        duration_ms=duration,
        outcome=outcome,
    )


async def _admin(sessionmaker: Any, zone: str = "America/New_York") -> Account:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    async with unit_of_work(sessionmaker) as session:
        await session.execute(update(User).where(User.id == admin.id).values(timezone=zone))
    return admin


# --------------------------------------------------------------------------------------------------------
# Health
# --------------------------------------------------------------------------------------------------------


async def test_health_figures_match_the_rows(db_url: str, engine: Any, sessionmaker: Any) -> None:
    alpha, beta, subtasks = await _world(db_url, sessionmaker)
    admin = await _admin(sessionmaker)
    now = utc_now()
    last_success = now - dt.timedelta(minutes=3)
    async with unit_of_work(sessionmaker) as session:
        service = await session.get(EmailService, alpha)
        assert service is not None
        day = queue.day_of(service, now)
        session.add(
            ServiceDayUsage(service_id=alpha, service_day=day, accepted=30, uncertain=2, failed=7, adjustment=1)
        )
        session.add(ServiceDayUsage(service_id=alpha, service_day=day - dt.timedelta(days=1), accepted=400))
        await session.execute(
            update(SubTask)
            .where(SubTask.id.in_(subtasks[:2]))
            .values(send_state="allocated", service_id=alpha, lease_expires_at=now + dt.timedelta(minutes=5))
        )
        # 20 attempts in the last hour: 10..200 ms; 16 accepted, 2 transient, 1 throttled, 1 permanent.
        outcomes = ["accepted"] * 16 + ["transient", "transient", "throttled", "permanent"]
        for i, outcome in enumerate(outcomes):
            session.add(_attempt(subtasks[i % 10], alpha, outcome, 10 * (i + 1), now - dt.timedelta(minutes=50 - i)))
        session.add(_attempt(subtasks[0], alpha, "transient", 99999, now - dt.timedelta(hours=2)))  # too old
        session.add(_attempt(subtasks[1], beta, "auth_config", 77777, now - dt.timedelta(minutes=1)))  # other service
        await session.execute(
            update(EmailServiceState)
            .where(EmailServiceState.service_id == alpha)
            .values(last_success_at=last_success, last_failure_at=now - dt.timedelta(minutes=1), last_error="HTTP 503")
        )

    async with api_client(db_url, engine) as client:
        frozen = await client.post(f"{ADMIN}/{alpha}/freeze", json={"reason": "checking"}, headers=admin.headers)
        assert frozen.status_code == 200
        r = await client.get(f"{ADMIN}/{alpha}/health", headers=admin.headers)
        assert r.status_code == 200, r.text
        body = r.json()
        user = await make_account(sessionmaker, "plain")
        assert (await client.get(f"{ADMIN}/{alpha}/health", headers=user.headers)).status_code == 403
        assert (await client.get(f"{ADMIN}/999999/health", headers=admin.headers)).status_code == 404

    assert (body["state"], body["available"], body["frozen_reason"]) == ("frozen", False, "manual")
    assert (body["used_today"], body["effective_quota"], body["remaining_today"], body["in_flight"]) == (
        35,
        500,
        465,
        2,
    )
    assert (body["sending_interval_seconds"], body["max_concurrency"]) == (0.5, 3)
    recent = body["recent"]
    assert (recent["attempts"], recent["errors"], recent["error_rate"]) == (20, 3, 0.15)
    assert recent["by_outcome"] == {"accepted": 16, "permanent": 1, "throttled": 1, "transient": 2}
    assert (recent["latency_ms_p50"], recent["latency_ms_p95"], recent["window_complete"]) == (100, 190, True)
    assert dt.datetime.fromisoformat(body["last_success_at"]) == last_success
    assert body["last_error"] == "HTTP 503"

    reset = body["next_reset"]
    utc = dt.datetime.fromisoformat(reset["utc"])
    assert (utc.hour, utc.minute) == (18, 0) and now < utc <= now + dt.timedelta(days=1)  # 02:00 in Shanghai
    local = dt.datetime.fromisoformat(reset["service_local"])
    assert (local.hour, local.utcoffset()) == (2, dt.timedelta(hours=8)) and local == utc
    mine = dt.datetime.fromisoformat(reset["admin_local"])
    assert reset["admin_timezone"] == "America/New_York" and mine == utc
    assert mine.utcoffset() in (dt.timedelta(hours=-5), dt.timedelta(hours=-4))

    assert {u["url"] for u in body["webhook_urls"]} == {
        f"http://edm.test/webhooks/fake/{alpha}",
        "http://edm.test/webhooks/fake",
    }
    log = body["status_log"]
    assert log[0]["change"] == "frozen" and log[0]["reason"] == "checking" and log[-1]["new_value"] == "created"


async def test_recent_window_is_bounded_by_the_scan(
    db_url: str, sessionmaker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the newest SCAN_ROWS attempts of the deployment are read; the answer says when that cut the hour."""
    alpha, beta, subtasks = await _world(db_url, sessionmaker)
    now = utc_now()
    async with unit_of_work(sessionmaker) as session:
        for i in range(6):  # older ones for alpha, then newer ones for beta
            session.add(_attempt(subtasks[i], alpha, "accepted", 5, now - dt.timedelta(minutes=40 - i)))
        for i in range(4):
            session.add(_attempt(subtasks[i], beta, "accepted", 5, now - dt.timedelta(minutes=10 - i)))
    monkeypatch.setattr(health, "SCAN_ROWS", 5)
    async with unit_of_work(sessionmaker) as session:
        recent = await health.recent_attempts(session, alpha, now=now)
    assert (recent["attempts"], recent["window_complete"]) == (1, False)
    monkeypatch.setattr(health, "SCAN_ROWS", 100)
    async with unit_of_work(sessionmaker) as session:
        recent = await health.recent_attempts(session, alpha, now=now)
    assert (recent["attempts"], recent["window_complete"]) == (6, True)
    assert health.percentile([], 0.5) is None and health.percentile([7], 0.95) == 7


# --------------------------------------------------------------------------------------------------------
# Webhook secrets
# --------------------------------------------------------------------------------------------------------

OLD = "old-webhook-secret-1234"
NEW = "new-webhook-secret-5678"


def _signed(secret: str, n: int) -> tuple[bytes, dict[str, str]]:
    """A fake-provider event batch, signed the way the provider signs it: HMAC-SHA256("<ts>." + body)."""
    body = orjson.dumps(
        {"events": [{"event_id": f"e-{n}", "event": "delivered", "subtask_id": "424242", "timestamp": time.time()}]}
    )
    ts = str(int(time.time()))
    signature = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/json", "X-Fake-Signature": f"t={ts},v1={signature}"}


async def _post(client: httpx.AsyncClient, service_id: int, secret: str, n: int) -> int:
    body, headers = _signed(secret, n)
    return (await client.post(f"/webhooks/fake/{service_id}", content=body, headers=headers)).status_code


async def test_webhook_secret_rotation(db_url: str, engine: Any, sessionmaker: Any) -> None:
    settings = settings_for(db_url)
    async with unit_of_work(sessionmaker) as session:
        sid = await factories.service(session, settings, "hooks", credentials={"webhook_secrets": [OLD]})
    admin = await _admin(sessionmaker)
    url = f"{ADMIN}/{sid}/webhook-secrets"
    async with api_client(db_url, engine) as client:
        listed = await client.get(url, headers=admin.headers)
        assert listed.status_code == 200 and OLD not in listed.text
        assert [(s["id"], s["hint"]) for s in listed.json()] == [("legacy-0", "…1234")]
        assert await _post(client, sid, OLD, 1) == 200
        assert await _post(client, sid, NEW, 2) == 401

        added = await client.post(url, json={"value": NEW}, headers=admin.headers)
        assert added.status_code == 201, added.text
        assert added.json()["value"] == NEW and added.json()["hint"] == "…5678" and added.json()["added_at"]
        new_id = added.json()["id"]
        listed = await client.get(url, headers=admin.headers)
        assert OLD not in listed.text and NEW not in listed.text
        secrets = listed.json()
        assert [s["hint"] for s in secrets] == ["…5678", "…1234"] and secrets[0]["id"] == new_id
        old_id = secrets[1]["id"]
        assert old_id != "legacy-0"  # a write gives every entry a stable id
        view = await client.get(f"{ADMIN}/{sid}", headers=admin.headers)
        assert OLD not in view.text and NEW not in view.text
        assert view.json()["credentials_hint"]["webhook_secrets"] == "2 stored"

        # Both stored: both verify (the provider may sign with either while it switches over).
        assert await _post(client, sid, OLD, 3) == 200
        assert await _post(client, sid, NEW, 4) == 200

        removed = await client.delete(f"{url}/{old_id}", headers=admin.headers)
        assert removed.status_code == 200 and removed.json()["remaining"] == 1
        assert await _post(client, sid, OLD, 5) == 401
        assert await _post(client, sid, NEW, 6) == 200

        generated = await client.post(url, json={}, headers=admin.headers)
        assert generated.status_code == 201 and len(generated.json()["value"]) >= 40
        assert await _post(client, sid, generated.json()["value"], 7) == 200
        assert [s["id"] for s in (await client.get(url, headers=admin.headers)).json()] == [
            generated.json()["id"],
            new_id,
        ]

        # Refusals.
        assert (await client.delete(f"{url}/{old_id}", headers=admin.headers)).status_code == 404
        assert (await client.post(url, json={"value": NEW}, headers=admin.headers)).status_code == 409
        assert (await client.post(url, json={"value": "short"}, headers=admin.headers)).status_code == 422
        assert (await client.post(url, json={"value": NEW + "x", "extra": 1}, headers=admin.headers)).status_code == 422
        past = (utc_now() - dt.timedelta(hours=1)).isoformat()
        assert (
            await client.post(url, json={"value": NEW + "x", "expires_at": past}, headers=admin.headers)
        ).status_code == 422
        assert (await client.get(f"{ADMIN}/999999/webhook-secrets", headers=admin.headers)).status_code == 404
        user = await make_account(sessionmaker, "plain")
        assert (await client.get(url, headers=user.headers)).status_code == 403
        reader = await make_account(sessionmaker, "auditor", role=Role.ADMIN, scope="read")
        assert (await client.post(url, json={"value": NEW + "y"}, headers=reader.headers)).status_code == 403

    async with unit_of_work(sessionmaker) as session:
        changes = list(
            await session.scalars(
                select(EmailServiceStatusLog.change)
                .where(EmailServiceStatusLog.service_id == sid)
                .order_by(EmailServiceStatusLog.id)
            )
        )
        actions = list(
            await session.scalars(
                select(AuditLog.action).where(AuditLog.action.like("service.%")).order_by(AuditLog.id)
            )
        )
        texts = [json.dumps(d) for d in await session.scalars(select(AuditLog.details))]
    assert changes[-3:] == ["webhook_secret_added", "webhook_secret_removed", "webhook_secret_added"]
    assert actions == ["service.webhook_secret_added", "service.webhook_secret_removed", "service.webhook_secret_added"]
    assert not any(OLD in t or NEW in t for t in texts)


# --------------------------------------------------------------------------------------------------------
# The CLI
# --------------------------------------------------------------------------------------------------------


def test_health_and_secrets_through_the_cli(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert edm(url, "db", "upgrade").returncode == 0
    created = edm(url, "service", "create", "--name", "relay", "--provider", "fake", "--domain", "mail.example.com")
    assert created.returncode == 0, created.stderr

    added = edm(url, "service", "secrets", "relay", "add", "--value-stdin", stdin=OLD + "\n")
    assert added.returncode == 0 and "…1234" in added.stdout and OLD not in added.stdout, added
    generated = edm(url, "service", "secrets", "relay", "add", "--json")
    assert generated.returncode == 0, generated.stderr
    secret = json.loads(generated.stdout)
    assert len(secret["value"]) >= 40  # shown once
    listed = edm(url, "service", "secrets", "relay", "--json")
    rows = json.loads(listed.stdout)
    assert [r["id"] for r in rows] == [secret["id"], rows[1]["id"]] and secret["value"] not in listed.stdout
    removed = edm(url, "service", "secrets", "relay", "remove", "--id", rows[1]["id"])
    assert removed.returncode == 0 and "1 left" in removed.stdout, removed
    for args, message in (
        (("remove",), "needs --id"),
        (("remove", "--id", "nope"), "not found"),
        (("rotate",), "list, add or remove"),
    ):
        bad = edm(url, "service", "secrets", "relay", *args)
        assert bad.returncode == 2 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad

    shown = edm(url, "service", "health", "relay", "--timezone", "Europe/Paris")
    assert shown.returncode == 0, shown.stderr
    assert "relay (fake" in shown.stdout and "Europe/Paris" in shown.stdout and "webhook_secret_removed" in shown.stdout
    assert "/webhooks/fake/" in shown.stdout and "1 secret(s)" in shown.stdout
    unknown = edm(url, "service", "health", "nope")
    assert unknown.returncode == 2 and "not found" in unknown.stderr
    bad_zone = edm(url, "service", "health", "relay", "--timezone", "Mars/Base")
    assert bad_zone.returncode == 2 and "unknown time zone" in bad_zone.stderr
