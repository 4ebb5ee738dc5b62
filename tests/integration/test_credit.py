"""Credit through the real ASGI app and database (docs/admin.md#credit): add/subtract/set with one ledger entry,
the actor and an audit row each; insufficient credit refused with nothing written; the batch (a savepoint per
user); the ledger with filters; own credit only; the summary; roles; the `edm credit` command; and the
invariant under concurrency: `credit_balance == sum(ledger) >= 0` with 20 parallel operations and a generation
reserving credit for the same user."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import httpx
from sqlalchemy import func, insert, select

from edm import clock
from edm.db.session import unit_of_work
from edm.models.system import AuditLog
from edm.models.users import QuotaLedgerEntry, Role, User
from edm.tasks import generation
from edm.users import credit
from tests import factories
from tests.helpers import Account, api_client, make_account, settings_for
from tests.helpers import expect_error as _error
from tests.helpers import run_cli as _edm

API = "/api/v1"
ADMIN_CREDIT = f"{API}/admin/users/{{}}/credit"
BATCH = f"{API}/admin/credit/batch"
LEDGER = f"{API}/admin/credit/ledger"
SUMMARY = f"{API}/admin/credit/summary"


async def _op(
    client: httpx.AsyncClient, admin: Account, user_id: int, operation: str, amount: int, reason: str = "test"
) -> httpx.Response:
    return await client.post(
        ADMIN_CREDIT.format(user_id),
        headers=admin.headers,
        json={"operation": operation, "amount": amount, "reason": reason},
    )


async def _entries(sessionmaker: Any, user_id: int) -> list[QuotaLedgerEntry]:
    async with sessionmaker() as session:
        return list(
            await session.scalars(
                select(QuotaLedgerEntry).where(QuotaLedgerEntry.user_id == user_id).order_by(QuotaLedgerEntry.id)
            )
        )


async def _assert_invariant(sessionmaker: Any, user_id: int) -> int:
    """balance == sum(ledger) ≥ 0, and every entry's balance_after is the running sum (the latest = balance)."""
    entries = await _entries(sessionmaker, user_id)
    async with sessionmaker() as session:
        balance = int(await session.scalar(select(User.credit_balance).where(User.id == user_id)))
    running = 0
    for e in entries:
        running += e.amount
        assert e.balance_after == running, f"entry {e.id}: balance_after {e.balance_after}, running sum {running}"
    assert balance == running >= 0
    assert not entries or entries[-1].balance_after == balance
    return balance


async def _audits(sessionmaker: Any, action: str) -> list[AuditLog]:
    async with sessionmaker() as session:
        return list(await session.scalars(select(AuditLog).where(AuditLog.action == action).order_by(AuditLog.id)))


# --------------------------------------------------------------------------------------------------------
# Operations
# --------------------------------------------------------------------------------------------------------


async def test_add_subtract_set_write_one_entry_with_actor_and_audit(
    client: httpx.AsyncClient, sessionmaker: Any
) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    alice = await make_account(sessionmaker, "alice", credit=100)

    r = await _op(client, admin, alice.id, "add", 50, "campaign bonus")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["balance"] == 150
    assert {k: body["entry"][k] for k in ("kind", "amount", "balance_after", "actor_user_id", "reason")} == {
        "kind": "grant",
        "amount": 50,
        "balance_after": 150,
        "actor_user_id": admin.id,
        "reason": "campaign bonus",
    }
    r = await _op(client, admin, alice.id, "subtract", 30)
    assert (r.json()["balance"], r.json()["entry"]["kind"], r.json()["entry"]["amount"]) == (120, "revoke", -30)
    r = await _op(client, admin, alice.id, "set", 500)
    assert (r.json()["balance"], r.json()["entry"]["kind"], r.json()["entry"]["amount"]) == (500, "set", 380)
    r = await _op(client, admin, alice.id, "set", 500)
    assert r.json() == {"balance": 500, "entry": None}, "set to the current balance writes no entry"
    r = await _op(client, admin, alice.id, "set", 0)
    assert (r.json()["balance"], r.json()["entry"]["amount"]) == (0, -500)

    before = len(await _entries(sessionmaker, alice.id))
    err = _error(await _op(client, admin, alice.id, "subtract", 1), 409, "insufficient_credit")
    assert (err["needed"], err["available"]) == (1, 0)
    assert len(await _entries(sessionmaker, alice.id)) == before, "a refused subtract writes nothing"
    assert await _assert_invariant(sessionmaker, alice.id) == 0

    audits = await _audits(sessionmaker, "credit.adjust")
    assert len(audits) == 5, "every accepted operation is audited (the refused one rolled back)"
    assert (audits[0].actor_user_id, audits[0].target_type, audits[0].target_id) == (admin.id, "user", str(alice.id))
    assert audits[0].details["operation"] == "add" and audits[0].details["delta"] == 50
    assert audits[3].details["delta"] == 0 and audits[3].details["ledger_entry_id"] is None


