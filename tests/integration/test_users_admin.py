"""Admin user lifecycle through the real ASGI app and database (docs/auth.md): edits, role
change and deactivation revoking sessions (and tokens failing at once), password reset with "must change",
the last active admin, deletion refused while a task is active and cascading otherwise, and the `edm user`
commands for passwords, deletion and sessions."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from edm.app import create_app
from edm.clock import utc_now
from edm.db.session import unit_of_work
from edm.models.contacts import Contact
from edm.models.events import Event
from edm.models.system import AuditLog
from edm.models.tasks import SubTask, Task
from edm.models.users import ApiToken, ConsoleSession, QuotaLedgerEntry, Role, User
from edm.tasks import generation
from edm.users.service import create_token
from tests import factories
from tests.helpers import PASSWORD, Account, make_account, settings_for
from tests.helpers import expect_error as _error
from tests.helpers import run_cli as edm

API = "/api/v1"
USERS = f"{API}/admin/users"
Browser = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def browser(db_url: str, engine: Any) -> AsyncIterator[Browser]:
    """Makes clients on one app, each with its own cookie jar (one console session)."""
    app = create_app(settings_for(db_url), engine=engine)
    async with app.router.lifespan_context(app), AsyncExitStack() as stack:

        async def new() -> httpx.AsyncClient:
            return await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edm.test")
            )

        yield new


async def _session_of(c: httpx.AsyncClient, username: str, password: str = PASSWORD) -> dict[str, Any]:
    r = await c.post(f"{API}/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def _count(sessionmaker: Any, model: Any, *where: Any) -> int:
    async with unit_of_work(sessionmaker) as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


# --------------------------------------------------------------------------------------------------------
# Edit
# --------------------------------------------------------------------------------------------------------


async def test_patch_edits_email_role_active_timezone_and_threshold(
    client: httpx.AsyncClient, sessionmaker: Any
) -> None:
    root = await make_account(sessionmaker, "root", role=Role.ADMIN)
    alice = await make_account(sessionmaker, "alice")
    await make_account(sessionmaker, "bob")
    url = f"{USERS}/{alice.id}"
    r = await client.patch(
        url,
        json={"email": " Alice.New@Example.COM ", "timezone": "Europe/Berlin", "low_credit_threshold": 5},
        headers=root.headers,
    )
    assert r.status_code == 200, r.text
    assert (r.json()["email"], r.json()["timezone"], r.json()["low_credit_threshold"]) == (
        "alice.new@example.com",
        "Europe/Berlin",
        5,
    )
    r = await client.patch(url, json={"low_credit_threshold": None, "role": "read_only"}, headers=root.headers)
    assert r.status_code == 200 and r.json()["low_credit_threshold"] is None and r.json()["role"] == "read_only"

    _error(await client.patch(url, json={"email": "bob@example.com"}, headers=root.headers), 409, "conflict")
    _error(await client.patch(url, json={"email": "not-an-address"}, headers=root.headers), 422, "validation_error")
    _error(await client.patch(url, json={"timezone": "Mars/Olympus"}, headers=root.headers), 422, "validation_error")
    for field in ("role", "is_active", "timezone", "email"):
        _error(await client.patch(url, json={field: None}, headers=root.headers), 422, "validation_error")
    _error(await client.patch(url, json={"username": "x"}, headers=root.headers), 422, "validation_error")
    _error(await client.patch(url, json={"role": "owner"}, headers=root.headers), 422, "validation_error")
    _error(await client.patch(f"{USERS}/999999", json={}, headers=root.headers), 404, "not_found")
    _error(await client.patch(url, json={"role": "admin"}, headers=alice.headers), 403, "forbidden")

    async with unit_of_work(sessionmaker) as session:
        audits = list(await session.scalars(select(AuditLog).where(AuditLog.action == "user.update")))
    assert [a.target_id for a in audits] == [str(alice.id)] * 2 and audits[0].actor_user_id == root.id
    assert audits[0].details is not None and audits[0].details["changed"] == [
        "email",
        "low_credit_threshold",
        "timezone",
    ]


async def test_role_change_revokes_sessions_and_tokens_follow_the_role_at_once(
    client: httpx.AsyncClient, browser: Browser, sessionmaker: Any
) -> None:
    root = await make_account(sessionmaker, "root", role=Role.ADMIN)
    alice = await make_account(sessionmaker, "alice")
    console = await browser()
    await _session_of(console, "alice")
    assert (await client.post(f"{API}/tags", json={"name": "a"}, headers=alice.headers)).status_code == 201

    r = await client.patch(f"{USERS}/{alice.id}", json={"role": "read_only"}, headers=root.headers)
    assert r.status_code == 200, r.text
    _error(await console.get(f"{API}/me"), 401, "unauthenticated")
    assert await _count(sessionmaker, ConsoleSession, ConsoleSession.user_id == alice.id) == 0
    _error(await client.post(f"{API}/tags", json={"name": "b"}, headers=alice.headers), 403, "forbidden")
    assert (await client.get(f"{API}/me", headers=alice.headers)).json()["token_scope"] == "read"

    # an edit that does not change the role keeps sessions
    await _session_of(console, "alice")
    assert (
        await client.patch(
            f"{USERS}/{alice.id}", json={"role": "read_only", "timezone": "Asia/Tokyo"}, headers=root.headers
        )
    ).status_code == 200
    assert (await console.get(f"{API}/me")).status_code == 200


async def test_deactivation_revokes_sessions_and_tokens_fail_at_once(
    client: httpx.AsyncClient, browser: Browser, sessionmaker: Any
) -> None:
    root = await make_account(sessionmaker, "root", role=Role.ADMIN)
    alice = await make_account(sessionmaker, "alice")
    console = await browser()
    await _session_of(console, "alice")
    r = await client.patch(f"{USERS}/{alice.id}", json={"is_active": False}, headers=root.headers)
    assert r.status_code == 200 and r.json()["is_active"] is False
    _error(await client.get(f"{API}/me", headers=alice.headers), 401, "invalid_token")
    _error(await console.get(f"{API}/me"), 401, "unauthenticated")
    assert await _count(sessionmaker, ConsoleSession, ConsoleSession.user_id == alice.id) == 0
    _error(
        await (await browser()).post(f"{API}/auth/login", json={"username": "alice", "password": PASSWORD}),
        401,
        "unauthenticated",
    )


async def test_tokens_of_an_inactive_user_fail_even_when_not_revoked(
    client: httpx.AsyncClient, sessionmaker: Any
) -> None:
    alice = await make_account(sessionmaker, "alice")
    async with unit_of_work(sessionmaker) as session:
        user = await session.get(User, alice.id)
        assert user is not None
        user.is_active = False  # e.g. set by another tool: the token row itself is untouched
    _error(await client.get(f"{API}/me", headers=alice.headers), 401, "invalid_token")


# --------------------------------------------------------------------------------------------------------
# The last admin
# --------------------------------------------------------------------------------------------------------


async def test_the_last_active_admin_cannot_be_demoted_deactivated_or_deleted(
    client: httpx.AsyncClient, sessionmaker: Any
) -> None:
    root = await make_account(sessionmaker, "root", role=Role.ADMIN)
    url = f"{USERS}/{root.id}"
    _error(await client.patch(url, json={"role": "user"}, headers=root.headers), 409, "last_admin")
    _error(await client.patch(url, json={"is_active": False}, headers=root.headers), 409, "last_admin")
    _error(await client.delete(url, headers=root.headers), 409, "last_admin")
    assert (await client.patch(url, json={"timezone": "Europe/Paris"}, headers=root.headers)).status_code == 200

    second = await make_account(sessionmaker, "second", role=Role.ADMIN)
    r = await client.patch(f"{USERS}/{second.id}", json={"is_active": False}, headers=root.headers)
    assert r.status_code == 200, r.text
    # an inactive admin does not count, and demoting it does not touch the last active one
    _error(await client.patch(url, json={"role": "user"}, headers=root.headers), 409, "last_admin")
    assert (await client.patch(f"{USERS}/{second.id}", json={"role": "user"}, headers=root.headers)).status_code == 200

    third = await make_account(sessionmaker, "third", role=Role.ADMIN)
    assert (await client.patch(url, json={"role": "user"}, headers=third.headers)).status_code == 200
    _error(await client.patch(f"{USERS}/{third.id}", json={"role": "user"}, headers=third.headers), 409, "last_admin")


# --------------------------------------------------------------------------------------------------------
# Password reset
# --------------------------------------------------------------------------------------------------------


async def test_admin_password_reset_with_must_change(
    client: httpx.AsyncClient, browser: Browser, sessionmaker: Any
) -> None:
    root = await make_account(sessionmaker, "root", role=Role.ADMIN)
    alice = await make_account(sessionmaker, "alice")
    console = await browser()
    await _session_of(console, "alice")
    url = f"{USERS}/{alice.id}/password"
    _error(await client.post(url, json={"password": "short"}, headers=root.headers), 422, "validation_error")
    _error(await client.post(url, json={"password": "alice"}, headers=root.headers), 422, "validation_error")
    _error(await client.post(url, json={"password": "fresh password 1"}, headers=alice.headers), 403, "forbidden")
    _error(
        await client.post(f"{USERS}/999999/password", json={"password": "fresh password 1"}, headers=root.headers),
        404,
        "not_found",
    )
    r = await client.post(
        url, json={"password": "fresh password 1", "must_change_password": True}, headers=root.headers
    )
    assert r.status_code == 200 and r.json()["must_change_password"] is True and r.json()["sessions_revoked"] == 1
    _error(await console.get(f"{API}/me"), 401, "unauthenticated")

    fresh = await browser()
    login = await _session_of(fresh, "alice", "fresh password 1")
    assert login["must_change_password"] is True
    assert (await fresh.get(f"{API}/me")).json()["must_change_password"] is True
    _error(await fresh.get(f"{API}/me/tokens"), 403, "password_change_required")
    assert (await client.get(f"{API}/me/tokens", headers=alice.headers)).status_code == 200, "tokens unaffected"
    r = await fresh.put(
        f"{API}/me/password",
        json={"current_password": "fresh password 1", "new_password": "my own password"},
        headers={"X-CSRF-Token": login["csrf_token"]},
    )
    assert r.status_code == 200, r.text
    assert (await fresh.get(f"{API}/me")).json()["must_change_password"] is False
    assert (await fresh.get(f"{API}/me/tokens")).status_code == 200
    async with unit_of_work(sessionmaker) as session:
        actions = (await session.scalars(select(AuditLog.action).order_by(AuditLog.id))).all()
    assert "user.password_reset" in actions and "user.password_changed" in actions


# --------------------------------------------------------------------------------------------------------
# Delete
# --------------------------------------------------------------------------------------------------------


async def test_delete_is_refused_while_a_task_is_active_then_cascades(
    client: httpx.AsyncClient, browser: Browser, sessionmaker: Any, db_url: str
) -> None:
    root = await make_account(sessionmaker, "root", role=Role.ADMIN)
    keep = await make_account(sessionmaker, "keep", credit=10)
    w = await factories.world(
        sessionmaker, settings_for(db_url), recipients=3, name="alice", services_=[{"name": "esp"}]
    )
    async with unit_of_work(sessionmaker) as session:
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )
        await generation.generate(session, task_id, now=utc_now())
        token, _ = await create_token(session, user_id=w.user_id, name="t")
        session.add(
            Event(
                source="fake",
                dedupe_key="e1",
                event_type="delivered",
                occurred_at=utc_now(),
                user_id=w.user_id,
                task_id=task_id,
                raw={},
            )
        )
        session.add(
            Event(
                source="fake", dedupe_key="e2", event_type="delivered", occurred_at=utc_now(), user_id=keep.id, raw={}
            )
        )
    alice = Account(w.user_id, "alice", token)
    await _session_of(await browser(), "alice", "long enough pw")  # the factories' password
    assert await _count(sessionmaker, Task, Task.id == task_id, Task.status == "queued") == 1

    body = _error(await client.delete(f"{USERS}/{alice.id}", headers=root.headers), 409, "in_use")
    assert body["task_ids"] == [task_id]
    _error(await client.delete(f"{USERS}/{alice.id}", headers=alice.headers), 403, "forbidden")
    assert (await client.post(f"{API}/tasks/{task_id}/cancel", headers=alice.headers)).status_code == 200

    r = await client.delete(f"{USERS}/{alice.id}", headers=root.headers)
    assert r.status_code == 204, r.text
    _error(await client.get(f"{API}/me", headers=alice.headers), 401, "invalid_token")
    _error(await client.get(f"{USERS}/{alice.id}", headers=root.headers), 404, "not_found")
    _error(await client.delete(f"{USERS}/{alice.id}", headers=root.headers), 404, "not_found")
    for model in (User, Contact, Task, ApiToken, ConsoleSession, QuotaLedgerEntry, Event):
        assert (
            await _count(sessionmaker, model, model.user_id == alice.id if model is not User else User.id == alice.id)
            == 0
        ), model
    assert await _count(sessionmaker, SubTask, SubTask.task_id == task_id) == 0
    # the other user's data stays
    assert await _count(sessionmaker, Event, Event.user_id == keep.id) == 1
    assert await _count(sessionmaker, QuotaLedgerEntry, QuotaLedgerEntry.user_id == keep.id) == 1
    assert (await client.get(f"{API}/me", headers=keep.headers)).status_code == 200
    async with unit_of_work(sessionmaker) as session:
        entry = await session.scalar(select(AuditLog).where(AuditLog.action == "user.deleted"))
    assert entry is not None and entry.target_id == str(alice.id) and entry.actor_user_id == root.id
    assert entry.details == {"username": "alice", "id": alice.id}


# --------------------------------------------------------------------------------------------------------
# CLI (a real `edm` process on its own SQLite database)
# --------------------------------------------------------------------------------------------------------


def _one_line_exit_2(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr


async def test_user_password_delete_and_sessions_commands(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert edm(url, "db", "upgrade").returncode == 0
    for name in ("root", "ann"):
        args = ["user", "create", "--username", name, "--email", f"{name}@example.com", "--password-stdin"]
        assert edm(url, *args, *(["--admin"] if name == "root" else []), stdin=PASSWORD + "\n").returncode == 0

    from edm.db.engine import make_engine, make_sessionmaker

    engine = make_engine(url)
    try:
        app = create_app(settings_for(url), engine=engine)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edm.test") as c:
                await _session_of(c, "ann")
                listed = edm(url, "user", "sessions", "ann", "--json")
                assert listed.returncode == 0 and '"ip": "127.0.0.1"' in listed.stdout, listed.stderr

                changed = edm(
                    url, "user", "password", "ann", "--password-stdin", "--must-change", stdin="brand new password\n"
                )
                assert changed.returncode == 0 and "1 session(s) revoked" in changed.stdout, changed.stderr
                _error(await c.get(f"{API}/me"), 401, "unauthenticated")
                login = await _session_of(c, "ann", "brand new password")
                assert login["must_change_password"] is True
                revoked = edm(url, "user", "sessions", "ann", "--revoke-all")
                assert revoked.returncode == 0 and "1 session(s) revoked" in revoked.stdout
        async with unit_of_work(make_sessionmaker(engine)) as session:
            ann_id = await session.scalar(select(User.id).where(User.username == "ann"))
            cutoff = utc_now() - dt.timedelta(minutes=5)
            assert (
                await session.scalars(select(AuditLog.action).where(AuditLog.at > cutoff, AuditLog.actor_kind == "cli"))
            ).all()
    finally:
        await engine.dispose()

    _one_line_exit_2(edm(url, "user", "password", "ann", "--password-stdin", stdin="short\n"), "10 to 128")
    _one_line_exit_2(edm(url, "user", "password", "nobody", "--password-stdin", stdin="long enough pw\n"), "not found")
    _one_line_exit_2(edm(url, "user", "delete", "ann"), "--yes")
    _one_line_exit_2(edm(url, "user", "delete", "root", "--yes"), "last active admin")
    deleted = edm(url, "user", "delete", "ann", "--yes")
    assert deleted.returncode == 0 and f"deleted user ann (id {ann_id})" in deleted.stdout, deleted.stderr
    _one_line_exit_2(edm(url, "user", "sessions", "ann"), "not found")
