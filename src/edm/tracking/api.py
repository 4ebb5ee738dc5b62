"""EDM's public tracking endpoints (SPEC §10.3): the open pixel and one-click unsubscribe (RFC 8058), the URL
in every mail's `List-Unsubscribe` header.

`GET /u/{token}` shows a page with the masked address and a button and never unsubscribes (link scanners
prefetch GETs); `POST /u/{token}` — the mailbox provider's one-click request (`List-Unsubscribe=One-Click`,
form-encoded or multipart) or the page's button — records an `unsubscribed` event (source `tracking`) and
applies it in the same transaction, so the next claim already skips the address. No cookie, no CSRF token:
the signed token is the authority, and repeating the POST changes nothing.

Public and lean: plain HTML, no pydantic. Bad or unknown tokens get a neutral 404 page, never an error body
that says why.
"""

from __future__ import annotations

import base64
import html
import ipaddress
import logging
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, OperationalError

from edm import clock
from edm.events import apply as event_apply
from edm.events import ingest
from edm.events.vocabulary import EventType, NormalizedEvent
from edm.observability import mask_email
from edm.security.tokens import TokenData, verify_token
from edm.settings import Settings
from edm.tasks.models import SubTask
from edm.tracking.models import TrackedLink

log = logging.getLogger("edm.tracking")

router = APIRouter(include_in_schema=False)

# A 1×1 transparent GIF (43 bytes), the answer to every pixel request, valid token or not.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")

TEST_TOKEN = "test"  # the unsubscribe link of admin test sends (§8.2): a page, nothing recorded
MAX_BODY = 64 * 1024


@router.get("/t/o/{token}.gif")
async def open_pixel(token: str, request: Request) -> Response:
    """Always the GIF with `no-store` (§10.3), even for a bad token or a database hiccup; a valid token records
    an `opened` hit (each hit its own event), classified human or machine when the `events` job applies it."""
    data = _verified(request, token, "open")
    if data is not None:
        now = clock.utc_now()
        details = {"ip": truncated_ip(request.client.host if request.client else None)}
        event = NormalizedEvent(event_type=EventType.OPENED, provider_event="pixel", raw={"via": "t/o"},
                                occurred_at=now, subtask_id=str(data.subtask_id),
                                provider_event_id=f"open:{uuid.uuid4().hex}",
                                user_agent=(request.headers.get("user-agent") or "")[:300], details=details)
        await _record_hit(request, event, now)
    return Response(PIXEL, media_type="image/gif", headers={"Cache-Control": "no-store, max-age=0"})


async def _record_hit(request: Request, event: NormalizedEvent, now: Any) -> None:
    """Store one tracking hit; a database hiccup loses the hit, never the visitor's answer."""
    try:
        async with request.app.state.sessionmaker() as session, session.begin():
            await ingest.store(session, [ingest.event_row("tracking", None, event, now=now)])
    except (OperationalError, DBAPIError, OSError):
        log.warning("tracking.hit_not_recorded", extra={"event_type": str(event.event_type)})


def truncated_ip(address: str | None) -> str | None:
    """IPv4 to its /24, IPv6 to its /48 (§10.4): enough to recognise a scanner's network, not a person."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


@router.get("/t/c/{token}")
async def click(token: str, request: Request) -> Response:
    """302 to the link's stored URL only when the token is valid and the link belongs to the SubTask's task;
    anything else is a 404 page, never a redirect (there is no URL in the request to be open-redirected to)."""
    data, url = await _clicked_link(request, token)
    if data is None or url is None:
        return _link_not_valid()
    now = clock.utc_now()
    event = NormalizedEvent(event_type=EventType.CLICKED, provider_event="click", raw={"via": "t/c"},
                            occurred_at=now, subtask_id=str(data.subtask_id), url=url,
                            provider_event_id=f"click:{uuid.uuid4().hex}",
                            user_agent=(request.headers.get("user-agent") or "")[:300],
                            details={"link_id": data.link_id,
                                     "ip": truncated_ip(request.client.host if request.client else None)})
    await _record_hit(request, event, now)  # the person still gets where they clicked
    return Response(status_code=302, headers={"Location": url, "Cache-Control": "no-store"})


@router.head("/t/c/{token}")
async def click_head(token: str, request: Request) -> Response:
    """The same answer as GET, recording nothing (link checkers and previews send HEAD)."""
    _, url = await _clicked_link(request, token)
    if url is None:
        return Response(status_code=404)
    return Response(status_code=302, headers={"Location": url, "Cache-Control": "no-store"})


async def _clicked_link(request: Request, token: str) -> tuple[TokenData | None, str | None]:
    """The token's data and its link's URL, when the link belongs to the task of the token's SubTask."""
    data = _verified(request, token, "click")
    if data is None or data.link_id is None:
        return None, None
    async with request.app.state.sessionmaker() as session:
        url = await session.scalar(
            select(TrackedLink.url).join(SubTask, SubTask.task_id == TrackedLink.task_id)
            .where(TrackedLink.id == data.link_id, SubTask.public_id == data.subtask_id))
    return data, url


