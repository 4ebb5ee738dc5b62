"""DSN (RFC 3464) / ARF (RFC 5965) / free-text bounce parsing, VERP, and the SMTP adapter's VERP + DSN envelope."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import textwrap
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from typing import Any

import pytest

from edm.devtools.smtp_sink import SmtpSink
from edm.providers.base import OutboundMessage, Outcome, ServiceConfig
from edm.providers.dsn import DsnWebhook, classify, key_from_verp, parse_report, verp_address
from edm.providers.smtp import SmtpAdapter
from edm.providers.webhook import MalformedPayload
from edm.vocabulary.events import BounceClass, EventType, NormalizedEvent
from tests.unit.providers.support import config, context, outbound, sample_bytes, target, webhook_request

KEY = "5f0c8d2e-1b7a-4c3e-9d41-0a2b3c4d5e6f"
OTHER_KEY = "11111111-2222-4333-8444-555555555555"
UTC = dt.UTC


def events(raw: bytes | str, envelope_to: str | None = None) -> list[NormalizedEvent]:
    data = raw.encode() if isinstance(raw, str) else raw
    items = parse_report(data, envelope_to=envelope_to).items
    assert all(isinstance(item, NormalizedEvent) for item in items)
    return [item for item in items if isinstance(item, NormalizedEvent)]


def one(raw: bytes | str, envelope_to: str | None = None) -> NormalizedEvent:
    [event] = events(raw, envelope_to)
    return event


def dsn(
    *recipient_blocks: str,
    to: str = "bounces@bounce.example.com",
    per_message: str = "",
    returned: str = "",
    date: str = "Tue, 07 Jul 2026 10:02:11 +0000",
    message_id: str = "<dsn-1@mx.example.net>",
    status_encoding: str = "",
) -> str:
    """A multipart/report delivery-status message built from its blocks."""
    per_message = per_message or "Reporting-MTA: dns; mx.example.net\nArrival-Date: Tue, 07 Jul 2026 10:00:00 +0000"
    status_body = (
        "\n\n".join([textwrap.dedent(per_message).strip(), *(textwrap.dedent(b).strip() for b in recipient_blocks)])
        + "\n"
    )
    cte = ""
    if status_encoding == "base64":
        status_body = base64.encodebytes(status_body.encode()).decode()
        cte = "Content-Transfer-Encoding: base64\n"
    returned_part = (
        f"--B\nContent-Type: text/rfc822-headers\n\n{textwrap.dedent(returned).strip()}\n\n" if returned else ""
    )
    return (
        f"From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\nTo: {to}\nSubject: Delivery Status\n"
        f"Date: {date}\nMessage-ID: {message_id}\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        "--B\nContent-Type: text/plain\n\nSee the report.\n\n"
        f"--B\nContent-Type: message/delivery-status\n{cte}\n{status_body}\n"
        f"{returned_part}--B--\n"
    )


def failed(address: str, status: str, diagnostic: str | None = None) -> str:
    diagnostic = diagnostic or f"smtp; 550 {status} mailbox problem"
    return f"Final-Recipient: rfc822; {address}\nAction: failed\nStatus: {status}\nDiagnostic-Code: {diagnostic}"


# -- the provider samples ------------------------------------------------------------------------------------


def test_sample_hard_bounce_is_a_hard_bounce_matched_by_verp_with_codes_and_queue_id() -> None:
    event = one(sample_bytes("smtp", "dsn_hard_bounce_rfc3464.eml"))
    assert event.event_type is EventType.HARD_BOUNCED and event.provider_event == "dsn:failed"
    assert event.bounce_class is BounceClass.HARD
    assert event.subtask_id == "st_4f1c2e9a" and event.details["matched_by"] == "verp"
    assert event.recipient == "nobody@example.org"
    assert (event.smtp_code, event.enhanced_code) == (550, "5.1.1")
    assert event.reason == "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"
    assert event.occurred_at == dt.datetime(2026, 7, 7, 10, 2, 11, tzinfo=UTC)  # no Last-Attempt-Date: report Date
    assert event.provider_message_id == "4Q8xYz1abc"  # the relay's queue id, as read from "250 queued as"
    assert event.provider_event_id == "<20260707100211.ABC123@mx.example.net>#nobody@example.org"
    assert event.raw["subject"] == "Undelivered Mail Returned to Sender"
    assert event.raw["per_recipient"]["Status"] == "5.1.1"
    assert event.raw["per_message"]["Original-Envelope-Id"] == "st_4f1c2e9a"


def test_sample_delayed_dsn_is_deferred_at_its_last_attempt() -> None:
    event = one(sample_bytes("smtp", "dsn_delayed_rfc3464.eml"))
    assert event.event_type is EventType.DEFERRED and event.provider_event == "dsn:delayed"
    assert event.bounce_class is None
    assert event.subtask_id == "st_77aa0011"
    assert event.recipient == "busy@example.org"
    assert (event.smtp_code, event.enhanced_code) == (421, "4.4.1")
    assert event.occurred_at == dt.datetime(2026, 7, 7, 14, 1, 55, tzinfo=UTC)
    assert event.details["will_retry_until"] == "Sun, 12 Jul 2026 10:02:09 +0000"
    assert event.provider_event_id is None  # the sample has no Message-ID: the pipeline hashes instead


def test_sample_arf_abuse_report_is_a_complaint_matched_by_original_mail_from() -> None:
    event = one(sample_bytes("smtp", "arf_complaint_rfc5965.eml"))
    assert event.event_type is EventType.COMPLAINED and event.provider_event == "arf:abuse"
    assert event.subtask_id == "st_4f1c2e9a"
    assert event.details["matched_by"] == "verp" and event.details["match_source"] == "Original-Mail-From"
    assert event.recipient == "reader@example.org"
    assert event.occurred_at == dt.datetime(2026, 7, 8, 8, 0, tzinfo=UTC)  # when the report was written
    assert event.details["source_ip"] == "192.0.2.10"
    assert event.raw["feedback_report"]["Feedback-Type"] == "abuse"


# -- delivery status: classification -------------------------------------------------------------------------


def test_dsn_with_two_recipients_gives_one_event_per_recipient() -> None:
    raw = dsn(
        failed("gone@example.org", "5.1.1"),
        failed("full@example.org", "5.2.2"),
        to=verp_address(KEY, "bounce.example.com"),
    )
    first, second = events(raw)
    assert (first.recipient, first.event_type, first.bounce_class) == (
        "gone@example.org",
        EventType.HARD_BOUNCED,
        BounceClass.HARD,
    )
    assert (second.recipient, second.event_type, second.bounce_class) == (
        "full@example.org",
        EventType.SOFT_BOUNCED,
        BounceClass.SOFT,
    )
    assert first.subtask_id == second.subtask_id == KEY
    assert first.provider_event_id != second.provider_event_id


def test_mailbox_full_5_2_2_is_a_soft_bounce() -> None:
    event = one(dsn(failed("full@example.org", "5.2.2", "smtp; 552 5.2.2 Mailbox full")))
    assert event.event_type is EventType.SOFT_BOUNCED and event.bounce_class is BounceClass.SOFT
    assert (event.smtp_code, event.enhanced_code) == (552, "5.2.2")


def test_policy_block_5_7_1_is_a_hard_bounce_of_class_block() -> None:
    event = one(dsn(failed("x@example.org", "5.7.1", "smtp; 554 5.7.1 Message rejected as spam")))
    assert event.event_type is EventType.HARD_BOUNCED and event.bounce_class is BounceClass.BLOCK


@pytest.mark.parametrize("action", ["delivered", "relayed", "expanded"])
def test_delivered_relayed_and_expanded_are_delivered(action: str) -> None:
    block = (
        f"Final-Recipient: rfc822; ok@example.org\nAction: {action}\nStatus: 2.0.0\n"
        "Diagnostic-Code: smtp; 250 2.0.0 Ok: queued"
    )
    event = one(dsn(block))
    assert event.event_type is EventType.DELIVERED and event.provider_event == f"dsn:{action}"
    assert event.bounce_class is None and event.recipient == "ok@example.org"


def test_original_recipient_is_preferred_over_the_final_alias() -> None:
    block = (
        "Original-Recipient: rfc822;alias@example.org\nFinal-Recipient: rfc822; real@forward.example\n"
        "Action: failed\nStatus: 5.1.1"
    )
    assert one(dsn(block)).recipient == "alias@example.org"


def test_last_attempt_date_is_the_event_time() -> None:
    block = failed("x@example.org", "5.1.1") + "\nLast-Attempt-Date: Tue, 07 Jul 2026 12:30:00 +0200"
    assert one(dsn(block)).occurred_at == dt.datetime(2026, 7, 7, 10, 30, tzinfo=UTC)


def test_status_missing_falls_back_to_the_diagnostic_code() -> None:
    block = "Final-Recipient: rfc822; x@example.org\nAction: failed\nDiagnostic-Code: smtp; 550 5.1.2 bad domain"
    event = one(dsn(block))
    assert event.event_type is EventType.HARD_BOUNCED and event.enhanced_code == "5.1.2"


def test_non_smtp_diagnostic_type_still_yields_the_reply_code() -> None:
    block = failed("x@example.org", "5.1.1", "X-Postfix; host mx.example.org said: 550 5.1.1 no such user")
    event = one(dsn(block))
    assert (event.smtp_code, event.enhanced_code) == (550, "5.1.1")
    assert event.reason == "host mx.example.org said: 550 5.1.1 no such user"


def test_base64_encoded_status_part_is_still_parsed() -> None:
    event = one(dsn(failed("x@example.org", "5.1.1"), status_encoding="base64"))
    assert event.event_type is EventType.HARD_BOUNCED and event.recipient == "x@example.org"


@pytest.mark.parametrize(
    ("action", "status", "expected"),
    [
        ("failed", "5.1.1", (EventType.HARD_BOUNCED, BounceClass.HARD)),
        ("failed", "5.1.10", (EventType.HARD_BOUNCED, BounceClass.HARD)),
        ("failed", "5.2.1", (EventType.HARD_BOUNCED, BounceClass.HARD)),
        ("failed", "5.2.2", (EventType.SOFT_BOUNCED, BounceClass.SOFT)),
        ("failed", "5.4.7", (EventType.SOFT_BOUNCED, BounceClass.SOFT)),
        ("failed", "4.4.1", (EventType.SOFT_BOUNCED, BounceClass.SOFT)),  # the MTA gave up retrying
        ("failed", "5.7.26", (EventType.HARD_BOUNCED, BounceClass.BLOCK)),
        ("failed", "5.6.0", (EventType.HARD_BOUNCED, BounceClass.BLOCK)),
        ("failed", None, (EventType.HARD_BOUNCED, BounceClass.UNDETERMINED)),
        ("delayed", "4.4.1", (EventType.DEFERRED, None)),
        ("delayed", None, (EventType.DEFERRED, None)),
        ("", "4.2.0", (EventType.DEFERRED, None)),
        ("", "5.1.1", (EventType.HARD_BOUNCED, BounceClass.HARD)),
        ("relayed", "2.0.0", (EventType.DELIVERED, None)),
        ("something-else", "2.0.0", (EventType.UNKNOWN, None)),
    ],
)
def test_classification_table(action: str, status: str | None, expected: tuple[EventType, BounceClass | None]) -> None:
    assert classify(action, status) == expected


# -- correlation ---------------------------------------------------------------------------------------------


RETURNED = f"""\
    From: News <news@example.com>
    To: x@example.org
    Message-ID: <{OTHER_KEY}@mail.example.com>
    X-EDM-SubTask-Id: {KEY}
