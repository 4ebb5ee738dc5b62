"""The events pages (/admin/events, /admin/events/<id>) over the ASGI app: admins only (a user gets 404); unmatched
events by default, filtered by source, match status, reason and type (a bad filter is a 422 beside its field),
paged by cursor; one event's page shows the payload escaped in a <pre>, a long one cut with a note."""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.session import unit_of_work
from edm.models.events import Event
from tests.helpers import console_log_in, field_error, make_account


def _event(n: int, **values: Any) -> Event:
    now = dt.datetime.now(dt.UTC)
    fields: dict[str, Any] = {
        "source": "sendgrid",
        "dedupe_key": f"console-events-{n}",
        "event_type": "hard_bounced",
        "occurred_at": now,
        "received_at": now,
        "match_status": "unmatched",
        "match_reason": "unknown_subtask",
        "recipient": f"ghost{n}@example.org",
        "details": {},
        "raw": {"n": n},
    }
    fields.update(values)
    return Event(**fields)


async def test_admins_see_unmatched_events_and_webhook_failures_filtered_and_paged(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await make_account(sessionmaker, "evie", role="admin")
    user = await make_account(sessionmaker, "ulf")
    async with unit_of_work(sessionmaker) as session:
        session.add_all([_event(n) for n in range(52)])
        session.add(_event(100, recipient="matched@example.org", match_status="matched", match_reason=None))
        bad = _event(
            101,
            source="sparkpost",
            event_type="unknown",
            recipient=None,
            match_reason="bad_element",
            processing_error="not a JSON object",
            raw="<script>alert(1)</script>" + "x" * 30_000,
        )
        session.add(bad)
        await session.flush()
        bad_id = bad.id

    await console_log_in(client, user)
    assert (await client.get("/admin/events")).status_code == 404
    assert (await client.get(f"/admin/events/{bad_id}")).status_code == 404

    await console_log_in(client, admin)
    first = (await client.get("/admin/events")).text
    assert "ghost0@example.org" in first and "matched@example.org" not in first and 'rel="next"' in first
    nxt = html.unescape(first.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0])
    second = (await client.get(nxt)).text
    assert "ghost51@example.org" in second and "not a JSON object" in second and "ghost0@example.org" not in second

    failures = (await client.get("/admin/events?match_reason=bad_element&source=sparkpost")).text
    assert "not a JSON object" in failures and "ghost1@example.org" not in failures
    matched = (await client.get("/admin/events?match_status=matched&event_type=hard_bounced")).text
    assert "matched@example.org" in matched and "ghost1@example.org" not in matched
    row = matched.split("matched@example.org")[0].rsplit("<tr>", 1)[1]
    assert "<td>Hard bounce" in row and "<code>hard_bounced</code>" not in row, "a label, not the code"
    assert '<option value="hard_bounced" selected>Hard bounce</option>' in matched
    every = (await client.get("/admin/events?match_status=&source=nowhere")).text
    assert "No event matches these filters." in every

    page = await client.get(f"/admin/events/{bad_id}")
    assert page.status_code == 200
    assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "Only the first 20,000 of 30,025 characters are shown." in page.text
    assert "not a JSON object" in page.text
    assert "Unknown event <small>(<code>unknown</code>" in page.text, "the label, then the code for searching"
    assert (await client.get("/admin/events/999999999")).status_code == 404


async def test_bad_event_filters_are_a_422_beside_their_fields(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await make_account(sessionmaker, "evan", role="admin")
    await console_log_in(client, admin)
    answer = await client.get("/admin/events?match_status=lost&event_type=nope&source=" + "s" * 17)
    assert answer.status_code == 422
    assert field_error(answer.text, "match_status") == "Choose one of the options."
    assert field_error(answer.text, "event_type") == "Choose one of the options."
    assert field_error(answer.text, "source") == "Use at most 16 characters."
