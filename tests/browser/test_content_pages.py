"""The senders page in a real browser: the form keeps what was typed beside its errors, a sender is edited and
deleted. The template editor (live preview, test send) and the images page are walked by
tests/browser/test_new_user_flow.py."""

from __future__ import annotations

from tests.browser.conftest import Console


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
