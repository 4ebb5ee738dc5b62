"""Bench data through EDM's own services (users, senders, templates, services, tasks, generation), with the
bulk rows (contacts, tag memberships) written set-based: one INSERT … SELECT over generate_series, so a
million contacts load in seconds (docs/performance.md, lesson 8).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bench.bench_message import HTML as HTML_5KB
from edm.clock import utc_now
from edm.content import service as content
from edm.db.session import unit_of_work
from edm.email_services import service as services
from edm.models.contacts import Tag
from edm.models.tasks import Task
from edm.security.crypto import Vault
from edm.settings import Settings
from edm.tasks import generation
from edm.tasks import service as tasks
from edm.users.service import create_user

FIRST_NAMES = [
    "Ada",
    "Grace",
    "Linus",
    "Margaret",
    "Ken",
    "Barbara",
    "Dennis",
    "Frances",
    "Guido",
    "Radia",
    "Anne",
    "José",
    "Zoë",
    "Øystein",
    "Mia",
    "Noah",
]
# The 5 KB HTML of bench_message.py, personalised the way a campaign is: greeting and unsubscribe link.
TEMPLATE_HTML = HTML_5KB.replace("Hello Ann", "Hello {{ contact.first_name | default('there', true) }}").replace(
    "</body></html>", '<p style="font-size:11px"><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>'
)
TEMPLATE_SUBJECT = "Spring sale: 20% off new arrivals, {{ contact.first_name | default('friend', true) }}"


@dataclass
class World:
    user_id: int
    sender_id: int
    template_id: int
    service_ids: list[int]
    tag_ids: dict[str, int] = field(default_factory=dict)
    contacts: int = 0


async def seed(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    *,
    contacts: int,
    tags: dict[str, int],
    sink_port: int,
    services_: int = 2,
    max_concurrency: int = 32,
) -> World:
    """One user with `contacts` contacts, tags over the first n of them, a sender, the 5 KB template and
    `services_` SMTP services at the sink (interval 0, high concurrency, huge quota), mapped to the user."""
    vault = Vault.from_settings(settings)
    async with unit_of_work(sessionmaker) as session:
        user = await create_user(
            session,
            username="bench",
            email="bench@bench.example",
            password="bench password long enough",
            credit=1_000_000_000,
        )
        sender = await content.create_sender(
            session,
            user_id=user.id,
            values={"local_part": "news", "display_name": "Example Shop", "reply_to": "help@bench.example"},
        )
        template = await content.create_template(
            session, user_id=user.id, values={"name": "spring", "subject": TEMPLATE_SUBJECT, "html": TEMPLATE_HTML}
        )
        service_ids = []
        for i in range(services_):
            svc = await services.create_service(
                session,
                vault,
                values={
                    "name": f"sink-{chr(97 + i)}",
                    "provider": "smtp",
                    "domain": f"mail-{chr(97 + i)}.bench.example",
                    "options": {"host": "127.0.0.1", "port": sink_port, "security": "none"},
                    "sending_interval_seconds": 0,
                    "max_concurrency": max_concurrency,
                    "batch_size": 1,
                    "daily_quota": 1_000_000_000,
                },
                credentials={},
                fake_allowed=False,
            )
            await services.map_user(session, user_id=user.id, service_id=svc.id)
            service_ids.append(svc.id)
        world = World(user.id, sender.id, template.id, service_ids, contacts=contacts)
    async with unit_of_work(sessionmaker) as session:
        await insert_contacts(session, user_id=world.user_id, count=contacts)
        for name, first_n in tags.items():
            world.tag_ids[name] = await tag_first(session, user_id=world.user_id, name=name, first_n=first_n)
    async with sessionmaker() as session:
        await session.execute(text("ANALYZE contacts"))
        await session.execute(text("ANALYZE contact_tags"))
        await session.commit()
    return world


async def fake_services(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    world: World,
    *,
    count: int = 2,
    latency_ms: float = 50.0,
    batch_size: int = 500,
    max_concurrency: int = 10,
) -> list[int]:
    """`count` services of the simulated batch ESP (`provider = "fake"`: one call per batch, `latency_ms` per
    call), mapped to the world's user. Workers allow it outside production (the bench runs them in
    development)."""
    vault = Vault.from_settings(settings)
    ids = []
    async with unit_of_work(sessionmaker) as session:
        for i in range(count):
            svc = await services.create_service(
                session,
                vault,
                values={
                    "name": f"batch-esp-{chr(97 + i)}",
                    "provider": "fake",
                    "domain": f"esp-{chr(97 + i)}.bench.example",
                    "options": {"latency_ms": latency_ms},
                    "sending_interval_seconds": 0,
                    "max_concurrency": max_concurrency,
                    "batch_size": batch_size,
                    "daily_quota": 1_000_000_000,
                },
                credentials={},
                fake_allowed=True,
            )
            await services.map_user(session, user_id=world.user_id, service_id=svc.id)
            ids.append(svc.id)
    return ids


async def insert_contacts(session: AsyncSession, *, user_id: int, count: int) -> None:
    names = "ARRAY[" + ",".join(f"'{n}'" for n in FIRST_NAMES) + "]"
    await session.execute(
        text(f"""
        INSERT INTO contacts (user_id, email, email_normalized, email_domain, first_name, name, status,
                              custom_attributes, soft_bounce_streak, source, created_at, updated_at)
        SELECT :user_id, e, e, d, fn, fn || ' Person' || i, 'active', jsonb_build_object('n', i), 0, 'bench',
               :now, :now
        FROM (SELECT i, 'person' || i || '@' || d AS e, d, ({names})[1 + i % {len(FIRST_NAMES)}] AS fn
              FROM (SELECT i, 'rcpt' || (i % 50) || '.bench.example' AS d
                    FROM generate_series(1, :count) AS i) s) t
    """),
        {"user_id": user_id, "count": count, "now": utc_now()},
    )
    # The keys the template editor offers, as edm.contacts.attribute_keys records them on every contact write.
    await session.execute(
        text("INSERT INTO contact_attribute_keys (user_id, key) VALUES (:user_id, 'n') ON CONFLICT DO NOTHING"),
        {"user_id": user_id},
    )


async def tag_first(session: AsyncSession, *, user_id: int, name: str, first_n: int) -> int:
    """A tag on the user's first `first_n` contacts (by id)."""
    row = Tag(user_id=user_id, name=name)
    session.add(row)
    await session.flush()
    await session.execute(
        text("""
        INSERT INTO contact_tags (contact_id, tag_id, created_at)
        SELECT id, :tag, :now FROM contacts WHERE user_id = :user_id ORDER BY id LIMIT :n
    """),
        {"tag": row.id, "now": utc_now(), "user_id": user_id, "n": first_n},
    )
    return row.id


