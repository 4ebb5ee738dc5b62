"""The contacts, import and tag pages in a real browser, as one new user's first session: import a CSV of 50
contacts with one bad row (the error count, the error file), build a tag, tag every matching contact in bulk (the
count confirmed), open a contact and edit it. Bad input in each form shows beside its field and keeps what was
typed."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import expect

from tests.browser.conftest import Console


def test_a_new_user_imports_tags_in_bulk_and_edits_a_contact(
    console: Console, worker: Callable[[], subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    noa = console.server.account("noa")
    page = console.page
    worker()
    console.sign_in(noa)
    console.visit("/contacts", "contacts-empty")
    assert "No contacts yet — import a CSV" in page.inner_text("main")

    # Import: no file is an error beside the field; then the preview, a mapping, and the live progress.
    rows = [f"p{i}@example.com,P{i},Oslo\n" for i in range(50)]
    people = tmp_path / "people.csv"
    people.write_text("Email,Vorname,City\n" + "".join(rows[:25]) + "not-an-address,Bad,Rome\n" + "".join(rows[25:]))
    console.visit("/contacts/import", "import")
    page.select_option("#f-mode", "update_existing")
    console.submit("#import-form button.primary", "import-no-file", status=422)
    assert page.inner_text("#f-file-error") == "Choose a file."
    assert page.input_value("#f-mode") == "update_existing", "the options chosen stay"
    page.set_input_files("#f-file", str(people))
    with page.expect_response(lambda r: r.url.endswith("/contacts/import/preview")):
        page.click("#preview-button")
    expect(page.locator("#preview tbody tr")).to_have_count(20)
    assert page.input_value("#map-0") == "email"
    page.select_option("#map-1", "first_name")
    console.check("import-preview", status=422)  # the document is still the page of the refused upload
    console.submit("#import-form button.primary", "import-started")
    expect(page.locator("#import-status")).to_have_text("Completed", timeout=30_000)  # polled, then reloaded
    console.check("import-done")
    assert page.inner_text("#count-created") == "50" and page.inner_text("#count-errors") == "1"
    with page.expect_download() as download:
        page.click("#error-file")
    errors = Path(download.value.path()).read_text(encoding="utf-8-sig")
    assert errors.splitlines()[0] == "row,column,value,message" and "not-an-address" in errors
    assert errors.splitlines()[1].startswith("27,"), "the bad row's number in the file"
    console.visit("/contacts/imports", "imports")
    assert "people.csv" in page.inner_text("main table")

    # A tag: an empty name is refused beside the field.
    console.visit("/tags", "tags-empty")
    page.fill("#f-color", "#3366cc")
    console.submit("main form.subform button.primary", "tag-no-name", status=422)
    assert page.inner_text("#f-name-error") == "This field is required."
    assert page.input_value("#f-color") == "#3366cc"
    page.fill("#f-name", "Spring")
    console.submit("main form.subform button.primary", "tag-created")
    assert "The tag was created." in page.inner_text("main")

    # Every contact matching a search, tagged at once after confirming the count.
    console.visit("/contacts?q=p1", "contacts-filtered")
    assert page.inner_text("#list-title") == "11 contacts"  # p1, p10–p19
    page.check("#scope-all")
    page.select_option("#f-action", "tag")
    page.select_option("#f-tag_id", label="Spring")
    console.submit("#bulk button.primary", "contacts-bulk-confirm")
    assert page.inner_text(".confirm-count") == "Contacts affected: 11"
    console.submit("main form button.primary", "contacts-bulk-done")
    assert "Done: 11 contacts matched, 11 changed." in page.inner_text("main")
    assert page.locator(".contact-table tbody tr", has_text="Spring").count() == 11
    console.submit(".menu a:text-is('Tags')", "tags")
    assert page.locator(".tag-tree tbody tr", has_text="Spring").inner_text().split("\t")[1] == "11"
    console.submit(".tag-tree a:text-is('Spring')", "tag")
    assert page.inner_text("#tag-members") == "11"

    # A contact: bad attributes are refused beside the field, what was typed stays; then it is saved.
    console.visit("/contacts?q=p12", "contacts-one")
    console.submit(".contact-table a:text-is('p12@example.com')", "contact")
    assert page.input_value("#f-first_name") == "P12"
    page.fill("#f-company", "Acme")
    page.fill("#f-custom_attributes", "{city")
    console.submit("#edit button.primary", "contact-invalid", status=422)
    assert "Enter a JSON object of attributes" in page.inner_text("#f-custom_attributes-error")
    assert page.input_value("#f-company") == "Acme" and page.input_value("#f-custom_attributes") == "{city"
    page.fill("#f-custom_attributes", '{"city": "Paris"}')
    console.submit("#edit button.primary", "contact-saved")
    assert "The contact was saved." in page.inner_text("main")
    facts = page.inner_text("main .facts")
    assert "Acme" in facts and "Spring" in facts

    console.visit("/contacts/new", "contact-new")
    page.fill("#f-email", "not an address")
    page.fill("#f-first_name", "Kim")
    console.submit("main form button.primary", "contact-new-invalid", status=422)
    assert page.inner_text("#f-email-error") == "Enter a valid email address."
    assert page.input_value("#f-first_name") == "Kim"
