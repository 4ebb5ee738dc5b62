"""The task transition table and the state vocabularies: every status, every action, every pair."""

from __future__ import annotations

import itertools

import pytest

from edm.tasks.transitions import next_status
from edm.vocabulary.tasks import (
    DELIVERY_RANK,
    FINAL_SEND_STATES,
    OPEN_SEND_STATES,
    TRANSITIONS,
    USER_ACTIONS,
    DeliveryState,
    SendState,
    TaskAction,
    TaskStatus,
    allowed_actions,
    resume_target,
    target_of,
)

S, A = TaskStatus, TaskAction

# What a person may do with a task in each status: every status is listed, so a new one must be decided here.
ALLOWED = {
    S.DRAFT: ["schedule", "delete"],
    S.SCHEDULED: ["unschedule", "pause", "cancel"],
    S.QUEUED: ["pause", "cancel"],
    S.SENDING: ["pause", "cancel"],
    S.PAUSED: ["resume", "cancel", "close"],
    S.COMPLETED: ["close"],
    S.CANCELLED: ["delete"],
    S.CLOSED: ["delete"],
    S.DELETING: [],  # being removed by the worker: nothing is left to do with it
}

# The complete table, written out: (from, action) -> to for every pair that is allowed; all others are refused.
EXPECTED = {
    (S.DRAFT, A.SCHEDULE): S.SCHEDULED,
    (S.SCHEDULED, A.UNSCHEDULE): S.DRAFT,
    (S.SCHEDULED, A.GENERATED): S.QUEUED,
    (S.SCHEDULED, A.GENERATED_EMPTY): S.COMPLETED,
    (S.SCHEDULED, A.CREDIT_SHORT): S.PAUSED,
    (S.SCHEDULED, A.PAUSE): S.PAUSED,
    (S.SCHEDULED, A.CANCEL): S.CANCELLED,
    (S.QUEUED, A.FIRST_CLAIM): S.SENDING,
    (S.QUEUED, A.FINISH): S.COMPLETED,
    (S.QUEUED, A.PAUSE): S.PAUSED,
    (S.QUEUED, A.AUTO_PAUSE): S.PAUSED,
    (S.QUEUED, A.CANCEL): S.CANCELLED,
    (S.SENDING, A.FINISH): S.COMPLETED,
    (S.SENDING, A.PAUSE): S.PAUSED,
    (S.SENDING, A.AUTO_PAUSE): S.PAUSED,
    (S.SENDING, A.CANCEL): S.CANCELLED,
    (S.PAUSED, A.RESUME): S.QUEUED,  # the placeholder target; resume_target() picks the real one
    (S.PAUSED, A.CANCEL): S.CANCELLED,
    (S.PAUSED, A.CLOSE): S.CLOSED,
    (S.COMPLETED, A.CLOSE): S.CLOSED,
}


def test_allowed_actions_are_decided_for_every_status() -> None:
    assert set(ALLOWED) == set(TaskStatus)


@pytest.mark.parametrize("status", list(TaskStatus))
def test_allowed_actions_of_each_status(status: TaskStatus) -> None:
    assert allowed_actions(status) == ALLOWED[status]


@pytest.mark.parametrize(("status", "action"), list(itertools.product(TaskStatus, TaskAction)))
def test_every_status_action_pair(status: TaskStatus, action: TaskAction) -> None:
    assert target_of(status, action) == EXPECTED.get((status, action))


def test_the_table_holds_only_real_moves() -> None:
    assert all(source != target for (source, _), target in TRANSITIONS.items()), "no action leaves a task where it was"
    assert all(action is not A.RESUME for _, action in TRANSITIONS), "resume is resolved by resume_target()"


def test_system_actions_are_never_offered_to_people() -> None:
    system = set(TaskAction) - set(USER_ACTIONS)
    assert system == {A.GENERATED, A.GENERATED_EMPTY, A.CREDIT_SHORT, A.FIRST_CLAIM, A.FINISH, A.AUTO_PAUSE}
    offered = {name for status in TaskStatus for name in allowed_actions(status)}
    assert not offered & {a.value for a in system}


def test_closed_and_cancelled_tasks_go_nowhere() -> None:
    for status in (S.CLOSED, S.CANCELLED):
        assert all(target_of(status, action) is None for action in TaskAction), status


def test_every_status_is_reachable_from_a_draft_and_every_task_can_end() -> None:
    edges: dict[TaskStatus, set[TaskStatus]] = {s: set() for s in TaskStatus}
    for (source, _), target in TRANSITIONS.items():
        edges[source].add(target)
    edges[S.PAUSED] |= {resume_target(generated=g, ever_allocated=a) for g in (False, True) for a in (False, True)}

    def reachable(start: TaskStatus) -> set[TaskStatus]:
        seen, todo = {start}, [start]
        while todo:
            for nxt in edges[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    # `deleting` lies outside the table: it is where deleting a large task leaves it (docs/tasks.md#large-tasks),
    # and the worker then removes the task.
    assert reachable(S.DRAFT) == set(TaskStatus) - {S.DELETING}
    for status in set(TaskStatus) - {S.DRAFT, S.DELETING}:
        assert reachable(status) & {S.CLOSED, S.CANCELLED}, f"a {status} task can never end"


@pytest.mark.parametrize(
    ("generated", "ever_allocated", "target"),
    [
        (False, False, S.SCHEDULED),  # paused before generation (credit short): generation runs again
        (True, False, S.QUEUED),
        (True, True, S.SENDING),
    ],
)
def test_resume_goes_back_to_where_the_task_was(generated: bool, ever_allocated: bool, target: TaskStatus) -> None:
    assert resume_target(generated=generated, ever_allocated=ever_allocated) is target


def test_a_chosen_target_counts_only_where_the_table_allows_the_action() -> None:
    assert next_status(S.PAUSED, A.RESUME, S.SENDING) is S.SENDING
    assert next_status(S.PAUSED, A.RESUME) is S.QUEUED
    assert next_status(S.SENDING, A.RESUME, S.SENDING) is None, "a running task cannot be resumed into anything"
    assert next_status(S.CLOSED, A.CLOSE, S.CLOSED) is None
    assert next_status(S.QUEUED, A.FIRST_CLAIM) is S.SENDING


def test_send_states_are_either_final_or_open() -> None:
    assert FINAL_SEND_STATES | OPEN_SEND_STATES == set(SendState)
    assert not FINAL_SEND_STATES & OPEN_SEND_STATES


def test_delivery_ranks_cover_every_state_in_the_order_news_overrides() -> None:
    assert set(DELIVERY_RANK) == set(DeliveryState)
    rank = DELIVERY_RANK
    assert rank[DeliveryState.NONE] < rank[DeliveryState.DEFERRED] < rank[DeliveryState.SOFT_BOUNCED]
    assert rank[DeliveryState.SOFT_BOUNCED] < rank[DeliveryState.DELIVERED] < rank[DeliveryState.HARD_BOUNCED]
    assert rank[DeliveryState.HARD_BOUNCED] == rank[DeliveryState.REJECTED]
    assert max(rank.values()) == rank[DeliveryState.COMPLAINED], "a complaint outranks every other outcome"
