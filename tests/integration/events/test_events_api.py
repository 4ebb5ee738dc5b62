"""Reading events over the API: a user sees only events of their own SubTasks; admins see everything,
including unmatched events with their reason and raw payload."""

from __future__ import annotations

import uuid

from edm.db.session import unit_of_work
from edm.models.users import Role
from edm.users.service import create_token
from tests.helpers import make_account
from tests.integration.events.conftest import EventKit
from tests.integration.events.test_webhooks import post_sendgrid, sg_event


async def test_users_see_their_own_events_and_admins_see_the_unmatched(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(2)
    ghost = {
        "email": "x@example.org",
        "timestamp": 1_700_000_000,
        "event": "bounce",
        "sg_event_id": "ghost",
        "subtask_id": str(uuid.uuid4()),
    }
    events = [sg_event(subtasks[0], "delivered", 1), sg_event(subtasks[1], "bounce", 2, type="bounce"), ghost]
    assert (await post_sendgrid(ekit, events)).status_code == 200
    await ekit.apply()
    async with unit_of_work(ekit.sessionmaker) as session:
        owner_token, _ = await create_token(session, user_id=ekit.user_id, name="t", scope="read")
    owner = {"Authorization": f"Bearer {owner_token}"}
    other = await make_account(ekit.sessionmaker, "mallory")
    admin = await make_account(ekit.sessionmaker, "root", role=Role.ADMIN)

    mine = (await ekit.client.get(f"/api/v1/events?task_id={task_id}", headers=owner)).json()
    assert sorted(e["event_type"] for e in mine["items"]) == ["delivered", "hard_bounced"]
    assert all("raw" not in e for e in mine["items"])
    first_page = (await ekit.client.get("/api/v1/events?limit=1", headers=owner)).json()
    second_page = (
        await ekit.client.get(f"/api/v1/events?limit=1&cursor={first_page['next_cursor']}", headers=owner)
    ).json()
    assert first_page["items"][0]["id"] < second_page["items"][0]["id"] and second_page["next_cursor"] is None

    assert (await ekit.client.get("/api/v1/events", headers=other.headers)).json()["items"] == []
    assert (await ekit.client.get(f"/api/v1/events?user_id={ekit.user_id}", headers=other.headers)).status_code == 403
    assert (await ekit.client.get("/api/v1/admin/events", headers=other.headers)).status_code == 403
    assert (await ekit.client.get("/api/v1/events")).status_code == 401

    unmatched = (await ekit.client.get("/api/v1/admin/events?match_status=unmatched", headers=admin.headers)).json()
    assert [(e["match_reason"], e["recipient"]) for e in unmatched["items"]] == [("unknown_subtask", "x@example.org")]
    detail = (
        await ekit.client.get(f"/api/v1/admin/events/{unmatched['items'][0]['id']}", headers=admin.headers)
    ).json()
    assert detail["raw"]["sg_event_id"] == "ghost" and detail["raw_truncated"] is False
    assert (await ekit.client.get("/api/v1/admin/events/999999", headers=admin.headers)).status_code == 404
    bad = await ekit.client.get("/api/v1/admin/events?match_status=lost", headers=admin.headers)
    assert bad.status_code == 422
