"""Response bodies of the dashboards, the admin queue view and the global pause."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edm.users.schemas import BalanceBucketsOut, CreditTotalsOut, TrendPointOut

# --------------------------------------------------------------------------------------------------------
# The queue view and the global pause
# --------------------------------------------------------------------------------------------------------


class QueueUserOut(BaseModel):
    user_id: int
    username: str | None
    pending: int = Field(description="SubTasks not yet bound to a service, retries included")
    retrying: int = Field(description="pending SubTasks waiting for a retry")
    in_paused_tasks: int = Field(description="pending SubTasks of paused tasks")
    tasks: int = Field(description="open tasks with pending SubTasks")
    oldest_pending_at: dt.datetime | None
    oldest_pending_age_seconds: float | None


class QueueServiceOut(BaseModel):
    service_id: int
    name: str
    provider: str
    enabled: bool
    in_flight: int = Field(description="SubTasks bound to the service and not finished")
    oldest_allocated_at: dt.datetime | None
    expired_leases: int = Field(description="in-flight SubTasks whose worker lease ran out")


class WorkerOut(BaseModel):
    id: str
    hostname: str
    pid: int
    version: str
    started_at: dt.datetime
    last_heartbeat_at: dt.datetime
    heartbeat_age_seconds: float | None
    alive: bool = Field(description="it beat within the last minute")


class QueueOut(BaseModel):
    sending_paused: bool
    pending: int
    retrying: int
    in_flight: int
    oldest_pending_at: dt.datetime | None
    oldest_pending_age_seconds: float | None
    users: list[QueueUserOut] = Field(description="the users with the most pending SubTasks first")
    users_total: int = Field(description="how many users have pending SubTasks (`users` may list fewer)")
    services: list[QueueServiceOut]
    workers: list[WorkerOut]
    workers_alive: int
    at: dt.datetime


class PauseOut(BaseModel):
    sending_paused: bool
    changed: bool = Field(description="false when sending already was in that state")


# --------------------------------------------------------------------------------------------------------
# Dashboards
# --------------------------------------------------------------------------------------------------------


class CreditStateOut(BaseModel):
    balance: int
    low_credit_threshold: int | None
    low: bool = Field(description="the balance is below the threshold")


class AttentionOut(BaseModel):
    """A campaign that is paused, or running but waiting (no capacity, outside its sending window)."""

    task_id: int
    user_id: int
    name: str
    status: str
    pause_reason: str | None
    pause_detail: str | None
    resume_at: dt.datetime | None
    waiting_reason: str | None
    waiting_until: dt.datetime | None


class ActivityOut(BaseModel):
    sent: int
    opened: int = Field(description="recipients whose first human open or click falls in the window")
    clicked: int
    replied: int


class ActivityWindowsOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    last_24h: ActivityOut = Field(alias="24h")
    last_7d: ActivityOut = Field(alias="7d")
    last_30d: ActivityOut = Field(alias="30d")


class DayOut(BaseModel):
    date: dt.date = Field(description="the day, in the user's time zone")
    sent: int
    delivered: int
    opened: int = Field(description="recipients whose first human open or click fell on this day")
    clicked: int = Field(description="recipients whose first human click fell on this day")
    bounced: int = Field(description="hard bounces that arrived this day")
    complained: int
    unsubscribed: int


class DailyTotalsOut(BaseModel):
    sent: int
    delivered: int
    opened: int
    clicked: int
    bounced: int
    complained: int
    unsubscribed: int


class DailyOut(BaseModel):
    timezone: str = Field(description="the user's time zone, which the days follow")
    days: list[DayOut] = Field(description="the last 30 days, oldest first, today last")
    totals: DailyTotalsOut = Field(description="the sums over `days`")


class RecentImportOut(BaseModel):
    id: int
    kind: str
    filename: str
    status: str
    processed: int
    created: int
    updated: int
    errors: int
    created_at: dt.datetime
    finished_at: dt.datetime | None


class DashboardOut(BaseModel):
    at: dt.datetime
    credit: CreditStateOut
    tasks_by_status: dict[str, int] = Field(description="the caller's campaigns per status")
    attention: list[AttentionOut]
    activity: ActivityWindowsOut
    daily: DailyOut
    unread_notifications: int
    recent_imports: list[RecentImportOut]


class ServiceStatusOut(BaseModel):
    """A service's identity, limits, usage and health (never its credentials)."""

    id: int
    name: str
    label: str
    provider: str
    enabled: bool
    daily_quota: int
    quota_left_today: int
    available: bool = Field(description="it may take work now")
    state: str = Field(description="available, or why not: disabled, frozen, throttled, exhausted, …")
    state_until: dt.datetime | None
    used_today: int
    in_flight: int
    next_reset: dt.datetime = Field(description="when today's usage starts again from zero")
    frozen_reason: str | None
    last_error: str | None
    last_success_at: dt.datetime | None
    recent_success_rate: float | None
    latency_ms_ewma: float | None


class CreditPerDayOut(BaseModel):
    totals: CreditTotalsOut = Field(description="the last 7 days")
    days: list[TrendPointOut]
    users_by_balance: BalanceBucketsOut


# The alerts differ by kind in what they carry; extra="forbid" lets each answer validate as exactly one of them.
class AlertOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    severity: Literal["critical", "warning"]
    kind: str
    message: str


class ServiceAlertOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    severity: Literal["critical", "warning"]
    kind: str
    service_id: int
    message: str


class TasksAlertOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    severity: Literal["critical", "warning"]
    kind: str
    task_ids: list[int]
    message: str


class AdminDashboardOut(DashboardOut):
    services: list[ServiceStatusOut]
    queue: QueueOut
    credit_per_day: CreditPerDayOut
    attention_all_users: list[AttentionOut]
    alerts: list[AlertOut | ServiceAlertOut | TasksAlertOut] = Field(description="most severe first")