"""


def test_verp_envelope_recipient_is_the_best_match() -> None:
    per_message = f"Reporting-MTA: dns; mx\nOriginal-Envelope-Id: {OTHER_KEY}"
    raw = dsn(failed("x@example.org", "5.1.1"), per_message=per_message, returned=RETURNED, to="bounces@example.com")
    event = one(raw, envelope_to=f"<{verp_address('abc-123', 'bounce.example.com')}>")
    assert event.subtask_id == "abc-123"
    assert event.details["matched_by"] == "verp" and event.details["match_source"] == "envelope_to"


def test_verp_in_delivered_to_header_matches_when_no_envelope_is_given() -> None:
    raw = f"Delivered-To: {verp_address(KEY, 'bounce.example.com')}\n" + dsn(failed("x@example.org", "5.1.1"))
    event = one(raw)
    assert event.subtask_id == KEY and event.details["match_source"] == "Delivered-To"


def test_verp_address_among_several_to_addresses_matches() -> None:
    raw = dsn(failed("x@example.org", "5.1.1"), to=f"Ops <ops@example.com>, <{verp_address(KEY, 'b.example.com')}>")
    assert one(raw).subtask_id == KEY


def test_envelope_id_matches_when_there_is_no_verp_address() -> None:
    raw = dsn(
        failed("x@example.org", "5.1.1"),
        per_message=f"Reporting-MTA: dns; mx\nOriginal-Envelope-Id: {KEY}",
        returned=RETURNED.replace(KEY, OTHER_KEY),
    )
    event = one(raw)
    assert event.subtask_id == KEY and event.details["matched_by"] == "envelope_id"


def test_envelope_id_is_xtext_decoded() -> None:
    encoded = "st+5Fx1"  # "+5F" is "_" in RFC 3461 xtext
    raw = dsn(failed("x@example.org", "5.1.1"), per_message=f"Reporting-MTA: dns; mx\nOriginal-Envelope-Id: {encoded}")
    assert one(raw).subtask_id == "st_x1"


def test_subtask_header_in_returned_headers_matches_after_verp_and_envid() -> None:
    event = one(dsn(failed("x@example.org", "5.1.1"), returned=RETURNED))
    assert event.subtask_id == KEY and event.details["matched_by"] == "subtask_header"


def test_our_message_id_in_returned_headers_matches_last() -> None:
    returned = f"From: news@example.com\nMessage-ID: <{KEY}@mail.example.com>\n"
    event = one(dsn(failed("x@example.org", "5.1.1"), returned=returned))
    assert event.subtask_id == KEY and event.details["matched_by"] == "message_id"


def test_returned_original_as_message_rfc822_is_searched_too() -> None:
    original = EmailMessage()
    original["From"] = "news@example.com"
    original["To"] = "x@example.org"
    original["X-EDM-SubTask-Id"] = KEY
    original.set_content("hello")
    raw = dsn(failed("x@example.org", "5.1.1")).replace(
        "--B--", f"--B\nContent-Type: message/rfc822\n\n{original.as_string()}\n--B--"
    )
    assert one(raw).subtask_id == KEY


def test_report_without_any_of_our_ids_is_unmatched() -> None:
    event = one(dsn(failed("x@example.org", "5.1.1")))
    assert event.subtask_id is None and event.details["matched_by"] is None


# -- feedback reports ----------------------------------------------------------------------------------------


def arf(feedback_type: str, *, rcpt: str | None = "reader@example.org", returned_to: str = "reader@example.org") -> str:
    rcpt_line = f"Original-Rcpt-To: <{rcpt}>\n" if rcpt else ""
    return (
        "From: fbl@isp.example\nTo: fbl@example.com\nSubject: report\nDate: Wed, 08 Jul 2026 08:00:00 +0000\n"
        'MIME-Version: 1.0\nContent-Type: multipart/report; report-type=feedback-report; boundary="A"\n\n'
        "--A\nContent-Type: text/plain\n\nreport\n\n"
        f"--A\nContent-Type: message/feedback-report\n\nFeedback-Type: {feedback_type}\nVersion: 1\n{rcpt_line}"
        "Arrival-Date: Tue, 07 Jul 2026 10:02:08 +0000\n\n"
        f"--A\nContent-Type: text/rfc822-headers\n\nTo: {returned_to}\nX-EDM-SubTask-Id: {KEY}\n\n--A--\n"
    )


def test_arf_fraud_is_a_complaint_and_not_spam_is_unknown() -> None:
    assert one(arf("fraud")).event_type is EventType.COMPLAINED
    not_spam = one(arf("not-spam"))
    assert not_spam.event_type is EventType.UNKNOWN and not_spam.provider_event == "arf:not-spam"
    assert not_spam.subtask_id == KEY  # still matched: the admin sees which mail it was about


def test_arf_without_original_rcpt_to_takes_the_recipient_from_the_returned_headers() -> None:
    event = one(arf("abuse", rcpt=None, returned_to="Reader <someone@example.org>"))
    assert event.recipient == "someone@example.org" and event.details["matched_by"] == "subtask_header"


# -- free-text bounces and other mail ------------------------------------------------------------------------


FREE_TEXT = f"""\
From: MAILER-DAEMON@mail.example.net
To: {verp_address(KEY, "bounce.example.com")}
Subject: failure notice
Date: Tue, 07 Jul 2026 11:00:00 +0000

