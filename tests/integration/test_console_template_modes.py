"""The template editor's three modes over one stored HTML (docs/templates.md#editor-modes), over the ASGI app: Markdown
converted on the server with its Jinja kept and raw HTML escaped, the source and the mode stored and reopened, the
preview of unsaved Markdown, and bad input refused beside its field (422, never 500). The same rules through
`/api/v1/templates`. tests/browser/test_template_modes.py drives the modes in Chromium."""

from __future__ import annotations

import html
import re
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.content.markdown import markdown_to_html
from tests.helpers import Account, console_log_in, expect_error, field_error, make_account

API = "/api/v1"
MARKDOWN = '# Hello {{ contact.first_name | default("there") }}\n\nSee [the shop]({{ unsubscribe_url }}) *now*.\n'


def _textarea(page: str, name: str) -> str:
    found = re.search(rf'<textarea id="f-{name}" name="{name}"[^>]*>\n(.*?)</textarea>', page, re.DOTALL)
    assert found is not None, f"no {name} text area"
    return html.unescape(found.group(1))


def _checked_mode(page: str) -> str:
    found = re.findall(r'<input type="radio" name="editor" id="m-(\w+)" value="\w+" checked>', page)
    assert len(found) == 1, found
    return found[0]


def _form(csrf: str, **fields: str) -> dict[str, str]:
    return {"csrf_token": csrf, "name": "Welcome", "subject": "Hi", "inline_css": "on", **fields}


async def _templates(client: httpx.AsyncClient, who: Account) -> list[dict[str, Any]]:
    items = (await client.get(f"{API}/templates", headers=who.headers)).json()["items"]
    return [(await client.get(f"{API}/templates/{t['id']}", headers=who.headers)).json() for t in items]


def test_markdown_keeps_jinja_and_escapes_raw_html() -> None:
    out = markdown_to_html(
        MARKDOWN + "\n<script>alert(1)</script> <b onclick=x>b</b> [x](javascript:alert(1))\n\n"
        "{% if contact.attributes.plan > 1 %}Paid{% endif %} {{ a * 2 }} {# note #}\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n"
    )
    assert '<h1>Hello {{ contact.first_name | default("there") }}</h1>' in out
    assert '<a href="{{ unsubscribe_url }}">the shop</a> <em>now</em>' in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &lt;b onclick=x&gt;b&lt;/b&gt;" in out and "<script" not in out
    assert "javascript:" not in out.replace("[x](javascript:alert(1))", "")  # not made a link
    assert "{% if contact.attributes.plan > 1 %}Paid{% endif %} {{ a * 2 }} {# note #}" in out
    assert "<table>" in out and "<td>2</td>" in out


