"""Request and response bodies of the task, report, estimate and template test send routes.

Request models reject unknown fields (422 naming the field). Response models are built from ORM rows
(`from_attributes`) or from the dictionaries the report queries assemble; the CLI prints the same data.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, computed_field, model_validator

from edm.models.tasks import SubTask
from edm.paging import MAX_ID, PageOut
from edm.tasks.actions import BATCH_MAX, SELECTION_MAX
from edm.tasks.proof_sends import MAX_ADDRESSES
from edm.tasks.recipients import RecipientRule
from edm.tasks.reports import DisplayStatus
from edm.vocabulary.tasks import DeliveryState, SendState, TaskStatus, allowed_actions

Id = Annotated[int, Field(ge=1, le=MAX_ID)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------------


class TemplateChoice(Strict):
    template_id: Id
    weight: int = Field(1, ge=1, le=100)


class Thresholds(Strict):
    min_sample: int | None = Field(None, ge=1)
    max_failure_rate: float | None = Field(None, gt=0, le=1)
    max_bounce_rate: float | None = Field(None, gt=0, le=1)


class TaskFields(Strict):
    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    sender_id: Id | None = None
    templates: list[TemplateChoice] | None = Field(None, min_length=1, max_length=20)
    recipient_rule: RecipientRule | None = None
    timezone: str | None = None
    priority: int | None = Field(None, ge=0, le=9)
    track_opens: bool | None = None
    track_clicks: bool | None = None
    on_capacity_exhausted: Literal["wait", "pause"] | None = None
    allowed_service_ids: list[Id] | None = None
    error_thresholds: Thresholds | None = None
    schedule_at: AwareDatetime | None = Field(
        None,
        description="a draft's planned send time: kept as given (a past time too) and checked when the draft is "
        "scheduled, which uses it when the schedule request gives no time; null removes it; only in a draft",
    )

    def values(self) -> dict[str, Any]:
        """The fields the client sent, as the task service takes them."""
        values = self.model_dump(exclude_unset=True)
        if self.templates is not None:
            values["templates"] = [t.model_dump() for t in self.templates]
        if self.error_thresholds is not None:
            values["error_thresholds"] = self.error_thresholds.model_dump(exclude_none=True)
        return values


class TaskCreate(TaskFields):
    name: str = Field(..., min_length=1, max_length=200)


class ScheduleBody(Strict):
    at: AwareDatetime | None = Field(None, description="default: the draft's schedule_at if it has one, else now")
    now: bool = Field(False, description="now, whatever the draft's schedule_at")


class PauseBody(Strict):
    detail: str | None = Field(default=None, max_length=1000)
    resume_at: AwareDatetime | None = None


class ResumeBody(Strict):
    schedule_at: AwareDatetime | None = None


class SubtaskSelection(Strict):
    subtask_ids: list[Id] | None = Field(default=None, max_length=10000)


class BatchBody(Strict):
    action: Literal["pause", "resume"]
    task_ids: list[Id] = Field(..., min_length=1, max_length=BATCH_MAX)


class RecipientSelection(Strict):
    """Exactly one of the two: SubTask ids (the `id` of `GET /tasks/{id}/subtasks`) or recipient addresses."""

    subtask_ids: list[Id] | None = Field(default=None, min_length=1, max_length=SELECTION_MAX)
    emails: list[Annotated[str, Field(min_length=1, max_length=320)]] | None = Field(
        default=None, min_length=1, max_length=SELECTION_MAX
    )


class EstimateRequest(Strict):
    """`{"recipient_rule": {...}}`, exactly as task creation takes the rule, so a task's body can be estimated as
    it is. The bare rule object (`{"type": ...}`) is accepted too: the estimate took that form first."""

    recipient_rule: RecipientRule

    @model_validator(mode="before")
    @classmethod
    def _bare_rule(cls, data: Any) -> Any:
        # Wrapped before validation, so errors of either form name the same path: `recipient_rule.<field>`.
        if isinstance(data, dict) and "recipient_rule" not in data:
            return {"recipient_rule": data}
        return data


class TemplateTestSendBody(Strict):
    emails: list[str] = Field(
        ...,
        min_length=1,
        max_length=MAX_ADDRESSES,
        json_schema_extra={"items": {"type": "string", "format": "email"}},
        description="1–5 addresses (your own inboxes: not checked against suppression)",
    )
    contact_id: Id | None = Field(
        None, description="one of your contacts whose data fills the variables; else the preview's sample data"
    )
    sender_id: Id | None = Field(None, description="default: your first sender")


# --------------------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------------------


class TaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    user_id: int
    name: str
    description: str | None
    status: TaskStatus
    pause_reason: str | None
    pause_detail: str | None
    resume_at: dt.datetime | None = Field(description="when a paused task resumes by itself")
    waiting_reason: str | None = Field(description="why a running task sends nothing at the moment")
    waiting_until: dt.datetime | None
    sender_id: int | None
    recipient_rule: dict[str, Any] | None = Field(description="the rule as stored (see the task body)")
    schedule_at: dt.datetime | None
    timezone: str
    priority: int
    track_opens: bool
    track_clicks: bool
    on_capacity_exhausted: str
    allowed_service_ids: list[int] | None
    error_thresholds: dict[str, Any] | None
    schedule_estimate: dict[str, Any] | None = Field(description="the recipient estimate taken when scheduled")
    generation_summary: dict[str, Any] | None = Field(description="recipients and exclusions at generation")
    generated_at: dt.datetime | None
    first_sent_at: dt.datetime | None
    completed_at: dt.datetime | None
    cancelled_at: dt.datetime | None
    closed_at: dt.datetime | None
    completion_note: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @computed_field(description="what the owner may do with the task in its status")  # type: ignore[prop-decorator]
    @property
    def allowed_actions(self) -> list[str]:
        return allowed_actions(self.status)


class TaskTemplateOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    template_id: int | None = Field(description="null once the template was deleted")
    weight: int
    name: str | None = Field(description="the template's name in the snapshot taken at generation")


class TaskDetailOut(TaskOut):
    templates: list[TaskTemplateOut]


class OmittedField(BaseModel):
    field: str
    message: str


class TaskCopyOut(TaskDetailOut):
    omitted: list[OmittedField] = Field(description="what could not be copied: fill it in before scheduling")


class TaskStatusCounts(BaseModel):
    """Tasks by status; a status without tasks is left out."""

    draft: int = 0
    scheduled: int = 0
    queued: int = 0
    sending: int = 0
    paused: int = 0
    completed: int = 0
    cancelled: int = 0
    closed: int = 0


class StatusChangeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, populate_by_name=True)

    from_status: TaskStatus | None = Field(alias="from")
    to_status: TaskStatus = Field(alias="to")
    reason: str | None
    detail: str | None
    actor: str = Field(description="the user id, `cli`, or `system`")
    at: dt.datetime


class ErrorOut(BaseModel):
    """The `error` object of an error answer, with whatever else the error adds (e.g. `current_status`)."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class BatchApplied(BaseModel):
    task_id: int
    ok: Literal[True]
    status: TaskStatus


