"""How one claim is shared among users and tasks (docs/sending.md#fairness): round-robin over users after the cursor,
one SubTask at a time; users without claimable work skipped; a user's tasks rotated."""

from __future__ import annotations

import datetime as dt
from collections import Counter

from edm.dispatch.allocation import (
    CandidateTask,
    ServiceView,
    SmoothWeighted,
    Strategy,
    order_services,
    plan_claim,
)

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def task(
    task_id: int,
    user_id: int,
    *,
    priority: int = 5,
    schedule_at: dt.datetime | None = T0,
    last_claimed_at: dt.datetime | None = None,
) -> CandidateTask:
    return CandidateTask(task_id, user_id, priority, schedule_at, last_claimed_at)


def per_user(plan: list[tuple[int, int]], tasks: list[CandidateTask]) -> dict[int, int]:
    owner = {t.task_id: t.user_id for t in tasks}
    counts: Counter[int] = Counter()
    for task_id, n in plan:
        counts[owner[task_id]] += n
    return dict(counts)


def test_ten_over_three_users_is_4_3_3_and_the_cursor_ends_at_the_last_user_served() -> None:
    tasks = [task(10, 1), task(20, 2), task(30, 3)]
    plan, cursor = plan_claim(tasks, size=10, user_cursor=None)
    assert per_user(plan, tasks) == {1: 4, 2: 3, 3: 3}
    assert sum(n for _, n in plan) == 10
    assert cursor == 1  # i = 9 went to the first user again


def test_cursor_is_respected() -> None:
    tasks = [task(10, 1), task(20, 2), task(30, 3)]
    plan, cursor = plan_claim(tasks, size=10, user_cursor=1)
    assert per_user(plan, tasks) == {2: 4, 3: 3, 1: 3}
    assert [t for t, _ in plan] == [20, 30, 10], "served in order after the cursor"
    assert cursor == 2
    plan, cursor = plan_claim(tasks, size=10, user_cursor=3)  # wraps around
    assert per_user(plan, tasks) == {1: 4, 2: 3, 3: 3}
    plan, cursor = plan_claim(tasks, size=2, user_cursor=2)
    assert plan == [(30, 1), (10, 1)] and cursor == 1


def test_size_one_alternates_users_when_the_cursor_is_carried() -> None:
    tasks = [task(10, 1), task(20, 2)]
    cursor = None
    served = []
    for _ in range(6):
        plan, cursor = plan_claim(tasks, size=1, user_cursor=cursor)
        served.append(per_user(plan, tasks))
    assert served == [{1: 1}, {2: 1}] * 3


def test_users_without_claimable_work_are_skipped() -> None:
    tasks = [task(10, 1), task(30, 3)]  # user 2 has no candidate task
    plan, cursor = plan_claim(tasks, size=5, user_cursor=1)
    assert per_user(plan, tasks) == {3: 3, 1: 2}
    assert cursor == 3
    # A cursor pointing at a user without work: continue with the next user id after it.
    plan, _ = plan_claim(tasks, size=1, user_cursor=2)
    assert plan == [(30, 1)]
    # Exhausted tasks (no rows left in this claim) are skipped like absent ones.
    plan, cursor = plan_claim(tasks, size=4, user_cursor=None, exhausted=frozenset({10}))
    assert plan == [(30, 4)] and cursor == 3
    assert plan_claim([], size=5, user_cursor=7) == ([], 7)
    assert plan_claim(tasks, size=4, user_cursor=None, exhausted=frozenset({10, 30})) == ([], None)


def test_tasks_of_one_user_are_rotated() -> None:
    tasks = [task(11, 1), task(12, 1), task(13, 1), task(20, 2)]
    plan, _ = plan_claim(tasks, size=8, user_cursor=None)
    assert dict(plan) == {11: 2, 12: 1, 13: 1, 20: 4}
    plan, _ = plan_claim(tasks, size=12, user_cursor=None)
    assert dict(plan) == {11: 2, 12: 2, 13: 2, 20: 6}


def test_task_order_within_a_user_least_recently_claimed_then_priority_schedule_id() -> None:
    earlier, later = T0, T0 + dt.timedelta(minutes=5)
    # Never claimed goes before claimed; among claimed, the least recently claimed first.
    tasks = [task(1, 1, last_claimed_at=later), task(2, 1, last_claimed_at=earlier), task(3, 1)]
    plan, _ = plan_claim(tasks, size=1, user_cursor=None)
    assert plan == [(3, 1)]
    plan, _ = plan_claim(tasks[:2], size=1, user_cursor=None)
    assert plan == [(2, 1)]
    # Equally due: higher priority first, then earlier schedule_at, then id.
    tasks = [
        task(1, 1, priority=1),
        task(2, 1, priority=9),
        task(3, 1, priority=9, schedule_at=earlier - dt.timedelta(days=1)),
    ]
    plan, _ = plan_claim(tasks, size=3, user_cursor=None)
    assert [t for t, _ in plan] == [3, 2, 1]
    tasks = [task(5, 1), task(4, 1)]
    plan, _ = plan_claim(tasks, size=1, user_cursor=None)
    assert plan == [(4, 1)]


# ---- which service takes work next (docs/sending.md#how-a-service-is-chosen) --------------------------


def _service(
    sid: int,
    *,
    eligible: bool = True,
    slot_waiting: bool = False,
    backup: bool = False,
    priority: int = 50,
    weight: int = 100,
    quota_left: float = 1.0,
) -> ServiceView:
    return ServiceView(
        service_id=sid,
        eligible=eligible,
        slot_waiting=slot_waiting,
        backup_only=backup,
        priority=priority,
        weight=weight,
        quota_left_ratio=quota_left,
        health=1.0,
        last_claim_at=None,
    )


def test_weighted_shares_follow_weight_times_quota_left() -> None:
    views = [_service(1, weight=300), _service(2, weight=100), _service(3, weight=200, quota_left=0.5)]
    swrr = SmoothWeighted()
    firsts = Counter(order_services(views, Strategy.WEIGHTED, swrr)[0] for _ in range(500))
    # scores 300 : 100 : 100 -> 3/5, 1/5, 1/5 of first picks, exactly, over whole periods
    assert firsts == {1: 300, 2: 100, 3: 100}


def test_backup_only_waits_while_a_primary_is_eligible_or_waiting_for_its_slot() -> None:
    primary_waiting = [_service(1, eligible=False, slot_waiting=True), _service(2, backup=True)]
    assert order_services(primary_waiting, Strategy.ROUND_ROBIN) == []
    primary_down = [_service(1, eligible=False), _service(2, backup=True)]
    assert order_services(primary_down, Strategy.ROUND_ROBIN) == [2]


def test_priority_uses_only_the_best_available_tier() -> None:
    views = [
        _service(1, priority=10, eligible=False, slot_waiting=True),
        _service(2, priority=20),
        _service(3, priority=10),
    ]
    assert order_services(views, Strategy.PRIORITY) == [3]
    views[0] = _service(1, priority=10, eligible=False)  # frozen/throttled/at quota: not available
    views[2] = _service(3, priority=10, eligible=False)
    assert order_services(views, Strategy.PRIORITY) == [2]
