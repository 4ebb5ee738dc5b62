"""Which service takes work next, and how a claim shares its size among users and tasks (docs/sending.md). Pure."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from edm.system.runtime_settings import Strategy


@dataclass(frozen=True, slots=True)
class ServiceView:
    """What the chooser needs to know about one service right now."""

    service_id: int
    eligible: bool  # could claim now (docs/states.md#service-states)
    slot_waiting: bool  # usable and healthy, only waiting for its next rate slot or a free concurrency slot
    backup_only: bool
    priority: int
    weight: int
    quota_left_ratio: float  # quota left today ÷ daily quota
    health: float  # success rate × latency factor, 1.0 without data
    last_claim_at: dt.datetime | None


def health_score(success_rate: float | None, samples: int, latency_ms: float | None) -> float:
    rate = 1.0 if success_rate is None or samples < 10 else success_rate
    return rate / (1.0 + (latency_ms or 0.0) / 1000.0)


def _available(view: ServiceView) -> bool:
    return view.eligible or view.slot_waiting


def available_pool(views: Sequence[ServiceView], strategy: Strategy) -> list[ServiceView]:
    """The services that take work now or as soon as their slot comes: backups only when no primary is
    available, and for `priority` only the best tier that is available (eligible or merely waiting for its
    slot). A conversation answer is routed among these (docs/conversations-answers.md#which-service-sends)."""
    primaries = [v for v in views if not v.backup_only and _available(v)]
    pool = primaries or [v for v in views if v.backup_only and _available(v)]
    if strategy is Strategy.PRIORITY and pool:
        best = min(v.priority for v in pool)
        pool = [v for v in pool if v.priority == best]
    return pool


def working_set(views: Sequence[ServiceView], strategy: Strategy) -> list[ServiceView]:
    """The services allowed to take work now: the eligible members of the `available_pool`."""
    return [v for v in available_pool(views, strategy) if v.eligible]


@dataclass
class SmoothWeighted:
    """Smooth weighted round-robin (nginx): deterministic, no random drift."""

    current: dict[int, float] = field(default_factory=dict)

    def pick(self, weights: dict[int, float]) -> int | None:
        positive = {k: w for k, w in weights.items() if w > 0}
        if not positive:
            return None
        total = sum(positive.values())
        for key, weight in positive.items():
            self.current[key] = self.current.get(key, 0.0) + weight
        chosen = max(positive, key=lambda k: (self.current[k], -k))
        self.current[chosen] -= total
        return chosen


def order_services(views: Sequence[ServiceView], strategy: Strategy, swrr: SmoothWeighted | None = None) -> list[int]:
    """Service ids in the order a dispatch loop should try to claim from them."""
    pool = working_set(views, strategy)
    if strategy is Strategy.WEIGHTED and swrr is not None:
        first = swrr.pick({v.service_id: v.weight * v.quota_left_ratio * v.health for v in pool})
        rest = [v.service_id for v in _rotation(pool) if v.service_id != first]
        return ([first] if first is not None else []) + rest
    return [v.service_id for v in _rotation(pool)]


def _rotation(pool: Iterable[ServiceView]) -> list[ServiceView]:
    # Least recently claimed first: a deployment-wide rotation, because last_claim_at lives in the database.
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    return sorted(pool, key=lambda v: (v.last_claim_at or epoch, v.service_id))


@dataclass(frozen=True, slots=True)
class CandidateTask:
    task_id: int
    user_id: int
    priority: int
    schedule_at: dt.datetime | None
    last_claimed_at: dt.datetime | None
    # A template test send or a conversation answer: claimed before bulk work (docs/sending.md#the-claim).
    claimed_first: bool = False
    # Whether the task had retries due when read: without, the claim reads only its fresh rows.
    retries_due: bool = True


def plan_claim(
    tasks: Sequence[CandidateTask], *, size: int, user_cursor: int | None, exhausted: frozenset[int] = frozenset()
) -> tuple[list[tuple[int, int]], int | None]:
    """Share `size` items: round-robin over users starting after the cursor, one item at a time; within a
    user, rotate over its tasks (least recently claimed, then higher priority, earlier schedule, id).

    Returns [(task_id, count)] in service order and the new cursor (the last user served).
    """
    by_user = _tasks_by_user([t for t in tasks if t.task_id not in exhausted])
    users = _users_after(sorted(by_user), user_cursor)
    counts: dict[int, int] = defaultdict(int)
    next_task = dict.fromkeys(users, 0)
    last_user = user_cursor
    order: list[int] = []
    for i in range(size if users else 0):
        user = users[i % len(users)]
        user_tasks = by_user[user]
        task = user_tasks[next_task[user] % len(user_tasks)]
        next_task[user] += 1
        if task.task_id not in counts:
            order.append(task.task_id)
        counts[task.task_id] += 1
        last_user = user
    return [(t, counts[t]) for t in order], last_user


def _tasks_by_user(tasks: Sequence[CandidateTask]) -> dict[int, list[CandidateTask]]:
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    grouped: dict[int, list[CandidateTask]] = defaultdict(list)
    for task in tasks:
        grouped[task.user_id].append(task)
    for user_tasks in grouped.values():
        user_tasks.sort(key=lambda t: (t.last_claimed_at or epoch, -t.priority, t.schedule_at or epoch, t.task_id))
    return grouped


def _users_after(users: list[int], cursor: int | None) -> list[int]:
    if cursor is None:
        return users
    after = [u for u in users if u > cursor]
    return after + [u for u in users if u <= cursor]
