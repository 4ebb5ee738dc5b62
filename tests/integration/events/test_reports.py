"""SMTP bounce and complaint reports end to end (docs/events.md#smtp-bounce-and-complaint-reports): a task really sent
through the fake provider, then an RFC 3464 DSN / RFC 5965 ARF report about one of its SubTasks posted raw to the DSN
endpoint of an SMTP service (or fetched by the mailbox poller from a real POP3 server on loopback), stored once, and
applied by the `events` job's code. Outside production a SubTask sent through `fake` matches reports of any SMTP
service."""

from __future__ import annotations

from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

import pytest
from sqlalchemy import func, select

from edm.events import bounce_reports as reports
from edm.models.contacts import Contact
from edm.models.conversations import MailBlob, UnroutedInbound
from edm.models.events import Event, MatchReason, MatchStatus
from edm.models.tasks import SubTask
from tests import factories
from tests.helpers import drain_inbound
from tests.integration.events.conftest import EventKit
from tests.integration.test_mailbox_poller import Mailbox, Pop3Handler, crlf, serving

TOKEN = "inbound-dsn-token-for-tests"
BOUNCE_DOMAIN = "bounce.example.com"


# -- reports, built with the stdlib email package ---------------------------------------------------------


def _block(**fields: str) -> Message:
    block = Message()
    for name, value in fields.items():
        block[name.replace("_", "-")] = value
    return block


def dsn(
    subtask: SubTask,
    *,
    to: str | None = None,
    envelope_id: str | None = None,
    returned_subtask_header: bool = False,
    postfix_sender: bool = False,
    action: str = "failed",
    status: str = "5.1.1",
    message_id: str = "<20260707100211.ABC123@mx.example.net>",
) -> bytes:
    """A Postfix-style RFC 3464 report about `subtask`, carrying our id only where the caller asks for it."""
    recipient = subtask.recipient_email
    report = MIMEMultipart("report", report_type="delivery-status")
    report["Return-Path"] = "<>"
    report["From"] = "Mail Delivery System <MAILER-DAEMON@mx.example.net>"
    report["To"] = to or f"bounces@{BOUNCE_DOMAIN}"
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = "Tue, 07 Jul 2026 10:02:11 +0000"
    report["Message-ID"] = message_id
    report["Auto-Submitted"] = "auto-replied"
    report.attach(
        MIMEText(
            f"I'm sorry to have to inform you that your message could not be delivered.\n\n"
            f"<{recipient}>: host mx.example.org said: 550 {status} User unknown\n"
        )
    )
    per_message = _block(
        Reporting_MTA="dns; mx.example.net",
        X_Postfix_Queue_ID="4Q8xYz1abc",
        Arrival_Date="Tue, 07 Jul 2026 10:02:09 +0000",
    )
    if postfix_sender:
        per_message["X-Postfix-Sender"] = f"rfc822; b+{subtask.public_id}@{BOUNCE_DOMAIN}"
    if envelope_id:
        per_message["Original-Envelope-Id"] = envelope_id
    per_recipient = _block(
        Final_Recipient=f"rfc822; {recipient}",
        Original_Recipient=f"rfc822;{recipient}",
        Action=action,
        Status=status,
        Remote_MTA="dns; mx.example.org",
        Diagnostic_Code=f"smtp; 550 {status} <{recipient}>: Recipient address rejected",
    )
    status_part = Message()
    status_part["Content-Type"] = "message/delivery-status"
    status_part.set_payload([per_message, per_recipient])
    report.attach(status_part)
    returned = [
        "From: News <news@example.com>",
        f"To: {recipient}",
        "Subject: Spring campaign",
        "Message-ID: <unrelated.1783418528@example.com>",
    ]
    if returned_subtask_header:
        returned.append(f"X-EDM-SubTask-Id: {subtask.public_id}")
    report.attach(MIMEText("\n".join(returned) + "\n", "rfc822-headers"))
    return report.as_bytes()


def arf(subtask: SubTask, *, feedback_type: str = "abuse") -> bytes:
    report = MIMEMultipart("report", report_type="feedback-report")
    report["From"] = "Feedback Loop <fbl@isp.example.net>"
    report["To"] = "fbl-reports@example.com"
    report["Subject"] = "FW: Spring campaign"
    report["Date"] = "Wed, 08 Jul 2026 08:00:00 +0000"
    report["Message-ID"] = "<arf-1@isp.example.net>"
    report.attach(MIMEText("This is an email abuse report.\n"))
    fields = _block(
        Feedback_Type=feedback_type,
        User_Agent="ExampleFBL/1.0",
        Version="1",
        Original_Mail_From=f"<b+{subtask.public_id}@{BOUNCE_DOMAIN}>",
        Original_Rcpt_To=f"<{subtask.recipient_email}>",
        Source_IP="192.0.2.10",
    )
    feedback = Message()
    feedback["Content-Type"] = "message/feedback-report"
    feedback.set_payload(fields.as_string())
    report.attach(feedback)
    report.attach(
        MIMEText(
            f"From: News <news@example.com>\nTo: {subtask.recipient_email}\nSubject: Spring campaign\n",
            "rfc822-headers",
        )
    )
    return report.as_bytes()


