"""The routers the app mounts, in order. Each module of this package owns the routes of one domain."""

from __future__ import annotations

from fastapi import APIRouter

from edm.api import (
    contacts,
    content,
    conversation_answers,
    conversations,
    credit,
    events,
    imports,
    inbound_webhooks,
    media,
    proof_sends,
    services,
    suppressions,
    system,
    tasks,
    tracking,
    users,
    webhooks,
)
from edm.devtools import mailbox_api
from edm.settings import Settings

ROUTERS = [
    # First: the providers' webhooks are the highest-volume requests after tracking (which is answered before
    # routing), and Starlette tries the routes in order, ~10 µs each: at position 157 of 343 the route walk cost an
    # inbound webhook more CPU than its INSERT (bench/RESULTS.md, section l). No other router has /webhook… paths.
    inbound_webhooks.router,  # before webhooks: /webhooks/{provider}/{service_id} would take /webhooks/ses/inbound
    webhooks.router,
    users.router,
    credit.router,
    services.router,
    imports.router,  # before contacts: /contacts/imports must not reach /contacts/{id}
    contacts.router,
    content.router,
    media.router,
    tasks.router,
    proof_sends.router,
    conversation_answers.router,
    events.router,
    conversations.router,
    tracking.router,
    suppressions.router,
    system.router,
]


def all_routers(settings: Settings) -> list[APIRouter]:
    """The routers of this deployment: the demo mailbox only outside production."""
    dev = [mailbox_api.router] if settings.env in ("demo", "development", "test") else []
    return [*ROUTERS, *dev]
