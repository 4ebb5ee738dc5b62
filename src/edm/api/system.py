"""Operations routes (docs/admin.md, docs/operations.md#admin-settings): admin settings, the audit log, the queue view
and the global pause (admins), and every user's own notifications.

A settings change is validated as a whole (a bad key or value changes nothing and is named in the 422), stored,
and audited with its old and new value. Workers pick changes up within 30 s without a restart.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from pydantic import AwareDatetime

from edm.api.deps import Admin, AdminWriter, CurrentCaller, IdPath, Paging, Session
from edm.clock import utc_now
from edm.dashboards import dashboard, queue_view
from edm.dashboards.schemas import AdminDashboardOut, DashboardOut, PauseOut, QueueOut
from edm.errors import BadInput
from edm.paging import MAX_ID, PageOut, page_of
from edm.system.schemas import (
    AuditEntryOut,
    NotificationOut,
    NotificationPageOut,
    SettingOut,
    SettingsChangedOut,
    SettingsOut,
)
from edm.system.service import (
    AuditFilter,
    list_audit,
    list_notifications,
    mark_read,
    settings_view,
    unread_count,
    update_settings,
)

router = APIRouter(prefix="/api/v1", tags=["admin"])

_EXAMPLE = {"bounce.soft_limit": 2, "suppression.unsubscribe_scope": "global"}


@router.get("/admin/settings")
async def get_settings(session: Session, caller: Admin) -> SettingsOut:
    """Every setting: current value, default, and who changed it last (null while it has its default)."""
    return SettingsOut(items=[SettingOut.model_validate(s) for s in await settings_view(session)])


@router.patch("/admin/settings")
async def patch_settings(
    session: Session, caller: AdminWriter, request: Request, body: Annotated[dict[str, Any], Body(examples=[_EXAMPLE])]
) -> SettingsChangedOut:
    """Change settings: `{"key": value, ...}`. All or nothing; `changed` lists the keys whose value moved."""
    changed = await update_settings(session, body, actor=caller.actor(request))
    items = [SettingOut.model_validate(s) for s in await settings_view(session)]
    return SettingsChangedOut(items=items, changed=changed)


# --------------------------------------------------------------------------------------------------------
# Audit log
# --------------------------------------------------------------------------------------------------------


@router.get("/admin/audit-log")
async def get_audit_log(
    session: Session,
    caller: Admin,
    page: Paging,
    actor_user_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    action: Annotated[
        str | None, Query(max_length=64, description="prefix, e.g. `credit.` or `settings.update`")
    ] = None,
    target_type: Annotated[str | None, Query(max_length=32)] = None,
    target_id: Annotated[str | None, Query(max_length=64)] = None,
    from_: Annotated[AwareDatetime | None, Query(alias="from")] = None,
    to: Annotated[AwareDatetime | None, Query()] = None,
) -> PageOut[AuditEntryOut]:
    """Audit rows, newest first: who did what to which object, with details (never secrets)."""
    if from_ is not None and to is not None and to <= from_:
        raise BadInput.field("to", "must be after from")
    for name, value in (("action", action), ("target_type", target_type), ("target_id", target_id)):
        if value is not None and "\x00" in value:
            raise BadInput.field(name, "must not contain NUL characters")
    filters = AuditFilter(
        actor_user_id=actor_user_id, action=action, target_type=target_type, target_id=target_id, since=from_, until=to
    )
    rows = await list_audit(session, filters, limit=page.limit + 1, before_id=page.after_id)
    return PageOut[AuditEntryOut].model_validate(page_of(rows, page), from_attributes=True)


# --------------------------------------------------------------------------------------------------------
# Queue view and global pause
# --------------------------------------------------------------------------------------------------------


@router.get("/admin/queue")
async def get_queue(session: Session, caller: Admin) -> QueueOut:
    """Pending SubTasks per user (not yet bound to a service), in-flight per service, the oldest pending age,
    workers with their last heartbeat, and whether sending is paused."""
    return QueueOut.model_validate(await queue_view.queue_view(session, now=utc_now()))


@router.post("/admin/queue/pause-all")
async def pause_all(session: Session, caller: AdminWriter, request: Request) -> PauseOut:
    """Stop all sending: no claim binds a SubTask while paused (tasks show `global_pause`). Audited."""
    return PauseOut.model_validate(await queue_view.set_paused(session, True, actor=caller.actor(request)))


@router.post("/admin/queue/resume-all")
async def resume_all(session: Session, caller: AdminWriter, request: Request) -> PauseOut:
    """Undo pause-all. Audited."""
    return PauseOut.model_validate(await queue_view.set_paused(session, False, actor=caller.actor(request)))


# --------------------------------------------------------------------------------------------------------
# Dashboards
# --------------------------------------------------------------------------------------------------------


@router.get("/dashboard", tags=["dashboard"])
async def get_dashboard(session: Session, caller: CurrentCaller) -> DashboardOut:
    """The caller's dashboard (docs/admin.md#dashboards-get-dashboard-get-admindashboard): credit with the low-credit
    warning, campaigns by status, campaigns paused or waiting with their reason, sends / opens / clicks / replies in
    the last 24 h, 7 and 30 days, unread notifications and the latest imports."""
    return DashboardOut.model_validate(await dashboard.user_dashboard(session, caller.user, now=utc_now()))


@router.get("/admin/dashboard", tags=["dashboard"])
async def get_admin_dashboard(session: Session, caller: Admin) -> AdminDashboardOut:
    """The admin's own dashboard plus every service's state and usage, the queue and workers, credit per day
    for 7 days, campaigns needing attention across users, and alerts."""
    return AdminDashboardOut.model_validate(await dashboard.admin_dashboard(session, caller.user, now=utc_now()))


# --------------------------------------------------------------------------------------------------------
# Own notifications
# --------------------------------------------------------------------------------------------------------


@router.get("/me/notifications", tags=["notifications"])
async def my_notifications(
    session: Session,
    caller: CurrentCaller,
    page: Paging,
    unread: Annotated[bool | None, Query(description="true: unread only; false: read only")] = None,
) -> NotificationPageOut:
    """Own notifications, newest first, with the number still unread."""
    rows = await list_notifications(session, caller.id, unread=unread, limit=page.limit + 1, before_id=page.after_id)
    return NotificationPageOut.model_validate(
        {**page_of(rows, page), "unread": await unread_count(session, caller.id)}, from_attributes=True
    )


@router.post("/me/notifications/{notification_id}/read", tags=["notifications"])
async def read_notification(notification_id: IdPath, session: Session, caller: CurrentCaller) -> NotificationOut:
    """Mark one of your notifications read (every role may: it changes only your own view)."""
    return NotificationOut.model_validate(await mark_read(session, caller.id, notification_id))