async def create_task(
    sessionmaker: async_sessionmaker[AsyncSession],
    world: World,
    *,
    name: str,
    tag: str | None = None,
    tracking: bool = True,
    service_ids: list[int] | None = None,
) -> tuple[int, float]:
    """Create and schedule (now) a task to a tag's contacts, or to all contacts. Returns (id, seconds spent
    scheduling: the estimate and test render run there). `tracking` is open and click tracking (the default
    of a task, on)."""
    rule: dict[str, Any] = (
        {"type": "tag_based", "include_tag_ids": [world.tag_ids[tag]], "exclude_tag_ids": []}
        if tag
        else {"type": "all_contacts", "exclude_tag_ids": []}
    )
    async with unit_of_work(sessionmaker) as session:
        task = await tasks.create_task(
            session,
            user_id=world.user_id,
            actor="bench",
            values={
                "name": name,
                "sender_id": world.sender_id,
                "recipient_rule": rule,
                "templates": [{"template_id": world.template_id, "weight": 1}],
                "track_opens": tracking,
                "track_clicks": tracking,
                "allowed_service_ids": service_ids,
            },
        )
        started = time.perf_counter()
        await tasks.schedule(session, task, at=None, actor="bench")
        return task.id, time.perf_counter() - started


async def generate(sessionmaker: async_sessionmaker[AsyncSession], task_id: int) -> tuple[float, int]:
    """Generate a scheduled task with the worker's own code path (one transaction, committed).
    Returns (seconds including the commit, sendable recipients)."""
    started = time.perf_counter()
    async with unit_of_work(sessionmaker) as session:
        result = await generation.generate(session, task_id, now=utc_now() + dt.timedelta(seconds=1))
    elapsed = time.perf_counter() - started
    if result is None:
        raise RuntimeError(f"task {task_id} was not generated (not due, or taken by a worker)")
    return elapsed, result.sendable


async def pause(sessionmaker: async_sessionmaker[AsyncSession], task_id: int) -> None:
    async with unit_of_work(sessionmaker) as session:
        task = await tasks.get_task(session, task_id, user_id=None)
        if task.status in ("queued", "sending"):
            await tasks.pause(session, task, actor="bench", detail="benchmark window over")


async def task_row(sessionmaker: async_sessionmaker[AsyncSession], task_id: int) -> Task:
    async with sessionmaker() as session:
        task = await session.scalar(select(Task).where(Task.id == task_id))
        assert task is not None
        return task
