"""`edm doctor` (docs/operations.md#edm-doctor) against real parts: an SMTP server that requires AUTH (aiosmtpd), a
DNS server on loopback that answers the sending domain's TXT records, and the `workers` table a running worker
beats in. A good setup exits 0; a stopped worker, a wrong SMTP password and a missing webhook secret each exit 1
with the line that says what to fix; DNS that does not answer is `not checked`, not a failure."""

from __future__ import annotations

import datetime as dt
import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm import clock
from edm.db.session import unit_of_work
from edm.devtools.smtp_sink import SmtpSink
from edm.system import workers
from tests import factories
from tests.helpers import run_cli_async, settings_for

SMTP_USER, SMTP_PASSWORD = "mailer", "sm7p-Pa55word-for-doctor"
DOMAIN = "relay.example.com"  # factories.service names the domain after the service


class _Answers(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        texts = self.server.records.get(name)  # type: ignore[attr-defined]
        if texts is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.TXT and texts:  # a name without TXT records: an empty answer
            response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "TXT", *[f'"{t}"' for t in texts]))
        sock.sendto(response.to_wire(), self.client_address)


@contextmanager
def dns_server(records: dict[str, list[str]]) -> Iterator[int]:
    """A nameserver on 127.0.0.1 answering TXT queries from `records`; yields its port."""
    server = socketserver.ThreadingUDPServer(("127.0.0.1", 0), _Answers)
    server.records = records  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


GOOD_RECORDS = {
    DOMAIN: ["v=spf1 ip4:192.0.2.0/24 -all"],
    f"_dmarc.{DOMAIN}": ["v=DMARC1; p=quarantine"],
    f"edm._domainkey.{DOMAIN}": ["v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC"],
}


def _closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _setup(
    db_url: str,
    sessionmaker: async_sessionmaker[AsyncSession],
    sink: SmtpSink,
    *,
    password: str = SMTP_PASSWORD,
    worker_beat: bool = True,
    extra_services: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> None:
    settings = settings_for(db_url)
    async with unit_of_work(sessionmaker) as session:
        await factories.service(
            session,
            settings,
            "relay",
            provider="smtp",
            options={"host": "127.0.0.1", "port": sink.port, "security": "none", "dkim_selector": "edm"},
            credentials={"username": SMTP_USER, "password": password},
        )
        for spec in extra_services:
            await factories.service(session, settings, **spec)
        if worker_beat:
            await workers.register(
                session, worker_id="w1", hostname="host-a", pid=4242, version="test", now=clock.utc_now()
            )


async def _doctor(db_url: str, *args: str) -> tuple[int, dict[str, Any], str]:
    done = await run_cli_async(db_url, "doctor", "--json", "--dns-timeout", "0.5", *args)
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout), done.stdout + done.stderr


def _status(report: dict[str, Any], area: str, name: str) -> tuple[str, str]:
    found = [c for c in report["checks"] if c["area"] == area and c["name"] == name]
    assert len(found) == 1, (area, name, report["checks"])
    return found[0]["status"], found[0]["detail"]


