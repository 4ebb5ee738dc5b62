"""The registry of console pages: one place that says which pages exist, used by the menu and by every link
between pages (docs/console.md#how-a-console-page-is-built).

A page that is planned but not built yet is listed with `built=False`: the menu shows it as disabled text marked
"soon", and `page_link` renders text instead of a link, so no page ever links to a 404. When a page lands, its
author sets `built=True` here (a test checks that every built page has a GET route, and every planned one none).
"""

from __future__ import annotations

from dataclasses import dataclass

from edm.console.i18n import N_


@dataclass(frozen=True)
class Page:
    path: str
    label: str  # a msgid
    built: bool
    admin: bool = False  # shown to admins only


PAGES: dict[str, Page] = {
    "dashboard": Page("/", N_("Dashboard"), built=True),
    "contacts": Page("/contacts", N_("Contacts"), built=True),
    "contacts_import": Page("/contacts/import", N_("Import contacts"), built=True),
    "tags": Page("/tags", N_("Tags"), built=True),
    "templates": Page("/templates", N_("Templates"), built=True),
    "template_new": Page("/templates/new", N_("New template"), built=True),
    "media": Page("/media", N_("Images"), built=True),
    "senders": Page("/senders", N_("Senders"), built=True),
    "tasks": Page("/tasks", N_("Campaigns"), built=True),
    "tasks_new": Page("/tasks/new", N_("New campaign"), built=True),
    "conversations": Page("/conversations", N_("Conversations"), built=True),
    "conversation_new": Page("/conversations/new", N_("New conversation"), built=True),
    "suppressions": Page("/suppressions", N_("Suppressions"), built=True),
    "account": Page("/account", N_("Account"), built=True),
    "notifications": Page("/notifications", N_("Notifications"), built=True),  # the top bar links it (C5)
    "password": Page("/password", N_("Change password"), built=True),
    # The admin section (docs/console.md#admin-pages): every page answers 404 to anyone but an admin.
    "admin_dashboard": Page("/admin", N_("Overview"), built=True, admin=True),
    "admin_users": Page("/admin/users", N_("Users"), built=True, admin=True),
    "admin_credit": Page("/admin/credit", N_("Credit"), built=True, admin=True),
    "admin_services": Page("/admin/services", N_("Sending services"), built=True, admin=True),
    "admin_mappings": Page("/admin/mappings", N_("Service access"), built=True, admin=True),
    "admin_queue": Page("/admin/queue", N_("Queue"), built=True, admin=True),
    "admin_events": Page("/admin/events", N_("Events"), built=True, admin=True),
    "admin_suppressions": Page("/admin/suppressions", N_("Global suppressions"), built=True, admin=True),
    "admin_inbound": Page("/admin/inbound", N_("Unrouted mail"), built=True, admin=True),
    "admin_settings": Page("/admin/settings", N_("Settings"), built=True, admin=True),
    "admin_audit": Page("/admin/audit", N_("Audit log"), built=True, admin=True),
    "api_docs": Page("/api/docs", N_("API documentation"), built=True, admin=True),
}

# The left menu, in the order of the work; then the admin group.
MENU = ("dashboard", "contacts", "tags", "templates", "media", "senders", "tasks", "conversations", "suppressions")
ADMIN_MENU = (
    "admin_dashboard",
    "admin_users",
    "admin_credit",
    "admin_services",
    "admin_mappings",
    "admin_queue",
    "admin_events",
    "admin_inbound",
    "admin_suppressions",
    "admin_settings",
    "admin_audit",
    "api_docs",
)


@dataclass(frozen=True)
class MenuItem:
    key: str
    path: str
    label: str  # a msgid
    built: bool
    current: bool


def menu(keys: tuple[str, ...], current_path: str) -> list[MenuItem]:
    items = []
    for key in keys:
        page = PAGES[key]
        # "/" and "/admin" are the roots of their menus: their sub-paths are other entries' pages.
        nested = page.path not in ("/", "/admin") and current_path.startswith(page.path + "/")
        current = current_path == page.path or nested
        items.append(MenuItem(key, page.path, page.label, page.built, current))
    return items
