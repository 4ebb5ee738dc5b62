"""How the console names the states of the vocabulary (every value has a label; a test checks it). Templates
read them as `LABELS.task_status[task.status]` and translate with `_()`."""

from __future__ import annotations

from edm.console.i18n import N_

TASK_STATUS = {
    "draft": N_("Draft"),
    "scheduled": N_("Scheduled"),
    "queued": N_("Queued"),
    "sending": N_("Sending"),
    "paused": N_("Paused"),
    "completed": N_("Completed"),
    "cancelled": N_("Cancelled"),
    "closed": N_("Closed"),
    "deleting": N_("Deleting"),
}

PAUSE_REASON = {
    "user": N_("Paused by a person"),
    "user_quota": N_("Not enough credit"),
    "error_threshold": N_("Too many bounces or failures"),
    "service_unavailable": N_("No sending service was available"),
    "no_capacity_left": N_("Every sending quota is used up"),
    "render_limit": N_("A template went over a rendering limit"),
}

WAITING_REASON = {
    "daily_quota": N_("The daily quotas are used up; sending goes on after the next reset"),
    "throttled": N_("The sending services asked to slow down"),
    "frozen": N_("The sending services are cooling down after errors"),
    "exhausted": N_("The provider's quota is used up"),
    "retry_backoff": N_("Waiting to retry deferred messages"),
    "uncertain_decision": N_("Some sends are uncertain: decide what to do with them"),
    "owner_inactive": N_("The account is inactive"),
    "global_pause": N_("An admin paused all sending"),
    "no_usable_service": N_("No usable sending service"),
}

# What a provider or a tracking hit said happened to a message (edm.vocabulary.events.EventType).
EVENT_TYPE = {
    "accepted": N_("Accepted by the provider"),
    "delivered": N_("Delivered"),
    "deferred": N_("Delayed (the provider retries)"),
    "soft_bounced": N_("Soft bounce"),
    "hard_bounced": N_("Hard bounce"),
    "rejected": N_("Rejected before sending"),
    "opened": N_("Opened"),
    "clicked": N_("Clicked"),
    "complained": N_("Marked as spam"),
    "unsubscribed": N_("Unsubscribed"),
    "replied": N_("Replied"),
    "unknown": N_("Unknown event"),
}

ROLE = {"admin": N_("Admin"), "user": N_("User"), "read_only": N_("Read only")}

TOKEN_SCOPE = {"read": N_("Read"), "write": N_("Read and write")}


class Labels:
    task_status = TASK_STATUS
    pause_reason = PAUSE_REASON
    waiting_reason = WAITING_REASON
    event_type = EVENT_TYPE
    role = ROLE
    token_scope = TOKEN_SCOPE
