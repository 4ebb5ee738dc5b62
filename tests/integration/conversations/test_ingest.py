"""Inbound mail lands where it should (docs/conversations.md): each MIME fixture of tests/fixtures/mime, threaded to a
campaign really sent through the fake provider, goes to its conversation, the bounce path, the complaint path, the
unrouted list, or is flagged an automatic reply; replays add nothing; a person's reply counts once in the task's
statistics."""

from __future__ import annotations

from sqlalchemy import select

from edm.models.contacts import Contact
from edm.models.conversations import Conversation, ConversationMessage, MailBlob
from edm.models.events import Event, MatchStatus
from edm.tasks import stats
from tests.integration.conversations.conftest import ConversationKit


async def replied_count(ckit: ConversationKit) -> int:
    async with ckit.sessionmaker() as session:
        task_stats = await stats.task_stats(session, ckit.task_id)
    return int(task_stats["replied"])


async def test_a_thunderbird_reply_threads_to_its_send_and_counts_once(ckit: ConversationKit) -> None:
    raw = ckit.mime("thunderbird_reply.eml")
    result = await ckit.receive(raw, recipient=ckit.our_address())
    assert result.status == "stored", result
    assert result.user_id == ckit.user_id and result.subtask_id == ckit.subtasks[0].id
    assert not result.is_auto_reply and len(result.event_ids) == 1

    [conversation] = await ckit.conversations()
    assert conversation.user_id == ckit.user_id
    assert (conversation.our_address, conversation.their_address) == (ckit.our_address(), ckit.their_address())
    assert (conversation.message_count, conversation.unread_count, conversation.status) == (1, 1, "active")
    assert conversation.subject == "Spring campaign" and conversation.their_name == "Rita Reader"
    assert (conversation.task_id, conversation.subtask_id) == (ckit.task_id, ckit.subtasks[0].id)
    assert conversation.contact_id == ckit.subtasks[0].contact_id

    [message] = await ckit.messages()
    assert message.direction == "inbound" and message.source == "smtp"
    assert message.message_id == "8f3c2a1e-5d6b-4c2f-9a11-7e0f2b3c4d5e@example.net"
    assert message.in_reply_to == ckit.message_id()
    assert "café tables" in (message.text_body or "") and "<blockquote" in (message.html_body or "")
    assert message.blob_id is not None and message.read_at is None

    after = await ckit.subtask(0)
    assert after.replied_at is not None
    assert (await ckit.subtask(1)).replied_at is None
    assert await replied_count(ckit) == 1
    async with ckit.sessionmaker() as session:
        [event] = await session.scalars(select(Event).where(Event.event_type == "replied"))
        contact = await session.get(Contact, ckit.subtasks[0].contact_id)
    assert (event.source, event.match_status, event.subtask_id) == ("inbound", MatchStatus.MATCHED, after.id)
    assert contact is not None and contact.last_replied_at is not None

    # A replay, and the same mail from another source: nothing new anywhere.
    again = await ckit.receive(raw)
    other_source = await ckit.receive(raw, source="imap")
    assert again.status == other_source.status == "duplicate"
    assert again.message_id == message.id and again.conversation_id == conversation.id
    assert await ckit.count(ConversationMessage) == 1 and await ckit.count(MailBlob) == 1
    assert await ckit.count(Event) == 1
    assert (await ckit.conversations())[0].message_count == 1
    assert await replied_count(ckit) == 1


async def test_a_second_reply_adds_to_the_conversation_but_the_send_counts_one_reply(ckit: ConversationKit) -> None:
    await ckit.receive(ckit.mime("thunderbird_reply.eml"))
    second = ckit.mime("thunderbird_reply.eml", **{"8f3c2a1e-5d6b": "9f3c2a1e-5d6b"})
    result = await ckit.receive(second)
    assert result.status == "stored"
    [conversation] = await ckit.conversations()
    assert (conversation.message_count, conversation.unread_count) == (2, 2)
    assert await replied_count(ckit) == 1


