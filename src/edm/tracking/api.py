"""One-click unsubscribe (SPEC §10.3, RFC 8058): the URL in every mail's `List-Unsubscribe` header.

`GET /u/{token}` shows a page with the masked address and a button and never unsubscribes (link scanners
prefetch GETs); `POST /u/{token}` — the mailbox provider's one-click request (`List-Unsubscribe=One-Click`,
form-encoded or multipart) or the page's button — records an `unsubscribed` event (source `tracking`) and
applies it in the same transaction, so the next claim already skips the address. No cookie, no CSRF token:
the signed token is the authority, and repeating the POST changes nothing.

Public and lean: plain HTML, no pydantic. Bad or unknown tokens get a neutral 404 page, never an error body
that says why.
"""

from __future__ import annotations

import html

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from edm import clock
from edm.events import apply as event_apply
from edm.events import ingest
from edm.events.vocabulary import EventType, NormalizedEvent
from edm.observability import mask_email
from edm.security.tokens import verify_token
from edm.settings import Settings
from edm.tasks.models import SubTask

router = APIRouter(include_in_schema=False)

TEST_TOKEN = "test"  # the unsubscribe link of admin test sends (§8.2): a page, nothing recorded
MAX_BODY = 64 * 1024


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


async def _subtask_of(request: Request, token: str) -> tuple[str, str] | None:
    settings: Settings = request.app.state.settings
    keys = [settings.signing_key] + ([settings.secret_key_previous.encode()] if settings.secret_key_previous else [])
    data = verify_token(token, "unsubscribe", keys=keys) if len(token) <= 200 else None
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


