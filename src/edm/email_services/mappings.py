"""Which users may send through which services: the admin operations on user–service mappings (each audited,
shared by the API and the CLI), the admin listing, and the services a user may use. Services flush, the entry
point commits."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.dispatch import queue
from edm.email_services.schemas import MyServiceOut
from edm.email_services.service import map_user
from edm.errors import NotFound
from edm.models.email_services import UserServiceMapping
from edm.paging import Page
from edm.system.service import Actor, audit


async def assign(
    session: AsyncSession, *, user_ids: list[int], service_ids: list[int], is_active: bool, actor: Actor
) -> list[UserServiceMapping]:
    """Map every user to every service (many to many in one call, one audit row for the call)."""
    mappings = [
        await map_user(
            session, user_id=user_id, service_id=service_id, actor_user_id=actor.user_id, is_active=is_active
        )
        for user_id in user_ids
        for service_id in service_ids
    ]
    await audit(
        session,
        actor,
        "mapping.assign",
        target_type="mapping",
        details={"user_ids": user_ids, "service_ids": service_ids, "is_active": is_active, "mappings": len(mappings)},
    )
    return mappings


async def set_user_services(session: AsyncSession, *, user_id: int, service_ids: list[int], actor: Actor) -> list[int]:
    """Make the user's active mappings exactly `service_ids`; returns them sorted."""
    for service_id in service_ids:
        await map_user(session, user_id=user_id, service_id=service_id, actor_user_id=actor.user_id)
    for mapping in await session.scalars(select(UserServiceMapping).where(UserServiceMapping.user_id == user_id)):
        if mapping.service_id not in service_ids:
            mapping.is_active = False
    await session.flush()
    ids = sorted(service_ids)
    await audit(
        session, actor, "mapping.set_user_services", target_type="user", target_id=user_id, details={"service_ids": ids}
    )
    return ids


async def delete_mapping(session: AsyncSession, mapping_id: int, *, actor: Actor) -> None:
    mapping = await session.get(UserServiceMapping, mapping_id)
    if mapping is None:
        raise NotFound("mapping not found")
    pair = {"user_id": mapping.user_id, "service_id": mapping.service_id}
    await session.delete(mapping)
    await session.flush()
    await audit(session, actor, "mapping.delete", target_type="mapping", target_id=mapping_id, details=pair)


async def list_mappings(
    session: AsyncSession, page: Page, *, user_id: int | None = None, service_id: int | None = None
) -> list[UserServiceMapping]:
    """One page of mappings by id (limit + 1 rows, for `page_of`), optionally of one user or one service."""
    query = select(UserServiceMapping).order_by(UserServiceMapping.id).limit(page.limit + 1)
    if user_id:
        query = query.where(UserServiceMapping.user_id == user_id)
    if service_id:
        query = query.where(UserServiceMapping.service_id == service_id)
    if page.after_id is not None:
        query = query.where(UserServiceMapping.id > page.after_id)
    return list(await session.scalars(query))


async def usable_services(session: AsyncSession, user_id: int, *, now: dt.datetime) -> list[MyServiceOut]:
    """The services the user's tasks may send through, as labels only: never credentials, limits or other
    users' usage."""
    mapped = set(
        await session.scalars(
            select(UserServiceMapping.service_id).where(
                UserServiceMapping.user_id == user_id, UserServiceMapping.is_active.is_(True)
            )
        )
    )
    return [
        MyServiceOut(
            id=s.service.id,
            label=s.service.label,
            domain=s.service.domain,
            sending_now=s.availability.eligible or s.availability.slot_waiting,
        )
        for s in await queue.snapshot_services(session, now=now)
        if s.service.id in mapped
    ]
