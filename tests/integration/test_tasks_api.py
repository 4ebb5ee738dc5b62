"""The task API: transitions, statistics, isolation and bad input (never a 500)."""

from __future__ import annotations

import datetime as dt

from edm.clock import utc_now
from edm.db.session import unit_of_work
from edm.models.users import Role
from tests import factories
from tests.helpers import api_client, make_account


async def _content(sessionmaker, user_id: int) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    async with unit_of_work(sessionmaker) as session:
        sender = await factories.sender(session, user_id, local=f"s{user_id}")
        template = await factories.template(session, user_id)
        await factories.contacts(session, user_id, 5, prefix=f"u{user_id}-")
    return sender, template


def _body(sender: int, template: int, **extra: object) -> dict[str, object]:
    return {
        "name": "spring",
        "sender_id": sender,
        "templates": [{"template_id": template}],
        "recipient_rule": {"type": "all_contacts"},
        **extra,
    }


async def test_task_lifecycle_through_the_api(db_url, engine, sessionmaker):  # type: ignore[no-untyped-def]
    alice = await make_account(sessionmaker, "alice", credit=100)
    sender, template = await _content(sessionmaker, alice.id)
    async with api_client(db_url, engine) as client:
        created = await client.post("/api/v1/tasks", json=_body(sender, template), headers=alice.headers)
        assert created.status_code == 201, created.text
        task = created.json()
        assert task["status"] == "draft" and "schedule" in task["allowed_actions"]
        later = (utc_now() + dt.timedelta(hours=2)).isoformat()
        scheduled = await client.post(f"/api/v1/tasks/{task['id']}/schedule", json={"at": later}, headers=alice.headers)
        assert scheduled.status_code == 200, scheduled.text
        assert scheduled.json()["status"] == "scheduled"
        assert scheduled.json()["schedule_estimate"]["sendable"] == 5
        paused = await client.post(f"/api/v1/tasks/{task['id']}/pause", json={"detail": "hold"}, headers=alice.headers)
        assert paused.json()["status"] == "paused" and paused.json()["pause_reason"] == "user"
        resumed = await client.post(f"/api/v1/tasks/{task['id']}/resume", headers=alice.headers)
        assert resumed.json()["status"] == "scheduled", "never generated: back to scheduled"
        cancelled = await client.post(f"/api/v1/tasks/{task['id']}/cancel", headers=alice.headers)
        assert cancelled.json()["status"] == "cancelled"
        again = await client.post(f"/api/v1/tasks/{task['id']}/pause", headers=alice.headers)
        assert again.status_code == 409
        error = again.json()["error"]
        assert error["code"] == "invalid_transition" and error["current_status"] == "cancelled"
        assert error["allowed_actions"] == ["delete"] and error["request_id"]
        stats = await client.get(f"/api/v1/tasks/{task['id']}/stats", headers=alice.headers)
        assert stats.status_code == 200 and stats.json()["recipients"] == 0
        history = await client.get(f"/api/v1/tasks/{task['id']}/status-history", headers=alice.headers)
        assert [h["to"] for h in history.json()] == ["draft", "scheduled", "paused", "scheduled", "cancelled"]
        deleted = await client.delete(f"/api/v1/tasks/{task['id']}", headers=alice.headers)
        assert deleted.status_code == 204