async def test_operation_input_is_checked(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    alice = await make_account(sessionmaker, "alice", credit=10)
    url = ADMIN_CREDIT.format(alice.id)
    for body in (
        {"operation": "add", "amount": 0, "reason": "x"},
        {"operation": "subtract", "amount": 0, "reason": "x"},
        {"operation": "add", "amount": -5, "reason": "x"},
        {"operation": "add", "amount": 5},
        {"operation": "add", "amount": 5, "reason": ""},
        {"operation": "add", "amount": 5, "reason": "   "},
        {"operation": "double", "amount": 5, "reason": "x"},
        {"operation": "add", "amount": 5, "reason": "x", "extra": 1},
        {"operation": "add", "amount": 2**31, "reason": "x"},
        {"operation": "add", "amount": "5x", "reason": "x"},
    ):
        _error(await client.post(url, json=body, headers=admin.headers), 422, "validation_error")
    # the balance column is 32-bit: a grant that would overflow it is refused, not a 500
    _error(await _op(client, admin, alice.id, "add", 2**31 - 5), 422, "validation_error")
    _error(await _op(client, admin, 999_999, "add", 5), 404, "not_found")
    _error(
        await client.post(
            f"{API}/admin/users/0/credit", json={"operation": "add", "amount": 1, "reason": "x"}, headers=admin.headers
        ),
        422,
        "validation_error",
    )
    assert len(await _entries(sessionmaker, alice.id)) == 1
    assert await _assert_invariant(sessionmaker, alice.id) == 10


async def test_roles_admin_only_and_read_tokens_cannot_write(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    admin_ro = await make_account(sessionmaker, "auditor", role=Role.ADMIN, scope="read")
    alice = await make_account(sessionmaker, "alice", credit=10)
    viewer = await make_account(sessionmaker, "viewer", role=Role.READ_ONLY, credit=3)
    op = {"operation": "add", "amount": 5, "reason": "x"}
    batch = {"operation": "add", "amount": 5, "reason": "x", "items": [{"user_id": alice.id}]}
    for who in (alice, viewer):
        _error(await client.post(ADMIN_CREDIT.format(alice.id), json=op, headers=who.headers), 403, "forbidden")
        _error(await client.get(ADMIN_CREDIT.format(alice.id), headers=who.headers), 403, "forbidden")
        _error(await client.post(BATCH, json=batch, headers=who.headers), 403, "forbidden")
        _error(await client.get(LEDGER, headers=who.headers), 403, "forbidden")
        _error(await client.get(SUMMARY, headers=who.headers), 403, "forbidden")
    _error(await client.post(ADMIN_CREDIT.format(alice.id), json=op, headers=admin_ro.headers), 403, "forbidden")
    _error(await client.post(BATCH, json=batch, headers=admin_ro.headers), 403, "forbidden")
    assert (await client.get(LEDGER, headers=admin_ro.headers)).status_code == 200
    _error(await client.get(LEDGER), 401, "unauthenticated")
    r = await client.get(f"{API}/me/credit", headers=viewer.headers)
    assert r.status_code == 200 and r.json()["balance"] == 3
    assert (await _op(client, admin, alice.id, "add", 1)).status_code == 200
    assert await _assert_invariant(sessionmaker, alice.id) == 11


# --------------------------------------------------------------------------------------------------------
# Own credit and the ledger
# --------------------------------------------------------------------------------------------------------


async def test_own_credit_is_paginated_and_isolated(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    alice = await make_account(sessionmaker, "alice", credit=100)
    bob = await make_account(sessionmaker, "bob", credit=7)
    for amount in (1, 2, 3, 4):
        await _op(client, admin, alice.id, "add", amount)

    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        r = await client.get(f"{API}/me/credit", params=params, headers=alice.headers)
        assert r.status_code == 200, r.text
        assert r.json()["balance"] == 110
        page = r.json()["ledger"]
        seen += [e["amount"] for e in page["items"]]
        assert all(e["user_id"] == alice.id for e in page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [4, 3, 2, 1, 100], "newest first, every entry once"
    r = await client.get(f"{API}/me/credit", params={"kind": "grant", "limit": 1}, headers=bob.headers)
    assert r.json()["balance"] == 7 and [e["amount"] for e in r.json()["ledger"]["items"]] == [7]

    # another user's ledger: 404 for a user, visible for an admin
    _error(await client.get(f"{API}/me/credit", params={"user_id": alice.id}, headers=bob.headers), 404, "not_found")
    r = await client.get(f"{API}/me/credit", params={"user_id": bob.id}, headers=admin.headers)
    assert r.json()["balance"] == 7
    r = await client.get(ADMIN_CREDIT.format(alice.id), params={"limit": 200}, headers=admin.headers)
    assert r.json()["balance"] == 110 and len(r.json()["ledger"]["items"]) == 5
    _error(await client.get(ADMIN_CREDIT.format(424242), headers=admin.headers), 404, "not_found")
    _error(
        await client.get(f"{API}/me/credit", params={"cursor": "%%%"}, headers=alice.headers), 422, "validation_error"
    )


async def test_ledger_filters(client: httpx.AsyncClient, db_url: str, sessionmaker: Any) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    other_admin = await make_account(sessionmaker, "ops", role=Role.ADMIN)
    w = await factories.world(sessionmaker, settings_for(db_url), recipients=5, credit=100)
    async with unit_of_work(sessionmaker) as session:
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )
    async with unit_of_work(sessionmaker) as session:
        result = await generation.generate(session, task_id, now=clock.utc_now())
    assert result is not None and result.status == "queued"
    clock.shift(dt.timedelta(hours=2))
    await _op(client, admin, w.user_id, "add", 10)
    await _op(client, other_admin, w.user_id, "subtract", 3)
    bob = await make_account(sessionmaker, "bob", credit=1)

    async def amounts(**params: Any) -> list[int]:
        r = await client.get(LEDGER, params={"limit": 200, **params}, headers=admin.headers)
        assert r.status_code == 200, r.text
        return [e["amount"] for e in r.json()["items"]]

    assert await amounts() == [1, -3, 10, -5, 100]
    assert await amounts(user_id=w.user_id) == [-3, 10, -5, 100]
    assert await amounts(kind="reserve") == [-5]
    assert await amounts(kind=["grant", "revoke"], user_id=w.user_id) == [-3, 10, 100]
    assert await amounts(task_id=task_id) == [-5]
    assert await amounts(actor_user_id=other_admin.id) == [-3]
    since = (clock.utc_now() - dt.timedelta(hours=1)).isoformat()
    assert await amounts(**{"from": since}) == [1, -3, 10]
    assert await amounts(to=since) == [-5, 100]
    assert bob.id
    r = await client.get(LEDGER, params={"limit": 2}, headers=admin.headers)
    r2 = await client.get(LEDGER, params={"limit": 2, "cursor": r.json()["next_cursor"]}, headers=admin.headers)
    assert [e["amount"] for e in r2.json()["items"]] == [10, -5]
    for params in (
        {"kind": "gift"},
        {"from": "yesterday"},
        {"from": "2026-01-01T00:00:00"},
        {"from": since, "to": since},
        {"user_id": 0},
        {"limit": 201},
    ):
        _error(await client.get(LEDGER, params=params, headers=admin.headers), 422, "validation_error")


# --------------------------------------------------------------------------------------------------------
# Batch
# --------------------------------------------------------------------------------------------------------


async def test_batch_applies_each_user_on_its_own(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    alice = await make_account(sessionmaker, "alice", credit=100)
    bob = await make_account(sessionmaker, "bob", credit=5)
    carol = await make_account(sessionmaker, "carol", credit=0)

    body = {
        "operation": "subtract",
        "amount": 20,
        "reason": "monthly fee",
        "items": [
            {"user_id": carol.id, "operation": "add", "amount": 50},
            {"user_id": alice.id},
            {"user_id": bob.id},
            {"user_id": 987654},
            {"user_id": alice.id, "operation": "set", "amount": 42, "reason": "correction"},
        ],
    }
    r = await client.post(BATCH, json=body, headers=admin.headers)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["applied"], answer["failed"]) == (3, 2)
    results = answer["results"]
    assert [x["user_id"] for x in results] == [carol.id, alice.id, bob.id, 987654, alice.id], "request order"
    assert [x["ok"] for x in results] == [True, True, False, False, True]
    assert results[0]["balance"] == 50 and results[1]["entry"]["amount"] == -20
    assert results[2]["error"]["code"] == "insufficient_credit" and results[2]["error"]["available"] == 5
    assert results[3]["error"]["code"] == "not_found"
    assert results[4]["balance"] == 42 and results[4]["entry"]["kind"] == "set"

    assert await _assert_invariant(sessionmaker, alice.id) == 42
    assert await _assert_invariant(sessionmaker, bob.id) == 5
    assert await _assert_invariant(sessionmaker, carol.id) == 50
    assert len(await _entries(sessionmaker, bob.id)) == 1, "the refused user got nothing"
    assert len(await _audits(sessionmaker, "credit.adjust")) == 3

    too_many = {"operation": "add", "amount": 1, "reason": "x", "items": [{"user_id": alice.id}] * 501}
    _error(await client.post(BATCH, json=too_many, headers=admin.headers), 422, "validation_error")
    for bad in (
        {"items": [{"user_id": alice.id}]},  # no operation, amount or reason anywhere
        {"operation": "add", "amount": 1, "items": [{"user_id": alice.id}]},
        {"operation": "add", "amount": 1, "reason": "x", "items": []},
        {"operation": "add", "amount": 1, "reason": "x", "items": [{"user_id": alice.id, "x": 1}]},
    ):
        _error(await client.post(BATCH, json=bad, headers=admin.headers), 422, "validation_error")
    assert await _assert_invariant(sessionmaker, alice.id) == 42


async def test_batch_of_500_users(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    now = clock.utc_now()
    async with unit_of_work(sessionmaker) as session:
        ids = list(
            (
                await session.execute(
                    insert(User).returning(User.id),
                    [
                        {
                            "username": f"u{i:03d}",
                            "email": f"u{i:03d}@example.com",
                            "role": "user",
                            "is_active": True,
                            "timezone": "UTC",
                            "credit_balance": 0,
                            "must_change_password": False,
                            "created_at": now,
                            "updated_at": now,
                        }
                        for i in range(500)
                    ],
                )
            ).scalars()
        )
    body = {"operation": "add", "amount": 7, "reason": "launch", "items": [{"user_id": i} for i in reversed(ids)]}
    r = await client.post(BATCH, json=body, headers=admin.headers)
    assert r.status_code == 200, r.text
    assert (r.json()["applied"], r.json()["failed"]) == (500, 0)
    async with sessionmaker() as session:
        assert await session.scalar(select(func.sum(User.credit_balance)).where(User.id.in_(ids))) == 3500
        grants = (
            select(func.count())
            .select_from(QuotaLedgerEntry)
            .where(QuotaLedgerEntry.kind == "grant", QuotaLedgerEntry.reason == "launch")
        )
        assert await session.scalar(grants) == 500


# --------------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------------


async def test_summary_totals_buckets_and_trend(client: httpx.AsyncClient, db_url: str, sessionmaker: Any) -> None:
    start = dt.datetime(2026, 3, 10, 12, 30, tzinfo=dt.UTC)
    clock.freeze(start - dt.timedelta(days=10))  # outside the 7-day period
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    alice = await make_account(sessionmaker, "alice", credit=2000)  # grant 2000, 10 days ago
    bob = await make_account(sessionmaker, "bob", credit=50)
    await make_account(sessionmaker, "carol")
    await make_account(sessionmaker, "dave", credit=500)

    clock.freeze(start - dt.timedelta(days=2))
    await _op(client, admin, alice.id, "add", 100)
    await _op(client, admin, bob.id, "subtract", 20)
    clock.freeze(start - dt.timedelta(hours=3))
    await _op(client, admin, bob.id, "set", 60)  # +30 → granted
    await _op(client, admin, alice.id, "set", 2050)  # −50 → revoked
    async with unit_of_work(sessionmaker) as session:
        await credit.apply_credit(session, user_id=alice.id, kind="charge", amount=-4, reason="test send")
        await credit.apply_credit(session, user_id=alice.id, kind="reserve", amount=-40, reason="task")
        await credit.apply_credit(session, user_id=alice.id, kind="refund", amount=15, reason="suppressed")
    clock.freeze(start)

    r = await client.get(SUMMARY, params={"period": "7d"}, headers=admin.headers)
    assert r.status_code == 200, r.text
    s = r.json()
    assert s["totals"] == {"granted": 130, "revoked": 70, "reserved": 40, "charged": 4, "refunded": 15}
    assert s["users_by_balance"] == {"0": 2, "1-100": 1, "101-1000": 1, ">1000": 1}  # root, carol / bob / dave / alice
    assert s["trend"]["unit"] == "day" and len(s["trend"]["points"]) == 7
    points = {p["start"][:10]: p for p in s["trend"]["points"]}
    assert points["2026-03-08"]["granted"] == 100 and points["2026-03-08"]["revoked"] == 20
    assert points["2026-03-10"] == {
        "start": points["2026-03-10"]["start"],
        "granted": 30,
        "revoked": 50,
        "reserved": 40,
        "charged": 4,
        "refunded": 15,
    }
    assert points["2026-03-04"]["granted"] == 0

    r = await client.get(SUMMARY, params={"period": "24h"}, headers=admin.headers)
    s = r.json()
    assert s["totals"] == {"granted": 30, "revoked": 50, "reserved": 40, "charged": 4, "refunded": 15}
    assert s["trend"]["unit"] == "hour" and len(s["trend"]["points"]) == 24
    hour = next(p for p in s["trend"]["points"] if p["start"].startswith("2026-03-10T09:00"))
    assert hour["reserved"] == 40 and hour["granted"] == 30
    assert s["trend"]["points"][-1]["start"].startswith("2026-03-10T12:00")
    r = await client.get(SUMMARY, params={"period": "30d"}, headers=admin.headers)
    assert r.json()["totals"]["granted"] == 2000 + 50 + 500 + 130 and len(r.json()["trend"]["points"]) == 30
    _error(await client.get(SUMMARY, params={"period": "1y"}, headers=admin.headers), 422, "validation_error")


# --------------------------------------------------------------------------------------------------------
# The invariant under concurrency
# --------------------------------------------------------------------------------------------------------

OPERATIONS = [
    ("add", 100 + i) if i % 3 == 0 else ("subtract", 150 + 40 * i) if i % 3 == 1 else ("set", 200 + 5 * i)
    for i in range(20)
]


async def test_parallel_operations_and_generation_keep_balance_equal_to_ledger(
    db_url: str, engine: Any, sessionmaker: Any
) -> None:
    """20 admin operations through the API (each request its own connection) and a generation reserving credit
    for the same user, all at once; on SQLite they serialize on the database lock."""
    w = await factories.world(sessionmaker, settings_for(db_url), recipients=40, credit=1000)
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    async with unit_of_work(sessionmaker) as session:
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )

    async def generate() -> Any:
        async with unit_of_work(sessionmaker) as session:
            return await generation.generate(session, task_id, now=clock.utc_now())

    async with api_client(db_url, engine) as client:
        calls = [
            _op(client, admin, w.user_id, op, amount, f"parallel {i}") for i, (op, amount) in enumerate(OPERATIONS)
        ]
        *responses, generated = await asyncio.gather(*calls, generate())

    by_op: dict[str, list[httpx.Response]] = {"add": [], "subtract": [], "set": []}
    for (op, _), r in zip(OPERATIONS, responses, strict=True):
        assert r.status_code in (200, 409), r.text
        if r.status_code == 409:
            assert op == "subtract" and r.json()["error"]["code"] == "insufficient_credit"
        by_op[op].append(r)
    entries = await _entries(sessionmaker, w.user_id)
    kinds = [e.kind for e in entries]
    accepted_subtracts = [r for r in by_op["subtract"] if r.status_code == 200]
    assert kinds.count("revoke") == len(accepted_subtracts), "every refused subtract left no entry"
    assert kinds.count("grant") == 1 + len(by_op["add"])
    assert kinds.count("set") == sum(1 for r in by_op["set"] if r.json()["entry"] is not None)
    assert generated is not None
    assert kinds.count("reserve") == (1 if generated.status == "queued" else 0)
    accepted = sum(1 for r in responses if r.status_code == 200)
    assert len(await _audits(sessionmaker, "credit.adjust")) == accepted
    # every answer's entry is in the chain with the balance it reported
    by_id = {e.id: e for e in entries}
    for r in responses:
        if r.status_code == 200 and r.json()["entry"]:
            e = r.json()["entry"]
            assert by_id[e["id"]].balance_after == e["balance_after"]
    await _assert_invariant(sessionmaker, w.user_id)


async def test_a_user_loaded_before_the_lock_is_re_read(sessionmaker: Any) -> None:
    """A session that loaded the user earlier must not compute the new balance from its stale copy."""
    async with unit_of_work(sessionmaker) as session:
        uid = await factories.user(session, "alice", credit=100)
    async with sessionmaker() as stale:
        assert (await stale.get(User, uid)).credit_balance == 100  # type: ignore[union-attr]
        await stale.commit()  # objects outlive the commit (expire_on_commit=False)
        async with unit_of_work(sessionmaker) as other:
            await credit.admin_adjust(
                other, user_id=uid, operation="subtract", amount=60, reason="x", actor_user_id=None
            )
        entry = await credit.admin_adjust(stale, user_id=uid, operation="add", amount=5, reason="y", actor_user_id=None)
        await stale.commit()
    assert entry is not None and entry.balance_after == 45
    assert await _assert_invariant(sessionmaker, uid) == 45


# --------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------


async def test_credit_cli(db_url: str, sessionmaker: Any) -> None:
    async with unit_of_work(sessionmaker) as session:
        uid = await factories.user(session, "alice", credit=20)
    ok = _edm(db_url, "credit", "add", "alice", "30", "--reason", "bonus")
    assert ok.returncode == 0 and "balance 50" in ok.stdout, ok.stderr
    assert _edm(db_url, "credit", "subtract", str(uid), "10", "--reason", "fee").returncode == 0
    ok = _edm(db_url, "credit", "set", "alice@example.com", "100", "--reason", "reset")
    assert ok.returncode == 0 and "+60" in ok.stdout and "balance 100" in ok.stdout
    for args, message in (
        (["credit", "subtract", "alice", "500", "--reason", "x"], "insufficient credit"),
        (["credit", "add", "alice", "0", "--reason", "x"], "amount"),
        (["credit", "add", "alice", "5", "--reason", " "], "reason"),
        (["credit", "add", "nobody", "5", "--reason", "x"], "not found"),
        (["credit", "ledger", "alice", "--kind", "gift"], "kind"),
        (["credit", "add", "alice", "5"], "--reason"),
    ):
        bad = _edm(db_url, *args)
        assert bad.returncode == 2, (args, bad.stdout, bad.stderr)
        assert message in bad.stderr and (bad.stderr.count("\n") == 1 or "Usage" in bad.stderr), bad.stderr
    ledger = _edm(db_url, "credit", "ledger", "alice")
    assert ledger.returncode == 0
    lines = ledger.stdout.splitlines()
    assert lines[0] == "alice: balance 100" and "set" in lines[1] and "reset" in lines[1] and len(lines) == 5
    assert await _assert_invariant(sessionmaker, uid) == 100
    audits = await _audits(sessionmaker, "credit.adjust")
    assert [(a.actor_kind, a.actor_user_id) for a in audits] == [("cli", None)] * 3