async def test_markdown_is_converted_stored_reopened_and_previewed(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    ann = await make_account(sessionmaker, "ann")
    csrf = await console_log_in(client, ann)

    preview = await client.post(
        "/templates/preview",
        data=_form(csrf, editor="markdown", markdown="Dear **{{ contact.first_name }}**", html="<p>ignored</p>"),
    )
    assert preview.status_code == 200
    assert "Dear &lt;strong&gt;Jane&lt;/strong&gt;" in preview.text and "ignored" not in preview.text

    created = await client.post("/templates/new", data=_form(csrf, editor="markdown", markdown=MARKDOWN, html="x"))
    assert created.status_code == 303, created.text
    [stored] = await _templates(client, ann)
    assert stored["editor"] == "markdown" and stored["markdown"] == MARKDOWN
    assert stored["html"] == markdown_to_html(MARKDOWN)

    page = (await client.get(f"/templates/{stored['id']}")).text
    assert _checked_mode(page) == "markdown" and _textarea(page, "markdown") == MARKDOWN
    assert re.search(r'<div id="html-source" class="editor-source" hidden', page)
    assert _textarea(page, "html") == stored["html"]  # kept in the form: switching to HTML starts from it
    assert "Hello Jane" in page  # the editor's own preview, for sample data

    converted = await client.post("/templates/markdown", data={"csrf_token": csrf, "markdown": "*{{ x }}* <i>"})
    assert converted.status_code == 200 and converted.text == "<p><em>{{ x }}</em> &lt;i&gt;</p>\n"
    assert (await client.post("/templates/markdown", data={"markdown": "x"})).status_code == 403

    # Saved as HTML: the Markdown source is dropped and the template opens in HTML mode from then on.
    saved = await client.post(
        f"/templates/{stored['id']}", data=_form(csrf, editor="html", html="<p>{{ name }}</p>", markdown=MARKDOWN)
    )
    assert saved.status_code == 303
    [stored] = await _templates(client, ann)
    assert (stored["editor"], stored["markdown"], stored["html"]) == ("html", None, "<p>{{ name }}</p>")
    assert _checked_mode((await client.get(f"/templates/{stored['id']}")).text) == "html"


async def test_rich_text_is_remembered_unless_the_html_would_lose_markup(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    ann = await make_account(sessionmaker, "ann")
    csrf = await console_log_in(client, ann)
    created = await client.post(
        "/templates/new", data=_form(csrf, editor="rich", html='<p>Hi <strong>you</strong></p><img src="x" alt="y">')
    )
    assert created.status_code == 303
    [stored] = await _templates(client, ann)
    assert (stored["editor"], stored["markdown"]) == ("rich", None)
    assert _checked_mode((await client.get(f"/templates/{stored['id']}")).text) == "rich"

    # Changed through the API into HTML rich text would rewrite: the editor opens it in HTML mode.
    table = '<table><tr><td style="color: red">{% if x %}1{% endif %}</td></tr></table>'
    patched = await client.patch(f"{API}/templates/{stored['id']}", json={"html": table}, headers=ann.headers)
    assert patched.status_code == 200 and patched.json()["editor"] == "rich"
    assert _checked_mode((await client.get(f"/templates/{stored['id']}")).text) == "html"
    # An unknown mode from a hand-made form is HTML.
    odd = await client.post(f"/templates/{stored['id']}", data=_form(csrf, editor="wysiwyg", html="<p>x</p>"))
    assert odd.status_code == 303
    assert (await _templates(client, ann))[0]["editor"] == "html"


@pytest.mark.parametrize(
    ("markdown", "message"),
    [
        ("", "This field is required."),
        ("   \n", "Write some Markdown first."),
        ("Hi {% if x %}never closed", "HTML, line 1: syntax error."),
        ("Hi {{ contact.first_name", "HTML, line 1: syntax error."),
        ("a\x00b", "This value is not valid."),
        ("[" * (64 * 1024 + 1), "Use at most 65536 characters."),
    ],
)
async def test_bad_markdown_is_refused_beside_its_field_with_what_was_typed(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], markdown: str, message: str
) -> None:
    ann = await make_account(sessionmaker, "ann")
    csrf = await console_log_in(client, ann)
    refused = await client.post("/templates/new", data=_form(csrf, editor="markdown", markdown=markdown))
    assert refused.status_code == 422
    assert field_error(refused.text, "markdown").startswith(message)
    assert _checked_mode(refused.text) == "markdown"
    if "\x00" not in markdown and len(markdown) < 1000:
        assert _textarea(refused.text, "markdown") == markdown
    assert await _templates(client, ann) == []


async def test_the_api_takes_markdown_or_html(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    ann = await make_account(sessionmaker, "ann")
    body = {"name": "Md", "subject": "Hi", "markdown": "Hi <b>{{ name }}</b>"}
    r = await client.post(f"{API}/templates", json=body, headers=ann.headers)
    assert r.status_code == 201, r.text
    made = r.json()
    assert (made["editor"], made["html"]) == ("markdown", "<p>Hi &lt;b&gt;{{ name }}&lt;/b&gt;</p>\n")

    copy = (await client.post(f"{API}/templates/{made['id']}/duplicate", json={}, headers=ann.headers)).json()
    assert (copy["markdown"], copy["html"], copy["editor"]) == (made["markdown"], made["html"], "markdown")

    for bad, field in (
        ({**body, "name": "Both", "html": "<p>x</p>"}, "markdown"),
        ({"name": "None", "subject": "Hi"}, "html"),
        ({"name": "Mode", "subject": "Hi", "html": "<p>x</p>", "editor": "markdown"}, "markdown"),
        ({**body, "name": "Mode2", "editor": "rich"}, "editor"),
        ({**body, "name": "Odd", "editor": "word"}, "editor"),
        ({**body, "name": "Empty", "markdown": ""}, "markdown"),
        ({**body, "name": "Syntax", "markdown": "{% for %}"}, "html"),
    ):
        r = await client.post(f"{API}/templates", json=bad, headers=ann.headers)
        details = r.json()["error"].get("details", [])
        assert r.status_code == 422 and field in [d["field"] for d in details], (bad, r.text)

    url = f"{API}/templates/{made['id']}"
    r = await client.patch(url, json={"markdown": "*new*"}, headers=ann.headers)
    assert r.status_code == 200 and r.json()["html"] == "<p><em>new</em></p>\n"
    r = await client.patch(url, json={"editor": "markdown"}, headers=ann.headers)
    assert r.status_code == 200 and r.json()["markdown"] == "*new*"
    r = await client.patch(url, json={"html": "<p>direct</p>"}, headers=ann.headers)
    assert (r.json()["markdown"], r.json()["editor"]) == (None, "html")
    expect_error(await client.patch(url, json={"editor": "markdown"}, headers=ann.headers), 422, "validation_error")
    r = await client.patch(url, json={"editor": "rich"}, headers=ann.headers)
    assert (r.json()["editor"], r.json()["html"]) == ("rich", "<p>direct</p>")