async def test_bad_schedule_and_unknown_fields(db_url, engine, sessionmaker):  # type: ignore[no-untyped-def]
    alice = await make_account(sessionmaker, "alice", credit=100)
    sender, template = await _content(sessionmaker, alice.id)
    async with api_client(db_url, engine) as client:
        unknown = await client.post(
            "/api/v1/tasks", json={**_body(sender, template), "colour": "red"}, headers=alice.headers
        )
        assert unknown.status_code == 422
        assert unknown.json()["error"]["details"][0] == {"field": "colour", "message": "unknown field"}
        task = (await client.post("/api/v1/tasks", json=_body(sender, template), headers=alice.headers)).json()
        url = f"/api/v1/tasks/{task['id']}/schedule"
        past = (utc_now() - dt.timedelta(hours=1)).isoformat()
        assert (await client.post(url, json={"at": past}, headers=alice.headers)).json()["error"][
            "code"
        ] == "invalid_schedule"
        too_far = (utc_now() + dt.timedelta(days=400)).isoformat()
        assert (await client.post(url, json={"at": too_far}, headers=alice.headers)).status_code == 422
        naive = await client.post(url, json={"at": "2030-01-01T10:00:00"}, headers=alice.headers)
        assert naive.status_code == 422 and naive.json()["error"]["details"][0]["field"] == "at"
        garbage = await client.post(
            url, content=b"{not json", headers={**alice.headers, "content-type": "application/json"}
        )
        assert garbage.status_code == 400 and garbage.json()["error"]["code"] == "invalid_json"
        bad_rule = await client.post(
            "/api/v1/tasks",
            json={**_body(sender, template), "recipient_rule": {"type": "everyone"}},
            headers=alice.headers,
        )
        assert bad_rule.status_code == 422 and "recipient_rule.type" in bad_rule.json()["error"]["message"]
        limit = await client.get("/api/v1/tasks?limit=500", headers=alice.headers)
        assert limit.status_code == 422


async def test_credit_and_recipient_guards(db_url, engine, sessionmaker):  # type: ignore[no-untyped-def]
    poor = await make_account(sessionmaker, "poor", credit=2)
    sender, template = await _content(sessionmaker, poor.id)
    async with api_client(db_url, engine) as client:
        task = (await client.post("/api/v1/tasks", json=_body(sender, template), headers=poor.headers)).json()
        short = await client.post(f"/api/v1/tasks/{task['id']}/schedule", json={"now": True}, headers=poor.headers)
        assert short.status_code == 409
        assert short.json()["error"]["code"] == "insufficient_credit"
        assert (short.json()["error"]["needed"], short.json()["error"]["available"]) == (5, 2)
        nobody = await client.post(
            "/api/v1/tasks",
            json=_body(sender, template, recipient_rule={"type": "specific", "contact_ids": [999999]}),
            headers=poor.headers,
        )
        assert nobody.status_code == 422 and "999999" in nobody.json()["error"]["message"]


async def test_isolation_and_roles(db_url, engine, sessionmaker):  # type: ignore[no-untyped-def]
    alice = await make_account(sessionmaker, "alice", credit=100)
    bob = await make_account(sessionmaker, "bob", credit=100)
    reader = await make_account(sessionmaker, "reader", role=Role.READ_ONLY)
    sender, template = await _content(sessionmaker, alice.id)
    bob_sender, bob_template = await _content(sessionmaker, bob.id)
    async with api_client(db_url, engine) as client:
        task = (await client.post("/api/v1/tasks", json=_body(sender, template), headers=alice.headers)).json()
        for method, path in [
            ("GET", f"/api/v1/tasks/{task['id']}"),
            ("GET", f"/api/v1/tasks/{task['id']}/stats"),
            ("POST", f"/api/v1/tasks/{task['id']}/pause"),
            ("PATCH", f"/api/v1/tasks/{task['id']}"),
            ("GET", f"/api/v1/tasks/{task['id']}/subtasks"),
        ]:
            answer = await client.request(method, path, headers=bob.headers, json={} if method != "GET" else None)
            assert answer.status_code == 404, (method, path, answer.text)
        foreign = await client.post("/api/v1/tasks", json=_body(bob_sender, template), headers=bob.headers)
        assert foreign.status_code == 422 and "templates.template_id" in foreign.json()["error"]["message"]
        other_sender = await client.post("/api/v1/tasks", json=_body(sender, bob_template), headers=bob.headers)
        assert other_sender.status_code == 422 and "sender_id" in other_sender.json()["error"]["message"]
        denied = await client.post("/api/v1/tasks", json=_body(sender, template), headers=reader.headers)
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
        assert (await client.get("/api/v1/tasks")).status_code == 401
        bad_token = await client.get("/api/v1/tasks", headers={"Authorization": "Bearer edm_nope"})
        assert bad_token.status_code == 401 and bad_token.json()["error"]["code"] == "invalid_token"
        admin_only = await client.get("/api/v1/admin/services", headers=alice.headers)
        assert admin_only.status_code == 403
