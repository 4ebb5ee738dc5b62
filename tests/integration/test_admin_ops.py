"""Admin operations through the real ASGI app and database (docs/admin.md): the audit log (every admin
action leaves a row you can find), the queue view (pending per user, in flight per service, oldest pending
age, workers, paused), pause-all / resume-all (audited, honoured as `global_pause`), own notifications, roles
and isolation, and the `edm queue` command."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
from sqlalchemy import select, update

from edm import clock
from edm.db.session import unit_of_work
from edm.dispatch import queue
from edm.models.system import AuditLog, Notification, Worker
from edm.models.tasks import SubTask, Task
from edm.models.users import Role
from edm.system import alerts, runtime_settings
from edm.tasks import generation, lifecycle
from tests import factories
from tests.helpers import Account, make_account, settings_for
from tests.helpers import expect_error as _error
from tests.helpers import run_cli as _edm

API = "/api/v1"
AUDIT = f"{API}/admin/audit-log"
QUEUE = f"{API}/admin/queue"
NOTES = f"{API}/me/notifications"


async def _actions(client: httpx.AsyncClient, admin: Account, **params: Any) -> list[str]:
    r = await client.get(AUDIT, params={"limit": 200, **params}, headers=admin.headers)
    assert r.status_code == 200, r.text
    return [row["action"] for row in r.json()["items"]]


# --------------------------------------------------------------------------------------------------------
# Audit log
# --------------------------------------------------------------------------------------------------------


async def test_admin_actions_are_in_the_audit_log(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    ops = await make_account(sessionmaker, "ops", role=Role.ADMIN)
    alice = await make_account(sessionmaker, "alice", credit=10)
    h = admin.headers
    assert (
        await client.post(
            f"{API}/admin/users/{alice.id}/credit", headers=h, json={"operation": "add", "amount": 5, "reason": "bonus"}
        )
    ).status_code == 200
    assert (
        await client.post(
            f"{API}/admin/credit/batch",
            headers=ops.headers,
            json={"operation": "add", "amount": 1, "reason": "all", "items": [{"user_id": alice.id}]},
        )
    ).status_code == 200
    assert (await client.patch(f"{API}/admin/settings", headers=h, json={"bounce.soft_limit": 4})).status_code == 200
    assert (await client.post(f"{QUEUE}/pause-all", headers=h)).status_code == 200
    assert (await client.post(f"{QUEUE}/resume-all", headers=h)).status_code == 200
    assert (
        await client.post(f"{API}/admin/suppressions", headers=h, json={"email": "x@example.com"})
    ).status_code == 201

    actions = await _actions(client, admin)
    for expected in ("credit.adjust", "settings.update", "queue.pause_all", "queue.resume_all", "suppression.add"):
        assert expected in actions, (expected, actions)
    assert actions[:3] == ["suppression.add", "queue.resume_all", "queue.pause_all"], "newest first"

    assert await _actions(client, admin, action="credit.") == ["credit.adjust", "credit.adjust"]
    assert await _actions(client, admin, action="queue.pause") == ["queue.pause_all"]
    assert await _actions(client, admin, action="%") == [], "the prefix is literal"
    assert await _actions(client, admin, actor_user_id=ops.id) == ["credit.adjust"]
    assert await _actions(client, admin, target_type="user", target_id=str(alice.id)) == ["credit.adjust"] * 2
    r = await client.get(AUDIT, params={"action": "settings.update"}, headers=h)
    row = r.json()["items"][0]
    assert (row["actor_user_id"], row["actor_kind"], row["target_id"], row["details"]) == (
        admin.id,
        "token",
        "bounce.soft_limit",
        {"old": 3, "new": 4},
    )

    clock.shift(dt.timedelta(hours=1))
    later = clock.utc_now().isoformat()
    assert (await client.post(f"{QUEUE}/pause-all", headers=h)).status_code == 200
    assert await _actions(client, admin, **{"from": later}) == ["queue.pause_all"]
    assert "queue.pause_all" not in (await _actions(client, admin, to=later))[:1]

    seen, cursor = [], None
    while True:
        r = await client.get(AUDIT, params={"limit": 3, **({"cursor": cursor} if cursor else {})}, headers=h)
        seen += [row["id"] for row in r.json()["items"]]
        if not (cursor := r.json()["next_cursor"]):
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) == len(await _actions(client, admin))

    for params in ({"from": "soon"}, {"from": later, "to": later}, {"actor_user_id": 0}, {"action": "x" * 65}):
        _error(await client.get(AUDIT, params=params, headers=h), 422, "validation_error")
    for who in (alice, await make_account(sessionmaker, "viewer", role=Role.READ_ONLY)):
        _error(await client.get(AUDIT, headers=who.headers), 403, "forbidden")
    ro_admin = await make_account(sessionmaker, "auditor", role=Role.ADMIN, scope="read")
    assert (await client.get(AUDIT, headers=ro_admin.headers)).status_code == 200


# --------------------------------------------------------------------------------------------------------
# Queue view
# --------------------------------------------------------------------------------------------------------


async def _generated_task(sessionmaker: Any, w: factories.World, name: str) -> int:
    async with unit_of_work(sessionmaker) as session:
        task_id = await factories.task(
            session,
            w.user_id,
            sender_id=w.sender_id,
            template_ids=[w.template_id],
            rule={"type": "all_contacts"},
            name=name,
        )
    async with unit_of_work(sessionmaker) as session:
        result = await generation.generate(session, task_id, now=clock.utc_now())
    assert result is not None and result.status == "queued"
    return task_id


async def test_queue_view(client: httpx.AsyncClient, db_url: str, sessionmaker: Any) -> None:
    settings = settings_for(db_url)
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    alice = await factories.world(
        sessionmaker, settings, recipients=30, name="alice", services_=[{"name": "relay", "batch_size": 5}]
    )
    bob = await factories.world(sessionmaker, settings, recipients=12, name="bob")
    t0 = clock.utc_now()
    clock.freeze(t0)  # ages below are exact
    alice_task = await _generated_task(sessionmaker, alice, "first")
    clock.freeze(t0 + dt.timedelta(minutes=10))
    await _generated_task(sessionmaker, bob, "bobs")
    bob_paused = await _generated_task(sessionmaker, bob, "paused one")
    async with unit_of_work(sessionmaker) as session:  # bob pauses one task; one alice row waits for a retry
        await session.execute(update(Task).where(Task.id == bob_paused).values(status="paused", pause_reason="user"))
        first = await session.scalar(select(SubTask.id).where(SubTask.task_id == alice_task).order_by(SubTask.id))
        await session.execute(
            update(SubTask)
            .where(SubTask.id == first)
            .values(attempts=1, next_attempt_at=clock.utc_now() + dt.timedelta(minutes=5))
        )
    async with unit_of_work(sessionmaker) as session:
        claim = await queue.claim(
            session, service_id=alice.service_ids[0], worker_id="w-1", now=clock.utc_now(), max_items=8
        )
    assert claim is not None and len(claim.items) == 8
    clock.freeze(t0 + dt.timedelta(minutes=30))
    now = clock.utc_now()
    async with unit_of_work(sessionmaker) as session:
        session.add_all(
            [
                Worker(
                    id="w-1",
                    hostname="mail1",
                    pid=11,
                    version="1",
                    started_at=now,
                    last_heartbeat_at=now - dt.timedelta(seconds=5),
                ),
                Worker(
                    id="w-2",
                    hostname="mail2",
                    pid=22,
                    version="1",
                    started_at=now,
                    last_heartbeat_at=now - dt.timedelta(minutes=10),
                ),
            ]
        )

    r = await client.get(QUEUE, headers=admin.headers)
    assert r.status_code == 200, r.text
    v = r.json()
    assert (v["pending"], v["retrying"], v["in_flight"], v["sending_paused"]) == (30 - 8 + 24, 1, 8, False)
    users = {u["username"]: u for u in v["users"]}
    assert [u["username"] for u in v["users"]] == ["bob", "alice"], "most pending first"
    assert (users["alice"]["pending"], users["alice"]["retrying"], users["alice"]["tasks"]) == (22, 1, 1)
    assert (users["bob"]["pending"], users["bob"]["in_paused_tasks"], users["bob"]["tasks"]) == (24, 12, 2)
    assert (users["alice"]["oldest_pending_age_seconds"], users["bob"]["oldest_pending_age_seconds"]) == (1800, 1200)
    assert v["oldest_pending_age_seconds"] == 1800 and dt.datetime.fromisoformat(v["oldest_pending_at"]) == t0
    (svc,) = v["services"]
    assert (svc["name"], svc["in_flight"], svc["expired_leases"]) == ("relay", 8, 8)  # leases ran out 20 min ago
    workers = {w["id"]: w for w in v["workers"]}
    assert (workers["w-1"]["alive"], workers["w-2"]["alive"], v["workers_alive"]) == (True, False, 1)
    assert workers["w-2"]["heartbeat_age_seconds"] == 600.0
    assert v["users_total"] == 2

    for who in (
        await make_account(sessionmaker, "carol"),
        await make_account(sessionmaker, "viewer", role=Role.READ_ONLY),
    ):
        _error(await client.get(QUEUE, headers=who.headers), 403, "forbidden")
        _error(await client.post(f"{QUEUE}/pause-all", headers=who.headers), 403, "forbidden")


async def test_empty_queue(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    v = (await client.get(QUEUE, headers=admin.headers)).json()
    assert (v["pending"], v["in_flight"], v["oldest_pending_age_seconds"], v["users"], v["services"], v["workers"]) == (
        0,
        0,
        None,
        [],
        [],
        [],
    )


async def test_pause_all_and_resume_all(client: httpx.AsyncClient, db_url: str, sessionmaker: Any) -> None:
    settings = settings_for(db_url)
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    ro_admin = await make_account(sessionmaker, "auditor", role=Role.ADMIN, scope="read")
    w = await factories.world(sessionmaker, settings, recipients=5, services_=[{"name": "relay"}])
    task_id = await _generated_task(sessionmaker, w, "t")

    _error(await client.post(f"{QUEUE}/pause-all", headers=ro_admin.headers), 403, "forbidden")
    r = await client.post(f"{QUEUE}/pause-all", headers=admin.headers)
    assert r.json() == {"sending_paused": True, "changed": True}
    r = await client.post(f"{QUEUE}/pause-all", headers=admin.headers)
    assert r.json() == {"sending_paused": True, "changed": False}
    assert (await client.get(QUEUE, headers=admin.headers)).json()["sending_paused"] is True
    settings_view = (await client.get(f"{API}/admin/settings", headers=admin.headers)).json()["items"]
    paused = next(s for s in settings_view if s["key"] == "sending.paused")
    assert (paused["value"], paused["updated_by"]) == (True, admin.id)

    async with unit_of_work(sessionmaker) as session:  # what the worker's jobs do with the setting
        runtime = await runtime_settings.load(session)
        snapshots = await queue.snapshot_services(session, now=clock.utc_now())
        await lifecycle.update_waiting(session, now=clock.utc_now(), runtime=runtime, snapshots=snapshots)
    async with sessionmaker() as session:
        assert await session.scalar(select(Task.waiting_reason).where(Task.id == task_id)) == "global_pause"

    r = await client.post(f"{QUEUE}/resume-all", headers=admin.headers)
    assert r.json() == {"sending_paused": False, "changed": True}
    async with unit_of_work(sessionmaker) as session:
        assert (await runtime_settings.load(session)).sending_paused is False
        claim = await queue.claim(session, service_id=w.service_ids[0], worker_id="w", now=clock.utc_now())
    assert claim is not None and claim.items, "claims bind SubTasks again"
    async with sessionmaker() as session:
        rows = list(
            await session.scalars(select(AuditLog).where(AuditLog.action.like("queue.%")).order_by(AuditLog.id))
        )
    assert [(a.action, a.details["old"], a.details["new"], a.actor_user_id) for a in rows] == [
        ("queue.pause_all", False, True, admin.id),
        ("queue.pause_all", True, True, admin.id),
        ("queue.resume_all", True, False, admin.id),
    ]


# --------------------------------------------------------------------------------------------------------
# Notifications
# --------------------------------------------------------------------------------------------------------


async def test_own_notifications(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    other_admin = await make_account(sessionmaker, "ops", role=Role.ADMIN)
    viewer = await make_account(sessionmaker, "viewer", role=Role.READ_ONLY)
    async with unit_of_work(sessionmaker) as session:
        for i in range(3):
            assert (
                await alerts.alert_admins(
                    session,
                    kind="service_frozen",
                    title=f"relay frozen {i}",
                    body="auth failed",
                    link="/admin/services/1",
                )
                == 2
            )
        session.add(Notification(user_id=viewer.id, kind="credit_low", title="credit is low"))

    r = await client.get(NOTES, headers=admin.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [n["title"] for n in body["items"]] == ["relay frozen 2", "relay frozen 1", "relay frozen 0"]
    assert body["unread"] == 3 and body["items"][0]["read_at"] is None
    first = body["items"][0]["id"]

    r = await client.post(f"{NOTES}/{first}/read", headers=admin.headers)
    assert r.status_code == 200 and r.json()["read_at"] is not None
    read_at = r.json()["read_at"]
    assert (await client.post(f"{NOTES}/{first}/read", headers=admin.headers)).json()["read_at"] == read_at
    unread = (await client.get(NOTES, params={"unread": "true"}, headers=admin.headers)).json()
    assert [n["title"] for n in unread["items"]] == ["relay frozen 1", "relay frozen 0"] and unread["unread"] == 2
    done = (await client.get(NOTES, params={"unread": "false"}, headers=admin.headers)).json()
    assert [n["id"] for n in done["items"]] == [first]
    page = (await client.get(NOTES, params={"limit": 2}, headers=admin.headers)).json()
    rest = (await client.get(NOTES, params={"limit": 2, "cursor": page["next_cursor"]}, headers=admin.headers)).json()
    assert len(page["items"]) == 2 and [n["title"] for n in rest["items"]] == ["relay frozen 0"]
    assert rest["next_cursor"] is None

    # isolation: the other admin's copy is untouched, and nobody reads or marks another's notification
    theirs = (await client.get(NOTES, headers=other_admin.headers)).json()
    assert theirs["unread"] == 3 and first not in [n["id"] for n in theirs["items"]]
    _error(await client.post(f"{NOTES}/{theirs['items'][0]['id']}/read", headers=admin.headers), 404, "not_found")
    _error(await client.post(f"{NOTES}/{first}/read", headers=viewer.headers), 404, "not_found")
    _error(await client.post(f"{NOTES}/99999999/read", headers=admin.headers), 404, "not_found")
    _error(await client.post(f"{NOTES}/0/read", headers=admin.headers), 422, "validation_error")
    assert (await client.get(NOTES, headers=other_admin.headers)).json()["unread"] == 3

    mine = (await client.get(NOTES, headers=viewer.headers)).json()
    assert [n["title"] for n in mine["items"]] == ["credit is low"]
    assert (await client.post(f"{NOTES}/{mine['items'][0]['id']}/read", headers=viewer.headers)).status_code == 200
    _error(await client.get(NOTES), 401, "unauthenticated")
    _error(await client.get(NOTES, params={"unread": "maybe"}, headers=admin.headers), 422, "validation_error")


# --------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------


async def test_queue_cli(db_url: str, sessionmaker: Any) -> None:
    settings = settings_for(db_url)
    w = await factories.world(sessionmaker, settings, recipients=7, name="alice", services_=[{"name": "relay"}])
    await _generated_task(sessionmaker, w, "t")

    shown = _edm(db_url, "queue")
    assert shown.returncode == 0, shown.stderr
    assert "sending: running" in shown.stdout and "pending 7" in shown.stdout
    assert any(line.startswith("alice") and " 7 " in line for line in shown.stdout.splitlines())
    assert "relay" in shown.stdout and "(no workers)" in shown.stdout
    paused = _edm(db_url, "queue", "pause-all")
    assert paused.returncode == 0 and paused.stdout.strip() == "sending paused"
    assert _edm(db_url, "queue", "pause-all").stdout.strip() == "sending paused (unchanged)"
    assert '"sending_paused": true' in _edm(db_url, "queue", "--json").stdout
    assert _edm(db_url, "queue", "resume-all").stdout.strip() == "sending running"
    async with sessionmaker() as session:
        assert (await runtime_settings.load(session)).sending_paused is False
        rows = list(await session.scalars(select(AuditLog).where(AuditLog.action.like("queue.%"))))
    assert [(a.action, a.actor_kind) for a in rows] == [
        ("queue.pause_all", "cli"),
        ("queue.pause_all", "cli"),
        ("queue.resume_all", "cli"),
    ]
    bad = _edm(db_url, "queue", "stop-everything")
    assert bad.returncode == 2
