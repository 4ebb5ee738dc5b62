"""One rendering pipeline (docs/templates.md#the-pipeline). The preview of a template for a contact and the mail that
contact receives (through a real SMTP server) carry the same HTML and text: preheader, CSS inlined into
`style` attributes with @media kept, the compliance footer with the postal address, personal data."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.session import unit_of_work
from edm.devtools.smtp_sink import SmtpSink
from edm.system import runtime_settings
from tests import factories
from tests.helpers import api_client, make_account
from tests.integration.dispatch.conftest import DispatchKit

HTML = """<html><head><style>
  p.greet { color: #cc0000; font-weight: bold }
  td { padding: 4px }
  @media (max-width: 600px) { p.greet { font-size: 18px } }
</style></head><body>
<p class="greet">Hello {{ contact.first_name | default('there', true) }} &amp; welcome</p>
<table><tr><td>Plan: {{ contact.attributes.plan }}</td></tr></table>
<p>See <a href="https://shop.example.com/new?ref=mail&amp;id=7">what is new</a>.</p>
</body></html>"""
POSTAL = "Example Shop Ltd\n1 Main Street, Springfield"


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


def _parts(raw: bytes) -> tuple[str, str]:
    """The HTML and text parts as sent, with the CRLF line ends of the wire turned back into LF."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    return html.replace("\r\n", "\n"), text.replace("\r\n", "\n")


async def test_preview_and_send_give_the_same_html_for_the_same_contact(
    db_url: str, engine: Any, sessionmaker: async_sessionmaker[AsyncSession], sink: SmtpSink
) -> None:
    dkit = DispatchKit(db_url, sessionmaker)
    owner = await make_account(sessionmaker, "ann", credit=100)
    await dkit.put_settings(compliance__postal_address=POSTAL, org__name="Example Shop")
    async with unit_of_work(sessionmaker) as session:
        sender = await factories.sender(session, owner.id)
        template = await factories.template(
            session,
            owner.id,
            subject="News for {{ contact.first_name }}",
            html=HTML,
            preheader="Our spring picks, {{ contact.first_name }}",
        )
        [contact_id] = await factories.contacts(session, owner.id, 1, prefix="zoe")
        await factories.service(
            session,
            dkit.settings,
            "relay",
            provider="smtp",
            map_to=[owner.id],
            options={"host": sink.host, "port": sink.port, "security": "none"},
        )
        task_id = await factories.task(
            session,
            owner.id,
            sender_id=sender,
            template_ids=[template],
            rule={"type": "all_contacts"},
            track_opens=False,
            track_clicks=False,
        )
    async with dkit.sessionmaker() as session:
        await _set_contact(session, contact_id)

    async with dkit.worker():
        await dkit.wait_for(lambda: _completed(dkit, task_id), timeout=30, what="task completed")
    assert await sink.wait_for_messages(1)
    [received] = sink.messages
    sent_html, sent_text = _parts(received.data)
    [subtask] = await dkit.subtasks(task_id)
    unsubscribe_url = dkit.settings.effective_tracking_url + "/u/"

    async with api_client(db_url, engine) as client:
        answer = await client.post(
            f"/api/v1/templates/{template}/preview",
            headers=owner.headers,
            json={"contact_id": contact_id, "sender_id": sender},
        )
    assert answer.status_code == 200, answer.text
    preview = answer.json()

    # The only difference allowed: the preview's placeholder unsubscribe link instead of the signed one.
    sent_link = sent_html[sent_html.index(unsubscribe_url) :].split('"', 1)[0]
    assert sent_link.startswith(unsubscribe_url) and len(sent_link) > len(unsubscribe_url) + 30
    assert preview["html"].replace("https://unsubscribe.invalid/preview", sent_link) == sent_html.rstrip("\n")
    assert " ".join(preview["text"].replace("https://unsubscribe.invalid/preview", sent_link).split()) == " ".join(
        sent_text.split()
    )
    assert preview["subject"] == subtask.subject_sent == "News for Zoë"

    # What the pipeline did, seen in the mail itself.
    assert 'class="greet" style="color: #cc0000;font-weight: bold;"' in sent_html, "CSS inlined"
    assert "@media (max-width: 600px)" in sent_html and "td { padding" not in sent_html, "only @media stays"
    assert '<td style="padding: 4px;">Plan: gold</td>' in sent_html
    assert "Our spring picks, Zoë" in sent_html.split("Hello", 1)[0], "preheader at the top of the body"
    assert "1 Main Street, Springfield" in sent_html and "Unsubscribe" in sent_html, "footer with postal address"
    assert "what is new (https://shop.example.com/new?ref=mail&id=7)" in sent_text, "links kept in the text part"
    assert any("no unsubscribe link" in w for w in preview["warnings"])


async def _set_contact(session: AsyncSession, contact_id: int) -> None:
    from edm.models.contacts import Contact

    contact = await session.get(Contact, contact_id)
    assert contact is not None
    contact.first_name = "Zoë"
    contact.custom_attributes = {"plan": "gold"}
    await session.commit()


async def _completed(dkit: DispatchKit, task_id: int) -> bool:
    return await dkit.status(task_id) == "completed"


async def test_a_custom_footer_setting_replaces_the_built_in_one(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession], engine: Any
) -> None:
    owner = await make_account(sessionmaker, "ann")
    async with unit_of_work(sessionmaker) as session:
        with pytest.raises(Exception, match="must contain"):
            await runtime_settings.put(session, "compliance.footer_html", "<p>no link here</p>")
    async with unit_of_work(sessionmaker) as session:
        await runtime_settings.put(
            session,
            "compliance.footer_html",
            '<p class="legal">Leave: <a href="{{ unsubscribe_url }}">here</a> · {{ postal_address }}</p>',
        )
        await runtime_settings.put(session, "compliance.postal_address", "1 <Main> St")
    async with api_client(db_url, engine) as client:
        answer = await client.post(
            "/api/v1/templates/preview",
            headers=owner.headers,
            json={"subject": "s", "html": "<html><body><p>Hi</p></body></html>"},
        )
    assert answer.status_code == 200, answer.text
    html = answer.json()["html"]
    assert (
        '<p class="legal">Leave: <a href="https://unsubscribe.invalid/preview">here</a> · 1 &lt;Main&gt; St</p>' in html
    )
    assert "edm-footer" not in html