class BatchRefused(BaseModel):
    task_id: int
    ok: Literal[False]
    error: ErrorOut


class BatchOut(BaseModel):
    applied: int
    failed: int
    results: list[BatchApplied | BatchRefused] = Field(description="one per task, in request order")


class RetriedOut(BaseModel):
    retried: int


class AbandonedOut(BaseModel):
    abandoned: int


class CancelledRecipientsOut(BaseModel):
    cancelled: int
    not_pending: int = Field(description="already claimed by a worker, or final")
    not_found: int


# --------------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------------


class Rates(BaseModel):
    """Shares from 0 to 1 (4 decimals); null where the denominator is 0."""

    delivery: float | None
    bounce: float | None
    failure: float | None
    open_human: float | None
    open_total: float | None
    click: float | None
    click_to_open: float | None
    complaint: float | None
    unsubscribe: float | None
    reply: float | None


class TaskCounts(BaseModel):
    """The counts of a task's (or one template's) recipients, from their SubTask rows."""

    recipients: int
    excluded: int = Field(description="left out at generation")
    excluded_by_reason: dict[str, int]
    suppressed_later: int = Field(description="suppressed at claim time (refunded)")
    queued: int
    retrying: int
    in_flight: int
    uncertain: int
    sent: int
    failed: int
    failed_by_class: dict[str, int]
    cancelled: int
    delivered: int
    deferred: int
    soft_bounced: int
    hard_bounced: int
    rejected: int
    complained: int
    reached: int = Field(description="sent minus bounced")
    opened_human: int = Field(description="recipients a person opened (or clicked in) the message of")
    opened_total: int = Field(description="recipients opened, machines' opens included")
    clicked_human: int
    clicked_total: int
    opens: int
    machine_opens: int
    clicks: int
    machine_clicks: int
    unsubscribed: int
    replied: int
    rates: Rates
    progress: float | None = Field(description="share of recipients in a final state")


