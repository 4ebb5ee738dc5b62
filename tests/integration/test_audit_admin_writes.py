"""Every admin write leaves an audit row — who, what, which object, details — and no audit row ever holds a
secret: service credentials, webhook secrets, API token values, passwords or password hashes.

Each case performs one write through the API with an admin's write token and checks the newest audit row of
its action; after each case, every audit row is scanned for every secret the case used."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.session import unit_of_work
from edm.models.system import AuditLog
from edm.models.users import Role, User
from edm.system.service import Actor, audit
from tests import factories
from tests.helpers import Account, api_client, make_account

API = "/api/v1"
API_KEY = "SG.api-key-that-must-never-be-logged-0001"
NEW_API_KEY = "SG.rotated-api-key-that-must-never-be-logged-0002"
WEBHOOK_SECRET = "webhook-secret-that-must-never-be-logged-0003"
NEW_WEBHOOK_SECRET = "webhook-secret-added-later-never-logged-0004"
NEW_PASSWORD = "a fresh password never logged 0005"
USER_PASSWORD = "initial password never logged 0006"


@dataclass
class World:
    client: httpx.AsyncClient
    sessionmaker: async_sessionmaker[AsyncSession]
    admin: Account
    alice: Account
    service_id: int
    secrets: list[str] = field(
        default_factory=lambda: [API_KEY, NEW_API_KEY, WEBHOOK_SECRET, NEW_WEBHOOK_SECRET, NEW_PASSWORD, USER_PASSWORD]
    )

    async def call(self, method: str, path: str, expected: int, **kwargs: Any) -> Any:
        r = await self.client.request(method, f"{API}{path}", headers=self.admin.headers, **kwargs)
        assert r.status_code == expected, (method, path, r.text)
        return r.json() if r.content else None

    async def new_service(self, name: str) -> int:
        body = await self.call(
            "POST",
            "/admin/services",
            201,
            json={
                "name": name,
                "provider": "sendgrid",
                "domain": f"{name}.example.com",
                "credentials": {"api_key": API_KEY},
            },
        )
        return int(body["id"])

    async def scheduled_task_of_alice(self) -> int:
        async with unit_of_work(self.sessionmaker) as session:
            sender = await factories.sender(session, self.alice.id)
            template = await factories.template(session, self.alice.id)
            await factories.contacts(session, self.alice.id, 2)
            return await factories.task(
                session, self.alice.id, sender_id=sender, template_ids=[template], rule={"type": "all_contacts"}
            )


@dataclass(frozen=True)
class Expected:
    action: str
    target_type: str | None
    target_id: Any
    details: dict[str, Any]  # a subset of the row's details


Case = Callable[[World], Awaitable[Expected]]


@pytest.fixture
async def world(db_url: str, engine: Any, sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[World]:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    alice = await make_account(sessionmaker, "alice", credit=10)
    async with api_client(db_url, engine) as client:
        w = World(client, sessionmaker, admin, alice, 0)
        created = await w.call(
            "POST",
            "/admin/services",
            201,
            json={
                "name": "sg",
                "provider": "sendgrid",
                "domain": "sg.example.com",
                "credentials": {"api_key": API_KEY, "webhook_secrets": [WEBHOOK_SECRET]},
            },
        )
        w.service_id = int(created["id"])
        yield w


# --------------------------------------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------------------------------------


async def service_create(w: World) -> Expected:
    body = await w.call(
        "POST",
        "/admin/services",
        201,
        json={
            "name": "sg2",
            "provider": "sendgrid",
            "domain": "sg2.example.com",
            "credentials": {"api_key": API_KEY, "webhook_secrets": [WEBHOOK_SECRET]},
        },
    )
    return Expected(
        "service.create",
        "email_service",
        str(body["id"]),
        {"name": "sg2", "provider": "sendgrid", "credential_fields": ["api_key", "webhook_secrets"]},
    )


async def service_update(w: World) -> Expected:
    await w.call("PATCH", f"/admin/services/{w.service_id}", 200, json={"daily_quota": 777, "label": "Main"})
    return Expected(
        "service.update",
        "email_service",
        str(w.service_id),
        {"changes": {"daily_quota": {"old": 1000, "new": 777}, "label": {"old": "Channel 1", "new": "Main"}}},
    )


async def service_credentials(w: World) -> Expected:
    await w.call("PATCH", f"/admin/services/{w.service_id}", 200, json={"credentials": {"api_key": NEW_API_KEY}})
    return Expected("service.credentials_update", "email_service", str(w.service_id), {"fields": ["api_key"]})


async def service_archive(w: World) -> Expected:
    service_id = await w.new_service("doomed")
    await w.call("DELETE", f"/admin/services/{service_id}", 204)
    return Expected("service.archive", "email_service", str(service_id), {"name": "doomed"})


async def service_freeze(w: World) -> Expected:
    await w.call("POST", f"/admin/services/{w.service_id}/freeze", 200, json={"reason": "maintenance"})
    return Expected("service.freeze", "email_service", str(w.service_id), {"reason": "maintenance"})


async def service_unfreeze(w: World) -> Expected:
    await w.call("POST", f"/admin/services/{w.service_id}/unfreeze", 200)
    return Expected("service.unfreeze", "email_service", str(w.service_id), {})


async def service_disable(w: World) -> Expected:
    await w.call("POST", f"/admin/services/{w.service_id}/disable", 200)
    return Expected("service.disable", "email_service", str(w.service_id), {})


async def service_enable(w: World) -> Expected:
    await w.call("POST", f"/admin/services/{w.service_id}/enable", 200)
    return Expected("service.enable", "email_service", str(w.service_id), {})


async def service_clear_backoff(w: World) -> Expected:
    await w.call("POST", f"/admin/services/{w.service_id}/clear-backoff", 200)
    return Expected("service.clear_backoff", "email_service", str(w.service_id), {})


async def service_usage(w: World) -> Expected:
    await w.call("POST", f"/admin/services/{w.service_id}/usage", 200, json={"used_today": 40})
    return Expected("service.set_usage", "email_service", str(w.service_id), {"used_today": 40, "adjustment_delta": 40})


async def webhook_secret_add(w: World) -> Expected:
    body = await w.call(
        "POST", f"/admin/services/{w.service_id}/webhook-secrets", 201, json={"value": NEW_WEBHOOK_SECRET}
    )
    return Expected(
        "service.webhook_secret_added",
        "email_service",
        str(w.service_id),
        {"secret_id": body["id"], "generated": False},
    )


async def webhook_secret_generate(w: World) -> Expected:
    body = await w.call("POST", f"/admin/services/{w.service_id}/webhook-secrets", 201, json={})
    w.secrets.append(body["value"])  # generated by the server: it must not reach the audit log either
    return Expected(
        "service.webhook_secret_added", "email_service", str(w.service_id), {"secret_id": body["id"], "generated": True}
    )


async def webhook_secret_remove(w: World) -> Expected:
    [listed] = await w.call("GET", f"/admin/services/{w.service_id}/webhook-secrets", 200)
    await w.call("DELETE", f"/admin/services/{w.service_id}/webhook-secrets/{listed['id']}", 200)
    return Expected("service.webhook_secret_removed", "email_service", str(w.service_id), {"secret_id": listed["id"]})


async def mapping_assign(w: World) -> Expected:
    await w.call("POST", "/admin/mappings", 201, json={"user_ids": [w.alice.id], "service_ids": [w.service_id]})
    return Expected(
        "mapping.assign",
        "mapping",
        None,
        {"user_ids": [w.alice.id], "service_ids": [w.service_id], "is_active": True, "mappings": 1},
    )


async def mapping_delete(w: World) -> Expected:
    [mapping] = await w.call(
        "POST", "/admin/mappings", 201, json={"user_ids": [w.alice.id], "service_ids": [w.service_id]}
    )
    await w.call("DELETE", f"/admin/mappings/{mapping['id']}", 204)
    return Expected(
        "mapping.delete", "mapping", str(mapping["id"]), {"user_id": w.alice.id, "service_id": w.service_id}
    )


async def mapping_set_exact(w: World) -> Expected:
    await w.call("PUT", f"/admin/users/{w.alice.id}/services", 200, json={"service_ids": [w.service_id]})
    return Expected("mapping.set_user_services", "user", str(w.alice.id), {"service_ids": [w.service_id]})


async def token_create(w: World) -> Expected:
    body = await w.call("POST", "/me/tokens", 201, json={"name": "ci", "scope": "read"})
    w.secrets.append(body["token"])
    return Expected(
        "token.create", "api_token", str(body["id"]), {"user_id": w.admin.id, "name": "ci", "scope": "read"}
    )


async def token_revoke(w: World) -> Expected:
    body = await w.call("POST", "/me/tokens", 201, json={"name": "old", "scope": "write"})
    w.secrets.append(body["token"])
    await w.call("DELETE", f"/me/tokens/{body['id']}", 204)
    return Expected("token.revoke", "api_token", str(body["id"]), {"user_id": w.admin.id, "name": "old"})


async def user_create(w: World) -> Expected:
    body = await w.call(
        "POST",
        "/admin/users",
        201,
        json={"username": "bob", "email": "bob@example.com", "password": USER_PASSWORD, "role": "user"},
    )
    return Expected("user.create", "user", str(body["id"]), {"username": "bob", "role": "user"})


async def user_role_change(w: World) -> Expected:
    await w.call("PATCH", f"/admin/users/{w.alice.id}", 200, json={"role": "read_only"})
    return Expected("user.update", "user", str(w.alice.id), {"changed": ["role"], "role": "read_only"})


async def user_deactivate(w: World) -> Expected:
    await w.call("PATCH", f"/admin/users/{w.alice.id}", 200, json={"is_active": False})
    return Expected("user.update", "user", str(w.alice.id), {"changed": ["is_active"], "is_active": False})


async def user_password_reset(w: World) -> Expected:
    await w.call(
        "POST",
        f"/admin/users/{w.alice.id}/password",
        200,
        json={"password": NEW_PASSWORD, "must_change_password": True},
    )
    return Expected("user.password_reset", "user", str(w.alice.id), {"must_change_password": True})


async def user_delete(w: World) -> Expected:
    await w.call("DELETE", f"/admin/users/{w.alice.id}", 204)
    return Expected("user.deleted", "user", str(w.alice.id), {"username": "alice"})


async def credit_adjust(w: World) -> Expected:
    await w.call(
        "POST", f"/admin/users/{w.alice.id}/credit", 200, json={"operation": "add", "amount": 5, "reason": "bonus"}
    )
    return Expected("credit.adjust", "user", str(w.alice.id), {"operation": "add", "amount": 5, "reason": "bonus"})


async def credit_batch(w: World) -> Expected:
    await w.call(
        "POST",
        "/admin/credit/batch",
        200,
        json={"operation": "subtract", "amount": 3, "reason": "fix", "items": [{"user_id": w.alice.id}]},
    )
    return Expected("credit.adjust", "user", str(w.alice.id), {"operation": "subtract", "amount": 3})


async def settings_change(w: World) -> Expected:
    await w.call("PATCH", "/admin/settings", 200, json={"bounce.soft_limit": 5})
    return Expected("settings.update", "setting", "bounce.soft_limit", {"old": 3, "new": 5})


async def suppression_remove(w: World) -> Expected:
    entry = await w.call("POST", "/admin/suppressions", 201, json={"email": "gone@example.org"})
    await w.call("DELETE", f"/admin/suppressions/{entry['id']}", 200)
    return Expected("suppression.remove", "suppression", str(entry["id"]), {"scope": "global"})


async def pause_all(w: World) -> Expected:
    await w.call("POST", "/admin/queue/pause-all", 200)
    return Expected("queue.pause_all", "setting", "sending.paused", {"new": True})


async def task_pause_by_admin(w: World) -> Expected:
    task_id = await w.scheduled_task_of_alice()
    await w.call("POST", f"/tasks/{task_id}/pause", 200)
    return Expected(
        "task.pause",
        "task",
        str(task_id),
        {"owner_user_id": w.alice.id, "old_status": "scheduled", "new_status": "paused"},
    )


async def task_batch_pause_by_admin(w: World) -> Expected:
    task_id = await w.scheduled_task_of_alice()
    await w.call("POST", "/tasks/batch", 200, json={"action": "pause", "task_ids": [task_id]})
    return Expected("task.pause", "task", str(task_id), {"owner_user_id": w.alice.id, "new_status": "paused"})


async def task_cancel_by_admin(w: World) -> Expected:
    task_id = await w.scheduled_task_of_alice()
    await w.call("POST", f"/tasks/{task_id}/cancel", 200)
    return Expected(
        "task.cancel",
        "task",
        str(task_id),
        {"owner_user_id": w.alice.id, "old_status": "scheduled", "new_status": "cancelled"},
    )


async def task_close_by_admin(w: World) -> Expected:
    task_id = await w.scheduled_task_of_alice()
    await w.call("POST", f"/tasks/{task_id}/pause", 200)
    await w.call("POST", f"/tasks/{task_id}/close", 200)
    return Expected(
        "task.close",
        "task",
        str(task_id),
        {"owner_user_id": w.alice.id, "old_status": "paused", "new_status": "closed"},
    )


async def task_delete_by_admin(w: World) -> Expected:
    task_id = await w.scheduled_task_of_alice()
    await w.call("POST", f"/tasks/{task_id}/cancel", 200)
    await w.call("DELETE", f"/tasks/{task_id}", 204)
    return Expected("task.delete", "task", str(task_id), {"owner_user_id": w.alice.id, "old_status": "cancelled"})


CASES: list[Case] = [
    service_create,
    service_update,
    service_credentials,
    service_archive,
    service_freeze,
    service_unfreeze,
    service_disable,
    service_enable,
    service_clear_backoff,
    service_usage,
    webhook_secret_add,
    webhook_secret_generate,
    webhook_secret_remove,
    mapping_assign,
    mapping_delete,
    mapping_set_exact,
    token_create,
    token_revoke,
    user_create,
    user_role_change,
    user_deactivate,
    user_password_reset,
    user_delete,
    credit_adjust,
    credit_batch,
    settings_change,
    suppression_remove,
    pause_all,
    task_pause_by_admin,
    task_batch_pause_by_admin,
    task_cancel_by_admin,
    task_close_by_admin,
    task_delete_by_admin,
]


async def _rows(w: World) -> list[AuditLog]:
    async with w.sessionmaker() as session:
        return list(await session.scalars(select(AuditLog).order_by(AuditLog.id)))


async def _password_hashes(w: World) -> list[str]:
    async with w.sessionmaker() as session:
        return [h for h in await session.scalars(select(User.password_hash)) if h]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
async def test_each_admin_write_is_audited_without_secrets(world: World, case: Case) -> None:
    expected = await case(world)

    r = await world.client.get(
        f"{API}/admin/audit-log", params={"action": expected.action, "limit": 1}, headers=world.admin.headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["items"], f"no audit row for {expected.action}"
    row = r.json()["items"][0]
    assert row["action"] == expected.action
    assert (row["actor_user_id"], row["actor_kind"]) == (world.admin.id, "token")
    assert (row["target_type"], row["target_id"]) == (expected.target_type, expected.target_id)
    details = row["details"] or {}
    assert {k: details.get(k) for k in expected.details} == expected.details, details

    text = json.dumps([[a.action, a.target_id, a.details] for a in await _rows(world)])
    for secret in [*world.secrets, *await _password_hashes(world)]:
        assert secret not in text, f"a secret reached the audit log after {case.__name__}"


async def test_the_audit_helper_never_stores_a_secret_under_a_secret_name(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """The helper's safety net: a caller that passes a credential by mistake stores `[redacted]` instead."""
    async with unit_of_work(sessionmaker) as session:
        await audit(
            session,
            Actor(None, "cli"),
            "test.careless",
            details={
                "credentials": {"api_key": API_KEY},
                "nested": [{"password": NEW_PASSWORD, "kept": 1}],
                "token": "edm_" + "x" * 40,
            },
        )
    async with sessionmaker() as session:
        row = await session.scalar(select(AuditLog).where(AuditLog.action == "test.careless"))
    assert row is not None and row.details == {
        "credentials": "[redacted]",
        "nested": [{"password": "[redacted]", "kept": 1}],
        "token": "[redacted]",
    }
