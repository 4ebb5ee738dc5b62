"""Data set-up for tests through the real services where they exist (and plain rows for bulk contacts)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.clock import utc_now
from edm.db.session import unit_of_work
from edm.email_services import service as services
from edm.models.contacts import Contact, ContactTag, Tag
from edm.models.content import Sender, Template
from edm.models.conversations import Conversation, ConversationMessage
from edm.models.users import Role
from edm.security.crypto import Vault
from edm.settings import Settings
from edm.tasks import service as tasks
from edm.users.service import create_user

HTML = "<html><body><p>Hello {{ contact.first_name | default('there', true) }}</p>{{ unsubscribe_url }}</body></html>"


@dataclass
class World:
    user_id: int
    sender_id: int
    template_id: int
    contact_ids: list[int]
    service_ids: list[int]


def vault_for(settings: Settings) -> Vault:
    return Vault.from_settings(settings)


async def user(session: AsyncSession, name: str, *, credit: int = 0, role: str = Role.USER) -> int:
    u = await create_user(
        session, username=name, email=f"{name}@example.com", password="long enough pw", role=role, credit=credit
    )
    return u.id


async def contacts(
    session: AsyncSession,
    user_id: int,
    count: int,
    *,
    prefix: str = "r",
    tag_id: int | None = None,
    domain: str = "example.net",
) -> list[int]:
    now = utc_now()
    rows = [
        {
            "user_id": user_id,
            "email": f"{prefix}{i}@{domain}",
            "email_normalized": f"{prefix}{i}@{domain}",
            "email_domain": domain,
            "first_name": f"N{i}",
            "status": "active",
            "custom_attributes": {},
            "soft_bounce_streak": 0,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(count)
    ]
    ids: list[int] = []
    for start in range(0, len(rows), 5000):
        result = await session.execute(insert(Contact).returning(Contact.id), rows[start : start + 5000])
        ids.extend(result.scalars())
    if tag_id is not None:
        for start in range(0, len(ids), 5000):
            await session.execute(
                insert(ContactTag),
                [{"contact_id": c, "tag_id": tag_id, "created_at": now} for c in ids[start : start + 5000]],
            )
    return ids


async def tag(session: AsyncSession, user_id: int, name: str, parent_id: int | None = None) -> int:
    row = Tag(user_id=user_id, name=name, parent_id=parent_id)
    session.add(row)
    await session.flush()
    return row.id


async def sender(session: AsyncSession, user_id: int, local: str = "news") -> int:
    row = Sender(user_id=user_id, local_part=local, local_part_lower=local.lower(), display_name="News Team")
    session.add(row)
    await session.flush()
    return row.id


async def template(
    session: AsyncSession,
    user_id: int,
    name: str = "t1",
    *,
    subject: str = "Hi {{ name }}",
    html: str = HTML,
    **values: Any,
) -> int:
    row = Template(user_id=user_id, name=name, subject=subject, html=html, **values)
    session.add(row)
    await session.flush()
    return row.id


async def service(
    session: AsyncSession,
    settings: Settings,
    name: str,
    *,
    provider: str = "fake",
    options: dict[str, Any] | None = None,
    credentials: dict[str, Any] | None = None,
    map_to: list[int] = (),
    **values: Any,
) -> int:  # type: ignore[assignment]
    defaults = {"sending_interval_seconds": 0, "max_concurrency": 4, "daily_quota": 100000}
    svc = await services.create_service(
        session,
        vault_for(settings),
        values={
            "name": name,
            "provider": provider,
            "domain": f"{name}.example.com",
            "options": options or {},
            **defaults,
            **values,
        },
        credentials=credentials,
        fake_allowed=True,
    )
    for user_id in map_to:
        await services.map_user(session, user_id=user_id, service_id=svc.id)
    return svc.id


async def task(
    session: AsyncSession,
    user_id: int,
    *,
    sender_id: int,
    template_ids: list[int],
    rule: dict[str, Any],
    name: str = "campaign",
    schedule: bool = True,
    at: dt.datetime | None = None,
    weights: list[int] | None = None,
    **values: Any,
) -> int:
    weights = weights or [1] * len(template_ids)
    t = await tasks.create_task(
        session,
        user_id=user_id,
        actor=str(user_id),
        values={
            "name": name,
            "sender_id": sender_id,
            "recipient_rule": rule,
            "templates": [{"template_id": tid, "weight": w} for tid, w in zip(template_ids, weights, strict=True)],
            **values,
        },
    )
    if schedule:
        await tasks.schedule(session, t, at=at, actor=str(user_id))
    return t.id


async def world(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    *,
    recipients: int = 20,
    credit: int = 100000,
    services_: list[dict[str, Any]] | None = None,
    name: str = "alice",
) -> World:
    async with unit_of_work(sessionmaker) as session:
        uid = await user(session, name, credit=credit)
        sid = await sender(session, uid, local=f"news-{name}")
        tid = await template(session, uid)
        cids = await contacts(session, uid, recipients, prefix=f"{name}-")
        svc_ids = [await service(session, settings, **spec, map_to=[uid]) for spec in (services_ or [])]
        return World(uid, sid, tid, cids, svc_ids)


async def conversation(
    session: AsyncSession,
    user_id: int,
    *,
    our_address: str,
    their_address: str,
    their_name: str | None = None,
    subject: str = "Question about my order",
    contact_id: int | None = None,
    last_service_id: int | None = None,
    inbound: list[dict[str, Any]] | None = None,
) -> tuple[int, list[int]]:
    """A conversation row with its inbound messages, stored directly (the inbound side is built separately): each
    dict of `inbound` may give `message_id`, `references`, `subject`, `text`. Returns (conversation id, message
    ids in order)."""
    now = utc_now()
    row = Conversation(
        user_id=user_id,
        our_address=our_address.lower(),
        their_address=their_address.lower(),
        their_name=their_name,
        contact_id=contact_id,
        subject=subject,
        status="active",
        last_service_id=last_service_id,
        last_message_at=now if inbound else None,
        message_count=len(inbound or []),
        unread_count=len(inbound or []),
    )
    session.add(row)
    await session.flush()
    ids = []
    for i, values in enumerate(inbound or []):
        message = ConversationMessage(
            conversation_id=row.id,
            user_id=user_id,
            direction="inbound",
            message_id=values.get("message_id", f"in-{row.id}-{i}@mail.example.org"),
            in_reply_to=values.get("in_reply_to"),
            references=values.get("references"),
            from_address=their_address.lower(),
            from_name=their_name,
            to_address=our_address.lower(),
            subject=values.get("subject", f"Re: {subject}" if i else subject),
            text_body=values.get("text", "Hello, a question."),
            source="smtp",
            service_id=last_service_id,
            received_at=now,
            created_at=now,
        )
        session.add(message)
        await session.flush()
        ids.append(message.id)
    return row.id, ids
