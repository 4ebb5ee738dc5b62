"""The template editor's three modes in a real browser (docs/templates.md#editor-modes): HTML in CodeMirror, rich text
in Quill, Markdown converted by the server; typing in each changes the sandboxed preview, the variable catalogue
inserts at the cursor in each, rich text asks before dropping markup, and the mode is kept across a save and a
reload. The vendored editors run under the editor's content security policy without a console error."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.browser.conftest import Console
from tests.integration.test_media import PNG

FIRST_NAME = "{{ contact.first_name }}"
LAST_NAME = "{{ contact.last_name }}"


def _variable(name: str) -> str:
    return f'#variables button[data-insert="{name}"]'


def test_the_three_modes_edit_one_html_with_a_live_preview(console: Console) -> None:
    page = console.page
    frame = page.frame_locator("#preview-frame")
    console.sign_in(console.server.account("mo"))
    console.visit("/templates/new", "template-modes-html")
    assert page.is_checked("#m-html") and page.is_visible(".CodeMirror") and not page.is_visible("#f-html")
    page.fill("#f-name", "Modes")
    page.fill("#f-subject", "Hello")

    # HTML, highlighted: typing goes into the form field, the variable goes where the cursor is.
    page.click(".CodeMirror")
    with page.expect_response("**/templates/preview"):
        page.keyboard.type("<p>Hello there</p>")
    expect(frame.locator("p")).to_have_text("Hello there")
    assert page.locator(".CodeMirror .cm-tag").count() >= 2, "the HTML is highlighted"
    for _ in range(len("</p>")):
        page.keyboard.press("ArrowLeft")
    page.keyboard.type(", ")
    with page.expect_response("**/templates/preview"):
        page.click(_variable(FIRST_NAME))
    assert page.input_value("#f-html") == f"<p>Hello there, {FIRST_NAME}</p>"
    expect(frame.locator("p")).to_have_text("Hello there, Jane")

    # Rich text: the same HTML in Quill; typing and inserting change the field and the preview.
    page.click("label[for=m-rich]")
    expect(page.locator(".ql-editor")).to_be_visible()
    assert not page.is_visible(".CodeMirror") and console.dialogs == []
    expect(page.locator(".ql-editor p")).to_have_text(f"Hello there, {FIRST_NAME}")
    page.click(".ql-editor p")
    page.keyboard.press("End")
    with page.expect_response("**/templates/preview"):
        page.keyboard.type("!")
    expect(frame.locator("p")).to_have_text("Hello there, Jane!")
    page.keyboard.press("Home")
    with page.expect_response("**/templates/preview"):
        page.click(_variable(LAST_NAME))
    assert page.input_value("#f-html") == f"<p>{LAST_NAME}Hello there, {FIRST_NAME}!</p>"
    expect(frame.locator("p")).to_have_text("DoeHello there, Jane!")
    console.submit("#editor button.primary", "template-modes-rich")
    assert page.is_checked("#m-rich") and page.is_visible(".ql-editor") and not page.is_visible(".CodeMirror")
    editor = page.url.split("?")[0]

    # Markdown: its source starts empty, so the editor asks first; the server converts it for the preview.
    page.click("label[for=m-markdown]")
    expect(page.locator("#f-markdown")).to_be_visible()
    assert len(console.dialogs) == 1 and "Markdown" in console.dialogs[0]
    with page.expect_response("**/templates/preview"):
        page.fill("#f-markdown", "# Title\n\nSome **bold** text, ")
    expect(frame.locator("h1")).to_have_text("Title")
    expect(frame.locator("strong")).to_have_text("bold")
    page.focus("#f-markdown")
    page.keyboard.press("Control+End")
    with page.expect_response("**/templates/preview"):
        page.click(_variable(FIRST_NAME))
    assert page.input_value("#f-markdown") == f"# Title\n\nSome **bold** text, {FIRST_NAME}"
    expect(frame.locator("p")).to_have_text("Some bold text, Jane")
    page.check("#w-mobile")
    assert page.eval_on_selector("#preview-frame", "frame => frame.getBoundingClientRect().width") == 375
    page.check("#w-desktop")
    console.submit("#editor button.primary", "template-modes-markdown")
    page.reload()
    console.check("template-modes-markdown")
    assert page.is_checked("#m-markdown") and page.is_visible("#f-markdown") and not page.is_visible(".CodeMirror")
    assert page.input_value("#f-markdown").endswith(FIRST_NAME)
    expect(frame.locator("h1")).to_have_text("Title")

    # Back to HTML: CodeMirror shows what the Markdown converted to.
    page.click("label[for=m-html]")
    expect(page.locator(".CodeMirror")).to_be_visible()
    expect(page.locator(".CodeMirror-code")).to_contain_text("<h1>Title</h1>")
    assert page.input_value("#f-html").startswith("<h1>Title</h1>")

    # Markup rich text would drop: the editor asks before switching.
    page.click(".CodeMirror")
    page.keyboard.press("Control+End")
    with page.expect_response("**/templates/preview"):
        page.keyboard.type('<table><tr><td style="color: red">cell</td></tr></table>')
    page.click("label[for=m-rich]")
    expect(page.locator(".ql-editor")).to_be_visible()
    assert len(console.dialogs) == 2 and "rich text" in console.dialogs[1]
    assert '<td style="color: red">' not in page.input_value("#f-html"), "accepted: Quill rewrote the table"
    page.click("label[for=m-html]")
    console.submit("#editor button.primary", "template-modes-saved-html")
    page.goto(editor)
    console.check("template-modes-saved-html")
    assert page.is_checked("#m-html") and page.is_visible(".CodeMirror")


def test_the_image_picker_inserts_into_each_mode(console: Console) -> None:
    page = console.page
    console.sign_in(console.server.account("pix"))
    console.visit("/media", "template-modes-media")
    page.set_input_files("#f-file", {"name": "dot.png", "mimeType": "image/png", "buffer": PNG})
    console.submit("#upload button.primary", "template-modes-media-uploaded")
    url = page.inner_text("table.media code.media-url")
    console.visit("/templates/new", "template-modes-html")
    page.fill("#f-subject", "Hi")
    page.fill("#f-image_alt", "A dot")

    page.click(".CodeMirror")
    page.keyboard.type("<p>x</p>")
    page.click("#media-picker button.thumb")
    assert page.input_value("#f-html") == f'<p>x</p><img src="{url}" alt="A dot">'

    page.click("label[for=m-rich]")
    expect(page.locator(".ql-editor")).to_be_visible()
    assert console.dialogs == [], "rich text keeps images with their alternative text"
    page.click(".ql-editor p")
    page.keyboard.press("Home")
    page.click("#media-picker button.thumb")
    expect(page.locator(f'.ql-editor img[src="{url}"]')).to_have_count(2)
    assert page.input_value("#f-html").count('alt="A dot"') == 2

    page.click("label[for=m-markdown]")
    expect(page.locator("#f-markdown")).to_be_visible()
    page.fill("#f-markdown", "Look: ")
    page.click("#media-picker button.thumb")
    assert page.input_value("#f-markdown") == f"Look: ![A dot]({url})"
    expect(page.frame_locator("#preview-frame").locator("img")).to_have_attribute("alt", "A dot")
    expect(page.frame_locator("#preview-frame").locator("img")).to_have_js_property("complete", True)