Hi. This is the qmail-send program at mail.example.net.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<gone@example.org>:
198.51.100.7 does not like recipient.
Remote host said: 550 5.1.1 <gone@example.org>... User unknown
Giving up on 198.51.100.7.
"""


def test_free_text_bounce_is_parsed_by_the_regex_fallback() -> None:
    event = one(FREE_TEXT)
    assert event.event_type is EventType.HARD_BOUNCED and event.provider_event == "bounce:free-text"
    assert (event.smtp_code, event.enhanced_code) == (550, "5.1.1")
    assert event.recipient == "gone@example.org" and event.subtask_id == KEY
    assert event.occurred_at == dt.datetime(2026, 7, 7, 11, 0, tzinfo=UTC)
    assert event.raw["status_line"] == "Remote host said: 550 5.1.1 <gone@example.org>... User unknown"


def test_free_text_delay_warning_is_deferred() -> None:
    raw = FREE_TEXT.replace("failure notice", "Warning: message delayed").replace("550 5.1.1", "451 4.3.0")
    event = one(raw)
    assert event.event_type is EventType.DEFERRED and event.enhanced_code == "4.3.0"


def test_free_text_bounce_quoting_our_headers_is_matched_by_them() -> None:
    raw = FREE_TEXT.replace(verp_address(KEY, "bounce.example.com"), "news@example.com") + (
        f"\n--- Below this line is a copy of the message.\n\nFrom: news@example.com\nX-EDM-SubTask-Id: {OTHER_KEY}\n"
    )
    event = one(raw)
    assert event.subtask_id == OTHER_KEY and event.details["matched_by"] == "subtask_header"


def test_bounce_without_any_status_is_unknown_but_still_matched() -> None:
    raw = FREE_TEXT.replace("Remote host said: 550 5.1.1 <gone@example.org>... User unknown\n", "")
    event = one(raw)
    assert event.event_type is EventType.UNKNOWN and event.provider_event == "bounce:unparsed"
    assert event.subtask_id == KEY


def test_plain_mail_is_one_unknown_unmatched_event_with_a_small_raw() -> None:
    raw = (
        f"From: Reader <reader@example.org>\nTo: {verp_address(KEY, 'bounce.example.com')}\n"
        "Subject: Re: Spring campaign\nDate: Tue, 07 Jul 2026 11:00:00 +0000\n\nThanks, 550 thanks!\n"
    )
    event = one(raw)
    assert event.event_type is EventType.UNKNOWN and event.provider_event == "mail:not-a-report"
    assert event.subtask_id is None
    assert event.raw == {"subject": "Re: Spring campaign", "from": "Reader <reader@example.org>", "size": len(raw)}


def test_read_receipt_report_is_not_a_bounce() -> None:
    raw = dsn(failed("x@example.org", "5.1.1")).replace("delivery-status;", "disposition-notification;", 1)
    raw = raw.replace("MAILER-DAEMON@mx.example.net", "reader@example.org").replace("Delivery Status", "Read: hi")
    event = one(raw)
    assert event.event_type is EventType.UNKNOWN and event.provider_event == "mail:not-a-report"


def test_empty_body_is_malformed() -> None:
    with pytest.raises(MalformedPayload):
        parse_report(b"  \r\n")


# -- VERP ---------------------------------------------------------------------------------------------------


def test_verp_address_round_trips_its_key() -> None:
    address = verp_address(KEY, "Bounce.Example.COM")
    assert address == f"b+{KEY}@bounce.example.com"
    assert key_from_verp(address) == KEY
    assert key_from_verp(f"rfc822; <{address}>") == KEY


@pytest.mark.parametrize("address", ["news@example.com", "b+@bounce.example.com", "b+a b@x.example", "b+key", ""])
def test_key_from_verp_refuses_addresses_that_are_not_ours(address: str) -> None:
    assert key_from_verp(address) is None


@pytest.mark.parametrize(("key", "domain"), [("a@b", "bounce.example.com"), (KEY, "bad domain"), (KEY, "")])
def test_verp_address_refuses_keys_and_domains_that_would_break_the_address(key: str, domain: str) -> None:
    with pytest.raises(ValueError):
        verp_address(key, domain)


# -- the DSN endpoint handler --------------------------------------------------------------------------------


async def test_dsn_endpoint_accepts_only_the_inbound_token_and_parses_the_body() -> None:
    body = sample_bytes("smtp", "dsn_hard_bounce_rfc3464.eml")
    good = webhook_request(body, headers={"authorization": "Bearer inbound-token"}, content_type="message/rfc822")
    bad = webhook_request(body, headers={"authorization": "Bearer wrong"}, content_type="message/rfc822")
    handler = DsnWebhook()
    service, ctx = target("smtp", "inbound-token"), context(dt.datetime.now(UTC))
    assert await handler.verify(good, service, ctx) is True
    assert await handler.verify(bad, service, ctx) is False
    [event] = handler.parse(good).items
    assert isinstance(event, NormalizedEvent) and event.event_type is EventType.HARD_BOUNCED


# -- sending: VERP envelope sender and DSN parameters ---------------------------------------------------------


def mime_message(i: int = 1) -> OutboundMessage:
    message = outbound(i)
    mime = (
        f"From: news@mail.example.com\r\nTo: {message.to_address}\r\nSubject: hi\r\n"
        f"X-EDM-SubTask-Id: {message.key}\r\n\r\nhello\r\n"
    ).encode()
    return dataclasses.replace(message, mime=mime)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


def smtp_config(port: int, **options: Any) -> ServiceConfig:
    return config("smtp", host="127.0.0.1", port=port, security="none", helo_name="edm.test", **options)


async def test_bounce_domain_makes_the_envelope_sender_the_verp_address(sink: SmtpSink) -> None:
    adapter = SmtpAdapter(smtp_config(sink.port, bounce_domain="bounce.example.com"))
    message = mime_message()
    [result] = await adapter.send([message])
    await adapter.aclose()
    assert result.outcome is Outcome.ACCEPTED
    [got] = sink.messages
    assert got.envelope_from == f"b+{message.key}@bounce.example.com"
    assert key_from_verp(got.envelope_from) == message.key


async def test_without_bounce_domain_the_envelope_sender_is_the_message_one(sink: SmtpSink) -> None:
    adapter = SmtpAdapter(smtp_config(sink.port))
    [result] = await adapter.send([mime_message()])
    await adapter.aclose()
    assert result.outcome is Outcome.ACCEPTED and sink.messages[0].envelope_from == "news@mail.example.com"


async def test_dsn_parameters_are_not_sent_when_the_server_does_not_advertise_dsn(sink: SmtpSink) -> None:
    # aiosmtpd offers no DSN and answers 555 to unknown MAIL parameters: acceptance proves none were sent.
    adapter = SmtpAdapter(smtp_config(sink.port, request_dsn=True))
    [result] = await adapter.send([mime_message()])
    await adapter.aclose()
    assert result.outcome is Outcome.ACCEPTED


def test_invalid_bounce_domain_is_refused_when_the_adapter_is_built() -> None:
    with pytest.raises(ValueError, match="bounce domain"):
        SmtpAdapter(smtp_config(25, bounce_domain="not a domain"))


class DsnServer:
    """A minimal SMTP server that advertises DSN and records every command line (a test double of a relay)."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 dsn.test ESMTP\r\n")
        while line := await reader.readline():
            command = line.decode().rstrip("\r\n")
            self.commands.append(command)
            verb = command.split(" ", 1)[0].upper()
            if verb == "EHLO":
                writer.write(b"250-dsn.test\r\n250-8BITMIME\r\n250 DSN\r\n")
            elif verb == "DATA":
                writer.write(b"354 go ahead\r\n")
                while (await reader.readline()) != b".\r\n":
                    pass
                writer.write(b"250 2.0.0 Ok: queued as Q1\r\n")
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()


