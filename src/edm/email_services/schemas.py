"""Request and response bodies of the sending-service admin API, the user–service mappings and the caller's own
services. Request models refuse unknown fields (422 naming the field); the services check the same rules again
for callers that are not HTTP (the CLI)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from edm.paging import MAX_ID

Id = Annotated[int, Field(ge=1, le=MAX_ID)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------------


class ServiceFields(Strict):
    name: str | None = Field(None, min_length=1, max_length=100)
    label: str | None = Field(None, min_length=1, max_length=100)
    provider: str | None = None
    options: dict[str, Any] | None = None
    domain: str | None = Field(None, max_length=253)
    sending_interval_seconds: Decimal | None = Field(None, ge=0, le=86400)
    max_concurrency: int | None = Field(None, ge=1, le=100)
    batch_size: int | None = Field(None, ge=1, le=1000)
    daily_quota: int | None = Field(None, ge=1)
    timezone: str | None = None
    quota_reset_time: str | None = Field(None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    weight: int | None = Field(None, ge=1, le=1000)
    priority: int | None = Field(None, ge=0, le=99)
    backup_only: bool | None = None
    is_enabled: bool | None = None
    request_timeout_seconds: int | None = Field(None, ge=5, le=300)
    credentials: dict[str, Any] | None = None

    def split(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(the configuration values the caller gave, the credentials they gave or None)."""
        values = self.model_dump(exclude_unset=True)
        credentials = values.pop("credentials", None)
        return values, credentials


class ServiceCreate(ServiceFields):
    name: str = Field(..., min_length=1, max_length=100)
    provider: str
    domain: str = Field(..., max_length=253)


class FreezeBody(Strict):
    reason: str = Field(..., min_length=1, max_length=500)


class UsageBody(Strict):
    used_today: int = Field(..., ge=0)
    reason: str | None = Field(None, max_length=500, description="why: kept in the status log and the audit log")


class MappingBody(Strict):
    user_ids: list[Id] = Field(..., min_length=1, max_length=500)
    service_ids: list[Id] = Field(..., min_length=1, max_length=500)
    is_active: bool = True


class TestSendBody(Strict):
    to: str = Field(..., min_length=3, max_length=320, description="the address to send the test to")
    from_local_part: str = Field("test", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._+-]+$")
    subject: str | None = Field(None, max_length=200)
    html: str | None = Field(None, max_length=100_000)


class UnsavedServiceTest(ServiceCreate, TestSendBody):
    """A configuration not saved yet, plus the test message."""

    def configuration(self) -> dict[str, Any]:
        """The service configuration the caller gave, without the message and the credentials."""
        return self.model_dump(exclude_unset=True, exclude={"to", "from_local_part", "subject", "html", "credentials"})


class ExactServices(Strict):
    service_ids: list[Id] = Field(..., max_length=500)


class WebhookSecretBody(Strict):
    value: str | None = Field(
        None,
        min_length=8,
        max_length=4096,
        description="the secret the provider gives you; omit it to have one generated",
    )
    expires_at: dt.datetime | None = Field(None, description="optional: stop accepting it after this time")


# --------------------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------------------


class ServiceOut(BaseModel):
    """A service's configuration as an admin sees it: never a credential, only whether some are set."""

    name: str
    label: str
    provider: str
    options: dict[str, Any]
    domain: str
    sending_interval_seconds: float
    max_concurrency: int
    batch_size: int
    daily_quota: int
    timezone: str = Field(description="IANA zone of the daily quota reset")
    quota_reset_time: str = Field(description="local HH:MM at which the daily quota resets")
    weight: int
    priority: int
    backup_only: bool
    is_enabled: bool
    request_timeout_seconds: int
    id: int
    credentials_set: bool
    credentials_hint: dict[str, str] = Field(
        description="per credential field, its last 4 characters (webhook secrets: how many are stored)"
    )
    created_at: dt.datetime
    updated_at: dt.datetime


class ServiceRuntime(BaseModel):
    """Whether the service can take work right now, and why not; today's usage and its recent health."""

    available: bool
    state: str = Field(description="available, or why not: disabled, frozen, throttled, exhausted, daily_quota, …")
    state_until: dt.datetime | None = Field(description="when that state ends, if known")
    used_today: int
    in_flight: int = Field(description="SubTasks allocated to the service and not finished")
    next_reset: dt.datetime
    frozen_reason: str | None
    last_error: str | None
    last_success_at: dt.datetime | None
    recent_success_rate: float | None
    latency_ms_ewma: float | None = Field(description="moving average of the send latency, in ms")


class ServiceStateOut(ServiceRuntime, ServiceOut):
    """A service's configuration and its state right now."""


class ServiceActionOut(BaseModel):
    service_id: int
    done: str = Field(description="the action carried out: freeze, enable, disable, unfreeze, clear-backoff")