# Field order: pydantic lists the fields of the last base class first, so the header fields of the two
# models below come before the counts, as the answers always had them.
class _StatsHeader(BaseModel):
    task_id: int
    status: TaskStatus
    waiting_reason: str | None
    waiting_until: dt.datetime | None
    pause_reason: str | None
    computed_at: dt.datetime


class TaskStatsOut(TaskCounts, _StatsHeader):
    pass


# --------------------------------------------------------------------------------------------------------
# Recipients (SubTasks)
# --------------------------------------------------------------------------------------------------------


class SubtaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    public_id: uuid.UUID = Field(description="the id carried in the message (tracking links, provider events)")
    recipient_email: str
    contact_id: int | None
    send_state: SendState
    suppressed_reason: str | None
    delivery_state: DeliveryState
    attempts: int
    retryable_failures: int
    next_attempt_at: dt.datetime | None
    service_id: int | None = Field(description="the service of the last attempt")
    sent_at: dt.datetime | None
    failed_at: dt.datetime | None
    last_error_class: str | None
    last_error_code: str | None
    last_error: str | None
    message_id: str | None
    subject_sent: str | None
    provider_message_id: str | None
    task_template_id: int | None


class AddressSubtaskOut(SubtaskOut):
    task_id: int


class SubtaskReportOut(SubtaskOut):
    display_status: DisplayStatus
    service_label: str | None
    delivered_at: dt.datetime | None
    bounced_at: dt.datetime | None
    delivery_detail: str | None
    open_count: int
    machine_open_count: int
    first_opened_at: dt.datetime | None
    last_opened_at: dt.datetime | None
    click_count: int
    machine_click_count: int
    first_clicked_at: dt.datetime | None
    last_clicked_at: dt.datetime | None
    unsubscribed_at: dt.datetime | None
    complained_at: dt.datetime | None
    replied_at: dt.datetime | None

    @classmethod
    def of(cls, row: Any) -> SubtaskReportOut:
        """A row of `reports.subtask_page`: the SubTask with its display status and service label."""
        subtask: SubTask = row.SubTask
        columns = {name: getattr(subtask, name) for name in cls.model_fields if hasattr(subtask, name)}
        return cls.model_validate({**columns, "display_status": row.display_status, "service_label": row.service_label})


class SubtaskPage(PageOut[SubtaskReportOut]):
    total: int | None = Field(None, description="only with `include_total=true`")


class AttemptOut(BaseModel):
    at: dt.datetime | None = Field(description="when it started (or finished): the history's time order")
    attempt_no: int
    service_id: int | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    duration_ms: int | None
    outcome: str
    status: int | None = Field(description="the provider's HTTP or SMTP status")
    provider_code: str | None
    message: str | None
    provider_message_id: str | None


class EventOut(BaseModel):
    at: dt.datetime = Field(description="when it occurred: the history's time order")
    id: int
    event_type: str
    source: str
    provider_event: str | None
    occurred_at: dt.datetime
    received_at: dt.datetime
    match_status: str
    details: dict[str, Any] | None


class _AttemptKind(BaseModel):
    kind: Literal["attempt"]


class _EventKind(BaseModel):
    kind: Literal["event"]


class AttemptEntry(AttemptOut, _AttemptKind):
    pass


class EventEntry(EventOut, _EventKind):
    pass


