"""Task actions (docs/tasks.md#actions-on-tasks-and-recipients) beyond the single transitions: copy into a new draft,
batch pause/resume with a result per task, and cancelling selected pending recipients with its refund (the credit rule
of docs/tasks.md#credit)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
from sqlalchemy import select

from edm import clock
from edm.db.session import unit_of_work
from edm.dispatch import queue
from edm.models.users import LedgerKind, QuotaLedgerEntry, Role, User
from edm.providers.base import Outcome, SendResult
from edm.system.runtime_settings import Policy
from edm.tasks import generation, lifecycle
from tests import factories
from tests.helpers import Account, api_client, expect_error, make_account, settings_for
from tests.helpers import run_cli as edm

API = "/api/v1"


async def _content(sessionmaker: Any, user_id: int, recipients: int = 5) -> tuple[int, int, int]:
    """A sender, two templates and `recipients` contacts (addresses u<id>-<i>@example.net)."""
    async with unit_of_work(sessionmaker) as session:
        sender = await factories.sender(session, user_id, local=f"s{user_id}")
        first = await factories.template(session, user_id, name="first")
        second = await factories.template(session, user_id, name="second")
        await factories.contacts(session, user_id, recipients, prefix=f"u{user_id}-")
    return sender, first, second


def _body(sender: int, first: int, second: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": "spring",
        "description": "the spring sale",
        "sender_id": sender,
        "templates": [{"template_id": first, "weight": 3}, {"template_id": second, "weight": 1}],
        "recipient_rule": {"type": "all_contacts"},
        "timezone": "Asia/Shanghai",
        "priority": 2,
        "track_opens": False,
        "track_clicks": True,
        "on_capacity_exhausted": "pause",
        "allowed_service_ids": [7, 3],
        "error_thresholds": {"min_sample": 50, "max_bounce_rate": 0.2},
        **extra,
    }


async def _create(client: httpx.AsyncClient, who: Account, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(f"{API}/tasks", json=body, headers=who.headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def _generated(client: httpx.AsyncClient, sessionmaker: Any, who: Account, body: dict[str, Any]) -> int:
    """A task scheduled now and generated: `queued`, one charged pending SubTask per contact."""
    task = await _create(client, who, body)
    r = await client.post(f"{API}/tasks/{task['id']}/schedule", json={"now": True}, headers=who.headers)
    assert r.status_code == 200, r.text
    async with unit_of_work(sessionmaker) as session:
        result = await generation.generate(session, task["id"], now=clock.utc_now())
    assert result is not None and result.status == "queued"
    return int(task["id"])


async def _balance_and_refunds(sessionmaker: Any, user_id: int, task_id: int) -> tuple[int, list[int]]:
    async with unit_of_work(sessionmaker) as session:
        balance = await session.scalar(select(User.credit_balance).where(User.id == user_id))
        refunds = list(
            await session.scalars(
                select(QuotaLedgerEntry.amount)
                .where(QuotaLedgerEntry.task_id == task_id, QuotaLedgerEntry.kind == LedgerKind.REFUND)
                .order_by(QuotaLedgerEntry.id)
            )
        )
    return int(balance or 0), refunds


async def _subtasks(client: httpx.AsyncClient, who: Account, task_id: int) -> list[dict[str, Any]]:
    r = await client.get(f"{API}/tasks/{task_id}/subtasks", params={"limit": 200}, headers=who.headers)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


# ---- copy ---------------------------------------------------------------------------------------------


COPIED = (
    "description",
    "sender_id",
    "recipient_rule",
    "timezone",
    "priority",
    "track_opens",
    "track_clicks",
    "on_capacity_exhausted",
    "allowed_service_ids",
    "error_thresholds",
)


async def test_copy_is_an_independent_draft_with_the_same_content(db_url, engine, sessionmaker):  # type: ignore[no-untyped-def]
    alice = await make_account(sessionmaker, "alice", credit=100)
    sender, first, second = await _content(sessionmaker, alice.id)
    async with api_client(db_url, engine) as client:
        source_id = await _generated(client, sessionmaker, alice, _body(sender, first, second))
        source = (await client.get(f"{API}/tasks/{source_id}", headers=alice.headers)).json()
        r = await client.post(f"{API}/tasks/{source_id}/copy", headers=alice.headers)
        assert r.status_code == 201, r.text
        copy = r.json()
        assert copy["id"] != source_id and copy["user_id"] == alice.id and copy["status"] == "draft"
        assert copy["name"] == "spring (copy)" and copy["omitted"] == []
        assert {k: copy[k] for k in COPIED} == {k: source[k] for k in COPIED}
        assert [(t["template_id"], t["weight"]) for t in copy["templates"]] == [(first, 3), (second, 1)]
        for not_copied in ("schedule_at", "schedule_estimate", "generation_summary", "generated_at"):
            assert copy[not_copied] is None, not_copied
        assert source["schedule_at"] is not None and source["generated_at"] is not None
        stats = (await client.get(f"{API}/tasks/{copy['id']}/stats", headers=alice.headers)).json()
        assert stats["recipients"] == 0, "SubTasks are not copied"
        history = (await client.get(f"{API}/tasks/{copy['id']}/status-history", headers=alice.headers)).json()
        assert [h["to"] for h in history] == ["draft"]

        edited = await client.patch(
            f"{API}/tasks/{copy['id']}",
            headers=alice.headers,
            json={
                "name": "autumn",
                "priority": 9,
                "templates": [{"template_id": second, "weight": 5}],
                "error_thresholds": {"min_sample": 10},
            },
        )
        assert edited.status_code == 200, edited.text
        again = (await client.get(f"{API}/tasks/{source_id}", headers=alice.headers)).json()
        assert again["name"] == "spring" and again["priority"] == 2
        assert again["error_thresholds"] == {"min_sample": 50, "max_bounce_rate": 0.2}
        assert [(t["template_id"], t["weight"]) for t in again["templates"]] == [(first, 3), (second, 1)]

        # The copy schedules on its own: a complete draft.
        scheduled = await client.post(f"{API}/tasks/{copy['id']}/schedule", json={"now": True}, headers=alice.headers)
        assert scheduled.status_code == 200, scheduled.text


async def test_copy_names_and_what_no_longer_exists(db_url, engine, sessionmaker):  # type: ignore[no-untyped-def]
    alice = await make_account(sessionmaker, "alice", credit=100)
    sender, first, second = await _content(sessionmaker, alice.id)
    async with api_client(db_url, engine) as client:
        long_name = "x" * 200
        long = await _create(client, alice, _body(sender, first, second, name=long_name))
        copy = (await client.post(f"{API}/tasks/{long['id']}/copy", headers=alice.headers)).json()
        assert len(copy["name"]) == 200 and copy["name"] == "x" * 193 + " (copy)"

        # A cancelled task whose sender was archived and one template deleted afterwards.
        source = await _create(client, alice, _body(sender, first, second))
        for action in ("schedule", "cancel"):
            r = await client.post(
                f"{API}/tasks/{source['id']}/{action}",
                json={"now": True} if action == "schedule" else None,
                headers=alice.headers,
            )
            assert r.status_code == 200, r.text
        for draft in (long["id"], copy["id"]):  # drafts hold their templates
            assert (await client.delete(f"{API}/tasks/{draft}", headers=alice.headers)).status_code == 204
        assert (await client.delete(f"{API}/templates/{second}", headers=alice.headers)).status_code == 204
        assert (await client.delete(f"{API}/senders/{sender}", headers=alice.headers)).status_code == 204
        r = await client.post(f"{API}/tasks/{source['id']}/copy", headers=alice.headers)
        assert r.status_code == 201, r.text
        copy = r.json()
        assert copy["status"] == "draft" and copy["sender_id"] is None
        assert [(t["template_id"], t["weight"]) for t in copy["templates"]] == [(first, 3)]
        assert {o["field"] for o in copy["omitted"]} == {"sender_id", "templates"}
        refused = await client.post(f"{API}/tasks/{copy['id']}/schedule", json={"now": True}, headers=alice.headers)
        assert expect_error(refused, 422, "validation_error")["details"][0]["field"] == "sender_id"


async def _cast(sessionmaker: Any) -> tuple[Account, Account, Account, Account]:
    """alice (the owner), bob (another user), an admin and a read-only user."""
    return (
        await make_account(sessionmaker, "alice", credit=100),
        await make_account(sessionmaker, "bob", credit=100),
        await make_account(sessionmaker, "root", role=Role.ADMIN),
        await make_account(sessionmaker, "reader", role=Role.READ_ONLY),
    )


async def test_copy_isolation_and_roles(db_url, engine, sessionmaker):  # type: ignore[no-untyped-def]
    alice, bob, admin, reader = await _cast(sessionmaker)
    sender, first, second = await _content(sessionmaker, alice.id)
    async with api_client(db_url, engine) as client:
        task = await _create(client, alice, _body(sender, first, second))
        expect_error(await client.post(f"{API}/tasks/{task['id']}/copy", headers=bob.headers), 404, "not_found")
        expect_error(await client.post(f"{API}/tasks/{task['id']}/copy", headers=admin.headers), 404, "not_found")
        expect_error(await client.post(f"{API}/tasks/{task['id']}/copy", headers=reader.headers), 403, "forbidden")
        expect_error(await client.post(f"{API}/tasks/999999/copy", headers=alice.headers), 404, "not_found")
        assert (await client.get(f"{API}/tasks", headers=bob.headers)).json()["items"] == []


# ---- batch pause / resume -----------------------------------------------------------------------------


async def test_batch_pause_and_resume_with_partial_failures(db_url, engine, sessionmaker):  # type: ignore[no-untyped-def]
    alice = await make_account(sessionmaker, "alice", credit=100)
    bob = await make_account(sessionmaker, "bob", credit=100)
    sender, first, second = await _content(sessionmaker, alice.id)
    bob_sender, bob_first, bob_second = await _content(sessionmaker, bob.id)
    later = (clock.utc_now() + dt.timedelta(hours=2)).isoformat()
    async with api_client(db_url, engine) as client:
        draft = (await _create(client, alice, _body(sender, first, second)))["id"]
        scheduled = (await _create(client, alice, _body(sender, first, second)))["id"]
        queued = await _generated(client, sessionmaker, alice, _body(sender, first, second))
        bobs = (await _create(client, bob, _body(bob_sender, bob_first, bob_second)))["id"]
        r = await client.post(f"{API}/tasks/{scheduled}/schedule", json={"at": later}, headers=alice.headers)
        assert r.status_code == 200, r.text

        ids = [queued, draft, 999999, scheduled, bobs]
        r = await client.post(f"{API}/tasks/batch", json={"action": "pause", "task_ids": ids}, headers=alice.headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert [x["task_id"] for x in body["results"]] == ids, "request order"
        by_id = {x["task_id"]: x for x in body["results"]}
        assert by_id[queued] == {"task_id": queued, "ok": True, "status": "paused"}
        assert by_id[scheduled] == {"task_id": scheduled, "ok": True, "status": "paused"}
        assert by_id[draft]["ok"] is False and by_id[draft]["error"]["code"] == "invalid_transition"
        assert "cannot pause a task that is draft" in by_id[draft]["error"]["message"]
        assert by_id[999999]["error"]["code"] == "not_found" and by_id[bobs]["error"]["code"] == "not_found"
        assert (body["applied"], body["failed"]) == (2, 3)
        statuses = {
            t: (await client.get(f"{API}/tasks/{t}", headers=alice.headers)).json()["status"]
            for t in (draft, scheduled, queued)
        }
        assert statuses == {draft: "draft", scheduled: "paused", queued: "paused"}, "the failures rolled back nothing"
        assert (await client.get(f"{API}/tasks/{bobs}", headers=bob.headers)).json()["status"] == "draft"
        history = (await client.get(f"{API}/tasks/{queued}/status-history", headers=alice.headers)).json()
        assert history[-1]["to"] == "paused" and history[-1]["actor"] == str(alice.id)

        r = await client.post(
            f"{API}/tasks/batch",
            json={"action": "resume", "task_ids": [scheduled, queued, draft]},
            headers=alice.headers,
        )
        results = r.json()["results"]
        assert [(x["ok"], x.get("status")) for x in results] == [(True, "scheduled"), (True, "queued"), (False, None)]


async def test_batch_roles_and_bad_bodies(db_url, engine, sessionmaker):  # type: ignore[no-untyped-def]
    alice = await make_account(sessionmaker, "alice", credit=100)
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    reader = await make_account(sessionmaker, "reader", role=Role.READ_ONLY)
    sender, first, second = await _content(sessionmaker, alice.id)
    async with api_client(db_url, engine) as client:
        task = await _generated(client, sessionmaker, alice, _body(sender, first, second))
        url = f"{API}/tasks/batch"
        # Admins may pause any task (as with the single endpoint), but resume only their own.
        paused = (await client.post(url, json={"action": "pause", "task_ids": [task]}, headers=admin.headers)).json()
        assert paused["results"] == [{"task_id": task, "ok": True, "status": "paused"}]
        resumed = (await client.post(url, json={"action": "resume", "task_ids": [task]}, headers=admin.headers)).json()
        assert resumed["results"][0]["error"]["code"] == "not_found"
        expect_error(
            await client.post(url, json={"action": "pause", "task_ids": [task]}, headers=reader.headers),
            403,
            "forbidden",
        )
        for bad, field, words in (
            ({"action": "pause", "task_ids": [task, 5, task]}, "task_ids", "listed more than once: " + str(task)),
            ({"action": "pause", "task_ids": list(range(1, 52))}, "task_ids", "50"),
            ({"action": "pause", "task_ids": []}, "task_ids", "1"),
            ({"action": "stop", "task_ids": [task]}, "action", "pause"),
            ({"action": "pause", "task_ids": [0]}, "task_ids", "1"),
            ({"action": "pause"}, "task_ids", "required"),
            ({"action": "pause", "task_ids": [task], "force": True}, "force", "unknown field"),
        ):
            error = expect_error(await client.post(url, json=bad, headers=alice.headers), 422, "validation_error")
            assert error["details"][0]["field"].startswith(field), (bad, error)
            assert words in error["message"] + error["details"][0]["message"], (bad, error)
        assert (await client.get(f"{API}/tasks/{task}", headers=alice.headers)).json()["status"] == "paused"


# ---- cancel selected recipients -----------------------------------------------------------------------


async def test_cancel_recipients_refunds_once(db_url, engine, sessionmaker):  # type: ignore[no-untyped-def]
    """Cancelled recipients are refunded at once; the later task cancel refunds only the rest (never twice)."""
    alice = await make_account(sessionmaker, "alice", credit=100)
    sender, first, second = await _content(sessionmaker, alice.id, recipients=6)
    async with api_client(db_url, engine) as client:
        task = await _generated(client, sessionmaker, alice, _body(sender, first, second))
        assert await _balance_and_refunds(sessionmaker, alice.id, task) == (94, [])
        rows = await _subtasks(client, alice, task)
        url = f"{API}/tasks/{task}/subtasks/cancel"
        by_email = await client.post(
            url,
            json={"emails": [f" U{alice.id}-0@example.net", f"u{alice.id}-1@example.net", "nobody@example.net"]},
            headers=alice.headers,
        )
        assert by_email.status_code == 200, by_email.text
        assert by_email.json() == {"cancelled": 2, "not_pending": 0, "not_found": 1}
        assert await _balance_and_refunds(sessionmaker, alice.id, task) == (96, [2])

        pending_id = next(r["id"] for r in rows if r["recipient_email"] == f"u{alice.id}-2@example.net")
        cancelled_id = next(r["id"] for r in rows if r["recipient_email"] == f"u{alice.id}-0@example.net")
        by_id = await client.post(url, json={"subtask_ids": [pending_id, cancelled_id, 999999]}, headers=alice.headers)
        assert by_id.json() == {"cancelled": 1, "not_pending": 1, "not_found": 1}
        again = await client.post(url, json={"subtask_ids": [pending_id]}, headers=alice.headers)
        assert again.json() == {"cancelled": 0, "not_pending": 1, "not_found": 0}
        assert await _balance_and_refunds(sessionmaker, alice.id, task) == (97, [2, 1]), "no refund for nothing"

        stats = (await client.get(f"{API}/tasks/{task}/stats", headers=alice.headers)).json()
        assert stats["cancelled"] == 3 and stats["recipients"] == 6
        states = {r["recipient_email"]: r["send_state"] for r in await _subtasks(client, alice, task)}
        assert sorted(states.values()) == ["cancelled"] * 3 + ["pending"] * 3

        cancelled = await client.post(f"{API}/tasks/{task}/cancel", headers=alice.headers)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert await _balance_and_refunds(sessionmaker, alice.id, task) == (100, [2, 1, 3]), "each row refunded once"
        stats = (await client.get(f"{API}/tasks/{task}/stats", headers=alice.headers)).json()
        assert stats["cancelled"] == 6


async def test_cancel_recipients_never_touches_claimed_rows(db_url, engine, sessionmaker):  # type: ignore[no-untyped-def]
    """Only `pending` rows are cancelled: rows a worker claimed (allocated) stay as they are, unrefunded; when
    the task then completes, the finalizer refunds nothing more."""
    alice = await make_account(sessionmaker, "alice", credit=100)
    sender, first, second = await _content(sessionmaker, alice.id, recipients=4)
    async with unit_of_work(sessionmaker) as session:
        service = await factories.service(session, settings_for(db_url), "esp", map_to=[alice.id])
    async with api_client(db_url, engine) as client:
        task = await _generated(client, sessionmaker, alice, _body(sender, first, second, allowed_service_ids=[]))
        async with unit_of_work(sessionmaker) as session:
            claim = await queue.claim(session, service_id=service, worker_id="w1", now=clock.utc_now(), max_items=2)
        assert claim is not None and len(claim.items) == 2
        claimed = {i.recipient_email for i in claim.items}
        everyone = [f"u{alice.id}-{i}@example.net" for i in range(4)]
        r = await client.post(f"{API}/tasks/{task}/subtasks/cancel", json={"emails": everyone}, headers=alice.headers)
        assert r.json() == {"cancelled": 2, "not_pending": 2, "not_found": 0}
        states = {s["recipient_email"]: s["send_state"] for s in await _subtasks(client, alice, task)}
        assert {e for e, s in states.items() if s == "allocated"} == claimed
        assert {e for e, s in states.items() if s == "cancelled"} == set(everyone) - claimed
        assert await _balance_and_refunds(sessionmaker, alice.id, task) == (98, [2])
        now = clock.utc_now()
        accepted = [
            queue.ItemOutcome(i, SendResult(str(i.public_id), Outcome.ACCEPTED, provider_message_id=f"p{n}"), now)
            for n, i in enumerate(claim.items)
        ]
        async with unit_of_work(sessionmaker) as session:
            await queue.record(session, claim=claim, outcomes=accepted, now=now, policy=Policy())
        async with unit_of_work(sessionmaker) as session:
            assert await lifecycle.finalize(session, now=clock.utc_now()) == [task]
        assert (await client.get(f"{API}/tasks/{task}", headers=alice.headers)).json()["status"] == "completed"
        assert await _balance_and_refunds(sessionmaker, alice.id, task) == (98, [2]), "completion refunds nothing more"


async def test_cancel_recipients_isolation_roles_and_bad_bodies(db_url, engine, sessionmaker):  # type: ignore[no-untyped-def]
    alice, bob, admin, reader = await _cast(sessionmaker)
    sender, first, second = await _content(sessionmaker, alice.id)
    async with api_client(db_url, engine) as client:
        task = await _generated(client, sessionmaker, alice, _body(sender, first, second))
        url = f"{API}/tasks/{task}/subtasks/cancel"
        body = {"emails": [f"u{alice.id}-0@example.net"]}
        for who in (bob, admin):
            expect_error(await client.post(url, json=body, headers=who.headers), 404, "not_found")
        expect_error(await client.post(url, json=body, headers=reader.headers), 403, "forbidden")
        for bad, field, words in (
            ({}, "subtask_ids", "give either subtask_ids or emails"),
            ({"subtask_ids": [1], "emails": ["a@example.net"]}, "subtask_ids", "give either subtask_ids or emails"),
            ({"subtask_ids": []}, "subtask_ids", "1"),
            ({"subtask_ids": list(range(1, 1002))}, "subtask_ids", "1000"),
            ({"emails": [""]}, "emails", "1"),
            ({"subtask_ids": ["x"]}, "subtask_ids", "integer"),
            ({"public_ids": ["x"]}, "public_ids", "unknown field"),
        ):
            error = expect_error(await client.post(url, json=bad, headers=alice.headers), 422, "validation_error")
            assert error["details"][0]["field"].startswith(field), (bad, error)
            assert words in error["message"] + error["details"][0]["message"], (bad, error)
        stats = (await client.get(f"{API}/tasks/{task}/stats", headers=alice.headers)).json()
        assert stats["cancelled"] == 0


# ---- CLI ----------------------------------------------------------------------------------------------


async def test_cli_copy_batch_and_cancel_recipients(db_url, engine, sessionmaker):  # type: ignore[no-untyped-def]
    alice = await make_account(sessionmaker, "alice", credit=100)
    sender, first, second = await _content(sessionmaker, alice.id)
    async with api_client(db_url, engine) as client:
        task = await _generated(client, sessionmaker, alice, _body(sender, first, second))
        draft = (await _create(client, alice, _body(sender, first, second)))["id"]
    copied = edm(db_url, "task", "copy", str(task), "--json")
    assert copied.returncode == 0, copied.stderr
    assert '"status": "draft"' in copied.stdout and '"name": "spring (copy)"' in copied.stdout

    batch = edm(db_url, "task", "batch", "pause", str(task), str(draft))
    assert batch.returncode == 1, "a refused task fails the command"
    assert f"task {task} paused" in batch.stdout and f"task {draft} refused: cannot pause" in batch.stdout
    bad = edm(db_url, "task", "batch", "stop", str(task))
    assert bad.returncode == 2 and "pause, resume" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1

    cancelled = edm(
        db_url,
        "task",
        "cancel-recipients",
        str(task),
        "--email",
        f"u{alice.id}-0@example.net",
        "--email",
        "nobody@example.net",
    )
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"task {task}: 1 cancelled, 0 no longer pending, 1 not found" in cancelled.stdout
    neither = edm(db_url, "task", "cancel-recipients", str(task))
    assert neither.returncode == 2 and "--email or --subtask" in neither.stderr
    assert await _balance_and_refunds(sessionmaker, alice.id, task) == (96, [1])
