"""Failover and error handling (docs/sending.md#failures-and-failover, docs/states.md#service-states): how each class of
provider answer moves the SubTask and the service, with a second healthy service taking the work."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from edm import clock
from edm.db.session import unit_of_work
from edm.dispatch.service_day import next_reset
from edm.models.email_services import EmailServiceState, EmailServiceStatusLog, ServiceDayUsage
from edm.models.system import Notification
from edm.models.tasks import SendAttempt, SubTask
from edm.providers.fake import FakeAdapter
from tests import factories

INITIAL_CREDIT = 100_000


async def _scenario(
    dkit, *, recipients: int, services_: list[dict[str, Any]], settings: dict[str, Any] | None = None, invalid: int = 0
) -> tuple[factories.World, int]:  # type: ignore[no-untyped-def]
    if settings:
        await dkit.put_settings(**settings)
    w = await factories.world(
        dkit.sessionmaker, dkit.settings, recipients=recipients, services_=services_, credit=INITIAL_CREDIT
    )
    async with unit_of_work(dkit.sessionmaker) as session:
        if invalid:
            await factories.contacts(session, w.user_id, invalid, prefix="nobody", domain="bad.invalid")
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )
    return w, task_id


async def _run_to_completion(dkit, task_id: int, *, concurrency: int = 2, timeout: float = 12.0) -> None:  # type: ignore[no-untyped-def]
    async def completed() -> bool:
        return await dkit.status(task_id) == "completed"

    async with dkit.worker(concurrency=concurrency):
        await dkit.wait_for(completed, timeout=timeout, what="task completed")


async def _attempts(dkit, task_id: int) -> dict[int, list[Any]]:  # type: ignore[no-untyped-def]
    rows = await dkit.rows(
        select(SendAttempt)
        .join(SubTask, SubTask.id == SendAttempt.subtask_id)
        .where(SubTask.task_id == task_id)
        .order_by(SendAttempt.id)
    )
    by_subtask: dict[int, list[Any]] = defaultdict(list)
    for (attempt,) in rows:
        by_subtask[attempt.subtask_id].append(attempt)
    return by_subtask


async def _state(dkit, service_id: int) -> EmailServiceState:  # type: ignore[no-untyped-def]
    async with dkit.sessionmaker() as session:
        row = await session.get(EmailServiceState, service_id, populate_existing=True)
        assert row is not None
        return row


async def _status_log(dkit, service_id: int) -> list[EmailServiceStatusLog]:  # type: ignore[no-untyped-def]
    rows = await dkit.rows(
        select(EmailServiceStatusLog)
        .where(
            EmailServiceStatusLog.service_id == service_id,
            EmailServiceStatusLog.actor_user_id.is_(None),
            EmailServiceStatusLog.change != "config_updated",
        )
        .order_by(EmailServiceStatusLog.id)
    )
    return [r for (r,) in rows]


async def _usage(dkit, service_id: int) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    rows = await dkit.rows(
        select(ServiceDayUsage.accepted, ServiceDayUsage.failed, ServiceDayUsage.uncertain).where(
            ServiceDayUsage.service_id == service_id
        )
    )
    return (sum(r[0] for r in rows), sum(r[1] for r in rows), sum(r[2] for r in rows))


def _all_delivered_once(subtasks: list[SubTask], *service_ids: int) -> None:
    keys = [k for sid in service_ids for k in FakeAdapter.delivered_keys(sid)]
    assert len(keys) == len(set(keys)), "a recipient was accepted twice"
    assert sorted(keys) == sorted(str(s.public_id) for s in subtasks if s.send_state == "sent")


async def test_transient_failures_back_off_and_move_to_the_healthy_service(dkit):  # type: ignore[no-untyped-def]
    base, cap = 0.2, 0.4
    w, task_id = await _scenario(
        dkit,
        recipients=20,
        services_=[
            {"name": "a", "options": {"transient_pct": 100}, "max_concurrency": 2},
            {"name": "b", "max_concurrency": 2},
        ],
        # max_attempts high and a small cap: the test is about back-off and failover, not about giving up.
        settings={
            "retry__base_delay": base,
            "retry__max_delay": cap,
            "retry__max_attempts": 50,
            "freeze__failure_threshold": 1000,
        },
    )
    a, b = w.service_ids
    await _run_to_completion(dkit, task_id)

    subtasks = await dkit.subtasks(task_id)
    assert {(s.send_state, s.service_id) for s in subtasks} == {("sent", b)}
    attempts = await _attempts(dkit, task_id)
    failed_on_a = 0
    a_attempts = 0
    for s in subtasks:
        history = attempts[s.id]
        assert [x.attempt_no for x in history] == list(range(1, len(history) + 1))
        *failures, last = history
        assert (last.service_id, last.outcome) == (b, "accepted")
        assert all((x.service_id, x.outcome) == (a, "transient") for x in failures)
        assert s.retryable_failures == len(failures), "each transient failure counts toward max_attempts"
        assert s.attempts == len(history)
        for n, (prev, nxt) in enumerate(zip(history, history[1:], strict=False), start=1):
            waited = (nxt.started_at - prev.finished_at).total_seconds()
            assert waited >= 0.8 * min(base * 2 ** (n - 1), cap), f"retry {n} of {s.id} after {waited:.3f} s"
        failed_on_a += bool(failures)
        a_attempts += len(failures)
    assert failed_on_a >= 1, "service A took work and failed it"

    state_a = await _state(dkit, a)
    assert not state_a.frozen and state_a.consecutive_failures == a_attempts
    assert await _usage(dkit, a) == (0, a_attempts, 0)
    assert await _usage(dkit, b) == (20, 0, 0)
    assert FakeAdapter.delivered_keys(a) == []
    _all_delivered_once(subtasks, a, b)
    stats = await dkit.stats(task_id)
    assert (stats["sent"], stats["failed"], stats["retrying"]) == (20, 0, 0)
    assert await dkit.credit(w.user_id) == (INITIAL_CREDIT - 20,) * 2


async def test_throttled_service_backs_off_honouring_retry_after(dkit):  # type: ignore[no-untyped-def]
    retry_after = 3.0
    w, task_id = await _scenario(
        dkit,
        recipients=40,
        services_=[
            {"name": "a", "options": {"throttle_pct": 100, "retry_after": retry_after}, "max_concurrency": 1},
            {"name": "b", "max_concurrency": 2, "sending_interval_seconds": 0.1},
        ],
        settings={"throttle__base_backoff": 0.1},
    )  # so Retry-After is what decides the back-off
    a, b = w.service_ids

    async def a_throttled() -> bool:
        return (await _state(dkit, a)).throttled_until is not None

    async def completed() -> bool:
        return await dkit.status(task_id) == "completed"

    async with dkit.worker(concurrency=2):
        await dkit.wait_for(a_throttled, what="A throttled")
        state = await _state(dkit, a)
        assert state.throttled_until > clock.utc_now()
        await dkit.wait_for(completed, timeout=15, what="task completed")

    subtasks = await dkit.subtasks(task_id)
    assert {(s.send_state, s.service_id) for s in subtasks} == {("sent", b)}
    assert all(s.retryable_failures == 0 for s in subtasks), "throttling does not count toward max_attempts"
    attempts = await _attempts(dkit, task_id)
    on_a = sorted((x for h in attempts.values() for x in h if x.service_id == a), key=lambda x: x.id)
    assert len(on_a) >= 2, "A was asked again once its back-off ended (B needs ≥ 3.9 s for 40 at 0.1 s)"
    assert {x.outcome for x in on_a} == {"throttled"}
    log = [e for e in await _status_log(dkit, a) if e.change == "throttled"]
    assert len(log) == len(on_a), "one status-log row per throttled answer"
    for prev, entry in zip(on_a, log, strict=True):
        until = prev.finished_at + dt.timedelta(seconds=retry_after)
        assert entry.new_value == until.isoformat()
    # After each throttled answer, A takes nothing until its throttled_until has passed.
    for prev, nxt in zip(on_a, on_a[1:], strict=False):
        assert nxt.started_at >= prev.finished_at + dt.timedelta(seconds=retry_after)
    final = await _state(dkit, a)
    assert final.throttled_until == on_a[-1].finished_at + dt.timedelta(seconds=retry_after)
    assert final.throttle_level == len(on_a)
    # The throttled SubTasks went straight back (due now) and B sent them.
    for x in on_a:
        history = attempts[x.subtask_id]
        assert (history[-1].service_id, history[-1].outcome) == (b, "accepted")
    assert FakeAdapter.delivered_keys(a) == []
    _all_delivered_once(subtasks, a, b)
    stats = await dkit.stats(task_id)
    assert (stats["sent"], stats["failed"]) == (40, 0)


async def test_quota_exhausted_service_rests_until_its_next_reset(dkit):  # type: ignore[no-untyped-def]
    w, task_id = await _scenario(
        dkit,
        recipients=10,
        services_=[
            {
                "name": "a",
                "options": {"quota_pct": 100},
                "max_concurrency": 1,
                "timezone": "Asia/Shanghai",
                "quota_reset_time": "02:00",
            },
            {"name": "b", "max_concurrency": 2},
        ],
    )
    a, b = w.service_ids
    await _run_to_completion(dkit, task_id)

    attempts = await _attempts(dkit, task_id)
    on_a = [x for h in attempts.values() for x in h if x.service_id == a]
    assert len(on_a) == 1 and on_a[0].outcome == "quota_exhausted", "A is not asked again before its reset"
    state = await _state(dkit, a)
    expected = next_reset(on_a[0].finished_at, timezone="Asia/Shanghai", reset_time="02:00")
    assert state.exhausted_until == expected
    local = expected.astimezone(ZoneInfo("Asia/Shanghai"))
    assert local.time() == dt.time(2, 0) and dt.timedelta(0) < expected - on_a[0].finished_at <= dt.timedelta(days=1)
    log = await _status_log(dkit, a)
    assert [(e.change, e.new_value) for e in log] == [("exhausted", expected.isoformat())]

    subtasks = await dkit.subtasks(task_id)
    assert {(s.send_state, s.service_id) for s in subtasks} == {("sent", b)}
    assert all(s.retryable_failures == 0 for s in subtasks)
    assert attempts[on_a[0].subtask_id][-1].service_id == b
    _all_delivered_once(subtasks, a, b)
    stats = await dkit.stats(task_id)
    assert (stats["sent"], stats["failed"]) == (10, 0)


async def test_auth_error_freezes_the_service_and_the_other_finishes(dkit):  # type: ignore[no-untyped-def]
    # The `priority` strategy makes A take all the work while it is usable, so A deterministically reaches
    # its 6th message (the first refused one) whatever the timing; B is the failover.
    w, task_id = await _scenario(
        dkit,
        recipients=30,
        services_=[
            {"name": "a", "options": {"fail_after": 5}, "max_concurrency": 1, "priority": 1},
            {"name": "b", "max_concurrency": 1, "priority": 2},
        ],
        settings={"allocation__strategy": "priority"},
    )
    a, b = w.service_ids
    async with unit_of_work(dkit.sessionmaker) as session:
        admin_id = await factories.user(session, "root", role="admin")
    await _run_to_completion(dkit, task_id, timeout=15)

    attempts = await _attempts(dkit, task_id)
    on_a = sorted((x for h in attempts.values() for x in h if x.service_id == a), key=lambda x: x.id)
    assert [x.outcome for x in on_a] == ["accepted"] * 5 + ["auth_config"]
    alerts = await dkit.rows(select(Notification.user_id, Notification.kind, Notification.title))
    assert [(r.user_id, r.kind) for r in alerts] == [(admin_id, "service_frozen")], "admins are alerted once"
    assert "frozen" in alerts[0].title
    state = await _state(dkit, a)
    assert (state.frozen, state.frozen_reason, state.frozen_until) == (True, "auth_config", None)
    frozen_log = [e for e in await _status_log(dkit, a) if e.change == "frozen"]
    assert len(frozen_log) == 1 and frozen_log[0].new_value == "auth_config"
    frozen_at = frozen_log[0].at
    assert frozen_at == on_a[-1].finished_at
    every = [x for h in attempts.values() for x in h]
    assert not [x for x in every if x.service_id == a and x.started_at > frozen_at], "A took work after the freeze"
    assert all(x.started_at > frozen_at for x in every if x.service_id == b), "B took over after the freeze"

    # The SubTask refused by A went back to pending (not counted) and B sent it.
    refused = attempts[on_a[-1].subtask_id]
    assert [(x.service_id, x.outcome) for x in refused] == [(a, "auth_config"), (b, "accepted")]
    subtasks = await dkit.subtasks(task_id)
    assert all(s.send_state == "sent" and s.retryable_failures == 0 for s in subtasks)
    assert sum(s.service_id == a for s in subtasks) == 5
    assert len(FakeAdapter.delivered_keys(a)) == 5 and len(FakeAdapter.delivered_keys(b)) == 25
    _all_delivered_once(subtasks, a, b)
    assert len(subtasks) == 30
    stats = await dkit.stats(task_id)
    assert (stats["sent"], stats["failed"]) == (30, 0)
    assert await dkit.credit(w.user_id) == (INITIAL_CREDIT - 30,) * 2


async def test_recipient_rejection_is_permanent_and_not_retried(dkit):  # type: ignore[no-untyped-def]
    w, task_id = await _scenario(dkit, recipients=10, invalid=3, services_=[{"name": "a"}])
    await _run_to_completion(dkit, task_id)

    subtasks = await dkit.subtasks(task_id)
    attempts = await _attempts(dkit, task_id)
    rejected = [s for s in subtasks if s.recipient_email.endswith("@bad.invalid")]
    assert len(rejected) == 3
    for s in rejected:
        assert (s.send_state, s.last_error_class, s.last_error_code, s.delivery_state) == (
            "failed",
            "permanent",
            "fake_bad_recipient",
            "rejected",
        )
        assert (s.attempts, s.retryable_failures) == (1, 0)
        assert [x.outcome for x in attempts[s.id]] == ["permanent"]
    assert all(s.send_state == "sent" for s in subtasks if s not in rejected)
    stats = await dkit.stats(task_id)
    assert (stats["sent"], stats["failed"], stats["rejected"], stats["failed_by_class"]) == (10, 3, 3, {"permanent": 3})
    # Failed sends are not refunded (docs/tasks.md#credit).
    assert await dkit.ledger(w.user_id, "refund") == []
    assert await dkit.credit(w.user_id) == (INITIAL_CREDIT - 13,) * 2


async def test_permanent_error_is_not_retried_on_another_service(dkit):  # type: ignore[no-untyped-def]
    w, task_id = await _scenario(
        dkit,
        recipients=20,
        services_=[
            {"name": "a", "options": {"permanent_pct": 100}, "max_concurrency": 1},
            {"name": "b", "max_concurrency": 1},
        ],
    )
    a, b = w.service_ids
    async with dkit.worker(concurrency=2):
        await dkit.wait_for(lambda: _completed(dkit, task_id), what="task completed")
        await dkit.hold(0.3)  # a few more claim cycles: nothing of the task is taken again

    subtasks = await dkit.subtasks(task_id)
    attempts = await _attempts(dkit, task_id)
    failed = [s for s in subtasks if s.send_state == "failed"]
    assert failed, "A took work"
    for s in failed:
        assert [(x.service_id, x.outcome) for x in attempts[s.id]] == [(a, "permanent")]
        assert (s.attempts, s.retryable_failures, s.last_error_code) == (1, 0, "fake_invalid")
    assert all(s.send_state == "sent" and s.service_id == b for s in subtasks if s not in failed)
    assert not (await _state(dkit, a)).frozen, "a permanent error says nothing about the service"
    stats = await dkit.stats(task_id)
    assert (stats["sent"] + stats["failed"], stats["failed"]) == (20, len(failed))


async def test_max_attempts_ends_failed(dkit):  # type: ignore[no-untyped-def]
    w, task_id = await _scenario(
        dkit,
        recipients=10,
        services_=[{"name": "a", "options": {"transient_pct": 100}}, {"name": "b", "options": {"transient_pct": 100}}],
        settings={
            "retry__max_attempts": 3,
            "retry__base_delay": 0.01,
            "retry__max_delay": 0.05,
            "freeze__failure_threshold": 1000,
        },
    )
    await _run_to_completion(dkit, task_id)

    subtasks = await dkit.subtasks(task_id)
    attempts = await _attempts(dkit, task_id)
    for s in subtasks:
        assert (s.send_state, s.last_error_code, s.last_error_class) == ("failed", "max_attempts_exceeded", "transient")
        assert (s.attempts, s.retryable_failures) == (3, 3)
        assert [x.outcome for x in attempts[s.id]] == ["transient"] * 3
        assert s.failed_at is not None
    stats = await dkit.stats(task_id)
    assert (stats["failed"], stats["sent"], stats["failed_by_class"]) == (10, 0, {"transient": 10})
    assert await dkit.credit(w.user_id) == (INITIAL_CREDIT - 10,) * 2


async def _completed(dkit, task_id: int) -> bool:  # type: ignore[no-untyped-def]
    return await dkit.status(task_id) == "completed"


async def test_maybe_sent_on_an_idempotent_provider_is_settled_by_a_same_service_resend(dkit):  # type: ignore[no-untyped-def]
    """Every first answer is lost (`maybe_sent`); the provider honours our key, so the worker resends to the
    same service at once, gets the first result back, and each recipient has exactly one mail. A second
    service (another account, where the key means nothing) never sees these SubTasks."""
    w, task_id = await _scenario(
        dkit,
        recipients=12,
        services_=[
            {"name": "a", "options": {"idempotent": True, "maybe_sent_pct": 100}, "priority": 1},
            {"name": "b", "priority": 2},
        ],
        settings={"allocation__strategy": "priority"},
    )
    a, b = w.service_ids
    await _run_to_completion(dkit, task_id)
    subtasks = await dkit.subtasks(task_id)
    assert all(s.send_state == "sent" and s.service_id == a for s in subtasks)
    assert sorted(FakeAdapter.delivered_keys(a)) == sorted(str(s.public_id) for s in subtasks)
    assert FakeAdapter.delivered_keys(b) == []
    attempts = await _attempts(dkit, task_id)
    assert all([x.outcome for x in history] == ["accepted"] for history in attempts.values())


async def test_maybe_sent_without_idempotency_is_uncertain_and_never_resent(dkit):  # type: ignore[no-untyped-def]
    w, task_id = await _scenario(
        dkit, recipients=10, services_=[{"name": "a", "options": {"maybe_sent_pct": 100}}, {"name": "b"}]
    )
    a, b = w.service_ids

    async def all_final() -> bool:
        return await dkit.count(task_id, "uncertain", "sent") == 10

    async with dkit.worker():
        await dkit.wait_for(all_final, what="every SubTask sent or uncertain")
        await dkit.hold(0.5)
    subtasks = await dkit.subtasks(task_id)
    assert {s.service_id for s in subtasks if s.send_state == "uncertain"} == {a}
    assert {s.service_id for s in subtasks if s.send_state == "sent"} <= {b}
    delivered = FakeAdapter.delivered_keys(a) + FakeAdapter.delivered_keys(b)
    assert len(delivered) == len(set(delivered)) == 10, "each mail went out once; none was resent"