async def test_a_good_setup_passes_with_every_check_made(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    with SmtpSink(require_auth=(SMTP_USER, SMTP_PASSWORD)) as sink, dns_server(GOOD_RECORDS) as port:
        await _setup(db_url, sessionmaker, sink)
        code, report, output = await _doctor(db_url, "--dns-server", f"127.0.0.1:{port}")
        assert sink.authenticated_users == [SMTP_USER] and sink.messages == []  # logged in, sent nothing
    assert code == 0 and report["ok"] is True, report
    assert _status(report, "database", "schema")[0] == "ok"
    assert _status(report, "workers", "heartbeat") == ("ok", "1 live (host-a:4242)")
    assert _status(report, "service relay", "login")[0] == "ok"
    assert _status(report, "service relay", "webhook secret")[0] == "ok"  # optional for SMTP
    for record in ("SPF", "DKIM", "DMARC"):
        assert _status(report, f"dns {DOMAIN}", record)[0] == "ok", record
    assert SMTP_PASSWORD not in output

    table = await run_cli_async(db_url, "doctor", "--offline")
    assert table.returncode == 0 and "edm doctor" in table.stdout and "0 to fix" in table.stdout


async def test_a_stopped_worker_and_a_wrong_password_are_named_with_what_to_do(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    with SmtpSink(require_auth=(SMTP_USER, SMTP_PASSWORD)) as sink, dns_server(GOOD_RECORDS) as port:
        await _setup(db_url, sessionmaker, sink, password="not-the-password-123", worker_beat=False)
        async with unit_of_work(sessionmaker) as session:
            await workers.register(
                session, worker_id="gone", hostname="host-b", pid=1, version="t", now=clock.utc_now()
            )
        clock.shift(dt.timedelta(minutes=5))  # its last beat is now five minutes old
        code, report, output = await _doctor(db_url, "--dns-server", f"127.0.0.1:{port}")
        assert sink.messages == []
    assert code == 1 and report["ok"] is False
    status, detail = _status(report, "workers", "heartbeat")
    assert status == "fix" and "edm worker" in detail
    status, detail = _status(report, "service relay", "login")
    assert status == "fix" and "535" in detail and "auth_config" in detail
    assert "not-the-password-123" not in output and SMTP_PASSWORD not in output


@pytest.mark.any_database  # what it checks does not depend on the database
async def test_a_missing_webhook_secret_is_named_offline(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    with SmtpSink(require_auth=(SMTP_USER, SMTP_PASSWORD)) as sink:
        await _setup(
            db_url,
            sessionmaker,
            sink,
            extra_services=[{"name": "grid", "provider": "sendgrid", "credentials": {"api_key": "SG.key-for-doctor"}}],
        )
        code, report, output = await _doctor(db_url, "--offline")
    assert code == 1
    status, detail = _status(report, "service grid", "webhook secret")
    assert status == "fix" and "edm service secrets grid add" in detail
    assert _status(report, "service grid", "login") == ("not checked", "offline")
    assert _status(report, "dns grid.example.com", "SPF") == ("not checked", "offline")
    assert "SG.key-for-doctor" not in output


@pytest.mark.any_database  # what it checks does not depend on the database
async def test_dns_that_does_not_answer_is_not_checked_and_fails_nothing(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    with SmtpSink(require_auth=(SMTP_USER, SMTP_PASSWORD)) as sink:
        await _setup(db_url, sessionmaker, sink)
        code, report, _ = await _doctor(db_url, "--dns-server", f"127.0.0.1:{_closed_udp_port()}")
    assert code == 0, report
    for record in ("SPF", "DKIM", "DMARC"):
        status, detail = _status(report, f"dns {DOMAIN}", record)
        assert status == "not checked" and "DNS unreachable" in detail


@pytest.mark.any_database  # what it checks does not depend on the database
async def test_missing_dns_records_say_what_to_publish(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    records = {DOMAIN: ["v=spf1 -all", "v=spf1 include:_spf.example.net -all"], f"_dmarc.{DOMAIN}": []}
    with SmtpSink(require_auth=(SMTP_USER, SMTP_PASSWORD)) as sink, dns_server(records) as port:
        await _setup(db_url, sessionmaker, sink)
        code, report, _ = await _doctor(db_url, "--dns-server", f"127.0.0.1:{port}")
    assert code == 1, report
    assert _status(report, f"dns {DOMAIN}", "SPF")[0] == "fix"  # two SPF records
    status, detail = _status(report, f"dns {DOMAIN}", "DKIM")
    assert status == "fix" and f"edm._domainkey.{DOMAIN}" in detail  # the selector the service names
    status, detail = _status(report, f"dns {DOMAIN}", "DMARC")
    assert status == "fix" and f"_dmarc.{DOMAIN}" in detail


@pytest.mark.any_database
async def test_bad_usage_exits_2(db_url: str) -> None:
    done = await run_cli_async(db_url, "doctor", "--dns-server", "127.0.0.1:port")
    assert done.returncode == 2 and "port" in done.stderr
