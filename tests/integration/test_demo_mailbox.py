"""The demo mailbox opens messages: list → open → headers, the HTML part in a sandboxed frame that loads
nothing remote, the text part, attachments and the raw source, every captured value escaped; and the same
through `edm mailbox` / `edm mailbox show N`."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from edm.cli.main import app as cli
from tests.integration.demo_pages import (
    ATTACHMENT,
    ATTACHMENT_NAME,
    HOSTILE_HTML,
    HOSTILE_NAME,
    HOSTILE_SUBJECT,
    PLAIN_TEXT,
    TERMINAL_ESCAPE,
    DemoApp,
    demo_app,
    fill_mailbox,
)

READABLE_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")
EPOCH = re.compile(r"\b1\d{9}\.\d+\b")  # a float like 1733457600.123 where a date belongs


class Tags(HTMLParser):
    """Start tags of a page with their attributes, and its text with entities decoded."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def named(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


@pytest.fixture
async def mailbox_dir(tmp_path: Path) -> Path:
    await fill_mailbox(tmp_path / "mailbox")
    return tmp_path / "mailbox"


@pytest.fixture
async def demo(db_url: str, engine: AsyncEngine, mailbox_dir: Path) -> AsyncIterator[DemoApp]:
    async with demo_app(db_url, engine, mailbox_dir) as running:
        yield running


def assert_escaped(page: str) -> None:
    """Captured values appear only as text: no tag of theirs made it into the page."""
    assert "<script" not in page.lower(), "our pages have no script: any is injected"
    assert HOSTILE_NAME not in page and "<b>not bold" not in page
    tags = Tags(page)
    assert not any(attrs.get("onerror") for _, attrs in tags.tags)


async def test_the_list_opens_each_message(demo: DemoApp) -> None:
    listing = await demo.client.get("/demo/mailbox")
    assert listing.status_code == 200
    assert_escaped(listing.text)
    tags = Tags(listing.text)
    links = [a["href"] for a in tags.named("a")]
    assert links == ["/demo/mailbox/2", "/demo/mailbox/1"], "newest first, each row opens its message"
    assert HOSTILE_SUBJECT in "".join(tags.text), "the subject is shown as text, escaped"
    assert len(READABLE_TIME.findall(listing.text)) == 2 and not EPOCH.search(listing.text)
    assert "simulated ESP" in listing.text and "does not arrive here" in listing.text
    assert "default-src 'none'" in listing.headers["content-security-policy"]

    opened = await demo.client.get(links[1])
    assert opened.status_code == 200
    assert_escaped(opened.text)
    text = "".join(Tags(opened.text).text)
    assert HOSTILE_SUBJECT in text and HOSTILE_NAME in text, "subject and From shown, as text"
    assert PLAIN_TEXT in text, "the text part, escaped"
    assert "Return-Path" in text and "Content-Transfer-Encoding" in text, "the raw source"
    assert f"{ATTACHMENT_NAME} — application/pdf, {len(ATTACHMENT)} bytes" in text
    assert READABLE_TIME.search(text) and "Message 1 of 2" in text
    [frame] = Tags(opened.text).named("iframe")
    assert frame["sandbox"] == "", "sandboxed with no exception: no scripts, no forms, no same origin"
    assert frame["src"] == "/demo/mailbox/1/html"
    assert "<h1>Spring sale" not in opened.text, "the HTML part is rendered only inside the frame"


async def test_the_html_part_is_served_sandboxed_and_loads_nothing_remote(demo: DemoApp) -> None:
    part = await demo.client.get("/demo/mailbox/1/html")
    assert part.status_code == 200 and part.headers["content-type"].startswith("text/html")
    assert part.text.strip() == HOSTILE_HTML, "the message's own HTML, unchanged: the browser's policy contains it"
    policy = [directive.strip() for directive in part.headers["content-security-policy"].split(";")]
    assert "default-src 'none'" in policy and "sandbox" in policy, "blocks every load and script, even opened alone"
    assert "img-src data:" in policy and "style-src 'unsafe-inline'" in policy
    assert not any(d.startswith("script-src") for d in policy)
    assert part.headers["x-content-type-options"] == "nosniff"


async def test_the_raw_source_downloads_as_received(demo: DemoApp, mailbox_dir: Path) -> None:
    raw = await demo.client.get("/demo/mailbox/1/raw")
    assert raw.status_code == 200 and raw.headers["content-type"] == "message/rfc822"
    assert raw.headers["content-disposition"] == 'attachment; filename="demo-message-1.eml"'
    assert raw.content == sorted(mailbox_dir.glob("*.eml"))[0].read_bytes()


async def test_a_text_only_message_and_missing_ones(demo: DemoApp) -> None:
    plain = await demo.client.get("/demo/mailbox/2")
    assert plain.status_code == 200 and "no HTML part" in plain.text and not Tags(plain.text).named("iframe")
    assert "Just text." in plain.text
    for path in ("/demo/mailbox/2/html", "/demo/mailbox/3", "/demo/mailbox/0", "/demo/mailbox/3/raw"):
        missing = await demo.client.get(path)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found", path
    bad = await demo.client.get("/demo/mailbox/first")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"


async def test_the_json_listing_has_dates_and_links(demo: DemoApp) -> None:
    listing = (await demo.client.get("/demo/mailbox.json")).json()
    assert listing["count"] == 2
    first = listing["items"][0]
    assert first["number"] == 1 and first["url"] == "/demo/mailbox/1" and first["subject"] == HOSTILE_SUBJECT
    assert READABLE_TIME.fullmatch(first["received_at"])


def test_the_cli_lists_and_shows_a_message(mailbox_dir: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(cli, ["mailbox", "--directory", str(mailbox_dir)])
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split()[0] == "1" and READABLE_TIME.search(lines[0]) and HOSTILE_SUBJECT in lines[0]
    assert lines[-1] == f"2 messages in {mailbox_dir}"

    shown = runner.invoke(cli, ["mailbox", "show", "1", "--directory", str(mailbox_dir)])
    assert shown.exit_code == 0, shown.output
    assert f"Subject: {HOSTILE_SUBJECT}" in shown.stdout and f'From: "{HOSTILE_NAME}"' in shown.stdout
    assert f"attachments: {ATTACHMENT_NAME} (application/pdf, {len(ATTACHMENT)} bytes)" in shown.stdout
    assert PLAIN_TEXT in shown.stdout and "Spring sale" not in shown.stdout
    as_html = runner.invoke(cli, ["mailbox", "show", "1", "--html", "--directory", str(mailbox_dir)])
    assert "<h1>Spring sale</h1>" in as_html.stdout
    raw = runner.invoke(cli, ["mailbox", "show", "1", "--raw", "--directory", str(mailbox_dir)])
    assert raw.stdout_bytes == sorted(mailbox_dir.glob("*.eml"))[0].read_bytes()


def test_the_cli_keeps_terminal_escapes_out_and_refuses_unknown_numbers(mailbox_dir: Path) -> None:
    assert TERMINAL_ESCAPE.encode() in sorted(mailbox_dir.glob("*.eml"))[1].read_bytes(), "what arrived has them"
    runner = CliRunner()
    for args in (["mailbox"], ["mailbox", "show", "2"]):
        result = runner.invoke(cli, [*args, "--directory", str(mailbox_dir)])
        assert result.exit_code == 0 and "Plain one" in result.stdout
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout, args
    missing = runner.invoke(cli, ["mailbox", "show", "7", "--directory", str(mailbox_dir)])
    assert missing.exit_code == 2
    assert missing.stderr.strip() == f"error: no message 7 in {mailbox_dir}: it holds 2 messages (1–2)"
