"""Unsubscribe tombstones (docs/tracking.md#after-a-task-is-deleted): deleting a task keeps, for every mailed SubTask,
what its unsubscribe link needs for 365 days. The link keeps showing the masked address and keeps unsubscribing (the
owner's suppression list, the contact if it still exists), idempotently; expired tombstones answer the
neutral 404 page and the daily retention job forgets them."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import delete, func, select, update

from edm import clock
from edm.db.session import unit_of_work
from edm.models.contacts import Contact
from edm.models.suppressions import Suppression
from edm.models.tasks import SendAttempt, SubTask
from edm.models.tracking import UnsubscribeTombstone
from edm.security.tokens import sign_token
from edm.system import runtime_settings
from edm.tasks import sweep
from edm.users.service import create_token
from tests import factories
from tests.integration.events.conftest import EventKit


def unsubscribe_path(ekit: EventKit, public_id: uuid.UUID) -> str:
    return f"/u/{sign_token('unsubscribe', public_id, key=ekit.dkit.settings.signing_key)}"


async def delete_through_the_api(ekit: EventKit, task_id: int) -> None:
    """Close the completed task and delete it, as its owner does (the API's own unit of work commits)."""
    async with unit_of_work(ekit.sessionmaker) as session:
        token, _ = await create_token(session, user_id=ekit.user_id, name="tombstone tests")
    headers = {"Authorization": f"Bearer {token}"}
    closed = await ekit.client.post(f"/api/v1/tasks/{task_id}/close", headers=headers)
    assert closed.status_code == 200, closed.text
    deleted = await ekit.client.delete(f"/api/v1/tasks/{task_id}", headers=headers)
    assert deleted.status_code == 204, deleted.text
    assert await ekit.dkit.count(task_id) == 0, "the SubTasks went with the task"


async def set_send_state(ekit: EventKit, subtask_id: int, state: str) -> None:
    async with unit_of_work(ekit.sessionmaker) as session:
        await session.execute(update(SubTask).where(SubTask.id == subtask_id).values(send_state=state))


async def tombstones(ekit: EventKit) -> dict[uuid.UUID, UnsubscribeTombstone]:
    async with ekit.sessionmaker() as session:
        return {t.subtask_public_id: t for t in await session.scalars(select(UnsubscribeTombstone))}


async def suppressions(ekit: EventKit) -> list[tuple[str, int | None, str, str]]:
    async with ekit.sessionmaker() as session:
        rows = await session.execute(
            select(Suppression.scope, Suppression.user_id, Suppression.value, Suppression.reason).order_by(
                Suppression.id
            )
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def unsubscribed_at(ekit: EventKit, contact_id: int | None) -> dt.datetime | None:
    async with ekit.sessionmaker() as session:
        return await session.scalar(select(Contact.unsubscribed_at).where(Contact.id == contact_id))


async def test_links_of_a_deleted_task_keep_unsubscribing_once(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(4)
    sent, uncertain, failed, contact_gone = subtasks
    await set_send_state(ekit, uncertain.id, "uncertain")
    await set_send_state(ekit, failed.id, "failed")
    before = clock.utc_now()
    pixel = sign_token("open", sent.public_id, key=ekit.dkit.settings.signing_key)
    assert (await ekit.client.get(f"/t/o/{pixel}.gif")).status_code == 200
    await ekit.apply()
    assert [e.task_id for e in await ekit.events()] == [task_id]
    await delete_through_the_api(ekit, task_id)
    assert await ekit.events() == [], "the task's events are deleted with it (docs/states.md#task-transitions)"

    kept = await tombstones(ekit)
    assert set(kept) == {sent.public_id, uncertain.public_id, contact_gone.public_id}, "mailed SubTasks only"
    stone = kept[sent.public_id]
    assert (stone.user_id, stone.contact_id, stone.recipient_email) == (
        ekit.user_id,
        sent.contact_id,
        sent.recipient_email,
    )
    assert stone.task_name and dt.timedelta(days=364) < stone.expires_at - before < dt.timedelta(days=366)

    page = await ekit.client.get(unsubscribe_path(ekit, sent.public_id))
    local, domain = sent.recipient_email.split("@")
    assert page.status_code == 200 and '<form method="post">' in page.text
    assert domain in page.text and f"{local}@" not in page.text, "the address is masked"
    assert await suppressions(ekit) == [] and await unsubscribed_at(ekit, sent.contact_id) is None, (
        "a GET never unsubscribes"
    )

    one_click = await ekit.client.post(
        unsubscribe_path(ekit, sent.public_id),
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert one_click.status_code == 200 and "no more" in one_click.text
    first_time = await unsubscribed_at(ekit, sent.contact_id)
    assert first_time is not None
    clock.shift(dt.timedelta(hours=1))
    again = await ekit.client.post(unsubscribe_path(ekit, sent.public_id))
    assert again.status_code == 200
    assert await suppressions(ekit) == [("user", ekit.user_id, sent.recipient_email, "unsubscribed")]
    assert await unsubscribed_at(ekit, sent.contact_id) == first_time, "repeating changes nothing"

    # The contact was deleted since: the address still goes on the list.
    async with unit_of_work(ekit.sessionmaker) as session:
        await session.execute(delete(Contact).where(Contact.id == contact_gone.contact_id))
    gone = await ekit.client.post(unsubscribe_path(ekit, contact_gone.public_id))
    assert gone.status_code == 200
    assert ("user", ekit.user_id, contact_gone.recipient_email, "unsubscribed") in await suppressions(ekit)
    assert await unsubscribed_at(ekit, uncertain.contact_id) is None, "only the named recipient"

    for path in (unsubscribe_path(ekit, failed.public_id), unsubscribe_path(ekit, uuid.uuid4())):
        for method in ("GET", "POST"):
            response = await ekit.client.request(method, path)
            assert response.status_code == 404 and "not valid" in response.text, (method, path)

    # The next task of the owner leaves the unsubscribed address out.
    async with unit_of_work(ekit.sessionmaker) as session:
        sender = await factories.sender(session, ekit.user_id, local="after")
        template = await factories.template(session, ekit.user_id, name="after")
        next_task = await factories.task(
            session,
            ekit.user_id,
            sender_id=sender,
            template_ids=[template],
            rule={"type": "all_contacts"},
            name="after",
        )
    await ekit.dkit.generate(next_task)
    states = {s.recipient_email: s.send_state for s in await ekit.dkit.subtasks(next_task)}
    assert states[sent.recipient_email] == "suppressed" and states[uncertain.recipient_email] == "pending"


async def test_the_unsubscribe_scope_setting_applies_to_tombstones_too(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(2)
    listed, unlisted = subtasks
    await delete_through_the_api(ekit, task_id)
    async with unit_of_work(ekit.sessionmaker) as session:
        await runtime_settings.put(session, "suppression.unsubscribe_scope", "global")
    assert (await ekit.client.post(unsubscribe_path(ekit, listed.public_id))).status_code == 200
    async with unit_of_work(ekit.sessionmaker) as session:
        await runtime_settings.put(session, "suppression.unsubscribe_scope", "off")
    assert (await ekit.client.post(unsubscribe_path(ekit, unlisted.public_id))).status_code == 200
    assert await suppressions(ekit) == [("global", None, listed.recipient_email, "unsubscribed")]
    assert await unsubscribed_at(ekit, unlisted.contact_id) is not None, "the contact is marked whatever the scope"


async def test_expired_tombstones_are_not_valid_and_the_daily_job_forgets_them(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(1)
    await delete_through_the_api(ekit, task_id)
    path = unsubscribe_path(ekit, subtasks[0].public_id)

    async def count() -> int:
        async with ekit.sessionmaker() as session:
            return int(await session.scalar(select(func.count()).select_from(UnsubscribeTombstone)) or 0)

    async def none_left() -> bool:
        return await count() == 0

    async with ekit.dkit.worker(run_jobs=True):  # every job runs once at start: retention keeps a live one
        await ekit.dkit.hold(0.5)
    assert await count() == 1
    assert (await ekit.client.get(path)).status_code == 200

    clock.shift(dt.timedelta(days=366))
    for method in ("GET", "POST"):
        response = await ekit.client.request(method, path)
        assert response.status_code == 404 and "not valid" in response.text, method
    assert await suppressions(ekit) == []
    async with ekit.dkit.worker(run_jobs=True):
        await ekit.dkit.wait_for(none_left, timeout=10, what="expired tombstones forgotten")


async def test_a_large_task_is_hidden_at_once_and_deleted_in_batches_by_the_worker(
    ekit: EventKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above `sweep.INLINE_ROWS` SubTasks the request only marks the task `deleting` (docs/tasks.md#large-tasks):
    it is gone from the API at once, and the worker's `sweep` job removes its rows a batch per transaction,
    writing the tombstones of each batch's mailed SubTasks before they go."""
    monkeypatch.setattr(sweep, "INLINE_ROWS", 3)
    monkeypatch.setattr(sweep, "BATCH", 3)
    task_id, subtasks = await ekit.send_task(5)
    await set_send_state(ekit, subtasks[1].id, "uncertain")
    await set_send_state(ekit, subtasks[2].id, "failed")
    pixel = sign_token("open", subtasks[0].public_id, key=ekit.dkit.settings.signing_key)
    assert (await ekit.client.get(f"/t/o/{pixel}.gif")).status_code == 200
    await ekit.apply()
    assert len(await ekit.events()) == 1

    async with unit_of_work(ekit.sessionmaker) as session:
        token, _ = await create_token(session, user_id=ekit.user_id, name="deletion tests")
    headers = {"Authorization": f"Bearer {token}"}
    assert (await ekit.client.post(f"/api/v1/tasks/{task_id}/close", headers=headers)).status_code == 200
    assert (await ekit.client.delete(f"/api/v1/tasks/{task_id}", headers=headers)).status_code == 204
    assert await ekit.task_status(task_id) == "deleting"
    assert await ekit.dkit.count(task_id) == 5, "the rows wait for the worker"
    assert (await ekit.client.get(f"/api/v1/tasks/{task_id}", headers=headers)).status_code == 404
    listed = (await ekit.client.get("/api/v1/tasks", headers=headers)).json()["items"]
    assert task_id not in [t["id"] for t in listed]
    again = await ekit.client.delete(f"/api/v1/tasks/{task_id}", headers=headers)
    assert again.status_code == 404, "deleting twice finds nothing"

    # One batch, as the job runs it: the first three SubTasks by address, their tombstones first.
    async with unit_of_work(ekit.sessionmaker) as session:
        task = await sweep.next_deleting(session)
        assert task is not None and task.id == task_id
        batch = await sweep.delete_batch(session, task, now=clock.utc_now())
    assert batch.subtasks == 3 and not batch.finished and await ekit.dkit.count(task_id) == 2
    gone = {s.public_id for s in subtasks} - {s.public_id for s in await ekit.dkit.subtasks(task_id)}
    mailed = {subtasks[0].public_id, subtasks[1].public_id, subtasks[3].public_id, subtasks[4].public_id}
    assert set(await tombstones(ekit)) == gone & mailed

    # The worker's job does the rest by itself.
    async with ekit.dkit.worker(run_jobs=True):

        async def task_gone() -> bool:
            return await ekit.task_status(task_id) == "None"

        await ekit.dkit.wait_for(task_gone, timeout=20, what="the task deleted by the worker")
    assert await ekit.dkit.count(task_id) == 0 and await ekit.events() == []
    assert set(await tombstones(ekit)) == mailed
    async with ekit.sessionmaker() as session:
        attempts = await session.scalar(select(func.count()).select_from(SendAttempt))
    assert attempts == 0