@pytest.fixture
async def dsn_server() -> AsyncIterator[DsnServer]:
    server = DsnServer()
    await server.start()
    yield server
    await server.stop()


async def test_dsn_parameters_and_verp_are_sent_when_the_server_advertises_dsn(dsn_server: DsnServer) -> None:
    adapter = SmtpAdapter(smtp_config(dsn_server.port, request_dsn=True, bounce_domain="bounce.example.com"))
    message = mime_message()
    [result] = await adapter.send([message])
    await adapter.aclose()
    assert result.outcome is Outcome.ACCEPTED and result.provider_message_id == "Q1"
    mail = next(c for c in dsn_server.commands if c.upper().startswith("MAIL FROM"))
    rcpt = next(c for c in dsn_server.commands if c.upper().startswith("RCPT TO"))
    assert mail == f"MAIL FROM:<b+{message.key}@bounce.example.com> RET=HDRS ENVID={message.key}"
    assert rcpt == f"RCPT TO:<{message.to_address}> NOTIFY=FAILURE,DELAY ORCPT=rfc822;{message.to_address}"


async def test_dsn_parameters_are_off_unless_requested(dsn_server: DsnServer) -> None:
    adapter = SmtpAdapter(smtp_config(dsn_server.port))
    message = mime_message()
    [result] = await adapter.send([message])
    await adapter.aclose()
    assert result.outcome is Outcome.ACCEPTED
    assert f"MAIL FROM:<{message.envelope_from}>" in dsn_server.commands
    assert f"RCPT TO:<{message.to_address}>" in dsn_server.commands
