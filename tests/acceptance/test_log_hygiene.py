"""Logs (docs/operations.md#logs): the acceptance scenarios, logged at DEBUG, leak nothing.

The API (in process, over ASGI) and a worker run the scenarios of a deployment's first day with every logger at
DEBUG, through EDM's own logging set-up (`configure_logging`, JSON): logins (one wrong password), API tokens (one
wrong), an SMTP service created with a password and a webhook secret, a DSN and a reply posted to the SMTP report
endpoint with that secret (once in the query, once as a bearer token, once wrong), an import of addresses, and a
campaign with a marked body sent through an SMTP server that requires AUTH. Then every line:

- is JSON with a dotted event name;
- carries the request id of the request it was written for (each API answer's `X-Request-Id` names its lines);
- contains no password, API token, session cookie, webhook secret, Authorization header, message body, and no
  recipient address except masked (`j***@example.com`).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from edm.app import create_app
from edm.cli.ops import uvicorn_options
from edm.devtools.smtp_sink import SmtpSink
from edm.models.contacts import Import
from edm.models.conversations import InboundQueueItem
from edm.models.tasks import Task
from edm.models.users import Role
from edm.observability import configure_logging
from edm.worker.dispatcher import Worker
from tests.helpers import PASSWORD, api_client, make_account, settings_for

API = "/api/v1"
SMTP_PASSWORD = "smtp-Pa55-wOrd-1c9d"
WEBHOOK_SECRET = "whsec-7f3a9c1e5b2d8f40a6"
BODY_MARKER = "BODY-MARKER-q8z7x"
RECIPIENTS = ["jane.doe@example.net", "max.mustermann@example.org", "li.wei@example.com"]
IMPORTED = ["imported.one@example.org", "imported.two@example.org"]
ROOT = Path(__file__).resolve().parents[2]
MIME = ROOT / "tests" / "fixtures" / "mime"
DOTTED = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+")
UNMASKED = re.compile(r"[\w.+-]{2,}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")


@contextmanager
def every_line_at_debug() -> Iterator[io.StringIO]:
    """EDM's logging, at DEBUG, into a buffer; the test runner's logging as it was afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buffer = io.StringIO()
    configure_logging(level="DEBUG", fmt="json")
    root.handlers[0].setStream(buffer)  # type: ignore[attr-defined]
    try:
        yield buffer
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


