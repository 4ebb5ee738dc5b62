"""Fixtures for the conversation tests: a campaign really sent through the fake provider (the events kit), and the
MIME fixtures of tests/fixtures/mime filled in with that send's Message-ID and addresses."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from edm import clock
from edm.conversations import ingest
from edm.db.session import unit_of_work
from edm.models.conversations import Conversation, ConversationMessage, UnroutedInbound
from edm.models.tasks import SubTask
from edm.providers.inbound import InboundMail
from tests.helpers import drain_inbound
from tests.integration.events.conftest import EventKit, ekit  # noqa: F401  (the fixture, used through ckit)

MIME = Path(__file__).parents[2] / "fixtures" / "mime"


def fixture_text(name: str) -> str:
    return (MIME / name).read_text(encoding="utf-8")


@dataclasses.dataclass
class ConversationKit:
    ekit: EventKit
    task_id: int
    subtasks: list[SubTask]

    @property
    def sessionmaker(self) -> Any:
        return self.ekit.sessionmaker

    @property
    def user_id(self) -> int:
        return self.ekit.user_id

    def message_id(self, index: int = 0) -> str:
        subtask = self.subtasks[index]
        return (subtask.message_id or "").strip("<>") or f"{subtask.public_id}@fake-esp.example.com"

    def our_address(self, index: int = 0) -> str:
        return self.subtasks[index].from_address or "news@fake-esp.example.com"

    def their_address(self, index: int = 0) -> str:
        return self.subtasks[index].recipient_email

    def mime(self, name: str, index: int = 0, **replace: str) -> bytes:
        text = (
            fixture_text(name)
            .replace("%%MESSAGE_ID%%", self.message_id(index))
            .replace("%%OUR_ADDRESS%%", self.our_address(index))
            .replace("%%THEIR_ADDRESS%%", self.their_address(index))
        )
        for old, new in replace.items():
            text = text.replace(old, new)
        return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")

    async def post(self, url: str, **request: Any) -> httpx.Response:
        """Post to a webhook as a provider does, then let the worker's `inbound` job handle what it queued."""
        response = await self.ekit.client.post(url, **request)
        await drain_inbound(self.sessionmaker)
        return response

    async def receive(self, raw: bytes, *, source: str = "smtp", **fields: Any) -> ingest.ReceiveResult:
        async with unit_of_work(self.sessionmaker) as session:
            return await ingest.receive(session, InboundMail(raw=raw, source=source, **fields), now=clock.utc_now())

    async def subtask(self, index: int = 0) -> SubTask:
        async with self.sessionmaker() as session:
            row = await session.get(SubTask, self.subtasks[index].id, populate_existing=True)
            assert row is not None
            return row

    async def conversations(self) -> list[Conversation]:
        async with self.sessionmaker() as session:
            return list(await session.scalars(select(Conversation).order_by(Conversation.id)))

    async def messages(self) -> list[ConversationMessage]:
        async with self.sessionmaker() as session:
            return list(await session.scalars(select(ConversationMessage).order_by(ConversationMessage.id)))

    async def unrouted(self) -> list[UnroutedInbound]:
        async with self.sessionmaker() as session:
            return list(await session.scalars(select(UnroutedInbound).order_by(UnroutedInbound.id)))

    async def count(self, model: Any) -> int:
        async with self.sessionmaker() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
async def ckit(ekit: EventKit) -> AsyncIterator[ConversationKit]:  # noqa: F811
    task_id, subtasks = await ekit.send_task(2)
    yield ConversationKit(ekit, task_id, subtasks)
