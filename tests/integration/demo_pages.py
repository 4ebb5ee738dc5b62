"""Shared by the demo mailbox and offline-page tests: the app as `edm demo` runs it (demo mailbox on), and a
real SMTP sink's store filled with a hostile HTML message and a text-only one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from edm.app import create_app
from edm.devtools.smtp_sink import SmtpSink
from tests.helpers import settings_for

HOST = "edm.test"
HOSTILE_SUBJECT = '<script>alert("subject")</script> & "quotes"'
HOSTILE_NAME = "<img src=x onerror=alert(1)>"
HOSTILE_HTML = (
    '<html><head><link rel="stylesheet" href="https://fonts.example.net/font.css">'
    '<style>@import url("https://cdn.example.net/x.css");</style></head><body>'
    '<h1>Spring sale</h1><img src="https://tracker.example.net/pixel.gif">'
    "<script>document.title='pwned'</script><p>Only in HTML</p></body></html>"
)
PLAIN_TEXT = "Only in the text part: 5 < 6 & <b>not bold</b>"
ATTACHMENT_NAME = "price<list>.pdf"
ATTACHMENT = b"%PDF-1.4 demo attachment"
TERMINAL_ESCAPE = "\x1b]0;owned\x07\x1b[31m"  # would retitle and recolour a terminal that printed it


def hostile_message() -> EmailMessage:
    message = EmailMessage()
    message["From"] = f'"{HOSTILE_NAME}" <news@mail.example.com>'
    message["To"] = "person@example.org"
    message["Subject"] = HOSTILE_SUBJECT
    message.set_content(PLAIN_TEXT)
    message.add_alternative(HOSTILE_HTML, subtype="html")
    message.add_attachment(ATTACHMENT, maintype="application", subtype="pdf", filename=ATTACHMENT_NAME)
    return message


def text_only_message() -> EmailMessage:
    message = EmailMessage()
    message["From"] = "news@mail.example.com"
    message["To"] = "other@example.org"
    message["Subject"] = f"Plain one {TERMINAL_ESCAPE}"
    message.set_content(f"Just text. {TERMINAL_ESCAPE}")
    return message


async def fill_mailbox(directory: Path) -> None:
    """Message 1: hostile_message(); message 2: text_only_message(); both sent over SMTP to a real sink."""
    async with SmtpSink(store_dir=directory) as sink:
        for message in (hostile_message(), text_only_message()):
            await aiosmtplib.send(message, hostname=sink.host, port=sink.port)


@dataclass
class DemoApp:
    app: FastAPI
    client: httpx.AsyncClient


@asynccontextmanager
async def demo_app(db_url: str, engine: AsyncEngine, mailbox_dir: Path) -> AsyncIterator[DemoApp]:
    """The ASGI app with the demo's settings and mailbox, and a client talking to it."""
    app = create_app(settings_for(db_url, env="demo"), engine=engine)
    app.state.mailbox_dir = mailbox_dir
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{HOST}") as client:
            yield DemoApp(app, client)
