"""The list of routers the app mounts. Each domain's api.py owns its routes."""

from __future__ import annotations

from fastapi import APIRouter

from edm.settings import Settings


def all_routers(settings: Settings) -> list[APIRouter]:
    routers: list[APIRouter] = []
    for module_name in MODULES:
        module = __import__(module_name, fromlist=["router"])
        routers.append(module.router)
    if settings.env in ("demo", "development", "test"):
        from edm.devtools import mailbox_api

        routers.append(mailbox_api.router)
    return routers


MODULES = [
    "edm.users.api",
    "edm.users.credit_api",
    "edm.email_services.api",
    "edm.contacts.imports_api",  # before contacts.api: /contacts/imports must not reach /contacts/{id}
    "edm.contacts.api",
    "edm.content.api",
    "edm.content.media_api",
    "edm.tasks.api",
    "edm.tasks.test_sends_api",
    "edm.events.webhooks",
    "edm.events.api",
    "edm.tracking.api",
    "edm.suppressions.api",
    "edm.ops.api",
]