PLAIN_MAIL = (
    b"From: Reader <reader@example.org>\r\nTo: bounces@bounce.example.com\r\n"
    b"Subject: Re: Spring campaign\r\nDate: Wed, 08 Jul 2026 09:00:00 +0000\r\n"
    b"Message-ID: <reply-1@example.org>\r\n\r\nThanks, but please call me instead. Unique-marker-7731.\r\n"
)


# -- helpers ----------------------------------------------------------------------------------------------


async def smtp_service(ekit: EventKit, *, credentials: dict[str, Any] | None = None, **options: Any) -> int:
    return await ekit.add_service(
        "relay", "smtp", credentials=credentials or {"webhook_secrets": [TOKEN]}, host="127.0.0.1", port=1, **options
    )


async def post_report(
    ekit: EventKit,
    service_id: int,
    raw: bytes,
    *,
    token: str = TOKEN,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """Post to the SMTP endpoint, then let the worker's `inbound` job handle what the request queued."""
    response = await ekit.client.post(
        f"/webhooks/smtp/{service_id}/dsn",
        content=raw,
        params=params or {},
        headers={"Content-Type": "message/rfc822", "Authorization": f"Bearer {token}", **(headers or {})},
    )
    await drain_inbound(ekit.sessionmaker)
    return response


ACCEPTED = {"received": 1, "stored": 0, "duplicates": 0, "bad": 0, "queued": 1}  # the endpoint's answer to a mail


async def contact_of(ekit: EventKit, subtask: SubTask) -> Contact:
    async with ekit.sessionmaker() as session:
        contact = await session.get(Contact, subtask.contact_id, populate_existing=True)
        assert contact is not None
        return contact


async def subtask_now(ekit: EventKit, subtask: SubTask) -> SubTask:
    async with ekit.sessionmaker() as session:
        row = await session.get(SubTask, subtask.id, populate_existing=True)
        assert row is not None
        return row


async def event_count(ekit: EventKit) -> int:
    async with ekit.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(Event)) or 0)


# -- the DSN endpoint -------------------------------------------------------------------------------------


CORRELATIONS = [
    "envelope_to query (VERP)",
    "X-Original-To header (VERP)",
    "To header (VERP)",
    "Original-Envelope-Id",
    "returned X-EDM-SubTask-Id",
    "X-Postfix-Sender (VERP)",
]


def correlation(name: str, st: SubTask) -> tuple[dict[str, Any], dict[str, str], dict[str, str], str]:
    """How a report names our SubTask: (dsn() arguments, request params, request headers, expected matched_by).
    Each names it one way only."""
    verp = f"b+{st.public_id}@{BOUNCE_DOMAIN}"
    table: dict[str, tuple[dict[str, Any], dict[str, str], dict[str, str], str]] = {
        "envelope_to query (VERP)": ({}, {"envelope_to": verp}, {}, "verp"),
        "X-Original-To header (VERP)": ({}, {}, {"X-Original-To": verp}, "verp"),
        "To header (VERP)": ({"to": verp}, {}, {}, "verp"),
        "Original-Envelope-Id": ({"envelope_id": str(st.public_id)}, {}, {}, "envelope_id"),
        "returned X-EDM-SubTask-Id": ({"returned_subtask_header": True}, {}, {}, "subtask_header"),
        "X-Postfix-Sender (VERP)": ({"postfix_sender": True}, {}, {}, "verp"),
    }
    return table[name]