class UsageOut(BaseModel):
    service_id: int
    used_today: int
    adjustment_delta: int = Field(description="what was added to today's adjustment to reach `used_today`")


class TestSendOut(BaseModel):
    """How the provider answered one test message."""

    model_config = ConfigDict(from_attributes=True)

    classification: str = Field(description="accepted, maybe_sent, transient, throttled, auth_config, …")
    status: int | None = Field(description="the provider's HTTP or SMTP status")
    provider_code: str | None
    message: str
    provider_message_id: str | None
    latency_ms: int
    message_key: str = Field(description="the test message's own id (its Message-ID key)")


class WebhookSecretOut(BaseModel):
    """A stored webhook secret, masked."""

    id: str
    hint: str = Field(description="the last 4 characters")
    added_at: str | None = Field(description="ISO time (null for a secret set through the credentials)")
    expires_at: str | None = Field(description="ISO time after which it no longer verifies")
    expired: bool


class WebhookSecretAddedOut(WebhookSecretOut):
    value: str = Field(description="the secret itself: shown in this answer only")


class WebhookSecretRemovedOut(BaseModel):
    id: str
    hint: str = Field(description="the last 4 characters of the removed secret")
    remaining: int = Field(description="how many secrets the service still holds")


class NextResetOut(BaseModel):
    utc: dt.datetime
    service_local: dt.datetime
    service_timezone: str
    admin_local: dt.datetime
    admin_timezone: str


class RecentAttemptsOut(BaseModel):
    """The service's send attempts over the last hour."""

    window_started_at: dt.datetime
    window_complete: bool = Field(description="false when only the newest attempts of the hour were looked at")
    attempts: int
    by_outcome: dict[str, int]
    errors: int = Field(description="attempts whose outcome says something about the service, not a recipient")
    error_rate: float | None
    latency_sample: int = Field(description="how many attempts the latency percentiles are taken from")
    latency_ms_p50: int | None
    latency_ms_p95: int | None


class WebhookUrlOut(BaseModel):
    kind: str = Field(description="service, provider, dsn or legacy")
    url: str
    note: str


class StatusLogEntryOut(BaseModel):
    """One change of a service's state or configuration."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    change: str
    old_value: str | None
    new_value: str | None
    reason: str | None
    actor_user_id: int | None = Field(description="the admin who made it (null: the CLI or the system)")
    at: dt.datetime


class StatusLogOut(BaseModel):
    """One change of a service's state or configuration, in the list of every service's changes."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    service_id: int
    change: str
    old_value: str | None
    new_value: str | None
    reason: str | None
    actor_user_id: int | None = Field(description="the admin who made it (null: the CLI or the system)")
    at: dt.datetime


class ServiceHealthOut(BaseModel):
    """One service's health: state, usage against the quota, limits, recent attempts, webhook URLs, status log."""

    id: int
    name: str
    label: str
    provider: str
    domain: str
    is_enabled: bool
    state: str
    available: bool
    probe: bool = Field(description="half-open after a freeze: one SubTask may be tried")
    state_until: dt.datetime | None
    frozen_reason: str | None
    consecutive_failures: int
    used_today: int
    effective_quota: int
    remaining_today: int
    next_reset: NextResetOut
    sending_interval_seconds: float
    max_concurrency: int
    batch_size: int
    in_flight: int
    recent: RecentAttemptsOut
    last_success_at: dt.datetime | None
    last_failure_at: dt.datetime | None
    last_error: str | None
    webhook_urls: list[WebhookUrlOut]
    webhook_secrets: int = Field(description="how many webhook secrets are stored")
    status_log: list[StatusLogEntryOut] = Field(description="the newest changes first")


class MappingOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    user_id: int
    service_id: int
    is_active: bool


class UserServicesOut(BaseModel):
    user_id: int
    service_ids: list[int]


class MyServiceOut(BaseModel):
    """A service the caller may send through, by its label only."""

    id: int
    label: str
    domain: str
    sending_now: bool = Field(description="whether it takes work now (or only waits for its next rate slot)")


class HealthPointOut(BaseModel):
    """One point of a service's health history: the attempts that finished from `start` (UTC) for `hours` hours."""

    start: dt.datetime
    hours: int
    attempts: int
    accepted: int
    accept_rate: float | None = Field(description="accepted ÷ attempts; null without attempts")
    latency_ms_avg: float | None = Field(description="mean duration of the attempts that have one")
    errors: dict[str, int] = Field(
        description="attempts per error class: transient, throttled, quota_exhausted, auth_config, maybe_sent, "
        "permanent (a class without attempts is 0)"
    )


class HealthHistoryOut(BaseModel):
    """A service's send attempts over the last 24 hours (hourly points) or 7 days (six-hour points), UTC-aligned; the
    last point holds the current, unfinished hour."""

    service_id: int
    window: str
    step_hours: int
    start: dt.datetime
    end: dt.datetime
    points: list[HealthPointOut]
    totals: HealthPointOut