class SubtaskDetailOut(SubtaskReportOut):
    # Here `attempts` is the list of attempts, not their count (the count is its length).
    attempts: list[AttemptOut]  # type: ignore[assignment]
    events: list[EventOut]
    history: list[Annotated[AttemptEntry | EventEntry, Field(discriminator="kind")]] = Field(
        description="attempts and events together, in time order"
    )


# --------------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------------


class ServiceRow(BaseModel):
    label: str | None
    attempts: dict[str, int] = Field(description="this task's attempts on the service, by outcome")
    attempts_total: int
    sent: int = Field(description="recipients whose last attempt was on the service, by result (also below)")
    failed: int
    uncertain: int
    bounced: int
    delivered: int
    avg_latency_ms: float | None


class AdminServiceRow(ServiceRow):
    """What admins see besides the label."""

    service_id: int | None
    name: str | None
    provider: str | None


class ServiceReportOut(BaseModel):
    task_id: int
    items: list[AdminServiceRow | ServiceRow]


class _TemplateRef(BaseModel):
    task_template_id: int | None
    template_id: int | None
    name: str | None
    weight: int | None


class TemplateReportRow(TaskCounts, _TemplateRef):
    pass


class TemplateReportOut(BaseModel):
    task_id: int
    items: list[TemplateReportRow]


class LinkRow(BaseModel):
    id: int
    url: str
    clicks_human: int
    clicks_machine: int
    unique_human_clickers: int


class LinkReportOut(PageOut[LinkRow]):
    task_id: int


class DomainRow(BaseModel):
    domain: str
    recipients: int
    sent: int
    bounced: int
    opened: int


class OtherDomains(BaseModel):
    domains: int = Field(description="how many domains are folded in here")
    recipients: int
    sent: int
    bounced: int
    opened: int


class DomainReportOut(BaseModel):
    task_id: int
    items: list[DomainRow] = Field(description="the top 20 by sent")
    other: OtherDomains | None


class TimelineCounts(BaseModel):
    sent: int
    delivered: int
    bounced: int
    opens: int
    clicks: int
    unsubscribes: int
    complaints: int
    replies: int


class _BucketStart(BaseModel):
    start: str = Field(description="the local hour or day the bucket starts, ISO 8601")


class TimelineRow(TimelineCounts, _BucketStart):
    pass


class TimelineOut(BaseModel):
    task_id: int
    timezone: str
    bucket: Literal["hour", "day"]
    items: list[TimelineRow]
    totals: TimelineCounts


class HeatmapOut(BaseModel):
    task_id: int
    timezone: str
    weekdays: list[str]
    cells: list[list[int]] = Field(description="per weekday (Monday first), 24 hourly counts of human opens")
    total: int


# --------------------------------------------------------------------------------------------------------
# Recipient estimate
# --------------------------------------------------------------------------------------------------------


class EstimateOut(BaseModel):
    candidates: int
    sendable: int
    excluded: dict[str, int]
    credit_needed: int
    credit_balance: int
    computed_at: dt.datetime


# --------------------------------------------------------------------------------------------------------
# Template test sends
# --------------------------------------------------------------------------------------------------------


class TestSendRecipientOut(BaseModel):
    __test__ = False  # not a pytest class

    email: str
    state: str = Field(description="pending, sending, sent, delivered, bounced…, failed, uncertain or cancelled")
    send_state: SendState
    delivery_state: DeliveryState
    settled: bool = Field(description="nothing more will happen to it")
    attempts: int
    sent_at: dt.datetime | None
    failed_at: dt.datetime | None
    service: str | None = Field(description="the label of the service that sent it")
    subject_sent: str | None
    error_code: str | None
    error: str | None
    subtask_id: int


class TestSendOut(BaseModel):
    __test__ = False

    id: int
    status: TaskStatus
    waiting_reason: str | None
    pause_reason: str | None
    template_id: int | None
    contact_id: int | None
    sample_data: bool = Field(description="the variables were filled with sample data, not a contact's")
    sender_id: int | None
    created_at: dt.datetime
    first_sent_at: dt.datetime | None
    completed_at: dt.datetime | None
    settled: bool = Field(description="every recipient is settled")
    recipients: list[TestSendRecipientOut]
