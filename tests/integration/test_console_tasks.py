"""The console's campaign pages over the ASGI app (no browser): the list's filters and actions, the wizard's inline
errors with what was typed kept, the refusals. tests/browser/test_new_user_flow.py drives the same pages in Chromium."""

from __future__ import annotations

import re

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.console import task_recipients
from edm.db.session import unit_of_work
from edm.models.tasks import SubTask
from edm.tasks import generation
from tests import factories
from tests.helpers import Account, console_log_in, field_error, make_account


async def _campaigns(sessionmaker: async_sessionmaker[AsyncSession], who: Account, *names: str) -> list[int]:
    """A draft per name with a sender, a template and contacts (scheduled when the name says so)."""
    async with unit_of_work(sessionmaker) as session:
        sender = await factories.sender(session, who.id, local=f"news-{who.username}")
        template = await factories.template(session, who.id)
        await factories.contacts(session, who.id, 3, prefix=f"{who.username}-")
        return [
            await factories.task(
                session,
                who.id,
                sender_id=sender,
                template_ids=[template],
                rule={"type": "all_contacts"},
                name=name,
                schedule=name.startswith("Scheduled"),
            )
            for name in names
        ]


def _rows(page: str) -> list[str]:
    return re.findall(r'<th scope="row"><a href="/tasks/\d+">([^<]*)</a></th>', page)


