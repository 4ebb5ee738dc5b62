"""Task and SubTask state vocabularies and the one task transition table (docs/states.md). Pure: no database."""

from __future__ import annotations

import enum


class TaskStatus(enum.StrEnum):
    DRAFT = "draft"  # being prepared; may be incomplete
    SCHEDULED = "scheduled"  # complete, waits for schedule_at; generation runs then
    QUEUED = "queued"  # SubTasks generated, credit reserved, nothing allocated yet
    SENDING = "sending"  # at least one SubTask was allocated
    PAUSED = "paused"  # stopped with a reason
    COMPLETED = "completed"  # every SubTask final
    CANCELLED = "cancelled"  # stopped for good
    CLOSED = "closed"  # terminal archive state
    DELETING = "deleting"  # deleted by its owner, its rows being removed in the background (hidden everywhere)


class TaskKind(enum.StrEnum):
    BULK = "bulk"  # a campaign
    TEST = "test"  # a template test send (docs/templates.md): claimed first, `[TEST] `, no tracking, not in task lists
    REPLY = "reply"  # an answer in a conversation (docs/conversations.md): claimed first, untracked, not in task lists


class PauseReason(enum.StrEnum):
    USER = "user"  # a person paused it
    USER_QUOTA = "user_quota"  # credit short at generation
    ERROR_THRESHOLD = "error_threshold"  # bounce/failure rate crossed
    SERVICE_UNAVAILABLE = "service_unavailable"  # no usable service for the grace period
    NO_CAPACITY_LEFT = "no_capacity_left"  # on_capacity_exhausted = pause and all quotas used
    RENDER_LIMIT = "render_limit"  # a template hit a render limit (time, size, work) at send time


class WaitingReason(enum.StrEnum):
    DAILY_QUOTA = "daily_quota"  # every usable service reached its quota
    THROTTLED = "throttled"  # usable services back off after throttling
    FROZEN = "frozen"  # usable services in freeze cooldown
    EXHAUSTED = "exhausted"  # provider quota exhausted
    RETRY_BACKOFF = "retry_backoff"  # only deferred SubTasks remain, none due
    UNCERTAIN_DECISION = "uncertain_decision"  # only uncertain SubTasks remain
    OWNER_INACTIVE = "owner_inactive"  # owner deactivated
    GLOBAL_PAUSE = "global_pause"  # admin paused all sending
    NO_USABLE_SERVICE = "no_usable_service"  # nothing mapped/enabled/unfrozen (grace running)


class SendState(enum.StrEnum):
    PENDING = "pending"  # claimable (when due); bound to no service
    ALLOCATED = "allocated"  # claimed by a worker for one service, lease running
    SENT = "sent"  # provider accepted (final)
    FAILED = "failed"  # permanent error or attempts exhausted (final)
    CANCELLED = "cancelled"  # task cancelled/closed before sending (final)
    SUPPRESSED = "suppressed"  # excluded at generation or claim time (final)
    UNCERTAIN = "uncertain"  # may have been accepted; user decides or an event proves it


FINAL_SEND_STATES = frozenset({SendState.SENT, SendState.FAILED, SendState.CANCELLED, SendState.SUPPRESSED})
OPEN_SEND_STATES = frozenset({SendState.PENDING, SendState.ALLOCATED, SendState.UNCERTAIN})


class DeliveryState(enum.StrEnum):
    NONE = "none"
    DEFERRED = "deferred"
    SOFT_BOUNCED = "soft_bounced"
    DELIVERED = "delivered"
    HARD_BOUNCED = "hard_bounced"
    REJECTED = "rejected"
    COMPLAINED = "complained"


DELIVERY_RANK = {
    DeliveryState.NONE: 0,
    DeliveryState.DEFERRED: 1,
    DeliveryState.SOFT_BOUNCED: 2,
    DeliveryState.DELIVERED: 3,
    DeliveryState.HARD_BOUNCED: 4,
    DeliveryState.REJECTED: 4,
    DeliveryState.COMPLAINED: 5,
}


class TaskAction(enum.StrEnum):
    SCHEDULE = "schedule"
    UNSCHEDULE = "unschedule"
    GENERATED = "generated"  # system: generation succeeded
    GENERATED_EMPTY = "generated_empty"  # system: no sendable recipient
    CREDIT_SHORT = "credit_short"  # system: balance below sendable at generation
    FIRST_CLAIM = "first_claim"  # system: first SubTask allocated
    FINISH = "finish"  # system: finalizer found nothing open
    PAUSE = "pause"  # user/admin
    AUTO_PAUSE = "auto_pause"  # system: error threshold, service unavailable, no capacity, render limit
    RESUME = "resume"
    CANCEL = "cancel"
    CLOSE = "close"


S, A = TaskStatus, TaskAction
_RUNNING = (S.QUEUED, S.SENDING)

# (from, action) -> to. `resume` of a paused task depends on whether SubTasks exist: resolved by the caller
# through `resume_target`.
TRANSITIONS: dict[tuple[TaskStatus, TaskAction], TaskStatus] = {
    (S.DRAFT, A.SCHEDULE): S.SCHEDULED,
    (S.SCHEDULED, A.UNSCHEDULE): S.DRAFT,
    (S.SCHEDULED, A.GENERATED): S.QUEUED,
    (S.SCHEDULED, A.GENERATED_EMPTY): S.COMPLETED,
    (S.SCHEDULED, A.CREDIT_SHORT): S.PAUSED,
    (S.QUEUED, A.FIRST_CLAIM): S.SENDING,
    **{(s, A.FINISH): S.COMPLETED for s in _RUNNING},
    **{(s, A.PAUSE): S.PAUSED for s in (S.SCHEDULED, S.QUEUED, S.SENDING)},
    **{(s, A.AUTO_PAUSE): S.PAUSED for s in _RUNNING},
    **{(s, A.CANCEL): S.CANCELLED for s in (S.SCHEDULED, S.QUEUED, S.SENDING, S.PAUSED)},
    (S.PAUSED, A.CLOSE): S.CLOSED,
    (S.COMPLETED, A.CLOSE): S.CLOSED,
}
# Resume has three possible targets; listed here so allowed_actions() knows it exists.
RESUMABLE = frozenset({S.PAUSED})
USER_ACTIONS = (A.SCHEDULE, A.UNSCHEDULE, A.PAUSE, A.RESUME, A.CANCEL, A.CLOSE)
DELETABLE = frozenset({S.DRAFT, S.CANCELLED, S.CLOSED})


def target_of(status: TaskStatus, action: TaskAction) -> TaskStatus | None:
    """The status `action` leads to from `status`, or None when the table does not allow it."""
    if action is A.RESUME:
        return S.QUEUED if status in RESUMABLE else None  # refined by resume_target()
    return TRANSITIONS.get((status, action))


def resume_target(*, generated: bool, ever_allocated: bool) -> TaskStatus:
    if not generated:
        return S.SCHEDULED
    return S.SENDING if ever_allocated else S.QUEUED


def allowed_actions(status: TaskStatus) -> list[str]:
    actions = [a.value for a in USER_ACTIONS if target_of(status, a) is not None]
    if status in DELETABLE:
        actions.append("delete")
    return actions