async def test_with_click_tracking_both_parts_carry_the_same_tracked_links(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession], sink: SmtpSink
) -> None:
    dkit = DispatchKit(db_url, sessionmaker)
    owner = await make_account(sessionmaker, "ann", credit=100)
    html = HTML.replace("</body>", '<p><a data-edm-notrack href="https://shop.example.com/terms">Terms</a></p></body>')
    async with unit_of_work(sessionmaker) as session:
        sender = await factories.sender(session, owner.id)
        template = await factories.template(session, owner.id, html=html)
        await factories.contacts(session, owner.id, 1, prefix="zoe")
        await factories.service(
            session,
            dkit.settings,
            "relay",
            provider="smtp",
            map_to=[owner.id],
            options={"host": sink.host, "port": sink.port, "security": "none"},
        )
        task_id = await factories.task(
            session,
            owner.id,
            sender_id=sender,
            template_ids=[template],
            rule={"type": "all_contacts"},
            track_opens=True,
            track_clicks=True,
        )
    async with dkit.worker():
        await dkit.wait_for(lambda: _completed(dkit, task_id), timeout=30, what="task completed")
    assert await sink.wait_for_messages(1)
    sent_html, sent_text = _parts(sink.messages[0].data)
    click_base = dkit.settings.effective_tracking_url + "/t/c/"
    tracked_in_html = {part.split('"', 1)[0] for part in sent_html.split(click_base)[1:]}
    tracked_in_text = {part.split(")", 1)[0] for part in sent_text.split(click_base)[1:]}
    assert len(tracked_in_html) == 1 and tracked_in_html == tracked_in_text, (sent_html, sent_text)
    assert "new?ref=mail" not in sent_text, "the text part's link is the tracked one"
    assert "Terms (https://shop.example.com/terms)" in sent_text, "a notrack link stays untracked in the text too"