async def _until(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def _values(item: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(item, dict):
        for k, v in item.items():
            yield from _values(v, k)
    elif isinstance(item, list):
        for v in item:
            yield from _values(v, key)
    else:
        yield key, str(item)


@pytest.mark.any_database  # the logging does not depend on the database
async def test_a_days_scenarios_logged_at_debug_leak_no_secret_body_or_address(
    db_url: str, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    settings = settings_for(db_url, time_scale=0.05)
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    alice = await make_account(sessionmaker, "alice", credit=100)
    secrets = [PASSWORD, SMTP_PASSWORD, WEBHOOK_SECRET, admin.token, alice.token, BODY_MARKER]
    answers: list[httpx.Response] = []

    with SmtpSink(require_auth=("mailer", SMTP_PASSWORD)) as sink, every_line_at_debug() as buffer:
        async with api_client(db_url, engine, time_scale=0.05) as client:

            async def call(method: str, path: str, expect: int, **kwargs: Any) -> Any:
                r = await client.request(method, path, **kwargs)
                assert r.status_code == expect, (path, r.text)
                answers.append(r)
                return r.json() if r.headers.get("content-type", "").startswith("application/json") else r

            # Logins and tokens, good and bad.
            login = await call("POST", f"{API}/auth/login", 200, json={"username": "alice", "password": PASSWORD})
            secrets.append(client.cookies["edm_session"])
            secrets.append(login["csrf_token"])
            client.cookies.clear()
            await call("POST", f"{API}/auth/login", 401, json={"username": "alice", "password": PASSWORD + "x"})
            await call("GET", f"{API}/me", 200, headers=alice.headers)
            await call("GET", f"{API}/me", 401, headers={"Authorization": "Bearer edm_wrong_token_123456"})

            # A service with a password and a webhook secret.
            service = await call(
                "POST",
                f"{API}/admin/services",
                201,
                headers=admin.headers,
                json={
                    "name": "relay",
                    "provider": "smtp",
                    "domain": "example.com",
                    "options": {"host": "127.0.0.1", "port": sink.port, "security": "none"},
                    "credentials": {"username": "mailer", "password": SMTP_PASSWORD},
                    "sending_interval_seconds": 0,
                    "max_concurrency": 2,
                    "daily_quota": 1000,
                },
            )
            sid = service["id"]
            await call(
                "POST",
                f"{API}/admin/services/{sid}/webhook-secrets",
                201,
                headers=admin.headers,
                json={"value": WEBHOOK_SECRET},
            )
            await call(
                "POST",
                f"{API}/admin/mappings",
                201,
                headers=admin.headers,
                json={"user_ids": [alice.id], "service_ids": [sid]},
            )

            # Content, recipients, an import, a campaign.
            sender = await call("POST", f"{API}/senders", 201, headers=alice.headers, json={"local_part": "news"})
            template = await call(
                "POST",
                f"{API}/templates",
                201,
                headers=alice.headers,
                json={
                    "name": "spring",
                    "subject": "Hello {{ contact.first_name }}",
                    "html": f"<p>{BODY_MARKER} {{{{ contact.email }}}}</p><p>{{{{ unsubscribe_url }}}}</p>",
                },
            )
            contact_ids = [
                (await call("POST", f"{API}/contacts", 201, headers=alice.headers, json={"email": address}))["id"]
                for address in RECIPIENTS
            ]
            csv = ("email\n" + "\n".join(IMPORTED) + "\n").encode()
            imported = await call(
                "POST",
                f"{API}/contacts/imports",
                202,
                headers=alice.headers,
                files={"file": ("contacts.csv", csv, "text/csv")},
            )
            task = await call(
                "POST",
                f"{API}/tasks",
                201,
                headers=alice.headers,
                json={
                    "name": "spring",
                    "sender_id": sender["id"],
                    "templates": [{"template_id": template["id"]}],
                    "recipient_rule": {"type": "specific", "contact_ids": contact_ids},
                },
            )
            await call("GET", f"{API}/tasks/999999", 404, headers=alice.headers)

            worker = Worker(settings, sessionmaker, concurrency=2)
            runner = asyncio.create_task(worker.run(install_signals=False))
            try:

                async def imported_done() -> bool:
                    async with sessionmaker() as session:
                        return await session.scalar(select(Import.status).where(Import.id == imported["id"])) in (
                            "completed",
                            "failed",
                        )

                await _until(imported_done, "the import")
                await call("POST", f"{API}/tasks/{task['id']}/schedule", 200, headers=alice.headers, json={})

                async def sent() -> bool:
                    async with sessionmaker() as session:
                        return await session.scalar(select(Task.status).where(Task.id == task["id"])) == "completed"

                await _until(sent, "the campaign")
                assert len(sink.messages) == len(RECIPIENTS) and sink.authenticated_users

                # Reports to the SMTP service's endpoint, authenticated with its webhook secret.
                dsn = (MIME / "dsn.eml").read_text()
                dsn = dsn.replace("%%OUR_ADDRESS%%", "news@example.com").replace("%%THEIR_ADDRESS%%", RECIPIENTS[0])
                reply = (MIME / "thunderbird_reply.eml").read_bytes()
                endpoint = f"/webhooks/smtp/{sid}/dsn"
                await call("POST", f"{endpoint}?token={WEBHOOK_SECRET}", 200, content=dsn.encode())
                await call("POST", endpoint, 200, content=reply, headers={"Authorization": f"Bearer {WEBHOOK_SECRET}"})
                await call("POST", f"{endpoint}?token=wrong-{WEBHOOK_SECRET}", 401, content=b"x")

                async def handled() -> bool:  # the worker's `inbound` job threads what the endpoint queued
                    async with sessionmaker() as session:
                        return not await session.scalar(select(InboundQueueItem.id).limit(1))

                await _until(handled, "the inbound mail")
            finally:
                worker.request_stop()
                await runner

    lines = buffer.getvalue().splitlines()
    records = []
    for line in lines:
        record = json.loads(line)  # every line is JSON
        assert DOTTED.fullmatch(record["event"]), record
        records.append(record)
    events = {r["event"] for r in records}
    expected = {"worker.started", "import.finished", "task.generated", "webhook.inbound_queued", "webhook.rejected"}
    assert expected | {"inbound.received"} <= events

    # Request ids: every API answer's id names the lines written for it, and the access line is there.
    by_request: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if "request_id" in record:
            by_request.setdefault(record["request_id"], []).append(record)
    for answer in answers:
        request_id = answer.headers["x-request-id"]
        assert any(r["event"] == "http.request" for r in by_request.get(request_id, [])), answer.request.url
    failed_login = next(r for r in records if r["event"] == "http.request" and r.get("status") == 401)
    assert failed_login["route"].startswith("/api/v1/") or failed_login["route"].startswith("/webhooks/")
    assert any(r["event"] == "webhook.rejected" and r.get("request_id") for r in records)
    assert any(r["event"] == "http.request" and r.get("user_id") == alice.id for r in records)

    # Nothing that must never be logged.
    text = "\n".join(lines)
    for secret in secrets:
        assert secret not in text, f"a secret was logged: {secret[:6]}…"
    assert "authorization" not in text.lower().replace('"authorization": "[redacted]"', "")
    for record in records:
        for key, value in _values(record):
            if "message_id" in key:
                continue
            found = UNMASKED.search(value)
            assert found is None, f"unmasked address in {record['event']}.{key}: {found.group(0) if found else ''}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.any_database
async def test_uvicorn_as_edm_serve_runs_it_writes_json_lines_without_the_tokens_in_urls(db_url: str) -> None:
    """uvicorn with `edm serve`'s options: its own lines go through EDM's JSON logging, and no access line repeats a
    request's path or query (an unsubscribe link's token, a webhook token in `?token=`)."""
    settings = settings_for(db_url)
    port = _free_port()
    unsubscribe_token = "u1nsub5cribe-t0ken-abcdefghijklmnop"
    # `edm serve` starts uvicorn in a fresh process. In this test process another test may have run uvicorn with its
    # default logging config, which gives the `uvicorn` loggers handlers of their own and stops their propagation.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    with every_line_at_debug() as buffer:
        options = uvicorn_options(settings, host="127.0.0.1", port=port)
        server = uvicorn.Server(uvicorn.Config(create_app(settings), **options))
        serving = asyncio.create_task(server.serve())
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                await _until(lambda: _answers(client), "uvicorn to listen", timeout=10)
                await client.get(f"/u/{unsubscribe_token}")
                await client.post(f"/webhooks/smtp/1/dsn?token={WEBHOOK_SECRET}", content=b"x")
                answer = await client.get(f"{API}/me", headers={"Authorization": f"Bearer {SMTP_PASSWORD}"})
                assert answer.status_code == 401
        finally:
            server.should_exit = True
            await serving
    err = buffer.getvalue()
    records = [json.loads(line) for line in err.splitlines()]  # every line is JSON, uvicorn's included
    assert all(DOTTED.fullmatch(r["event"]) for r in records), err
    assert any(r["event"] == "uvicorn.error" for r in records), err  # "Started server process", as JSON
    assert any(r["event"] == "http.request" and r["request_id"] == answer.headers["x-request-id"] for r in records)
    for secret in (unsubscribe_token, WEBHOOK_SECRET, SMTP_PASSWORD):
        assert secret not in err


async def _answers(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/healthz")).status_code == 200
    except httpx.TransportError:
        return False
