"""Conversations in a real browser, against `edm serve` and an `edm worker`: a reply to the user's sender arrives
(through the same `receive` every inbound source uses), shows in the inbox with the menu's badge; the user answers
from the thread; the first service refuses the mail, the thread shows the failure with "Send it again", and the retry
goes out through the other service of the same domain — the SMTP sink receives a mail whose headers thread it.
Every page passes the audit (axe at two widths, no script error, nothing from another host); the admins' unrouted
mail page too."""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Callable
from typing import Any

from playwright.sync_api import expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm import clock
from edm.conversations import ingest
from edm.db.session import unit_of_work
from edm.devtools.smtp_sink import SmtpSink
from edm.providers.inbound import InboundMail
from tests import factories
from tests.browser.conftest import Console

DOMAIN = "shop.example"


def _reply(*, their: str, ours: str, message_id: str, subject: str) -> bytes:
    return (
        f"From: Zoe Customer <{their}>\r\nTo: {ours}\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\n"
        "Date: Sun, 06 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "Hello, is the blue one still in stock?\r\n"
    ).encode()


PIXEL_PNG = (  # a 1×1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def _html_reply(*, their: str, ours: str, message_id: str, in_reply_to: str) -> bytes:
    """A reply in HTML whose logo is an inline part named by `cid:`."""
    return (
        f"From: Zoe Customer <{their}>\r\nTo: {ours}\r\nSubject: Re: Blue teapot\r\nMessage-ID: <{message_id}>\r\n"
        f"In-Reply-To: <{in_reply_to}>\r\nReferences: <{in_reply_to}>\r\n"
        "Date: Sun, 06 Dec 2026 10:05:00 +0000\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/related; boundary="rel"\r\n\r\n--rel\r\n'
        "Content-Type: text/html; charset=utf-8\r\n\r\n"
        '<p>And this one? <img src="cid:logo@customer" alt="our logo" width="1" height="1"></p>\r\n--rel\r\n'
        "Content-Type: image/png\r\nContent-ID: <logo@customer>\r\nContent-Transfer-Encoding: base64\r\n"
        f"Content-Disposition: inline; filename=logo.png\r\n\r\n{PIXEL_PNG}\r\n--rel--\r\n"
    ).encode()


def _wait_for_text(console: Console, selector: str, text: str, *, timeout: float = 30) -> None:
    """Reload the thread until `selector` shows `text` (the thread does not poll: answers settle in seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        if text in (console.page.text_content(selector) or ""):
            return
        assert time.monotonic() < deadline, f"{selector} never showed {text!r}: {console.page.text_content(selector)}"
        console.page.wait_for_timeout(500)
        console.page.reload()


def test_an_answer_refused_by_one_service_is_sent_again_through_the_other(
    console: Console, worker: Callable[[], Any], smtp_sink: SmtpSink
) -> None:
    refusing = SmtpSink().start()
    try:
        refusing.data_reply = (554, "5.6.0 message refused")
        _scenario(console, worker, refusing=refusing, working=smtp_sink)
    finally:
        refusing.stop()


def _scenario(console: Console, worker: Callable[[], Any], *, refusing: SmtpSink, working: SmtpSink) -> None:
    server = console.server
    user = server.account("replier", credit=10)
    admin = server.account("postmaster", role="admin")
    tag = f"{user.id}"
    ours = f"help-{tag}@{DOMAIN}"
    their = f"zoe-{tag}@customer.example"
    inbound_id = f"q-{tag}@customer.example"
    nobody = f"nobody-{tag}@{DOMAIN}"

    async def prepare(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, int]:
        async with unit_of_work(sessionmaker) as session:
            await factories.sender(session, user.id, local=f"help-{tag}")
            ids = {}
            for name, sink in (("refuses", refusing), ("works", working)):
                ids[name] = await factories.service(
                    session,
                    server.settings,
                    f"{name}-{tag}",
                    provider="smtp",
                    options={"host": sink.host, "port": sink.port, "security": "none"},
                    map_to=[user.id],
                    domain=DOMAIN,
                    priority=1 if name == "refuses" else 2,
                )
            raw = _reply(their=their, ours=ours, message_id=inbound_id, subject="Blue teapot")
            stored = await ingest.receive(
                session, InboundMail(raw=raw, source="smtp", service_id=ids["refuses"]), now=clock.utc_now()
            )
            html = _html_reply(their=their, ours=ours, message_id=f"h-{tag}@customer.example", in_reply_to=inbound_id)
            await ingest.receive(
                session, InboundMail(raw=html, source="smtp", service_id=ids["refuses"]), now=clock.utc_now()
            )
            unrouted = await ingest.receive(
                session,
                InboundMail(
                    raw=_reply(
                        their=their, ours=f"nobody-{tag}@{DOMAIN}", message_id=f"x-{tag}@c.example", subject="?"
                    ),
                    source="smtp",
                ),
                now=clock.utc_now(),
            )
            assert stored.conversation_id is not None and unrouted.unrouted_id is not None
            return {"conversation": stored.conversation_id, "unrouted": unrouted.unrouted_id, **ids}

    ids = server.database(prepare)
    page = console.page
    console.sign_in(user)
    console.visit("/conversations", "conversations")
    assert page.inner_text('#menu a[href="/conversations"] .badge').startswith("1")
    console.visit(f"/conversations/{ids['conversation']}", "conversation")
    assert page.locator('#menu a[href="/conversations"] .badge').count() == 0, "opening it read it"
    assert "Hello, is the blue one still in stock?" in page.inner_text(".thread")
    assert page.inner_text("#answer-from").startswith(f"From {ours}")
    # The HTML reply shows in its sandboxed frame, its inline logo loaded from the message itself.
    frame = page.frame_locator(".mail-frame iframe")
    expect(frame.locator("p")).to_contain_text("And this one?")
    assert frame.locator("img").get_attribute("src", timeout=5000).startswith("data:image/png;base64,")
    assert frame.locator("img").evaluate("img => img.complete && img.naturalWidth") == 1

    page.fill("#f-text", "Yes, we have two left.")
    console.submit("#answer button[type=submit]", "conversation-answer-queued")
    assert "Your answer is queued" in page.inner_text("main")
    outbound = page.locator(".message.outbound")
    assert outbound.count() == 1
    answer_id = outbound.get_attribute("id")
    worker()
    _wait_for_text(console, f"#{answer_id}", "Not sent")
    assert "message refused" in page.inner_text(f"#{answer_id} .alert")
    assert working.messages == [], "the first attempt went through the refusing service only"
    console.check("conversation-answer-failed")

    console.submit(f"#{answer_id} button.primary", "conversation-answer-retried")
    assert "The answer is queued again" in page.inner_text("main")
    _wait_for_text(console, f"#{answer_id}", "Sent")
    [sent] = working.messages
    mail = email.message_from_bytes(sent.data, policy=email.policy.default)
    assert mail["Subject"] == "Re: Blue teapot"
    # Threaded to the newest reply: In-Reply-To names it, References are its References and its own id.
    newest = f"<h-{tag}@customer.example>"
    assert mail["In-Reply-To"] == newest and mail["References"].split() == [f"<{inbound_id}>", newest]
    assert mail["To"].addresses[0].addr_spec == their and mail["From"].addresses[0].addr_spec == ours
    assert mail["List-Unsubscribe"] is None
    assert "Yes, we have two left." in mail.get_body(("plain",)).get_content()

    console.visit(f"/conversations/new?contact_id={_contact_of(console, ids['conversation'])}", "conversation-new")
    console.context.clear_cookies()
    console.sign_in(admin)
    console.visit("/admin/inbound", "admin-inbound")
    console.visit(f"/admin/inbound/{ids['unrouted']}", "admin-inbound-mail")
    assert nobody in page.inner_text("main")


def _contact_of(console: Console, conversation_id: int) -> str:
    """The contact the reply created (its id, from the thread's link to it)."""
    console.page.goto(console.url(f"/conversations/{conversation_id}"))
    href = console.page.get_attribute("dl.facts a[href^='/contacts/']", "href")
    assert href
    return href.rsplit("/", 1)[1]
