"""Console login and sessions through the real ASGI app and database (docs/auth.md): login by
username or email, the cookie and what is stored of it, one generic failure answer with the real reason in
the audit log, throttling by username and by IP from the login_attempts table, CSRF on cookie writes (and
none for bearer tokens), idle and absolute expiry, logout, the own password change and the own session list."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from edm import clock
from edm.app import create_app
from edm.db.session import unit_of_work
from edm.models.system import AuditLog
from edm.models.users import ConsoleSession, LoginAttempt, Role, User
from tests.helpers import PASSWORD, Account, make_account, settings_for
from tests.helpers import expect_error as _error

API = "/api/v1"
Browser = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def browser(db_url: str, engine: Any) -> AsyncIterator[Browser]:
    """Makes clients on one app: each has its own cookie jar (one console session) and client IP."""
    app = create_app(settings_for(db_url), engine=engine)
    async with app.router.lifespan_context(app), AsyncExitStack() as stack:

        async def new(ip: str = "127.0.0.1") -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, client=(ip, 50000))
            return await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://edm.test"))

        yield new


async def _login(c: httpx.AsyncClient, username: str, password: str = PASSWORD) -> httpx.Response:
    return await c.post(f"{API}/auth/login", json={"username": username, "password": password})


async def _logged_in(c: httpx.AsyncClient, username: str, password: str = PASSWORD) -> str:
    """Log in; returns the CSRF token."""
    r = await _login(c, username, password)
    assert r.status_code == 200, r.text
    return str(r.json()["csrf_token"])


async def _sessions(sessionmaker: Any, user_id: int) -> list[ConsoleSession]:
    async with unit_of_work(sessionmaker) as session:
        return list(await session.scalars(select(ConsoleSession).where(ConsoleSession.user_id == user_id)))


# --------------------------------------------------------------------------------------------------------
# Login
# --------------------------------------------------------------------------------------------------------


async def test_login_by_username_or_email_sets_a_hashed_cookie(browser: Browser, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    c = await browser()
    r = await _login(c, "  ALICE ")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"]["id"] == alice.id and body["must_change_password"] is False
    assert len(body["csrf_token"]) >= 43
    cookie = r.headers["set-cookie"]
    value = r.cookies["edm_session"]
    assert len(value) >= 43  # 256 bits, url-safe base64
    flags = [part.strip().lower() for part in cookie.split(";")]
    assert "httponly" in flags and "samesite=lax" in flags and "path=/" in flags and "secure" not in flags
    rows = await _sessions(sessionmaker, alice.id)
    assert len(rows) == 1 and rows[0].id_hash == hashlib.sha256(value.encode()).hexdigest()
    assert rows[0].ip == "127.0.0.1" and rows[0].expires_at - rows[0].created_at == dt.timedelta(days=14)

    me = await c.get(f"{API}/me")
    assert me.status_code == 200 and me.json()["username"] == "alice" and me.json()["token_scope"] == "write"
    assert me.json()["last_login_at"] is not None

    by_email = await browser()
    assert (await _login(by_email, "Alice@EXAMPLE.com")).status_code == 200
    assert len(await _sessions(sessionmaker, alice.id)) == 2


async def test_cookie_is_secure_when_the_public_url_is_https(db_url: str, engine: Any, sessionmaker: Any) -> None:
    await make_account(sessionmaker, "alice")
    app = create_app(settings_for(db_url, public_url="https://mail.example.com"), engine=engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://edm.test") as c:
            r = await _login(c, "alice")
    assert r.status_code == 200
    assert "secure" in [p.strip().lower() for p in r.headers["set-cookie"].split(";")]


async def test_every_failure_answers_the_same_and_the_audit_log_has_the_reason(
    browser: Browser, sessionmaker: Any
) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    async with unit_of_work(sessionmaker) as session:
        await session.execute(update(User).where(User.id == bob.id).values(is_active=False))
    c = await browser()
    answers = [
        await _login(c, "nobody", "whatever-password"),
        await _login(c, "alice", "wrong password!"),
        await _login(c, "bob"),
    ]
    errors = [_error(r, 401, "unauthenticated") for r in answers]
    assert len({e["message"] for e in errors}) == 1 and "set-cookie" not in answers[2].headers

    async with unit_of_work(sessionmaker) as session:
        audits = list(
            await session.scalars(select(AuditLog).where(AuditLog.action == "auth.login_failed").order_by(AuditLog.id))
        )
        attempts = (await session.scalars(select(LoginAttempt.succeeded))).all()
    assert [(a.details or {})["reason"] for a in audits] == ["unknown_user", "wrong_password", "inactive"]
    assert [a.target_id for a in audits] == [None, str(alice.id), str(bob.id)]
    assert not any("password!" in json.dumps(a.details) or PASSWORD in json.dumps(a.details) for a in audits)
    assert attempts == [False, False, False]
    assert await _sessions(sessionmaker, bob.id) == []


async def test_ten_failures_for_one_username_answer_429_until_the_window_passes(
    browser: Browser, sessionmaker: Any
) -> None:
    await make_account(sessionmaker, "alice")
    await make_account(sessionmaker, "carol")
    for i in range(10):  # from ten different IPs: the username counts, not the address
        _error(await _login(await browser(f"10.0.0.{i}"), "alice", "wrong password"), 401, "unauthenticated")
    c = await browser("10.0.1.1")
    r = await _login(c, "ALICE")  # the right password does not help while throttled
    _error(r, 429, "rate_limited")
    assert 1 <= int(r.headers["retry-after"]) <= 900
    assert (await _login(c, "carol")).status_code == 200  # other usernames are not affected

    clock.shift(dt.timedelta(minutes=14))
    _error(await _login(c, "alice"), 429, "rate_limited")
    clock.shift(dt.timedelta(minutes=1, seconds=1))
    assert (await _login(c, "alice")).status_code == 200


async def test_fifty_failures_from_one_ip_answer_429_for_that_ip_only(browser: Browser, sessionmaker: Any) -> None:
    await make_account(sessionmaker, "alice")
    attacker = await browser("203.0.113.9")
    for i in range(50):
        _error(await _login(attacker, f"guess{i}", "wrong password"), 401, "unauthenticated")
    r = await _login(attacker, "alice")
    _error(r, 429, "rate_limited")
    assert 1 <= int(r.headers["retry-after"]) <= 900
    assert (await _login(await browser("198.51.100.7"), "alice")).status_code == 200
    clock.shift(dt.timedelta(minutes=15, seconds=1))
    assert (await _login(attacker, "alice")).status_code == 200


async def test_a_successful_login_clears_the_username_count_and_old_attempts_are_pruned(
    browser: Browser, sessionmaker: Any
) -> None:
    await make_account(sessionmaker, "alice")
    c = await browser()
    for _ in range(9):
        await _login(c, "alice", "wrong password")
    assert (await _login(c, "alice")).status_code == 200
    for _ in range(9):
        await _login(c, "alice", "wrong password")
    assert (await _login(c, "alice")).status_code == 200, "9 failures since the last success do not block"

    clock.shift(dt.timedelta(hours=25))
    await _login(c, "alice")
    async with unit_of_work(sessionmaker) as session:
        assert await session.scalar(select(func.count()).select_from(LoginAttempt)) == 1


# --------------------------------------------------------------------------------------------------------
# CSRF
# --------------------------------------------------------------------------------------------------------


async def test_cookie_writes_need_the_csrf_header_and_bearer_writes_do_not(browser: Browser, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    c = await browser()
    csrf = await _logged_in(c, "alice")
    assert (await c.get(f"{API}/me/tokens")).status_code == 200  # reads need no token
    _error(await c.post(f"{API}/tags", json={"name": "a"}), 403, "csrf_failed")
    _error(
        await c.post(f"{API}/tags", json={"name": "a"}, headers={"X-CSRF-Token": csrf[:-1] + "x"}), 403, "csrf_failed"
    )
    _error(await c.patch(f"{API}/admin/users/1", json={}, headers={"X-CSRF-Token": ""}), 403, "csrf_failed")
    _error(await c.delete(f"{API}/me/tokens/1"), 403, "csrf_failed")
    _error(await c.put(f"{API}/me/password", json={}), 403, "csrf_failed")
    ok = await c.post(f"{API}/tags", json={"name": "a"}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 201, ok.text

    plain = await browser()  # a bearer token: no cookie, no CSRF
    r = await plain.post(f"{API}/tags", json={"name": "b"}, headers=alice.headers)
    assert r.status_code == 201, r.text
    # Both sent: the Authorization header decides, and it needs no CSRF token.
    r = await c.post(f"{API}/tags", json={"name": "c"}, headers=alice.headers)
    assert r.status_code == 201, r.text
    _error(await c.get(f"{API}/me", headers={"Authorization": "Bearer edm_nope"}), 401, "invalid_token")


async def test_read_only_session_reads_but_cannot_write(browser: Browser, sessionmaker: Any) -> None:
    await make_account(sessionmaker, "reader", role=Role.READ_ONLY)
    c = await browser()
    csrf = await _logged_in(c, "reader")
    assert (await c.get(f"{API}/me")).json()["token_scope"] == "read"
    _error(await c.post(f"{API}/tags", json={"name": "a"}, headers={"X-CSRF-Token": csrf}), 403, "forbidden")


# --------------------------------------------------------------------------------------------------------
# Expiry and logout
# --------------------------------------------------------------------------------------------------------


async def test_idle_timeout_and_last_seen_moves_at_most_once_a_minute(browser: Browser, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    c = await browser()
    await _logged_in(c, "alice")
    [first] = await _sessions(sessionmaker, alice.id)
    clock.shift(dt.timedelta(seconds=30))
    assert (await c.get(f"{API}/me")).status_code == 200
    [row] = await _sessions(sessionmaker, alice.id)
    assert row.last_seen_at == first.last_seen_at, "not touched within a minute"
    clock.shift(dt.timedelta(seconds=31))
    assert (await c.get(f"{API}/me")).status_code == 200
    [row] = await _sessions(sessionmaker, alice.id)
    assert row.last_seen_at > first.last_seen_at

    clock.shift(dt.timedelta(hours=11, minutes=59))
    assert (await c.get(f"{API}/me")).status_code == 200, "used within 12 h: still alive"
    clock.shift(dt.timedelta(hours=12, seconds=1))
    _error(await c.get(f"{API}/me"), 401, "unauthenticated")


async def test_absolute_lifetime_of_14_days(browser: Browser, sessionmaker: Any) -> None:
    await make_account(sessionmaker, "alice")
    c = await browser()
    await _logged_in(c, "alice")
    for _ in range(30):  # used every 11 hours: never idle, 13.75 days in all
        clock.shift(dt.timedelta(hours=11))
        assert (await c.get(f"{API}/me")).status_code == 200
    clock.shift(dt.timedelta(hours=6, seconds=1))  # 14 days and a second after login
    _error(await c.get(f"{API}/me"), 401, "unauthenticated")


async def test_logout_deletes_the_session(browser: Browser, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    c = await browser()
    csrf = await _logged_in(c, "alice")
    _error(await c.post(f"{API}/auth/logout"), 403, "csrf_failed")
    r = await c.post(f"{API}/auth/logout", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 204
    assert "edm_session=" in r.headers["set-cookie"] and "max-age=0" in r.headers["set-cookie"].lower()
    assert await _sessions(sessionmaker, alice.id) == []
    _error(await c.get(f"{API}/me"), 401, "unauthenticated")


# --------------------------------------------------------------------------------------------------------
# Own password and sessions
# --------------------------------------------------------------------------------------------------------


async def test_password_change_revokes_the_other_sessions(browser: Browser, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    a, b = await browser(), await browser()
    csrf = await _logged_in(a, "alice")
    await _logged_in(b, "alice")
    url, h = f"{API}/me/password", {"X-CSRF-Token": csrf}
    _error(
        await a.put(url, json={"current_password": "not it at all", "new_password": "another long one"}, headers=h),
        422,
        "validation_error",
    )
    _error(
        await a.put(url, json={"current_password": PASSWORD, "new_password": "short"}, headers=h),
        422,
        "validation_error",
    )
    _error(
        await a.put(url, json={"current_password": PASSWORD, "new_password": "alice"}, headers=h),
        422,
        "validation_error",
    )
    _error(
        await a.put(url, json={"current_password": PASSWORD, "new_password": "x" * 129}, headers=h),
        422,
        "validation_error",
    )
    _error(
        await a.put(url, json={"current_password": PASSWORD, "new_password": "another long one", "x": 1}, headers=h),
        422,
        "validation_error",
    )
    r = await a.put(url, json={"current_password": PASSWORD, "new_password": "another long one"}, headers=h)
    assert r.status_code == 200 and r.json()["sessions_revoked"] == 1, r.text

    assert (await a.get(f"{API}/me")).status_code == 200, "the session that changed it stays"
    _error(await b.get(f"{API}/me"), 401, "unauthenticated")
    assert await alice_token_works(await browser(), alice), "tokens are not sessions: they keep working"
    _error(await _login(await browser(), "alice"), 401, "unauthenticated")
    assert (await _login(await browser(), "alice", "another long one")).status_code == 200


async def alice_token_works(c: httpx.AsyncClient, who: Account) -> bool:
    return (await c.get(f"{API}/me", headers=who.headers)).status_code == 200


async def test_list_and_revoke_own_sessions(browser: Browser, sessionmaker: Any) -> None:
    await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob", role=Role.READ_ONLY)
    a, b, other = await browser(), await browser(), await browser()
    csrf = await _logged_in(a, "alice")
    await _logged_in(b, "alice")
    bob_csrf = await _logged_in(other, "bob")

    listed = (await a.get(f"{API}/me/sessions")).json()
    assert len(listed["items"]) == 2 and listed["next_cursor"] is None
    current = [s for s in listed["items"] if s["current"]]
    assert len(current) == 1 and {"created_at", "last_seen_at", "expires_at", "ip", "user_agent"} <= set(current[0])
    first = (await a.get(f"{API}/me/sessions", params={"limit": 1})).json()
    second = (await a.get(f"{API}/me/sessions", params={"limit": 1, "cursor": first["next_cursor"]})).json()
    assert {s["id"] for s in first["items"] + second["items"]} == {s["id"] for s in listed["items"]}
    b_id = next(s["id"] for s in listed["items"] if not s["current"])
    bob_id = (await other.get(f"{API}/me/sessions")).json()["items"][0]["id"]

    _error(await a.delete(f"{API}/me/sessions/{bob_id}", headers={"X-CSRF-Token": csrf}), 404, "not_found")
    assert (await a.delete(f"{API}/me/sessions/{b_id}", headers={"X-CSRF-Token": csrf})).status_code == 204
    _error(await b.get(f"{API}/me"), 401, "unauthenticated")
    assert (await a.get(f"{API}/me")).status_code == 200

    # read_only users manage their own sessions with the console, but a read-scope token may not
    _error(await other.delete(f"{API}/me/sessions/{bob_id}", headers=bob.headers), 403, "forbidden")
    assert (await other.delete(f"{API}/me/sessions/{bob_id}", headers={"X-CSRF-Token": bob_csrf})).status_code == 204
    _error(await other.get(f"{API}/me"), 401, "unauthenticated")