async def test_a_reply_threaded_only_by_references_newest_first(ckit: ConversationKit) -> None:
    result = await ckit.receive(ckit.mime("outlook_references_only.eml"))
    assert result.status == "stored" and result.subtask_id == ckit.subtasks[0].id
    [message] = await ckit.messages()
    assert message.in_reply_to is None and ckit.message_id() in (message.references or "")
    assert "Grüße" in (message.text_body or "")
    [conversation] = await ckit.conversations()
    assert conversation.subject == "Spring campaign"  # "AW:" is a reply prefix too
    assert await replied_count(ckit) == 1


async def test_an_id_of_ours_from_another_domain_does_not_thread(ckit: ConversationKit) -> None:
    forged = ckit.message_id().split("@")[0] + "@attacker.example.org"
    raw = ckit.mime("thunderbird_reply.eml", **{ckit.message_id(): forged})
    result = await ckit.receive(raw)
    # Still the user's by address (news@ is their sender at our domain), but not a reply to the send.
    assert result.status == "stored" and result.subtask_id is None and result.user_id == ckit.user_id
    assert await replied_count(ckit) == 0


async def test_an_out_of_office_is_stored_flagged_and_never_counts(ckit: ConversationKit) -> None:
    result = await ckit.receive(ckit.mime("out_of_office.eml"))
    assert result.status == "stored" and result.is_auto_reply and result.event_ids == ()
    [message] = await ckit.messages()
    assert message.is_auto_reply and message.read_at is not None
    assert message.subject == "自动回复: Spring campaign"
    [conversation] = await ckit.conversations()
    assert (conversation.message_count, conversation.unread_count) == (1, 0)
    assert (await ckit.subtask(0)).replied_at is None
    assert await replied_count(ckit) == 0


async def test_a_dsn_goes_to_the_bounce_path_and_never_to_a_conversation(ckit: ConversationKit) -> None:
    result = await ckit.receive(ckit.mime("dsn.eml"))
    assert result.status == "bounce_report" and len(result.event_ids) == 1
    assert await ckit.count(ConversationMessage) == 0 and await ckit.count(Conversation) == 0
    assert (await ckit.ekit.apply()).matched == 1
    assert (await ckit.subtask(0)).delivery_state == "hard_bounced"
    assert (await ckit.receive(ckit.mime("dsn.eml"))).event_ids == ()  # a replay stores nothing


async def test_an_arf_report_becomes_a_complaint(ckit: ConversationKit) -> None:
    result = await ckit.receive(ckit.mime("arf_complaint.eml"))
    assert result.status == "complaint_report" and len(result.event_ids) == 1
    assert await ckit.count(ConversationMessage) == 0
    assert (await ckit.ekit.apply()).matched == 1
    assert (await ckit.subtask(0)).delivery_state == "complained"


async def test_mail_to_an_unknown_address_is_unrouted_once(ckit: ConversationKit) -> None:
    raw = ckit.mime("unknown_address.eml")
    result = await ckit.receive(raw)
    assert result.status == "unrouted" and result.reason == "unknown_sender"
    [row] = await ckit.unrouted()
    assert (row.from_address, row.to_address, row.subject) == (
        "stranger@example.org",
        "nobody-here@unrelated.example.org",
        "Business proposal",
    )
    assert row.blob_id is not None and row.resolved_at is None
    assert (await ckit.receive(raw)).status == "duplicate"
    assert len(await ckit.unrouted()) == 1 and await ckit.count(MailBlob) == 1
    assert await ckit.count(Conversation) == 0


async def test_our_sender_at_a_foreign_domain_is_unrouted(ckit: ConversationKit) -> None:
    raw = ckit.mime("unknown_address.eml", **{"nobody-here@unrelated.example.org": "news@unrelated.example.org"})
    result = await ckit.receive(raw)
    assert result.status == "unrouted" and result.reason == "foreign_domain"