async def test_the_list_filters_by_status_and_name_and_pages_with_the_filters_kept(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice", credit=100)
    bob = await make_account(sessionmaker, "bob")
    await _campaigns(sessionmaker, bob, "Spring of bob")
    await console_log_in(client, alice)
    empty = (await client.get("/tasks")).text
    assert "No campaigns yet" in empty and "Create your first campaign" in empty

    await _campaigns(sessionmaker, alice, "Spring sale", "Scheduled spring", "Autumn 100%", "Autumn 1000")
    everything = (await client.get("/tasks")).text
    assert _rows(everything) == ["Spring sale", "Scheduled spring", "Autumn 100%", "Autumn 1000"]
    assert (await client.get("/tasks?status=scheduled")).text.count('<th scope="row">') == 1
    assert _rows((await client.get("/tasks?q=SPRING")).text) == ["Spring sale", "Scheduled spring"]
    assert _rows((await client.get("/tasks?q=100%25")).text) == ["Autumn 100%"], "% matches itself"
    assert _rows((await client.get("/tasks?status=draft&q=spring")).text) == ["Spring sale"]
    assert "No campaign matches these filters." in (await client.get("/tasks?q=winter")).text
    scheduled = (await client.get("/tasks?status=scheduled")).text
    assert 'data-poll="/api/v1/tasks/' in scheduled, "a scheduled campaign's row follows the server"
    api = await client.get("/api/v1/tasks", params={"q": "spring"}, headers=alice.headers)
    assert [t["name"] for t in api.json()["items"]] == ["Spring sale", "Scheduled spring"]

    from edm.console import tasks as task_pages

    task_pages.PER_PAGE, per_page = 1, task_pages.PER_PAGE
    try:
        first = (await client.get("/tasks?q=spring")).text
        link = re.search(r'<a href="([^"]+)" rel="next">', first)
        assert link is not None and "q=spring" in link.group(1)
        second = (await client.get(link.group(1).replace("&amp;", "&"))).text
        assert _rows(second) == ["Scheduled spring"] and 'href="/tasks?q=spring">First page' in second
    finally:
        task_pages.PER_PAGE = per_page


async def test_actions_follow_the_state_machine_and_lead_back_to_the_filtered_list(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice", credit=100)
    draft, scheduled = await _campaigns(sessionmaker, alice, "Draft one", "Scheduled one")
    csrf = await console_log_in(client, alice)
    page = (await client.get("/tasks")).text
    assert f'action="/tasks/{draft}/delete"' in page and f'action="/tasks/{draft}/pause"' not in page
    assert f'action="/tasks/{scheduled}/pause"' in page and f'action="/tasks/{scheduled}/delete"' not in page
    assert "Cancel “Scheduled one”? 0 recipients not sent yet will not be sent." in page

    paused = await client.post(f"/tasks/{scheduled}/pause", data={"csrf_token": csrf, "next": "/tasks?q=one"})
    assert paused.status_code == 303 and paused.headers["location"] == "/tasks?q=one&notice=paused"
    page = (await client.get(paused.headers["location"])).text
    assert "The campaign was paused." in page and "Paused by a person" in page
    again = await client.post(f"/tasks/{scheduled}/pause", data={"csrf_token": csrf, "next": "//evil.example"})
    assert again.headers["location"] == "/tasks?notice=refused", "a stale action is refused, never off-site"
    resumed = await client.post(f"/tasks/{scheduled}/resume", data={"csrf_token": csrf})
    assert resumed.headers["location"] == "/tasks?notice=resumed"
    assert (await client.post(f"/tasks/{scheduled}/cancel", data={"csrf_token": csrf})).status_code == 303
    copied = await client.post(f"/tasks/{scheduled}/copy", data={"csrf_token": csrf})
    assert re.fullmatch(r"/tasks/\d+/edit\?notice=copied", copied.headers["location"]), "the copy opens in the wizard"
    deleted = await client.post(f"/tasks/{draft}/delete", data={"csrf_token": csrf})
    assert deleted.headers["location"] == "/tasks?notice=deleted"
    statuses = {
        t["name"]: t["status"] for t in (await client.get("/api/v1/tasks", headers=alice.headers)).json()["items"]
    }
    assert statuses == {"Scheduled one": "cancelled", "Scheduled one (copy)": "draft"}


async def test_a_reader_sees_no_action_and_no_one_acts_on_anothers_campaign(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    reader = await make_account(sessionmaker, "reader", role="read_only", credit=100)
    bob = await make_account(sessionmaker, "bob", credit=100)
    (mine,) = await _campaigns(sessionmaker, reader, "Scheduled reading")
    (theirs,) = await _campaigns(sessionmaker, bob, "Scheduled bob")
    csrf = await console_log_in(client, reader)
    page = (await client.get("/tasks")).text
    assert "Scheduled reading" in page and "/pause" not in page and "New campaign" not in page
    refused = await client.post(f"/tasks/{mine}/pause", data={"csrf_token": csrf})
    assert refused.status_code == 403
    detail = (await client.get(f"/tasks/{mine}")).text
    assert "Scheduled reading" in detail and 'method="post" action="/tasks/' not in detail
    assert (await client.post(f"/tasks/{mine}/uncertain/retry", data={"csrf_token": csrf})).status_code == 403

    alice = await make_account(sessionmaker, "alice")
    csrf = await console_log_in(client, alice)
    assert (await client.post(f"/tasks/{theirs}/cancel", data={"csrf_token": csrf})).status_code == 404
    status = (await client.get(f"/api/v1/tasks/{theirs}", headers=bob.headers)).json()["status"]
    assert status == "scheduled"


def _value(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" type="[a-z-]+" value="([^"]*)"', page)
    assert found is not None, f"no {name} in the page"
    return found.group(1)


async def test_the_wizard_saves_a_draft_then_schedules_it_with_a_weighted_ab_pair(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice", credit=10)
    async with unit_of_work(sessionmaker) as session:
        sender = await factories.sender(session, alice.id, local="news")
        a = await factories.template(session, alice.id, "Version A")
        b = await factories.template(session, alice.id, "Version B")
        vip = await factories.tag(session, alice.id, "VIP")
        await factories.contacts(session, alice.id, 3, prefix="alice-", tag_id=vip)
        await factories.contacts(session, alice.id, 2, prefix="other-")
    csrf = await console_log_in(client, alice)
    page = (await client.get("/tasks/new")).text
    assert "5 contacts will receive it" in page, "all contacts by default"
    assert re.search(r'id="schedule-button" disabled', page), "nothing chosen yet: no scheduling"
    fragment = (await client.get(f"/tasks/estimate?rule_type=tag_based&include_tag_ids={vip}")).text
    assert "3 contacts will receive it" in fragment and "Credit needed: 3 of your 10." in fragment
    assert "Choose at least one tag" in (await client.get("/tasks/estimate?rule_type=tag_based")).text

    form = {
        "csrf_token": csrf,
        "name": "Spring",
        "sender_id": str(sender),
        "template_id_1": str(a),
        "weight_1": "3",
        "template_id_2": str(b),
        "weight_2": "1",
        "rule_type": "tag_based",
        "include_tag_ids": str(vip),
        "when": "now",
        "track_opens": "1",
        "on_capacity_exhausted": "wait",
    }
    saved = await client.post("/tasks/new", data={**form, "do": "save"})
    assert saved.status_code == 303 and (location := saved.headers["location"]).endswith("/edit?notice=saved")
    task_id = int(location.split("/")[2])
    draft = (await client.get(location)).text
    assert "The draft was saved." in draft and _value(draft, "weight_1") == "3"
    assert re.search(rf'name="include_tag_ids" value="{vip}" checked', draft)
    assert not re.search(r'id="schedule-button" disabled', draft), "every step done"

    scheduled = await client.post(f"/tasks/{task_id}/edit", data={**form, "do": "schedule"})
    assert scheduled.status_code == 303
    task = (await client.get(f"/api/v1/tasks/{task_id}", headers=alice.headers)).json()
    assert task["status"] == "scheduled" and not task["track_clicks"] and task["timezone"] == "UTC"
    assert [(t["template_id"], t["weight"]) for t in task["templates"]] == [(a, 3), (b, 1)]
    assert task["recipient_rule"] == {"type": "tag_based", "include_tag_ids": [vip], "exclude_tag_ids": []}
    assert (await client.get(f"/tasks/{task_id}/edit")).status_code == 404, "only drafts are edited"


async def test_the_wizard_shows_errors_beside_the_fields_and_keeps_what_was_typed(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice", credit=1)
    async with unit_of_work(sessionmaker) as session:
        sender = await factories.sender(session, alice.id, local="news")
        a = await factories.template(session, alice.id, "Version A")
        await factories.tag(session, alice.id, "VIP")
        await factories.contacts(session, alice.id, 2, prefix="alice-")
    csrf = await console_log_in(client, alice)
    base = {"csrf_token": csrf, "sender_id": str(sender), "template_id_1": str(a), "rule_type": "all_contacts"}

    bad = await client.post("/tasks/new", data={**base, "name": "", "weight_1": "lots", "do": "save"})
    assert bad.status_code == 422
    assert field_error(bad.text, "name") == "This field is required."
    assert field_error(bad.text, "weight_1") == "Enter a whole number."
    assert _value(bad.text, "weight_1") == "lots" and re.search(rf'<option value="{a}" selected>', bad.text)
    none_tagged = await client.post("/tasks/new", data={**base, "name": "X", "rule_type": "tag_based", "do": "save"})
    assert field_error(none_tagged.text, "include_tag_ids") == "Choose at least one tag."
    assert (await client.get("/api/v1/tasks", headers=alice.headers)).json()["items"] == [], "nothing was saved"
    saved = await client.post("/tasks/new", data={**base, "name": "Draft", "do": "save"})
    edit = saved.headers["location"].split("?")[0]
    changed = await client.post(edit, data={**base, "name": "Renamed", "rule_type": "tag_based", "do": "save"})
    assert changed.status_code == 422 and field_error(changed.text, "include_tag_ids") == "Choose at least one tag."
    assert _value(changed.text, "name") == "Renamed" and f'action="{edit}"' in changed.text
    (draft,) = (await client.get("/api/v1/tasks", headers=alice.headers)).json()["items"]
    assert draft["name"] == "Draft" and draft["recipient_rule"]["type"] == "all_contacts", "the draft as it was"
    await client.delete(f"/api/v1/tasks/{draft['id']}", headers=alice.headers)

    when = await client.post(
        "/tasks/new", data={**base, "name": "X", "when": "at", "at_local": "soon", "do": "schedule"}
    )
    assert (
        field_error(when.text, "at_local") == "Enter a valid date and time." and _value(when.text, "at_local") == "soon"
    )
    past = await client.post(
        "/tasks/new", data={**base, "name": "Y", "when": "at", "at_local": "2020-01-01T10:00", "do": "schedule"}
    )
    assert (
        past.status_code == 422
        and field_error(past.text, "at_local") == "Choose a time between now and a year from now."
    )
    assert 'action="/tasks/' in past.text and "/edit" in past.text, "the draft was kept, to be edited further"
    short = await client.post("/tasks/new", data={**base, "name": "Z", "when": "now", "do": "schedule"})
    assert short.status_code == 409 and "There is not enough credit for this." in short.text
    names = sorted(t["name"] for t in (await client.get("/api/v1/tasks", headers=alice.headers)).json()["items"])
    assert names == ["Y", "Z"]


async def test_a_reader_cannot_open_the_wizard_form_nor_post_it(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    reader = await make_account(sessionmaker, "reader", role="read_only")
    csrf = await console_log_in(client, reader)
    assert (await client.get("/tasks/new")).status_code == 403
    refused = await client.post("/tasks/new", data={"csrf_token": csrf, "name": "X", "do": "save"})
    assert refused.status_code == 403


async def test_a_campaign_page_shows_its_counts_templates_history_and_the_uncertain_decision(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await make_account(sessionmaker, "alice", credit=100)
    async with unit_of_work(sessionmaker) as session:
        sender = await factories.sender(session, alice.id, local="news")
        a = await factories.template(session, alice.id, "Version A")
        b = await factories.template(session, alice.id, "Version B")
        await factories.contacts(session, alice.id, 4, prefix="alice-")
        task_id = await factories.task(
            session, alice.id, sender_id=sender, template_ids=[a, b], weights=[3, 1], rule={"type": "all_contacts"}
        )
        assert await generation.generate(session, task_id) is not None
    async with unit_of_work(sessionmaker) as session:
        first = await session.scalar(select(SubTask.id).where(SubTask.task_id == task_id).order_by(SubTask.id))
        await session.execute(update(SubTask).where(SubTask.id == first).values(send_state="uncertain", attempts=1))
    csrf = await console_log_in(client, alice)

    page = (await client.get(f"/tasks/{task_id}")).text
    assert f'data-poll="/api/v1/tasks/{task_id}/stats"' in page, "a queued campaign follows the server"
    assert re.search(r'data-field="recipients" id="count-recipients">4<', page)
    assert "Version A" in page and "Version B" in page and "Created" in page and "Recipients chosen" in page
    assert "1 messages may or may not have left" in page
    retried = await client.post(f"/tasks/{task_id}/uncertain/retry", data={"csrf_token": csrf})
    assert retried.headers["location"] == f"/tasks/{task_id}?notice=retried"
    page = (await client.get(retried.headers["location"])).text
    assert "The uncertain recipients are queued again." in page and "may or may not have left" not in page

    paused = await client.post(f"/tasks/{task_id}/pause", data={"csrf_token": csrf, "next": f"/tasks/{task_id}"})
    assert paused.headers["location"] == f"/tasks/{task_id}?notice=paused"
    page = (await client.get(paused.headers["location"])).text
    assert "Paused by a person" in page and "Resume it when you are ready." in page
    assert f'action="/tasks/{task_id}/resume"' in page and "data-poll" not in page

    listed = (await client.get(f"/tasks/{task_id}/recipients")).text
    assert "4 recipients" in listed and listed.count(f'href="/tasks/{task_id}/recipients/') == 4
    one_found = (await client.get(f"/tasks/{task_id}/recipients?email=alice-1&state=queued")).text
    assert "1 recipients" in one_found and "alice-1@" in one_found
    assert "0 recipients" in (await client.get(f"/tasks/{task_id}/recipients?state=sent")).text
    monkeypatch.setattr(task_recipients, "COUNT_CAP", 3)  # the list counts up to the cap, then says "more than"
    assert "More than 3 recipients" in (await client.get(f"/tasks/{task_id}/recipients")).text
    assert "1 recipients" in (await client.get(f"/tasks/{task_id}/recipients?email=alice-1")).text
    monkeypatch.undo()
    csv_url = re.search(r'href="(/api/v1/tasks/\d+/subtasks\.csv[^"]*)"', one_found)
    assert csv_url is not None
    csv = await client.get(csv_url.group(1).replace("&amp;", "&"))
    assert csv.status_code == 200 and csv.text.count("\n") == 2, "the header and alice-1, as the page shows"
    one = (await client.get(f"/tasks/{task_id}/recipients/{first}")).text
    assert "@example.net</h1>" in one and 'id="recipient-state"' in one and "Nothing happened yet." in one

    bob = await make_account(sessionmaker, "bob")
    await console_log_in(client, bob)
    for path in (f"/tasks/{task_id}", f"/tasks/{task_id}/recipients", f"/tasks/{task_id}/recipients/{first}"):
        assert (await client.get(path)).status_code == 404, path
