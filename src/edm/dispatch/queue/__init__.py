"""The queue: the ONLY package with the SQL that claims, records, releases and reclaims SubTasks.

Every function runs inside a transaction its caller (the worker, an entry point) opens and commits; none
makes a network call. The modules, in the order a SubTask meets them:

- `snapshots`: each service's configuration and availability, read without locks for the chooser;
- `claiming` + `selection`: the claim (one service, locked), which SubTasks it takes and in what order,
  and the claim-time exclusion check;
- `recording` + `service_state`: the outcome transaction of a claimed batch and the service's health;
- `reclaim`: unstarted items given back, and expired leases taken back;
- `usage`: the per-service-day usage counters; `views`: the reads of the admin queue view and of /metrics.

Callers import this package (`from edm.dispatch import queue`) and use the names below.
"""

from edm.dispatch.queue.claiming import LEASE_GRACE, Claim, ClaimedItem, Miss, claim
from edm.dispatch.queue.reclaim import IdempotencyLookup, reclaim_expired, release
from edm.dispatch.queue.recording import (
    Decision,
    ItemOutcome,
    RecordSummary,
    already_recorded,
    decide,
    record,
)
from edm.dispatch.queue.selection import candidate_tasks, unsendable_reasons
from edm.dispatch.queue.snapshots import (
    ServiceSnapshot,
    adjusted,
    day_of,
    in_flight_counts,
    limits_of,
    reset_after,
    runtime_of,
    service_view,
    snapshot_services,
)
from edm.dispatch.queue.usage import upsert_usage, used_today
from edm.dispatch.queue.views import (
    OPEN_TASK_STATES,
    InFlight,
    PendingTask,
    in_flight_by_service,
    pending_by_task,
    uncertain_by_service,
)

__all__ = [
    "LEASE_GRACE",
    "OPEN_TASK_STATES",
    "Claim",
    "ClaimedItem",
    "Decision",
    "IdempotencyLookup",
    "InFlight",
    "ItemOutcome",
    "Miss",
    "PendingTask",
    "RecordSummary",
    "ServiceSnapshot",
    "adjusted",
    "already_recorded",
    "candidate_tasks",
    "claim",
    "day_of",
    "decide",
    "in_flight_by_service",
    "in_flight_counts",
    "limits_of",
    "pending_by_task",
    "reclaim_expired",
    "record",
    "release",
    "reset_after",
    "runtime_of",
    "service_view",
    "snapshot_services",
    "uncertain_by_service",
    "unsendable_reasons",
    "upsert_usage",
    "used_today",
]