async def test_mail_to_a_sender_address_starts_a_conversation_and_a_contact(ckit: ConversationKit) -> None:
    raw = ckit.mime(
        "unknown_address.eml",
        **{"nobody-here@unrelated.example.org": "News@Fake-ESP.example.com", "stranger@": "new-person@"},
    )
    result = await ckit.receive(raw)
    assert result.status == "stored" and result.subtask_id is None and result.user_id == ckit.user_id
    [conversation] = await ckit.conversations()
    assert conversation.our_address == "news@fake-esp.example.com"
    assert conversation.their_address == "new-person@example.org"
    async with ckit.sessionmaker() as session:
        contact = await session.get(Contact, conversation.contact_id)
    assert contact is not None and contact.user_id == ckit.user_id
    assert (contact.email_normalized, contact.source) == ("new-person@example.org", "reply")
    assert contact.last_replied_at is not None


async def test_attachments_are_metadata_and_the_bytes_stay_in_the_blob(ckit: ConversationKit) -> None:
    result = await ckit.receive(ckit.mime("with_attachment.eml"))
    assert result.status == "stored"
    [message] = await ckit.messages()
    attachments = message.attachments or []
    assert [(a["name"], a["type"], a["inline"]) for a in attachments] == [
        ("logo.png", "image/png", True),
        ("order form.pdf", "application/pdf", False),
    ]
    assert attachments[0]["content_id"] == "logo-123@example.net" and attachments[1]["size"] > 50
    assert message.text_body is None and "cid:logo-123@example.net" in (message.html_body or "")


async def test_a_closed_conversation_reopens_and_an_archived_one_stays(ckit: ConversationKit) -> None:
    await ckit.receive(ckit.mime("thunderbird_reply.eml"))
    async with ckit.sessionmaker() as session, session.begin():
        conversation = (await session.scalars(select(Conversation))).one()
        conversation.status = "closed"
    await ckit.receive(ckit.mime("thunderbird_reply.eml", **{"8f3c2a1e": "aaaa2a1e"}))
    assert (await ckit.conversations())[0].status == "active"
    async with ckit.sessionmaker() as session, session.begin():
        conversation = (await session.scalars(select(Conversation))).one()
        conversation.status = "archived"
    await ckit.receive(ckit.mime("thunderbird_reply.eml", **{"8f3c2a1e": "bbbb2a1e"}))
    assert (await ckit.conversations())[0].status == "archived"
    # An automatic reply does not reopen a closed conversation.
    async with ckit.sessionmaker() as session, session.begin():
        conversation = (await session.scalars(select(Conversation))).one()
        conversation.status = "closed"
    await ckit.receive(ckit.mime("out_of_office.eml"))
    assert (await ckit.conversations())[0].status == "closed"


async def test_a_message_without_message_id_gets_a_stable_one(ckit: ConversationKit) -> None:
    raw = ckit.mime("thunderbird_reply.eml").replace(
        b"Message-ID: <8f3c2a1e-5d6b-4c2f-9a11-7e0f2b3c4d5e@example.net>\r\n", b""
    )
    first = await ckit.receive(raw)
    second = await ckit.receive(raw)
    assert (first.status, second.status) == ("stored", "duplicate")
    [message] = await ckit.messages()
    assert message.message_id.startswith("sha256.")


async def test_a_message_over_the_limit_is_refused(ckit: ConversationKit) -> None:
    from edm import clock
    from edm.conversations import ingest
    from edm.db.session import unit_of_work
    from edm.errors import TooLarge
    from edm.providers.inbound import InboundMail

    raw = ckit.mime("thunderbird_reply.eml")
    async with unit_of_work(ckit.sessionmaker) as session:
        try:
            await ingest.receive(session, InboundMail(raw=raw, source="smtp"), now=clock.utc_now(), max_bytes=100)
        except TooLarge as exc:
            assert "exceeds the 100-byte limit" in exc.message and exc.status == 413
        else:
            raise AssertionError("not refused")
    assert await ckit.count(MailBlob) == 0
