"""A draft keeps the send time chosen for it, in the console's wizard and in the API alike: "Save as draft" with "a
date and time" stores it (`schedule_at`) without scheduling, unchecked (a past time too); the wizard shows it again
in the viewer's time zone; scheduling checks and uses it."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.session import unit_of_work
from edm.models.users import User
from tests import factories
from tests.helpers import Account, console_log_in, make_account

SHANGHAI = ZoneInfo("Asia/Shanghai")


async def _ready(sessionmaker: async_sessionmaker[AsyncSession], who: Account) -> dict[str, str]:
    """A sender, a template and contacts of `who`, as the wizard's fields (the viewer's time zone: Shanghai)."""
    async with unit_of_work(sessionmaker) as session:
        sender = await factories.sender(session, who.id, local=f"news-{who.username}")
        template = await factories.template(session, who.id)
        await factories.contacts(session, who.id, 2, prefix=f"{who.username}-")
        await session.execute(update(User).where(User.id == who.id).values(timezone="Asia/Shanghai"))
    return {"sender_id": str(sender), "template_id_1": str(template), "rule_type": "all_contacts"}


def _when(page: str) -> tuple[str, str]:
    """(the schedule choice checked, the date and time field's value) of the wizard page."""
    checked = re.search(r'name="when" value="(\w+)" checked', page)
    at = re.search(r'name="at_local" type="datetime-local" value="([^"]*)"', page)
    assert checked is not None and at is not None
    return checked.group(1), at.group(1)


async def _task(client: httpx.AsyncClient, who: Account, task_id: int) -> dict[str, Any]:
    answer = await client.get(f"/api/v1/tasks/{task_id}", headers=who.headers)
    assert answer.status_code == 200
    task: dict[str, Any] = answer.json()
    return task


def _utc(value: str | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(value).astimezone(dt.UTC)


async def test_a_draft_saved_with_a_date_and_time_keeps_it_and_shows_it_again_in_the_viewers_time_zone(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice", credit=10)
    base = await _ready(sessionmaker, alice)
    csrf = await console_log_in(client, alice, csrf_from="/account")
    later = (dt.datetime.now(SHANGHAI) + dt.timedelta(days=30)).replace(hour=9, minute=30, second=0, microsecond=0)
    typed = later.strftime("%Y-%m-%dT%H:%M")
    form = {**base, "csrf_token": csrf, "name": "Spring", "when": "at", "at_local": typed}

    saved = await client.post("/tasks/new", data={**form, "do": "save"})
    assert saved.status_code == 303 and saved.headers["location"].endswith("/edit?notice=saved")
    task_id = int(saved.headers["location"].split("/")[2])
    task = await _task(client, alice, task_id)
    assert task["status"] == "draft", "saved, not scheduled"
    assert _utc(task["schedule_at"]) == later.astimezone(dt.UTC), "typed in Shanghai, stored in UTC"
    assert _when((await client.get(saved.headers["location"])).text) == ("at", typed), "shown as it was typed"
    assert "Planned for" in (await client.get(f"/tasks/{task_id}")).text

    past = await client.post(f"/tasks/{task_id}/edit", data={**form, "at_local": "2020-01-01T10:00", "do": "save"})
    assert past.status_code == 303, "a draft may keep a time already past: it is checked when scheduling"
    assert _when((await client.get(f"/tasks/{task_id}/edit")).text) == ("at", "2020-01-01T10:00")
    past_form = {**form, "at_local": "2020-01-01T10:00"}
    refused = await client.post(f"/tasks/{task_id}/edit", data={**past_form, "do": "schedule"})
    assert refused.status_code == 422 and "Choose a time between now and a year from now." in refused.text
    assert (await _task(client, alice, task_id))["status"] == "draft"
    assert _when((await client.get(f"/tasks/{task_id}/edit")).text) == ("at", "2020-01-01T10:00"), "still kept"

    no_time = await client.post(f"/tasks/{task_id}/edit", data={**form, "at_local": "", "do": "save"})
    assert no_time.status_code == 303, "a date and time not chosen yet: the draft is saved without one"
    assert (await _task(client, alice, task_id))["schedule_at"] is None
    bad = await client.post(f"/tasks/{task_id}/edit", data={**form, "at_local": "soon", "do": "save"})
    assert bad.status_code == 422 and "Enter a valid date and time." in bad.text

    await client.post(f"/tasks/{task_id}/edit", data={**form, "do": "save"})
    now = await client.post(f"/tasks/{task_id}/edit", data={**form, "when": "now", "do": "save"})
    assert now.status_code == 303 and (await _task(client, alice, task_id))["schedule_at"] is None, "now: no time"
    assert _when((await client.get(f"/tasks/{task_id}/edit")).text) == ("now", "")

    scheduled = await client.post(f"/tasks/{task_id}/edit", data={**form, "do": "schedule"})
    assert scheduled.status_code == 303 and scheduled.headers["location"] == f"/tasks/{task_id}?notice=scheduled"
    task = await _task(client, alice, task_id)
    assert task["status"] == "scheduled" and _utc(task["schedule_at"]) == later.astimezone(dt.UTC)


async def test_the_api_keeps_a_drafts_planned_time_and_schedules_at_it_when_no_other_is_given(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice", credit=10)
    base = await _ready(sessionmaker, alice)
    body = {
        "name": "Spring",
        "sender_id": int(base["sender_id"]),
        "templates": [{"template_id": int(base["template_id_1"])}],
        "recipient_rule": {"type": "all_contacts"},
    }
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).replace(microsecond=0)
    created = await client.post("/api/v1/tasks", json={**body, "schedule_at": later.isoformat()}, headers=alice.headers)
    assert created.status_code == 201 and created.json()["status"] == "draft"
    task_id = created.json()["id"]
    assert _utc(created.json()["schedule_at"]) == later

    path = f"/api/v1/tasks/{task_id}"
    naive = await client.patch(path, json={"schedule_at": "2030-01-01T10:00:00"}, headers=alice.headers)
    assert naive.status_code == 422, "a time without its offset is refused"
    past = await client.patch(path, json={"schedule_at": "2020-01-01T10:00:00Z"}, headers=alice.headers)
    assert past.status_code == 200 and _utc(past.json()["schedule_at"]) == dt.datetime(2020, 1, 1, 10, tzinfo=dt.UTC)
    refused = await client.post(f"{path}/schedule", json={}, headers=alice.headers)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_schedule", "the kept time"
    assert (await _task(client, alice, task_id))["status"] == "draft"

    await client.patch(path, json={"schedule_at": later.isoformat()}, headers=alice.headers)
    scheduled = await client.post(f"{path}/schedule", json={}, headers=alice.headers)
    assert scheduled.status_code == 200, scheduled.text
    assert scheduled.json()["status"] == "scheduled" and _utc(scheduled.json()["schedule_at"]) == later
    moved = await client.patch(path, json={"schedule_at": None}, headers=alice.headers)
    assert moved.status_code == 409 and moved.json()["error"]["code"] == "task_locked", "unschedule first"

    await client.post(f"{path}/unschedule", headers=alice.headers)
    await client.patch(path, json={"schedule_at": "2020-01-01T10:00:00Z"}, headers=alice.headers)
    now = await client.post(f"{path}/schedule", json={"now": True}, headers=alice.headers)
    assert now.status_code == 200 and now.json()["status"] == "scheduled", "now: whatever the draft planned"
