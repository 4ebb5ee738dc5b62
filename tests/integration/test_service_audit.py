"""Sending-service admin writes are audited wherever they come from: the API's test send, and every CLI
command that changes a service, its webhook secrets or its mappings (actor kind `cli`, no user), without a
credential or a secret in the audit log."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.session import unit_of_work
from edm.models.system import AuditLog
from edm.models.users import Role
from tests import factories
from tests.helpers import api_client, make_account
from tests.helpers import run_cli as _edm

API_KEY = "key-that-must-never-be-audited-0001"
ROTATED_KEY = "rotated-key-never-audited-0002"
WEBHOOK_SECRET = "webhook-secret-never-audited-0003"


async def _audit_rows(sessionmaker: async_sessionmaker[AsyncSession]) -> list[AuditLog]:
    async with sessionmaker() as session:
        return list(await session.scalars(select(AuditLog).order_by(AuditLog.id)))


async def test_an_admin_test_send_through_the_api_is_audited(
    db_url: str, engine: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    async with api_client(db_url, engine) as client:
        created = await client.post(
            "/api/v1/admin/services",
            json={"name": "fake-1", "provider": "fake", "domain": "fake.example.com"},
            headers=admin.headers,
        )
        assert created.status_code == 201, created.text
        service_id = created.json()["id"]
        sent = await client.post(
            f"/api/v1/admin/services/{service_id}/test-send", json={"to": "someone@example.org"}, headers=admin.headers
        )
        assert sent.status_code == 200, sent.text

    [row] = [r for r in await _audit_rows(sessionmaker) if r.action == "service.test_send"]
    assert (row.actor_user_id, row.actor_kind, row.target_type, row.target_id) == (
        admin.id,
        "token",
        "email_service",
        str(service_id),
    )
    assert row.details == {"to": "s***@example.org", "classification": "accepted"}


async def test_service_commands_of_the_cli_are_audited_as_the_cli(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with unit_of_work(sessionmaker) as session:
        alice = await factories.user(session, "alice")

    created = _edm(
        db_url,
        "service",
        "create",
        "--name",
        "esp",
        "--provider",
        "fake",
        "--domain",
        "esp.example.com",
        "--credentials-stdin",
        "--map",
        "alice",
        stdin=json.dumps({"api_key": API_KEY, "webhook_secrets": [WEBHOOK_SECRET]}),
    )
    assert created.returncode == 0, created.stderr
    steps = [
        (["service", "credentials", "esp"], json.dumps({"api_key": ROTATED_KEY})),
        (["service", "freeze", "esp", "--reason", "maintenance"], ""),
        (["service", "unfreeze", "esp"], ""),
        (["service", "test-send", "esp", "--to", "ops@example.org"], ""),
        (["service", "map", "esp", "alice"], ""),
        (["service", "secrets", "esp", "add"], ""),
    ]
    for args, stdin in steps:
        done = _edm(db_url, *args, stdin=stdin)
        assert done.returncode == 0, (args, done.stderr)

    rows = await _audit_rows(sessionmaker)
    assert {(r.actor_user_id, r.actor_kind) for r in rows} == {(None, "cli")}
    service_id = int(rows[0].target_id or 0)
    assigned = {"user_ids": [alice], "service_ids": [service_id], "is_active": True, "mappings": 1}
    assert [(r.action, r.details) for r in rows] == [
        (
            "service.create",
            {
                "name": "esp",
                "provider": "fake",
                "domain": "esp.example.com",
                "credential_fields": ["api_key", "webhook_secrets"],
            },
        ),
        ("mapping.assign", assigned),
        ("service.credentials_update", {"fields": ["api_key"]}),
        ("service.freeze", {"reason": "maintenance"}),
        ("service.unfreeze", {}),
        ("service.test_send", {"to": "o***@example.org", "classification": "accepted"}),
        ("mapping.assign", assigned),
        ("service.webhook_secret_added", {"secret_id": rows[-1].details["secret_id"], "generated": True}),
    ]
    audited = json.dumps([[r.action, r.target_id, r.details] for r in rows])
    assert not any(secret in audited for secret in (API_KEY, ROTATED_KEY, WEBHOOK_SECRET))


async def test_a_user_created_by_the_cli_is_audited_without_the_password(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    password = "cli-password-never-audited-0004"
    done = _edm(
        db_url,
        "user",
        "create",
        "--username",
        "carol",
        "--email",
        "carol@example.org",
        "--password-stdin",
        stdin=password,
    )
    assert done.returncode == 0, done.stderr

    [row] = await _audit_rows(sessionmaker)
    assert (row.action, row.actor_user_id, row.actor_kind, row.target_type) == ("user.create", None, "cli", "user")
    assert row.details is not None and row.details["username"] == "carol"
    assert password not in json.dumps(row.details)