def _link_not_valid() -> HTMLResponse:
    return _page("Link not valid", "This link is not valid.", status=404)


@router.get("/u/{token}")
async def unsubscribe_page(token: str, request: Request) -> HTMLResponse:
    if token == TEST_TOKEN:
        return _page("Test message", "This link came in a test message. Nothing was recorded.")
    found = await _subtask_of(request, token)
    if found is None:
        return _not_valid()
    return _page("Unsubscribe", f"Stop receiving these emails at <b>{html.escape(mask_email(found[1]))}</b>?",
                 button=True)


@router.post("/u/{token}")
async def one_click_unsubscribe(token: str, request: Request) -> HTMLResponse:
    await _drain(request)  # `List-Unsubscribe=One-Click` or the page's button: the token alone decides
    if token == TEST_TOKEN:
        return _page("Test message", "This link came in a test message. Nothing was recorded.")
    found = await _subtask_of(request, token)
    if found is None:
        return _not_valid()
    public_id, recipient = found
    settings: Settings = request.app.state.settings
    now = clock.utc_now()
    event = NormalizedEvent(event_type=EventType.UNSUBSCRIBED, provider_event="one_click", raw={"via": "u"},
                            occurred_at=now, subtask_id=public_id, recipient=recipient,
                            provider_event_id=f"unsubscribe:{public_id}")  # once per SubTask: idempotent
    async with request.app.state.sessionmaker() as session, session.begin():
        inserted = await ingest.store_returning_ids(session, [ingest.event_row("tracking", None, event, now=now)])
        if inserted:
            await event_apply.apply_pending(session, now=now, only_ids=inserted, limit=len(inserted),
                                            simulated_matches_any=settings.fake_provider_allowed)
    return _page("Unsubscribed", f"<b>{html.escape(mask_email(recipient))}</b> will receive no more of these "
                 "emails.")


def _verified(request: Request, token: str, purpose: str) -> TokenData | None:
    settings: Settings = request.app.state.settings
    keys = [settings.signing_key] + ([settings.secret_key_previous.encode()] if settings.secret_key_previous else [])
    return verify_token(token, purpose, keys=keys) if len(token) <= 200 else None


async def _subtask_of(request: Request, token: str) -> tuple[str, str] | None:
    data = _verified(request, token, "unsubscribe")
    if data is None:
        return None
    async with request.app.state.sessionmaker() as session:
        recipient = await session.scalar(select(SubTask.recipient_email).where(SubTask.public_id == data.subtask_id))
    return None if recipient is None else (str(data.subtask_id), recipient)


async def _drain(request: Request) -> None:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            break


def _not_valid() -> HTMLResponse:
    return _page("Link not valid", "This unsubscribe link is not valid.", status=404)


def _page(title: str, message: str, *, button: bool = False, status: int = 200) -> HTMLResponse:
    form = ('<form method="post"><button type="submit">Unsubscribe</button></form>' if button else "")
    body = (f'<!doctype html><html><head><meta charset="utf-8"><meta name="robots" content="noindex">'
            f"<title>{html.escape(title)}</title></head><body style=\"font-family:sans-serif;max-width:32em;"
            f'margin:4em auto"><h1>{html.escape(title)}</h1><p>{message}</p>{form}</body></html>')
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


