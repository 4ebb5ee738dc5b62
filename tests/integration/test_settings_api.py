"""Admin settings (docs/operations.md#admin-settings) through the real ASGI app and database, and through
the `edm settings` command: every key with its value and default; changes validated as a whole (a bad key or value
changes nothing and is named), stored, audited with old and new value, and read by the services that use them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from edm.models.system import AuditLog, Setting
from edm.models.users import Role
from edm.system import runtime_settings
from edm.system.runtime_settings import KEYS
from tests.helpers import make_account
from tests.helpers import run_cli as edm

URL = "/api/v1/admin/settings"


async def _audits(sessionmaker: Any) -> list[tuple[Any, ...]]:
    async with sessionmaker() as session:
        rows = await session.scalars(select(AuditLog).order_by(AuditLog.id))
        return [(a.action, a.actor_user_id, a.actor_kind, a.target_type, a.target_id, a.details) for a in rows]


async def test_every_key_is_listed_with_its_value_and_default(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    r = await client.get(URL, headers=admin.headers)
    assert r.status_code == 200, r.text
    items = {i["key"]: i for i in r.json()["items"]}
    assert set(items) == set(KEYS)
    assert items["bounce.soft_limit"] == {
        "key": "bounce.soft_limit",
        "value": 3,
        "default": 3,
        "updated_by": None,
        "updated_at": None,
    }
    assert items["suppression.unsubscribe_scope"]["default"] == "user"
    assert items["tracking.proxy_cidrs"]["value"] == []


async def test_a_change_is_stored_audited_and_read_back(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    body = {
        "bounce.soft_limit": 2,
        "suppression.unsubscribe_scope": "global",
        "tracking.proxy_cidrs": "66.102.0.0/20, 10.1.2.3/8",
        "retry.max_attempts": 5,
    }
    r = await client.patch(URL, json=body, headers=admin.headers)
    assert r.status_code == 200, r.text
    assert sorted(r.json()["changed"]) == [
        "bounce.soft_limit",
        "suppression.unsubscribe_scope",
        "tracking.proxy_cidrs",
    ], "retry.max_attempts already had that value"
    items = {i["key"]: i for i in r.json()["items"]}
    assert (items["bounce.soft_limit"]["value"], items["bounce.soft_limit"]["default"]) == (2, 3)
    assert items["bounce.soft_limit"]["updated_by"] == admin.id and items["bounce.soft_limit"]["updated_at"]
    assert items["tracking.proxy_cidrs"]["value"] == ["66.102.0.0/20", "10.0.0.0/8"], "normalized networks"
    assert items["retry.max_attempts"]["updated_by"] is None, "an unchanged key is not written"

    async with sessionmaker() as session:
        runtime = await runtime_settings.load(session)
    assert (runtime.bounce_soft_limit, runtime.suppression_unsubscribe_scope) == (2, "global")
    assert runtime.tracking_proxy_cidrs == ("66.102.0.0/20", "10.0.0.0/8")

    r = await client.patch(URL, json={"bounce.soft_limit": 4}, headers=admin.headers)
    assert r.json()["changed"] == ["bounce.soft_limit"]
    audits = await _audits(sessionmaker)
    assert sorted(audits[:3], key=lambda a: str(a[4])) == [
        ("settings.update", admin.id, "token", "setting", "bounce.soft_limit", {"old": 3, "new": 2}),
        (
            "settings.update",
            admin.id,
            "token",
            "setting",
            "suppression.unsubscribe_scope",
            {"old": "user", "new": "global"},
        ),
        (
            "settings.update",
            admin.id,
            "token",
            "setting",
            "tracking.proxy_cidrs",
            {"old": [], "new": ["66.102.0.0/20", "10.0.0.0/8"]},
        ),
    ]
    assert audits[3] == ("settings.update", admin.id, "token", "setting", "bounce.soft_limit", {"old": 2, "new": 4})


async def test_one_bad_key_changes_nothing_and_is_named(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    body = {"bounce.soft_limit": 2, "suppression.complaint_scope": "everyone", "no.such_key": 1}
    r = await client.patch(URL, json=body, headers=admin.headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert [d["field"] for d in error["details"]] == ["suppression.complaint_scope", "no.such_key"]
    assert "user, global, off" in error["details"][0]["message"]
    async with sessionmaker() as session:
        assert list(await session.scalars(select(Setting))) == []
    assert await _audits(sessionmaker) == []


@pytest.mark.parametrize("body", [
    b'{"bounce.soft_limit": -1}',
    b'{"bounce.soft_limit": true}',
    b'{"bounce.soft_limit": "three"}',
    b'{"bounce.soft_limit": 1e400}',
    b'{"bounce.soft_limit": 123456789012345678901234567890}',
    b'{"retry.base_delay": "nan"}',
    b'{"retry.base_delay": "inf"}',
    b'{"sending.paused": "yes"}',
    b'{"allocation.strategy": "fastest"}',
    b'{"tracking.proxy_cidrs": ["not-a-network"]}',
    b'{"tracking.bot_user_agents": [1, 2]}',
    b'{"org.name": null}',
    b'{"org.name": {"a": 1}}',
    b'{}',
    b'[]',
    b'"bounce.soft_limit"',
    b'{"bounce.soft_limit": 2',
])  # fmt: skip
async def test_bad_values_are_a_4xx_never_a_500(client: httpx.AsyncClient, sessionmaker: Any, body: bytes) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    r = await client.patch(URL, content=body, headers={**admin.headers, "content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["code"]
    async with sessionmaker() as session:
        assert list(await session.scalars(select(Setting))) == []


async def test_only_admins_read_and_only_write_tokens_change(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    user = await make_account(sessionmaker, "ann")
    reader = await make_account(sessionmaker, "auditor", role=Role.ADMIN, scope="read")
    for who in (user, reader):
        r = await client.patch(URL, json={"bounce.soft_limit": 2}, headers=who.headers)
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    assert (await client.get(URL, headers=user.headers)).status_code == 403
    assert (await client.get(URL, headers=reader.headers)).status_code == 200
    assert (await client.get(URL)).status_code == 401
    async with sessionmaker() as session:
        assert list(await session.scalars(select(Setting))) == []


# --------------------------------------------------------------------------------------------------------
# The CLI (a real `edm` process on its own SQLite database)
# --------------------------------------------------------------------------------------------------------


@pytest.fixture
def cli_db(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "cli.db"
    url = f"sqlite:///{path}"
    assert edm(url, "db", "upgrade").returncode == 0
    return url, path


def test_settings_through_the_cli(cli_db: tuple[str, Path]) -> None:
    url, path = cli_db
    changed = edm(url, "settings", "set", "bounce.soft_limit", "2")
    assert changed.returncode == 0 and "bounce.soft_limit changed" in changed.stdout, changed.stderr
    assert edm(url, "settings", "set", "tracking.bot_user_agents", '["SafeScan", "LinkCheck"]').returncode == 0
    assert edm(url, "settings", "set", "org.name", "Acme & Co").returncode == 0, "not JSON: taken as text"
    assert "unchanged" in edm(url, "settings", "set", "bounce.soft_limit", "2").stdout

    listed = {i["key"]: i for i in json.loads(edm(url, "settings", "list", "--json").stdout)}
    assert listed["bounce.soft_limit"]["value"] == 2
    assert listed["tracking.bot_user_agents"]["value"] == ["SafeScan", "LinkCheck"]
    assert listed["org.name"]["value"] == "Acme & Co"
    text = edm(url, "settings", "list").stdout
    assert "* bounce.soft_limit = 2  (default 3)" in text and "  retry.max_attempts = 5" in text

    with sqlite3.connect(path) as db:
        audits = db.execute(
            "SELECT action, actor_user_id, actor_kind, target_id, details FROM audit_log ORDER BY id"
        ).fetchall()
    assert [(a, u, k, t, json.loads(d)) for a, u, k, t, d in audits][0] == (
        "settings.update",
        None,
        "cli",
        "bounce.soft_limit",
        {"old": 3, "new": 2},
    )
    assert len(audits) == 3


@pytest.mark.parametrize(("args", "message"), [
    (["no.such", "1"], "no.such: unknown setting"),
    (["bounce.soft_limit", "-1"], "bounce.soft_limit: must not be negative"),
    (["bounce.soft_limit", "Infinity"], "bounce.soft_limit: must be a finite number"),
    (["suppression.hard_bounce_scope", "nobody"], "must be one of user, global, off"),
    (["sending.paused", "maybe"], "sending.paused: invalid value"),
])  # fmt: skip
def test_cli_bad_key_or_value_exits_2_with_one_line(cli_db: tuple[str, Path], args: list[str], message: str) -> None:
    url, path = cli_db
    result = edm(url, "settings", "set", *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM settings").fetchone() == (0,)
