"""The console's senders, templates and media pages over the ASGI app (no browser): the forms' inline errors, what
was typed kept, and the refusals. tests/browser/test_content_pages.py and test_new_user_flow.py drive the same
pages in Chromium."""

from __future__ import annotations

import re

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.session import unit_of_work
from tests import factories
from tests.helpers import console_log_in, field_error, make_account, page_field
from tests.integration.test_media import PNG


async def test_senders_are_added_edited_and_deleted_with_errors_beside_their_fields(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    async with unit_of_work(sessionmaker) as session:
        await factories.sender(session, bob.id, local="taken")
    csrf = await console_log_in(client, alice)
    assert "No senders yet." in (await client.get("/senders")).text

    bad = await client.post(
        "/senders", data={"csrf_token": csrf, "local_part": "a..b", "display_name": "News", "reply_to": "nope"}
    )
    assert bad.status_code == 422
    assert field_error(bad.text, "local_part").startswith("Use 1 to 64 letters")
    assert page_field(bad.text, "local_part") == "a..b" and page_field(bad.text, "display_name") == "News"
    taken = await client.post("/senders", data={"csrf_token": csrf, "local_part": "Taken"})
    assert taken.status_code == 409 and field_error(taken.text, "local_part") == "This is already in use."
    empty = await client.post("/senders", data={"csrf_token": csrf, "local_part": ""})
    assert empty.status_code == 422 and field_error(empty.text, "local_part") == "This field is required."

    added = await client.post("/senders", data={"csrf_token": csrf, "local_part": "news", "display_name": "News"})
    assert added.status_code == 303 and added.headers["location"] == "/senders?notice=added"
    senders = (await client.get("/api/v1/senders", headers=alice.headers)).json()["items"]
    assert [(s["local_part"], s["display_name"]) for s in senders] == [("news", "News")]
    sender_id = senders[0]["id"]
    page = (await client.get("/senders?notice=added")).text
    assert "The sender was added." in page and f'href="/senders/{sender_id}"' in page

    edit = await client.get(f"/senders/{sender_id}")
    assert page_field(edit.text, "display_name") == "News"
    refused = await client.post(f"/senders/{sender_id}", data={"csrf_token": csrf, "local_part": "taken"})
    assert refused.status_code == 409 and page_field(refused.text, "local_part") == "taken"
    saved = await client.post(
        f"/senders/{sender_id}", data={"csrf_token": csrf, "local_part": "hello", "reply_to": "r@example.com"}
    )
    assert saved.status_code == 303
    got = (await client.get(f"/api/v1/senders/{sender_id}", headers=alice.headers)).json()
    assert (got["local_part"], got["display_name"], got["reply_to"]) == ("hello", None, "r@example.com")

    assert (await client.get(f"/senders/{sender_id}", headers={"Accept": "text/html"})).status_code == 200
    bobs = (await client.get("/api/v1/senders", headers=bob.headers)).json()["items"][0]["id"]
    assert (await client.get(f"/senders/{bobs}", headers={"Accept": "text/html"})).status_code == 404
    assert (await client.post(f"/senders/{bobs}/delete", data={"csrf_token": csrf})).status_code == 404

    deleted = await client.post(f"/senders/{sender_id}/delete", data={"csrf_token": csrf})
    assert deleted.status_code == 303 and deleted.headers["location"] == "/senders?notice=deleted"
    assert (await client.get("/api/v1/senders", headers=alice.headers)).json()["items"] == []


async def test_a_sender_in_use_is_not_deleted_and_the_list_says_why(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    async with unit_of_work(sessionmaker) as session:
        sender = await factories.sender(session, alice.id, local="busy")
        template = await factories.template(session, alice.id)
        await factories.task(
            session, alice.id, sender_id=sender, template_ids=[template], rule={"type": "all_contacts"}, schedule=False
        )
    csrf = await console_log_in(client, alice)
    refused = await client.post(f"/senders/{sender}/delete", data={"csrf_token": csrf})
    assert refused.status_code == 409 and "This is still in use." in refused.text
    assert len((await client.get("/api/v1/senders", headers=alice.headers)).json()["items"]) == 1


async def test_senders_are_paged_by_cursor(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    async with unit_of_work(sessionmaker) as session:
        for i in range(52):
            await factories.sender(session, alice.id, local=f"s{i:02d}")
    await console_log_in(client, alice)
    first = (await client.get("/senders")).text
    assert "s49" in first and "s50" not in first
    cursor = re.search(r'href="/senders\?cursor=([^"]+)" rel="next"', first)
    assert cursor is not None
    second = (await client.get(f"/senders?cursor={cursor.group(1)}")).text
    assert "s50" in second and "s51" in second and "s49" not in second and 'rel="next"' not in second


async def test_a_read_only_account_sees_senders_without_write_controls_and_its_posts_are_refused(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    reader = await make_account(sessionmaker, "reader", role="read_only")
    async with unit_of_work(sessionmaker) as session:
        sender = await factories.sender(session, reader.id, local="mine")
    csrf = await console_log_in(client, reader)
    page = (await client.get("/senders")).text
    assert "mine" in page and 'action="/senders"' not in page and "/delete" not in page
    for path in ("/senders", f"/senders/{sender}", f"/senders/{sender}/delete"):
        refused = await client.post(path, data={"csrf_token": csrf, "local_part": "x"})
        assert refused.status_code == 403, path


HTML_SOURCE = '<p>Hello {{ contact.first_name | default("there") }}</p><a href="https://example.com/x">x</a>'


async def test_a_template_is_created_and_saved_with_syntax_errors_beside_their_field(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    csrf = await console_log_in(client, alice)
    assert "No templates yet." in (await client.get("/templates")).text
    editor = await client.get("/templates/new")
    assert editor.status_code == 200 and "Write a subject and some HTML" in editor.text
    assert "style-src 'self' 'unsafe-inline'" in editor.headers["content-security-policy"]
    assert "{{ contact.first_name | default(&#39;there&#39;) }}" in editor.text, "the catalogue's filter example"

    fields = {"csrf_token": csrf, "name": "Welcome", "subject": "Hi {{ name }}", "inline_css": "on"}
    broken = await client.post("/templates/new", data={**fields, "html": "  <p>{{ oops </p>"})
    assert broken.status_code == 422
    assert field_error(broken.text, "html").startswith("HTML, line 1: syntax error.")
    assert "  &lt;p&gt;{{ oops &lt;/p&gt;</textarea>" in broken.text, "the source is kept as typed"
    assert page_field(broken.text, "name") == "Welcome"
    missing = await client.post("/templates/new", data={**fields, "subject": "", "html": HTML_SOURCE})
    assert missing.status_code == 422 and field_error(missing.text, "subject") == "This field is required."

    created = await client.post("/templates/new", data={**fields, "html": HTML_SOURCE})
    assert created.status_code == 303
    template_id = int(created.headers["location"].split("/")[2].split("?")[0])
    got = (await client.get(f"/api/v1/templates/{template_id}", headers=alice.headers)).json()
    assert (got["name"], got["html"], got["inline_css"]) == ("Welcome", HTML_SOURCE, True)
    page = (await client.get(created.headers["location"])).text
    assert "The template was created." in page and "Hello Jane" in page, "the sample contact's preview"
    assert "No unsubscribe link: a footer with one will be added." in page

    taken = await client.post("/templates/new", data={**fields, "html": HTML_SOURCE})
    assert taken.status_code == 409 and field_error(taken.text, "name") == "This is already in use."
    saved = await client.post(f"/templates/{template_id}", data={**fields, "name": "Welcome 2", "html": "<p>New</p>"})
    assert saved.status_code == 303
    assert (await client.get(f"/api/v1/templates/{template_id}", headers=alice.headers)).json()["name"] == "Welcome 2"
    listed = (await client.get("/templates?q=come")).text
    assert "Welcome 2" in listed and (await client.get("/templates?q=nothing")).text.count("Welcome 2") == 0
    deleted = await client.post(f"/templates/{template_id}/delete", data={"csrf_token": csrf})
    assert deleted.status_code == 303
    assert (await client.get(f"/api/v1/templates/{template_id}", headers=alice.headers)).status_code == 404


async def test_the_preview_pane_renders_for_a_contact_with_warnings_and_render_limits(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    async with unit_of_work(sessionmaker) as session:
        [contact] = await factories.contacts(session, alice.id, 1, prefix="ann-")
        [bobs] = await factories.contacts(session, bob.id, 1, prefix="bob-")
    csrf = await console_log_in(client, alice)
    html_source = "<p>{{ contact.email }} {{ contact.nickname }} {{ contact.company }}</p>"
    form = {"csrf_token": csrf, "subject": "Hi", "html": html_source}
    pane = await client.post("/templates/preview", data={**form, "contact_id": str(contact)})
    assert pane.status_code == 200 and pane.text.lstrip().startswith('<section id="preview"')
    assert 'sandbox=""' in pane.text and "ann-" in pane.text
    assert "Unknown variables show as nothing: contact.nickname" in pane.text
    assert "contact.company is empty for this contact." in pane.text
    other = await client.post("/templates/preview", data={**form, "contact_id": str(bobs)})
    assert "ann-" not in other.text and "bob-" not in other.text and 'id="preview-error"' in other.text
    slow = "{{ 'x' * 3000000 }}"  # refused before it runs: one value of more than 2 MB
    limit = await client.post("/templates/preview", data={**form, "html": slow})
    assert limit.status_code == 200 and "HTML stopped at a render limit" in limit.text
    assert (await client.post("/templates/preview", data={**form, "contact_id": ""})).status_code == 200


async def test_a_read_only_account_sees_templates_without_write_controls(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    reader = await make_account(sessionmaker, "reader", role="read_only")
    async with unit_of_work(sessionmaker) as session:
        template = await factories.template(session, reader.id, html="<p>Read me</p>")
    csrf = await console_log_in(client, reader)
    listed = (await client.get("/templates")).text
    assert "/delete" not in listed and "/templates/new" not in listed
    editor = (await client.get(f"/templates/{template}")).text
    assert 'id="editor"' not in editor and "/test-send" not in editor and "Read me" in editor
    for path in ("/templates/new", f"/templates/{template}", f"/templates/{template}/delete", "/templates/preview"):
        refused = await client.post(path, data={"csrf_token": csrf, "name": "x", "subject": "x", "html": "x"})
        assert refused.status_code == 403, path


async def test_images_are_uploaded_with_errors_beside_the_file_listed_and_deleted(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    reader = await make_account(sessionmaker, "reader", role="read_only")
    csrf = await console_log_in(client, alice)
    assert "No images yet." in (await client.get("/media")).text

    async def upload(name: str, data: bytes) -> httpx.Response:
        return await client.post("/media", data={"csrf_token": csrf}, files={"file": (name, data, "image/png")})

    text = await upload("fake.png", b"not an image at all")
    assert text.status_code == 422 and field_error(text.text, "file") == "Choose a JPEG, PNG or GIF image."
    empty = await upload("empty.png", b"")
    assert empty.status_code == 422 and field_error(empty.text, "file") == "The file is empty."
    none = await client.post("/media", data={"csrf_token": csrf}, files={"other": ("x.txt", b"x", "text/plain")})
    assert none.status_code == 422 and field_error(none.text, "file") == "Choose an image file."
    big = await upload("big.png", PNG + b"\x00" * (5 * 1024 * 1024))
    assert big.status_code == 413 and field_error(big.text, "file") == "The image is larger than 5 MB."
    assert (await client.get("/api/v1/media", headers=alice.headers)).json()["items"] == []

    done = await upload("dot.png", PNG)
    assert done.status_code == 303 and done.headers["location"] == "/media?notice=uploaded"
    [image] = (await client.get("/api/v1/media", headers=alice.headers)).json()["items"]
    page = (await client.get("/media?notice=uploaded")).text
    assert "The image was uploaded." in page and f'id="url-{image["id"]}">{image["url"]}</code>' in page
    path = image["url"].split("://", 1)[1].split("/", 1)[1]
    assert f'src="/{path}"' in page, "the thumbnail is served by this app"
    editor = (await client.get("/templates/new")).text
    assert f'data-insert-image="{image["url"]}"' in editor, "the editor's image picker"

    deleted = await client.post(f"/media/{image['id']}/delete", data={"csrf_token": csrf})
    assert deleted.status_code == 303
    assert (await client.get("/api/v1/media", headers=alice.headers)).json()["items"] == []

    csrf = await console_log_in(client, reader)
    page = (await client.get("/media")).text
    assert 'action="/media"' not in page
    refused = await client.post("/media", data={"csrf_token": csrf}, files={"file": ("dot.png", PNG, "image/png")})
    assert refused.status_code == 403


async def test_a_test_send_is_queued_and_the_daily_limit_is_said_beside_the_addresses(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice", credit=100)
    async with unit_of_work(sessionmaker) as session:
        await factories.sender(session, alice.id)
        template = await factories.template(session, alice.id)
    csrf = await console_log_in(client, alice)
    url = f"/templates/{template}/test-send"
    bad = await client.post(url, data={"csrf_token": csrf, "emails": "a@example.org, nope"})
    assert bad.status_code == 422 and field_error(bad.text, "emails") == "Enter 1 to 5 valid email addresses."
    assert page_field(bad.text, "emails") == "a@example.org, nope"
    five = ", ".join(f"t{i}@example.org" for i in range(5))
    for _ in range(10):
        queued = await client.post(url, data={"csrf_token": csrf, "emails": five})
        assert queued.status_code == 303 and queued.headers["location"].endswith("?notice=test_queued#test-send")
    sends = (await client.get("/api/v1/test-sends?limit=100", headers=alice.headers)).json()["items"]
    assert len(sends) == 10
    refused = await client.post(url, data={"csrf_token": csrf, "emails": "one@example.org"})
    assert refused.status_code == 429
    assert field_error(refused.text, "emails") == (
        "You have used today's 50 test recipients; the limit resets at midnight UTC."
    )


async def test_templates_are_paged_by_cursor_with_the_name_filter_kept(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    async with unit_of_work(sessionmaker) as session:
        for i in range(52):
            await factories.template(session, alice.id, name=f"promo {i:02d}")
        await factories.template(session, alice.id, name="other")
    await console_log_in(client, alice)
    first = (await client.get("/templates?q=promo")).text
    assert "promo 49" in first and "promo 50" not in first and "(52)" in first
    cursor = re.search(r'href="/templates\?cursor=([^"&]+)&amp;q=promo" rel="next"', first)
    assert cursor is not None, "the next page keeps the filter"
    second = (await client.get(f"/templates?cursor={cursor.group(1)}&q=promo")).text
    assert "promo 51" in second and "promo 49" not in second and "other" not in second
    assert 'rel="next"' not in second
