"""SmtpAdapter with PIPELINING (RFC 2920) against aiosmtpd on loopback (SmtpSink): MAIL, RCPT and DATA go in one
write when the server offers it, every refused command still maps to its own outcome, and a server that does not
offer it gets the commands one by one."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtplib.email import quote_address

from edm.devtools.smtp_sink import SmtpSink
from edm.providers.base import OutboundMessage, Outcome, ServiceConfig
from edm.providers.smtp import SmtpAdapter, _PipeliningProtocol, _quoted

BODY = (
    b"From: news@example.com\r\nTo: reader@example.org\r\nSubject: Hi\r\nX-EDM-SubTask-Id: st_%d\r\n\r\n"
    b".dot line\r\nbye\r\n"
)


def config(port: int, **options: Any) -> ServiceConfig:
    return ServiceConfig(
        service_id=1,
        provider="smtp",
        domain="example.com",
        credentials={},
        options={"host": "127.0.0.1", "port": port, "security": "none", "helo_name": "edm.test", **options},
        max_concurrency=2,
        request_timeout_seconds=2.0,
    )


def message(i: int, to: str = "reader@example.org") -> OutboundMessage:
    return OutboundMessage(
        key=f"st_{i}",
        envelope_from="news@example.com",
        from_address="news@example.com",
        from_name="News",
        to_address=to,
        to_name="",
        subject="Hi",
        html="",
        text="",
        mime=BODY % i,
    )


@pytest.fixture(params=[False, True], ids=["replies-one-by-one", "replies-batched"])
def sink(request: pytest.FixtureRequest) -> Iterator[SmtpSink]:
    """Both ways a server answers a pipelined group: each reply in its own write (aiosmtpd), or all of them in
    one write once the group is read (Postfix)."""
    with SmtpSink(batch_replies=request.param) as running:
        yield running


async def send(adapter: SmtpAdapter, msg: OutboundMessage) -> Any:
    [result] = await adapter.send([msg])
    return result


async def test_mail_rcpt_and_data_go_in_one_write_when_the_server_offers_pipelining(sink: SmtpSink) -> None:
    adapter = SmtpAdapter(config(sink.port))
    results = [await send(adapter, message(i)) for i in range(5)]
    await adapter.aclose()
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 5
    assert sink.pipelined_mails == 5  # each MAIL arrived with its RCPT and DATA
    assert sink.connections_opened == 1
    assert [m.data for m in sink.messages] == [BODY % i for i in range(5)]  # dot-stuffing undone, CRLF kept
    assert {m.rcpt_tos for m in sink.messages} == {("reader@example.org",)}


async def test_a_server_without_pipelining_gets_one_command_at_a_time() -> None:
    with SmtpSink(pipelining=False) as sink:
        adapter = SmtpAdapter(config(sink.port))
        results = [await send(adapter, message(i)) for i in range(3)]
        sink.reject_addresses["nobody@example.org"] = (550, "5.1.1 User unknown")
        rejected = await send(adapter, message(9, to="nobody@example.org"))
        await adapter.aclose()
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 3
    assert rejected.outcome is Outcome.PERMANENT and rejected.recipient_rejected and rejected.status == 550
    assert sink.pipelined_mails == 0
    assert [m.data for m in sink.messages] == [BODY % i for i in range(3)]


async def test_a_rejected_rcpt_in_a_pipelined_transaction_is_the_recipients_and_keeps_the_session(
    sink: SmtpSink,
) -> None:
    sink.reject_addresses["nobody@example.org"] = (550, "5.1.1 <nobody@example.org>: User unknown")
    adapter = SmtpAdapter(config(sink.port))
    rejected = await send(adapter, message(1, to="nobody@example.org"))
    accepted = await send(adapter, message(2))  # RSET goes ahead of its MAIL, in the same write
    await adapter.aclose()
    # The server answered DATA with 503 (no valid recipients): the RCPT reply decides, not that one.
    assert rejected.outcome is Outcome.PERMANENT and rejected.recipient_rejected
    assert rejected.status == 550 and rejected.provider_code == "5.1.1" and "User unknown" in rejected.message
    assert accepted.outcome is Outcome.ACCEPTED
    assert [m.subtask_id for m in sink.messages] == ["st_2"]
    assert sink.connections_opened == 1 and sink.pipelined_mails == 2


async def test_greylisting_at_rcpt_in_a_pipelined_transaction_is_recipient_level_transient(sink: SmtpSink) -> None:
    sink.rcpt_reply = (450, "4.2.0 Greylisted, try again later")
    adapter = SmtpAdapter(config(sink.port))
    result = await send(adapter, message(1))
    sink.rcpt_reply = None
    after = await send(adapter, message(2))
    await adapter.aclose()
    assert result.outcome is Outcome.TRANSIENT and result.recipient_level and result.status == 450
    assert after.outcome is Outcome.ACCEPTED and sink.connections_opened == 1


async def test_a_refused_mail_decides_even_though_rcpt_and_data_are_refused_after_it(sink: SmtpSink) -> None:
    sink.mail_reply = (553, "5.7.1 Sender address not owned by user")
    adapter = SmtpAdapter(config(sink.port))
    result = await send(adapter, message(1))
    sink.mail_reply = None
    after = await send(adapter, message(2))
    await adapter.aclose()
    # RCPT and DATA got "503 need MAIL"; the MAIL phase's 553 5.7.1 is a configuration problem of the service.
    assert result.outcome is Outcome.AUTH_CONFIG and result.status == 553 and not result.recipient_level
    assert after.outcome is Outcome.ACCEPTED and sink.connections_opened == 1
    assert [m.subtask_id for m in sink.messages] == ["st_2"]


async def test_421_at_mail_in_a_pipelined_transaction_is_throttled_and_the_next_send_redials(sink: SmtpSink) -> None:
    sink.mail_reply = (421, "4.7.0 Too many messages, slow down")
    adapter = SmtpAdapter(config(sink.port))
    result = await send(adapter, message(1))
    sink.mail_reply = None
    after = await send(adapter, message(2))
    await adapter.aclose()
    assert result.outcome is Outcome.THROTTLED and result.status == 421
    assert after.outcome is Outcome.ACCEPTED and adapter.connections_opened == 2


async def test_a_refused_body_after_a_pipelined_354_is_permanent_and_keeps_the_session(sink: SmtpSink) -> None:
    sink.data_reply = (554, "5.7.1 Message rejected as spam")
    adapter = SmtpAdapter(config(sink.port))
    result = await send(adapter, message(1))
    sink.data_reply = None
    after = await send(adapter, message(2))
    await adapter.aclose()
    assert result.outcome is Outcome.PERMANENT and result.status == 554 and not result.recipient_rejected
    assert after.outcome is Outcome.ACCEPTED and sink.connections_opened == 1


async def test_connection_lost_after_a_pipelined_body_is_maybe_sent(sink: SmtpSink) -> None:
    sink.drop_after_data = True
    adapter = SmtpAdapter(config(sink.port))
    result = await send(adapter, message(1))
    await adapter.aclose()
    assert result.outcome is Outcome.MAYBE_SENT
    assert sink.count_by_subtask() == {"st_1": 1}


async def test_a_pooled_connection_the_server_dropped_is_redialled_before_anything_is_sent(sink: SmtpSink) -> None:
    adapter = SmtpAdapter(config(sink.port))
    assert (await send(adapter, message(1))).outcome is Outcome.ACCEPTED
    sink.disconnect_all()
    assert (await send(adapter, message(2))).outcome is Outcome.ACCEPTED
    await adapter.aclose()
    assert adapter.connections_opened == 2
    assert sink.count_by_subtask() == {"st_1": 1, "st_2": 1}


async def test_dsn_options_ride_on_the_pipelined_commands() -> None:
    with SmtpSink() as sink:
        adapter = SmtpAdapter(config(sink.port, request_dsn=True))
        result = await send(adapter, message(1))
        await adapter.aclose()
    # aiosmtpd offers no DSN extension: no options are sent, and the mail goes through pipelined.
    assert result.outcome is Outcome.ACCEPTED and sink.pipelined_mails == 1


@pytest.mark.parametrize(
    "address",
    [
        "reader@example.org",
        "b+st_1.x@bounce.example.com",
        "o'brien!x#y$z%&*/=?^_`{|}~-@example.org",
        "a..b@example.org",  # not a dot-atom: aiosmtplib's parsing decides, as before
        ".lead@example.org",
        "x@[192.0.2.1]",
        "plain",
    ],
)
def test_addresses_are_quoted_as_aiosmtplib_quotes_them(address: str) -> None:
    assert _quoted(address, "ascii") == quote_address(address).encode("ascii")


async def test_replies_arriving_before_they_are_read_are_kept_for_the_next_reads() -> None:
    """The stock protocol drops data that arrives while a parsed reply waits to be picked up; the replies of a
    pipelined group must all be read, however the network splits them."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    protocol = _PipeliningProtocol(loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, sock=ours)
    try:
        protocol._response_pending = False  # no greeting in this exchange
        protocol.expect(3)
        first = asyncio.ensure_future(protocol.read_response(timeout=1.0))
        await asyncio.sleep(0)  # the read is waiting
        protocol.data_received(b"250 2.1.0 Sender ok\r\n")
        protocol.data_received(b"550 5.1.1 User unknown\r\n503 5.5.1")  # before the first reply is picked up
        protocol.data_received(b" No valid recipients\r\n")
        replies = [await first, await protocol.read_response(timeout=1.0), await protocol.read_response(timeout=1.0)]
    finally:
        transport.close()
        theirs.close()
    assert [(r.code, r.message) for r in replies] == [
        (250, "2.1.0 Sender ok"),
        (550, "5.1.1 User unknown"),
        (503, "5.5.1 No valid recipients"),
    ]
    assert protocol.pending == 0
