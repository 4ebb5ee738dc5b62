"""The console's admin credit page over the ASGI app (no browser): the summary (totals and the per-day chart's data,
the same figures as `GET /api/v1/admin/credit/summary`), every user's balance, and the batch adjust form — errors
beside the fields with what was typed kept, each user applied on its own (a refused one changes nothing) and
audited `credit.adjust` as the API's batch does; a plain user gets 404 for the page and the form."""

from __future__ import annotations

import html
import json
import re

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.models.system import AuditLog
from edm.models.users import User
from tests.helpers import console_log_in, field_error, make_account, page_field


async def _balance(sessionmaker: async_sessionmaker[AsyncSession], user_id: int) -> int:
    async with sessionmaker() as session:
        user = await session.get(User, user_id)
        assert user is not None
        return user.credit_balance


def _text(page: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


async def test_the_summary_chart_balances_and_the_batch_form(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    root = await make_account(sessionmaker, "root", role="admin")
    alice = await make_account(sessionmaker, "alice", credit=120)
    bob = await make_account(sessionmaker, "bob", credit=10)
    csrf = await console_log_in(client, root)

    page = await client.get("/admin/credit")
    assert page.status_code == 200
    found = re.search(r'<script type="application/json" id="chart-credit-data">(.*?)</script>', page.text, re.S)
    assert found is not None
    chart = json.loads(html.unescape(found.group(1)))
    assert len(chart["labels"]) == 30 and [s["key"] for s in chart["series"]][:2] == ["granted", "revoked"]
    assert chart["series"][0]["values"][-1] == 130, "today's grants: alice's 120 and bob's 10"
    api = (await client.get("/api/v1/admin/credit/summary", params={"period": "30d"}, headers=root.headers)).json()
    assert [p["granted"] for p in api["trend"]["points"]] == chart["series"][0]["values"]
    assert 'data-chart="chart-credit-data"' in page.text and "uPlot.iife.min.js" in page.text
    text = _text(page.text)
    assert "alice alice@example.com 120" in text and "bob bob@example.com 10" in text
    week = await client.get("/admin/credit", params={"period": "7d"})
    assert week.status_code == 200 and "Last 7 days" in week.text

    empty = await client.post(
        "/admin/credit/batch",
        data={"csrf_token": csrf, "users": " ", "operation": "add", "amount": "5", "reason": "promo"},
    )
    assert empty.status_code == 422 and field_error(empty.text, "users") == "Name at least one user."
    assert page_field(empty.text, "reason") == "promo"
    unknown = await client.post(
        "/admin/credit/batch",
        data={"csrf_token": csrf, "users": "alice, nobody", "operation": "add", "amount": "5", "reason": "promo"},
    )
    assert unknown.status_code == 422 and field_error(unknown.text, "users") == "No user “nobody”."
    assert "alice, nobody</textarea>" in unknown.text
    no_reason = await client.post(
        "/admin/credit/batch",
        data={"csrf_token": csrf, "users": "alice", "operation": "add", "amount": "0", "reason": ""},
    )
    assert no_reason.status_code == 422 and field_error(no_reason.text, "reason") == "This field is required."
    assert await _balance(sessionmaker, alice.id) == 120

    done = await client.post(
        "/admin/credit/batch",
        data={
            "csrf_token": csrf,
            "users": f"alice\nbob@example.com {root.id}",
            "operation": "subtract",
            "amount": "50",
            "reason": "correction",
        },
    )
    assert done.status_code == 200
    text = _text(done.text)
    assert "Batch done: 1 applied, 2 refused." in text
    assert "alice : new balance 70" in text and "bob : refused — There is not enough credit for this." in text
    assert await _balance(sessionmaker, alice.id) == 70 and await _balance(sessionmaker, bob.id) == 10
    async with sessionmaker() as session:
        audited = list(await session.scalars(select(AuditLog).where(AuditLog.action == "credit.adjust")))
    assert [(a.target_id, a.details and a.details["reason"]) for a in audited] == [(str(alice.id), "correction")]

    csrf = await console_log_in(client, alice)
    assert (await client.get("/admin/credit")).status_code == 404
    refused = await client.post(
        "/admin/credit/batch",
        data={"csrf_token": csrf, "users": "alice", "operation": "add", "amount": "500", "reason": "me"},
    )
    assert refused.status_code == 404 and await _balance(sessionmaker, alice.id) == 70
