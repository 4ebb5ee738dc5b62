"""A task whose template hits a render limit at send time fails that task, not the worker: the worker keeps
sending the other task meanwhile, stops rendering the hostile template after its first limit, and pauses
its task with the reason `render_limit` through the one transition function."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import select

from edm.db.session import unit_of_work
from edm.models.tasks import TaskStatusChange
from edm.tasks import lifecycle
from tests import factories

# Fine for the contact scheduling test-renders with; for every later one a loop that only the 2 s limit ends.
HOSTILE_HTML = (
    "<p>Hello {{ contact.first_name }}</p>{% if contact.email.startswith('bomb') %}"
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{% endif %}"
    "{{ unsubscribe_url }}"
)
RECIPIENTS = 20


async def _loop_lag(stop: asyncio.Event, worst: list[float]) -> None:
    """The longest the event loop went without running this coroutine (it asks for every 10 ms)."""
    while not stop.is_set():
        started = time.monotonic()
        await asyncio.sleep(0.01)
        worst[0] = max(worst[0], time.monotonic() - started - 0.01)


async def test_a_render_limit_pauses_its_task_while_the_other_task_completes(dkit):  # type: ignore[no-untyped-def]
    async with unit_of_work(dkit.sessionmaker) as session:
        alice = await factories.user(session, "alice", credit=1000)
        bob = await factories.user(session, "bob", credit=1000)
        await factories.service(session, dkit.settings, "fake-a", map_to=[alice, bob])
        good_template = await factories.template(session, alice, "good")
        hostile_template = await factories.template(session, bob, "hostile", html=HOSTILE_HTML)
        await factories.contacts(session, alice, RECIPIENTS, prefix="alice-")
        await factories.contacts(session, bob, 1, prefix="bob-")  # first: the one scheduling renders with
        await factories.contacts(session, bob, RECIPIENTS, prefix="bomb-")
        good = await factories.task(
            session,
            alice,
            sender_id=await factories.sender(session, alice, "news-a"),
            template_ids=[good_template],
            rule={"type": "all_contacts"},
            name="good",
        )
        hostile = await factories.task(
            session,
            bob,
            sender_id=await factories.sender(session, bob, "news-b"),
            template_ids=[hostile_template],
            rule={"type": "all_contacts"},
            name="hostile",
        )
    await dkit.generate(good)
    await dkit.generate(hostile)

    async def settled() -> bool:
        return await dkit.status(good) == "completed" and await dkit.status(hostile) == "paused"

    stop, worst_lag = asyncio.Event(), [0.0]
    watcher = asyncio.create_task(_loop_lag(stop, worst_lag))
    started = time.monotonic()
    async with dkit.worker(concurrency=2):
        await dkit.wait_for(settled, timeout=30, what="good task completed, hostile task paused")
        elapsed = time.monotonic() - started
    stop.set()
    await watcher

    assert await dkit.count(good, "sent") == RECIPIENTS
    task = await dkit.task(hostile)
    assert task.pause_reason == "render_limit"
    assert "html: rendering took longer than 2 s" in (task.pause_detail or "")
    changes = await dkit.rows(
        select(TaskStatusChange.to_status, TaskStatusChange.reason, TaskStatusChange.actor)
        .where(TaskStatusChange.task_id == hostile)
        .order_by(TaskStatusChange.id)
    )
    assert changes[-1] == ("paused", "render_limit", "system")
    failed = [s for s in await dkit.subtasks(hostile) if s.send_state == "failed"]
    assert failed and all(s.last_error_code == "render_error" for s in failed)
    assert all("took longer than 2 s" in (s.last_error or "") for s in failed)
    # One limit was enough: rendering each of the 20 recipients to its own 2 s limit would take 40 s of CPU. (A
    # send's limit is 2 s of the render thread's CPU time, which shares the GIL with the worker's event loop and a
    # busy machine with other processes: one limit can take several seconds on the clock.)
    assert elapsed < 30, f"settled after {elapsed:.1f} s"
    # The 2 s render ran on a render thread: the worker's event loop kept running meanwhile.
    assert worst_lag[0] < 1.0, f"the event loop stalled for {worst_lag[0]:.2f} s"


async def test_the_render_limit_pause_applies_once(dkit):  # type: ignore[no-untyped-def]
    """Several claims (or workers) may report the same template: the first pauses the task, the others find
    it paused and change nothing."""
    w = await factories.world(dkit.sessionmaker, dkit.settings, recipients=2, services_=[{"name": "fake-a"}])
    async with unit_of_work(dkit.sessionmaker) as session:
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )
    await dkit.generate(task_id)
    async with unit_of_work(dkit.sessionmaker) as session:
        assert await lifecycle.pause_for_render_limit(session, task_id, detail="html: output exceeds 2 MB")
        assert not await lifecycle.pause_for_render_limit(session, task_id, detail="html: output exceeds 2 MB")
    task = await dkit.task(task_id)
    assert (task.status, task.pause_reason, task.pause_detail) == (
        "paused",
        "render_limit",
        "html: output exceeds 2 MB",
    )
    pauses = await dkit.rows(
        select(TaskStatusChange.id).where(TaskStatusChange.task_id == task_id, TaskStatusChange.to_status == "paused")
    )
    assert len(pauses) == 1
