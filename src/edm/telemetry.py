"""The process's own Prometheus metrics: what happened in this process, counted where it happened
(docs/operations.md#metrics).

These are the flows: sends and their latency, events applied, tracking hits classified, import rows, task timings,
HTTP and webhook requests. Each is counted once in the whole deployment, by the process whose transaction wrote the
rows (`edm.db.session.after_commit`), so summing a series over every scraped process gives the deployment's total.
The state of the queue, the services, the tasks and the workers is read from the database at scrape time instead
(`edm.metrics.database`), the same from any process.

No label ever carries an address, a token or a user name: services are their ids, routes their templates, and
every other label comes from a fixed vocabulary (`bounded` folds anything else into `other`).

With `PROMETHEUS_MULTIPROC_DIR` set (`edm serve --workers N` sets it), prometheus-client keeps these values in
files that every process of the server writes and any of them reads back at scrape time.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter as Tally
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from prometheus_client import Counter, Histogram, disable_created_metrics

# No `*_created` series next to each counter and histogram: they double the series and nothing here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]
OTHER = "other"

SENDS = Counter(
    "edm_sends",
    "Send attempts recorded, by service and outcome (one per send_attempts row).",
    ["service_id", "outcome"],
)
SEND_LATENCY = Histogram(
    "edm_send_latency_seconds",
    "How long the provider took to answer a send, by service.",
    ["service_id"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
EVENTS = Counter(
    "edm_events",
    "Events applied, by source, type and match status.",
    ["source", "type", "match_status"],
)
TRACKING_HITS = Counter(
    "edm_tracking_hits",
    "Open and click hits of EDM's own tracking matched to a recipient, by kind and by person or machine.",
    ["kind", "agent"],
)
WEBHOOK_REQUESTS = Counter(
    "edm_webhook_requests",
    "Requests to the provider webhook endpoints, by provider, kind (events, inbound, dsn) and result.",
    ["provider", "kind", "result"],
)
IMPORT_ROWS = Counter(
    "edm_import_rows",
    "Rows of background imports, by import kind and result (created, updated, skipped, error).",
    ["kind", "result"],
)
FIRST_SEND_DELAY = Histogram(
    "edm_task_schedule_to_first_send_seconds",
    "Time from a campaign's scheduled time to its first accepted send.",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
)
COMPLETION_DELAY = Histogram(
    "edm_task_schedule_to_completion_seconds",
    "Time from a campaign's scheduled time to its completion (every recipient final).",
    buckets=(10, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800),
)
HTTP_REQUESTS = Counter(
    "edm_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "edm_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route template and status.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

# The outcomes a send_attempts row can have: edm.providers.base.Outcome with `maybe_sent` written `uncertain`, and
# `released` for claimed rows given back unsent (a shutdown, a lease the reclaimer may resend).
SEND_OUTCOMES = frozenset(
    {"accepted", "permanent", "transient", "throttled", "quota_exhausted", "auth_config", "uncertain", "released"}
)
BULK = "bulk"  # the task kind of a campaign (edm.vocabulary.tasks.TaskKind.BULK)


def bounded(value: object, allowed: Collection[str]) -> str:
    """`value` as a label when it is one of `allowed`, else `other`: a label never takes arbitrary input."""
    text = str(value)
    return text if text in allowed else OTHER


def count_attempts(rows: Iterable[Mapping[str, Any]]) -> None:
    """Send attempts just committed (send_attempts rows as inserted): the count by service and outcome, and the
    provider's answer time of those that have one."""
    tally: Tally[tuple[str, str]] = Tally()
    latency: dict[str, Any] = {}  # the histogram's child per service: `labels()` takes a lock and a lookup
    for row in rows:
        service = str(row.get("service_id") or 0)
        tally[(service, bounded(row.get("outcome"), SEND_OUTCOMES))] += 1
        duration_ms = row.get("duration_ms")
        if duration_ms is not None:
            child = latency.get(service)
            if child is None:
                child = latency[service] = SEND_LATENCY.labels(service)
            child.observe(duration_ms / 1000)
    for (service, outcome), n in tally.items():
        SENDS.labels(service, outcome).inc(n)


def count_events(applied: Mapping[tuple[str, str, str], int], hits: Mapping[tuple[str, bool], int]) -> None:
    """Events just applied, by (source, type, match status), and tracking hits by (kind, machine)."""
    for (source, event_type, status), n in applied.items():
        EVENTS.labels(source, event_type, status).inc(n)
    for (kind, machine), n in hits.items():
        TRACKING_HITS.labels(kind, "machine" if machine else "human").inc(n)


def count_import_rows(kind: str, deltas: Mapping[str, int]) -> None:
    for result, n in deltas.items():
        if n > 0:
            IMPORT_ROWS.labels(kind, result).inc(n)


def observe_task_delay(histogram: Histogram, kind: str, schedule_at: dt.datetime | None, at: dt.datetime) -> None:
    """A campaign's delay from its scheduled time to `at` (test sends and answers are not campaigns)."""
    if kind == BULK and schedule_at is not None:
        histogram.observe(max((at - schedule_at).total_seconds(), 0.0))
