"""Senders, templates and media in a real browser: the forms keep what was typed beside their errors, the template
editor's live preview follows the typing, a test send reaches the SMTP sink, and an uploaded image is inserted."""

from __future__ import annotations

import email
import email.policy
import subprocess
from collections.abc import Callable

from playwright.sync_api import expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.session import unit_of_work
from edm.devtools.smtp_sink import SmtpSink
from tests import factories
from tests.browser.conftest import Console
from tests.integration.test_media import PNG


def test_a_sender_is_added_refused_beside_its_field_edited_and_deleted(console: Console) -> None:
    kim = console.server.account("kim")
    page = console.page
    console.sign_in(kim)
    console.visit("/senders", "senders-empty")
    page.fill("#f-local_part", "bad..name")
    page.fill("#f-display_name", "Kim's news")
    console.submit("#add-sender button.primary", "sender-invalid", status=422)
    assert page.inner_text("#f-local_part-error").startswith("Use 1 to 64 letters")
    assert page.input_value("#f-local_part") == "bad..name" and page.input_value("#f-display_name") == "Kim's news"

    page.fill("#f-local_part", f"news-{kim.username}")
    console.submit("#add-sender button.primary", "sender-added")
    assert "The sender was added." in page.inner_text("main")
    console.submit(f"a:has-text('news-{kim.username}')", "sender-edit")
    page.fill("#f-display_name", "Kim")
    console.submit("main button.primary", "sender-saved")
    assert "Kim" in page.inner_text("table.senders")

    console.submit("table.senders button.danger", "sender-deleted")
    assert console.dialogs == [
        f"Delete the sender “news-{kim.username}”? 1 sender will be deleted; campaigns already sent keep it."
    ]
    assert "No senders yet." in page.inner_text("main")


def test_a_template_is_written_with_a_live_preview_for_a_contact_and_sent_as_a_test(
    console: Console, smtp_sink: SmtpSink, worker: Callable[[], subprocess.Popen[bytes]]
) -> None:
    lea = console.server.account("lea", credit=10)
    settings = console.server.settings

    async def setup(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        async with unit_of_work(sessionmaker) as session:
            await factories.sender(session, lea.id, local=f"news-{lea.username}")
            await factories.contacts(session, lea.id, 1, prefix=f"zed-{lea.username}-")
            options = {"host": smtp_sink.host, "port": smtp_sink.port, "security": "none"}
            await factories.service(
                session, settings, f"sink-{lea.username}", provider="smtp", options=options, map_to=[lea.id]
            )

    console.server.database(setup)
    console.sign_in(lea)
    page = console.page
    console.visit("/templates", "templates-empty")
    console.submit("main a.primary", "template-new")

    page.fill("#f-name", "Welcome")
    page.fill("#f-subject", "Hello")
    with page.expect_response("**/templates/preview"):
        page.fill("#f-html", "<p>Dear ")
    assert page.get_attribute("#preview-frame", "sandbox") == ""
    expect(page.frame_locator("#preview-frame").locator("p")).to_have_text("Dear")
    page.focus("#f-html")
    page.keyboard.press("End")
    with page.expect_response("**/templates/preview"):
        page.click("#variables button:has-text(\"default('there')\")")  # inserted where the cursor is
    assert page.input_value("#f-html") == "<p>Dear {{ contact.first_name | default('there') }}"
    expect(page.frame_locator("#preview-frame").locator("p")).to_have_text("Dear Jane")  # sample data
    expect(page.locator("#preview-warnings")).to_contain_text("No unsubscribe link")

    with page.expect_response("**/templates/preview"):
        page.select_option("#f-contact_id", label=page.inner_text("#f-contact_id option:nth-child(2)"))
    expect(page.frame_locator("#preview-frame").locator("p")).to_have_text("Dear N0")  # the contact's first name
    page.check("#w-mobile")
    assert page.eval_on_selector("#preview-frame", "frame => frame.getBoundingClientRect().width") == 375
    page.check("#w-desktop")
    assert page.eval_on_selector("#preview-frame", "frame => frame.getBoundingClientRect().width") > 375
    with page.expect_response("**/templates/preview"):
        page.type("#f-html", " {{ contact.nickname }}")
    expect(page.locator("#preview-warnings")).to_contain_text("Unknown variables show as nothing: contact.nickname")

    page.fill("#f-name", "")
    console.submit("#editor button.primary", "template-name-missing", status=422)
    assert page.inner_text("#f-name-error") == "This field is required."
    assert page.input_value("#f-html").endswith("{{ contact.nickname }}"), "what was typed is kept"
    page.fill("#f-name", "Welcome")
    console.submit("#editor button.primary", "template-created")
    assert "The template was created." in page.inner_text("main")
    expect(page.frame_locator("#preview-frame").locator("p")).to_contain_text("Dear N0")  # still for the contact

    page.fill("#f-emails", "me@example.org")
    page.select_option("#f-test_contact_id", index=1)  # personalised for the contact
    console.submit("#test-send button", "test-send-queued")
    assert "The test message is queued" in page.inner_text("main")
    worker()  # sends it while the test goes on
    editor = page.url.split("?")[0].removeprefix(console.server.url)

    console.visit("/media", "media-empty")
    page.set_input_files("#f-file", {"name": "notes.png", "mimeType": "image/png", "buffer": b"plain text"})
    console.submit("#upload button.primary", "media-refused", status=422)
    assert page.inner_text("#f-file-error") == "Choose a JPEG, PNG or GIF image."
    page.set_input_files("#f-file", {"name": "dot.png", "mimeType": "image/png", "buffer": PNG})
    console.submit("#upload button.primary", "media-uploaded")
    url = page.inner_text("table.media code.media-url")
    assert url.startswith(console.server.url + "/media/") and url.endswith("/dot.png")
    assert page.evaluate("() => document.querySelector('img.media-thumb').naturalWidth") == 1

    console.visit(editor, "template-with-images")
    page.click("#media-picker button.thumb")
    assert page.is_visible("#f-image_alt-error"), "the alternative text comes first"
    page.fill("#f-image_alt", "A dot")
    page.focus("#f-html")
    page.keyboard.press("Control+End")
    with page.expect_response("**/templates/preview"):
        page.click("#media-picker button.thumb")
    assert page.input_value("#f-html").endswith(f'<img src="{url}" alt="A dot">')
    expect(page.frame_locator("#preview-frame").locator("img")).to_have_attribute("alt", "A dot")

    assert smtp_sink.wait_for(1, timeout=30)
    [mail] = smtp_sink.messages
    assert mail.rcpt_tos == ("me@example.org",) and mail.subject == "[TEST] Hello"
    message = email.message_from_bytes(mail.data, policy=email.policy.default)
    text = message.get_body(preferencelist=("plain",))
    assert text is not None and "Dear N0" in text.get_content()
