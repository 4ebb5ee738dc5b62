"""The open pixel's GIF leaves before its hit is committed (EDM_TRACKING_ANSWER_BEFORE_COMMIT, the default;
docs/tracking.md#capacity), and the request still ends only once the hit is committed, so a graceful stop loses
nothing. With the setting off, or while too many hits wait for their commit, the GIF waits for its hit.

The commit is held back by a lock on `events` that blocks every INSERT (PostgreSQL), so what left before the
commit is seen for certain."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import MutableMapping
from typing import Any

import pytest
from sqlalchemy import func, select, text

from edm import clock
from edm.api import tracking as tracking_api
from edm.api.tracking import PIXEL
from edm.app import create_app
from edm.models.events import Event
from edm.security.tokens import sign_token
from tests.integration.events.conftest import EventKit

HTML = '<html><body><a href="https://shop.example.com/one">1</a></body></html>'


@pytest.mark.parametrize(
    ("answer_first", "limit", "gif_before_commit"),
    [(True, tracking_api.ANSWER_FIRST, True), (False, tracking_api.ANSWER_FIRST, False), (True, 0, False)],
    ids=["answer-first", "setting-off", "backlog-full"],
)
async def test_the_gif_leaves_before_the_commit_only_when_allowed(
    ekit: EventKit, monkeypatch: pytest.MonkeyPatch, answer_first: bool, limit: int, gif_before_commit: bool
) -> None:
    if ekit.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: a table lock holds the commit back")
    monkeypatch.setattr(tracking_api, "ANSWER_FIRST", limit)  # "backlog-full": every hit counts as one too many
    _, subtasks = await ekit.send_task(1, html=HTML)
    clock.shift(dt.timedelta(minutes=5))
    settings = ekit.dkit.settings.model_copy(update={"tracking_answer_before_commit": answer_first})
    app = create_app(settings, engine=ekit.engine)
    token = sign_token("open", subtasks[0].public_id, key=settings.signing_key)
    sent: list[MutableMapping[str, Any]] = []
    body_sent = asyncio.Event()

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            body_sent.set()

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/t/o/{token}.gif",
        "raw_path": f"/t/o/{token}.gif".encode(),
        "query_string": b"",
        "headers": [(b"host", b"edm.test"), (b"user-agent", b"Mozilla/5.0")],
        "client": ("198.51.100.7", 40000),
        "server": ("edm.test", 80),
        "root_path": "",
        "state": {},
    }
    async with app.router.lifespan_context(app):
        async with ekit.engine.connect() as blocker:
            await blocker.execute(text("BEGIN"))
            await blocker.execute(text("LOCK TABLE events IN SHARE MODE"))  # every INSERT waits
            request = asyncio.create_task(app(scope, receive, send))
            answered = await _within(body_sent.wait(), 2.0)
            assert answered == gif_before_commit
            assert not request.done(), "the request ends only once its hit is committed"
            await blocker.execute(text("COMMIT"))
        await asyncio.wait_for(request, 10)
    assert body_sent.is_set() and b"".join(m.get("body", b"") for m in sent if "body" in m) == PIXEL
    async with ekit.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Event)) == 1


async def _within(awaitable: Any, seconds: float) -> bool:
    try:
        await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        return False
    return True