@pytest.mark.parametrize("how", CORRELATIONS)
async def test_a_posted_dsn_hard_bounces_the_subtask_and_its_contact(ekit: EventKit, how: str) -> None:
    _, subtasks = await ekit.send_task(3)
    target, other = subtasks[1], subtasks[0]
    service_id = await smtp_service(ekit)
    args, params, headers, matched_by = correlation(how, target)

    answer = await post_report(ekit, service_id, dsn(target, **args), params=params, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json() == ACCEPTED
    counts = await ekit.apply()
    assert (counts.processed, counts.matched, counts.unmatched) == (1, 1, 0)

    [event] = await ekit.events()
    assert (event.source, event.service_id, event.event_type) == ("dsn", service_id, "hard_bounced")
    assert event.subtask_id == target.id and event.match_status == MatchStatus.MATCHED
    assert event.details["matched_by"] == matched_by and event.details["enhanced_code"] == "5.1.1"
    after = await subtask_now(ekit, target)
    assert after.delivery_state == "hard_bounced" and after.bounced_at is not None
    assert "5.1.1" in (after.delivery_detail or "")
    assert (await contact_of(ekit, target)).hard_bounced_at is not None
    # Only the SubTask the report names changed.
    assert (await subtask_now(ekit, other)).delivery_state == "none"
    assert (await contact_of(ekit, other)).hard_bounced_at is None


async def test_a_posted_arf_abuse_report_marks_the_subtask_and_contact_complained(ekit: EventKit) -> None:
    _, subtasks = await ekit.send_task(2)
    target = subtasks[0]
    service_id = await smtp_service(ekit)
    answer = await post_report(ekit, service_id, arf(target))
    assert answer.status_code == 200 and answer.json() == ACCEPTED, answer.text
    assert (await ekit.apply()).matched == 1
    [event] = await ekit.events()
    assert (event.source, event.event_type, event.details["matched_by"]) == ("arf", "complained", "verp")
    after = await subtask_now(ekit, target)
    assert after.delivery_state == "complained" and after.complained_at is not None
    assert (await contact_of(ekit, target)).complained_at is not None
    assert (await subtask_now(ekit, subtasks[1])).delivery_state == "none"


async def test_a_mail_that_is_no_report_goes_to_conversations_not_to_the_event_store(ekit: EventKit) -> None:
    """Since conversations (docs/conversations.md#sources): a reply, an auto-reply or spam at the DSN endpoint is
    inbound mail, not an unmatched `not_a_report` event. Sent to an address that names no sender, it waits unrouted
    for an admin, its raw MIME kept."""
    _, subtasks = await ekit.send_task(1)
    service_id = await smtp_service(ekit)
    answer = await post_report(ekit, service_id, PLAIN_MAIL)
    assert answer.status_code == 200, answer.text
    assert answer.json() == ACCEPTED
    assert await ekit.events() == []
    [row] = await unrouted(ekit)
    assert (row.source, row.service_id, row.reason) == ("smtp", service_id, "unknown_sender")
    assert b"Unique-marker-7731" in await blob_data(ekit, row.blob_id)
    assert (await post_report(ekit, service_id, PLAIN_MAIL)).json() == ACCEPTED
    assert [again.id for again in await unrouted(ekit)] == [row.id], "the same mail again adds nothing"
    assert (await ekit.apply()).processed == 0
    assert (await subtask_now(ekit, subtasks[0])).delivery_state == "none"


async def test_a_report_with_a_wrong_or_missing_token_is_refused_and_nothing_is_stored(ekit: EventKit) -> None:
    _, subtasks = await ekit.send_task(1)
    service_id = await smtp_service(ekit)
    raw = dsn(subtasks[0], to=f"b+{subtasks[0].public_id}@{BOUNCE_DOMAIN}")
    wrong = await post_report(ekit, service_id, raw, token="not-the-token")
    assert wrong.status_code == 401, wrong.text
    missing = await ekit.client.post(
        f"/webhooks/smtp/{service_id}/dsn", content=raw, headers={"Content-Type": "message/rfc822"}
    )
    assert missing.status_code == 401, missing.text
    assert (await drain_inbound(ekit.sessionmaker)).handled == 0, "nothing was queued"
    assert await event_count(ekit) == 0
    assert (await ekit.apply()).processed == 0
    assert (await subtask_now(ekit, subtasks[0])).delivery_state == "none"
    # The token is accepted in its other documented forms too.
    assert (
        await ekit.client.post(
            f"/webhooks/smtp/{service_id}/dsn",
            content=raw,
            params={"token": TOKEN},
            headers={"Content-Type": "message/rfc822"},
        )
    ).status_code == 200


async def test_the_same_dsn_posted_twice_is_stored_and_applied_once(ekit: EventKit) -> None:
    _, subtasks = await ekit.send_task(1)
    service_id = await smtp_service(ekit)
    raw = dsn(subtasks[0], to=f"b+{subtasks[0].public_id}@{BOUNCE_DOMAIN}")
    first = await post_report(ekit, service_id, raw)
    second = await post_report(ekit, service_id, raw)
    assert first.json() == second.json() == ACCEPTED
    assert await event_count(ekit) == 1
    assert (await ekit.apply()).matched == 1
    assert (await subtask_now(ekit, subtasks[0])).delivery_state == "hard_bounced"


async def test_a_dsn_for_an_unknown_subtask_is_stored_unmatched(ekit: EventKit) -> None:
    _, subtasks = await ekit.send_task(1)
    service_id = await smtp_service(ekit)
    ghost = SubTask(public_id="0b9f3c6e-0000-4000-8000-000000000000", recipient_email="ghost@example.net")
    answer = await post_report(ekit, service_id, dsn(ghost, to=f"b+{ghost.public_id}@{BOUNCE_DOMAIN}"))
    assert answer.status_code == 200 and answer.json() == ACCEPTED
    assert (await ekit.apply()).unmatched == 1
    [event] = await ekit.events()
    assert (event.match_status, event.match_reason) == (MatchStatus.UNMATCHED, MatchReason.UNKNOWN_SUBTASK)
    assert (await subtask_now(ekit, subtasks[0])).delivery_state == "none"


# -- the mailbox poller -----------------------------------------------------------------------------------


async def test_the_mailbox_poller_stores_a_pop3_report_deletes_it_and_the_event_applies(ekit: EventKit) -> None:
    _, subtasks = await ekit.send_task(2)
    target = subtasks[1]
    box = Mailbox([crlf(dsn(target, to=f"b+{target.public_id}@{BOUNCE_DOMAIN}"))], user="u", password="p")
    with serving(Pop3Handler, box) as port:
        service_id = await smtp_service(
            ekit,
            credentials={"bounce_mailbox_password": "p"},
            bounce_mailbox={
                "protocol": "pop3",
                "host": "127.0.0.1",
                "port": port,
                "security": "none",
                "username": "u",
                "delete_after": True,
                "timeout_seconds": 5,
            },
        )
        vault = factories.vault_for(ekit.dkit.settings)
        assert await reports.poll_mailboxes(ekit.sessionmaker, vault) == 1
        assert box.messages == [], "a stored report must be deleted from the mailbox"
        assert box.commands[-1] == "QUIT"
        # Nothing left: a second poll finds nothing and stores nothing.
        assert await reports.poll_mailboxes(ekit.sessionmaker, vault) == 0
    [event] = await ekit.events()
    assert (event.source, event.service_id, event.event_type) == ("dsn", service_id, "hard_bounced")
    assert (await ekit.apply()).matched == 1
    assert (await subtask_now(ekit, target)).delivery_state == "hard_bounced"
    assert (await contact_of(ekit, target)).hard_bounced_at is not None
    assert (await subtask_now(ekit, subtasks[0])).delivery_state == "none"


async def test_the_mailbox_poller_keeps_messages_when_the_mailbox_refuses_the_password(ekit: EventKit) -> None:
    _, subtasks = await ekit.send_task(1)
    raw = crlf(dsn(subtasks[0], to=f"b+{subtasks[0].public_id}@{BOUNCE_DOMAIN}"))
    box = Mailbox([raw], user="u", password="p")
    with serving(Pop3Handler, box) as port:
        await smtp_service(
            ekit,
            credentials={"bounce_mailbox_password": "wrong"},
            bounce_mailbox={
                "protocol": "pop3",
                "host": "127.0.0.1",
                "port": port,
                "security": "none",
                "username": "u",
                "delete_after": True,
                "timeout_seconds": 5,
            },
        )
        assert await reports.poll_mailboxes(ekit.sessionmaker, factories.vault_for(ekit.dkit.settings)) == 0
    assert box.messages == [raw] and "RETR" not in box.commands
    assert await event_count(ekit) == 0


async def test_two_different_non_report_mails_with_the_same_date_are_both_kept(ekit: EventKit) -> None:
    await ekit.send_task(1)
    service_id = await smtp_service(ekit)
    other = (
        PLAIN_MAIL.replace(b"reader@example.org", b"someone-else@example.org")
        .replace(b"<reply-1@example.org>", b"<reply-2@example.org>")
        .replace(b"Unique-marker-7731", b"Different-text-99")
    )
    first = await post_report(ekit, service_id, PLAIN_MAIL)
    second = await post_report(ekit, service_id, other)
    assert first.json() == second.json() == ACCEPTED, second.text
    rows = await unrouted(ekit)
    assert sorted([b"Different-text-99" in await blob_data(ekit, r.blob_id) for r in rows]) == [False, True]


async def unrouted(ekit: EventKit) -> list[UnroutedInbound]:
    async with ekit.sessionmaker() as session:
        return list(await session.scalars(select(UnroutedInbound).order_by(UnroutedInbound.id)))


async def blob_data(ekit: EventKit, blob_id: int | None) -> bytes:
    async with ekit.sessionmaker() as session:
        blob = await session.get(MailBlob, blob_id)
        assert blob is not None
        return blob.data
