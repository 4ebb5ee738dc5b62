"""Demo mailbox (demo/development/test only): the messages the local SMTP sink captured, and each one opened.

Captured mail is untrusted content. Every value put into these pages is HTML-escaped, the pages themselves run
no script and load nothing from another host (their Content-Security-Policy says so to the browser too), and a
message's HTML part is shown only inside a sandboxed frame (no scripts, no forms, an opaque origin) whose
document is served with a policy that blocks every remote load: images, styles and fonts from elsewhere never
leave the browser, just as a careful mail client blocks remote content by default.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from edm.devtools.smtp_sink import StoredMessage, format_received, list_stored, read_stored
from edm.errors import NotFound

router = APIRouter(prefix="/demo", include_in_schema=False)

LIST_LIMIT = 500
# Our own pages: inline styles, frames from this server, nothing else (no script at all).
PAGE_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; frame-src 'self'; "
    "base-uri 'none'; form-action 'none'"
)
# A message's HTML part: its inline styles and data: images only; `sandbox` also applies when the frame's URL is
# opened on its own, outside the page's sandboxed iframe.
MESSAGE_HTML_POLICY = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'self'; sandbox"
)
NOT_HERE = (
    "Mail sent through the simulated ESP (the <code>fake</code> service) does not arrive here: it only "
    "simulates an ESP's answers and its delivery, bounce and complaint reports. This mailbox shows what the "
    "SMTP services handed to the local SMTP sink."
)
STYLE = """body{font-family:sans-serif;margin:2em;color:#222}
table{border-collapse:collapse}td,th{padding:3px 8px;border-bottom:1px solid #ddd;font-size:13px;text-align:left;
vertical-align:top}.note{background:#f6f6e8;border:1px solid #e0e0c0;padding:.5em 1em;max-width:60em}
pre{background:#f7f7f7;border:1px solid #ddd;padding:1em;white-space:pre-wrap;word-break:break-all;max-height:40em;
overflow:auto}iframe{width:100%;height:32em;border:1px solid #aaa;resize:vertical}code{font-size:12px}"""


def _directory(request: Request) -> Path | None:
    directory = getattr(request.app.state, "mailbox_dir", None)
    return Path(directory) if directory is not None else None


def _messages(request: Request) -> list[dict[str, Any]]:
    directory = _directory(request)
    return list_stored(directory) if directory is not None else []


def _message(request: Request, number: int) -> StoredMessage:
    directory = _directory(request)
    message = read_stored(directory, number) if directory is not None else None
    if message is None:
        raise NotFound(f"no message {number} in the demo mailbox")
    return message


def _page(title: str, body: str, *, refresh: bool = False) -> HTMLResponse:
    meta = '<meta http-equiv="refresh" content="3">' if refresh else ""
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>{meta}'
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )
    return HTMLResponse(
        page,
        headers={
            "Content-Security-Policy": PAGE_POLICY,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


@router.get("/mailbox.json")
async def mailbox_json(request: Request) -> dict[str, object]:
    messages = _messages(request)
    return {
        "count": len(messages),
        "items": [
            {
                "number": m["number"],
                "from": m["from"],
                "to": m["to"],
                "subject": m["subject"],
                "subtask_id": m["subtask_id"],
                "received_at": format_received(m["received_at"]),
                "url": f"/demo/mailbox/{m['number']}",
            }
            for m in messages[-200:]
        ],
    }


@router.get("/mailbox")
async def mailbox(request: Request) -> HTMLResponse:
    messages = _messages(request)
    rows = "".join(
        f"<tr><td>{m['number']}</td><td>{_e(format_received(m['received_at']))}</td><td>{_e(m['from'])}</td>"
        f'<td>{_e(m["to"])}</td><td><a href="/demo/mailbox/{m["number"]}">{_e(m["subject"] or "(no subject)")}'
        f"</a></td><td><code>{_e(m['subtask_id'])}</code></td></tr>"
        for m in reversed(messages[-LIST_LIMIT:])
    )
    shown = f" (the newest {LIST_LIMIT} are listed)" if len(messages) > LIST_LIMIT else ""
    return _page(
        "EDM demo mailbox",
        f"""<h1>Demo mailbox</h1>
<p>{len(messages)} messages captured by the local SMTP sink{shown}; newest first, refreshed every 3 s.
Open a subject to read the message.</p><p class="note">{NOT_HERE}</p>
<table><tr><th>#</th><th>received</th><th>from</th><th>to</th><th>subject</th><th>X-EDM-SubTask-Id</th></tr>{rows}
</table>""",
        refresh=True,
    )


@router.get("/mailbox/{number}")
async def mailbox_message(number: int, request: Request) -> HTMLResponse:
    m = _message(request, number)
    headers = "".join(f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>" for name, value in m.headers)
    attachments = (
        "".join(
            f"<li>{_e(a.filename or '(no name)')} — {_e(a.content_type)}, {a.size} bytes</li>" for a in m.attachments
        )
        or "<li>none</li>"
    )
    html_part = (
        f'<iframe sandbox="" src="/demo/mailbox/{m.number}/html" title="HTML part" '
        'referrerpolicy="no-referrer"></iframe><p><small>Shown in a sandboxed frame: no scripts, remote '
        "images and other remote content blocked.</small></p>"
        if m.html is not None
        else "<p>This message has no HTML part.</p>"
    )
    text_part = f"<pre>{_e(m.text)}</pre>" if m.text is not None else "<p>This message has no text part.</p>"
    neighbours = []
    if m.number > 1:
        neighbours.append(f'<a href="/demo/mailbox/{m.number - 1}">previous</a>')
    if m.number < m.count:
        neighbours.append(f'<a href="/demo/mailbox/{m.number + 1}">next</a>')
    return _page(
        f"Message {m.number}: {m.subject or '(no subject)'}",
        f"""
<p><a href="/demo/mailbox">← demo mailbox</a> {" · ".join(neighbours)}</p>
<h1>{_e(m.subject or "(no subject)")}</h1>
<p>Message {m.number} of {m.count}, received {_e(format_received(m.received_at))}.</p>
<h2>Headers</h2><table>{headers}</table>
<h2>Attachments</h2><ul>{attachments}</ul>
<h2>HTML part</h2>{html_part}
<h2>Text part</h2>{text_part}
<h2>Source</h2><p><a href="/demo/mailbox/{m.number}/raw">Download the message as received (.eml)</a></p>
<pre>{_e(m.raw.decode("utf-8", "replace"))}</pre>""",
    )


@router.get("/mailbox/{number}/html")
async def mailbox_message_html(number: int, request: Request) -> Response:
    m = _message(request, number)
    if m.html is None:
        raise NotFound(f"message {number} has no HTML part")
    return HTMLResponse(
        m.html,
        headers={
            "Content-Security-Policy": MESSAGE_HTML_POLICY,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


@router.get("/mailbox/{number}/raw")
async def mailbox_message_raw(number: int, request: Request) -> Response:
    m = _message(request, number)
    return Response(
        m.raw,
        media_type="message/rfc822",
        headers={
            "Content-Disposition": f'attachment; filename="demo-message-{m.number}.eml"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )
