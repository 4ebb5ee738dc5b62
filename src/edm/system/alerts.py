"""Admin alerts: a notification for every active admin when something needs a person (docs/admin.md#notifications:
a service frozen by an auth/config error, or out of provider quota). Written in the caller's transaction."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.models.system import Notification
from edm.models.users import Role, User

log = logging.getLogger("edm.alerts")


async def alert_admins(
    session: AsyncSession, *, kind: str, title: str, body: str | None = None, link: str | None = None
) -> int:
    admins = list(await session.scalars(select(User.id).where(User.role == Role.ADMIN, User.is_active.is_(True))))
    for admin_id in admins:
        session.add(
            Notification(user_id=admin_id, kind=kind, title=title[:200], body=(body or "")[:2000] or None, link=link)
        )
    log.warning("alert." + kind, extra={"title": title, "admins": len(admins)})
    return len(admins)
