"""What `edm.app` mounts for the console, and what it hands to the rest of the app."""

from __future__ import annotations

from fastapi import APIRouter

from edm.console import (
    account,
    admin_audit,
    admin_credit,
    admin_dashboard,
    admin_events,
    admin_inbound,
    admin_mappings,
    admin_queue,
    admin_services,
    admin_settings,
    admin_suppressions,
    admin_users,
    contacts,
    content_templates,
    conversations,
    dashboard,
    login,
    media_library,
    notifications,
    senders,
    static,
    suppressions,
    task_detail,
    task_recipients,
    task_wizard,
    tasks,
)
from edm.console import imports as contact_imports
from edm.console import tags as tag_pages

# Each page module has a router of its own; add a new module's router here.
ROUTERS: list[APIRouter] = [static.router, login.router, dashboard.router, account.router]
ROUTERS += [senders.router, content_templates.router, media_library.router]  # C3: senders, templates, media
ROUTERS += [task_wizard.router, tasks.router]  # C4: campaigns (/tasks/new before /tasks/{id})
ROUTERS += [task_detail.router, task_recipients.router]  # C4: a campaign, its recipients
ROUTERS += [contact_imports.router, contacts.router, tag_pages.router]  # C2: contacts, import, tags
ROUTERS += [suppressions.router, notifications.router]  # C5: suppressions, notifications
ROUTERS += [admin_audit.router, admin_events.router, admin_settings.router]  # admin: audit log, events, settings
ROUTERS += [admin_suppressions.router]  # admin: the global suppression list
ROUTERS += [admin_users.router, admin_credit.router]  # admin: users and credit
ROUTERS += [admin_dashboard.router, admin_mappings.router, admin_queue.router]  # admin: overview, service access, queue
ROUTERS += [admin_services.router]  # admin: sending services
ROUTERS += [conversations.router]  # conversations (/conversations/new before /conversations/{id})
ROUTERS += [admin_inbound.router]  # admin: unrouted inbound mail
