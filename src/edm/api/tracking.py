"""EDM's public tracking endpoints (docs/tracking.md#public-endpoints): the open pixel, the click redirect, and
one-click unsubscribe (RFC 8058), the URL in every mail's `List-Unsubscribe` header.

`GET /u/{token}` shows a page with the masked address and a button and never unsubscribes (link scanners
prefetch GETs); `POST /u/{token}` — the mailbox provider's one-click request (`List-Unsubscribe=One-Click`,
form-encoded or multipart) or the page's button — records an `unsubscribed` event (source `tracking`) and
applies it in the same transaction, so the next claim already skips the address. No cookie, no CSRF token:
the signed token is the authority, and repeating the POST changes nothing.

When the SubTask is gone because its task was deleted, the unsubscribe link falls back to the SubTask's
tombstone (docs/tracking.md#after-a-task-is-deleted, `tracking.tombstones`) for 365 days: the page still shows
the masked address and the POST still suppresses the address and marks the contact.

Public and lean: no pydantic. The pages are the console's public pages (`edm.console.public`, in the browser's
language), which `edm.app` hands over as `app.state.public_page`: this layer cannot import the console. Bad or
unknown tokens get a neutral 404 page, never an error body that says why. The pixel and the click are plain
Starlette routes whose database work goes through `tracking.hits` (hits arriving together share one round trip;
a click's link is read and its hit stored by one statement).

While the database is unreachable the pixel still answers its GIF (the hit is lost), and the click and the
unsubscribe pages answer a 503 page with `Retry-After`: the link works again once the database is back.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.background import BackgroundTask

from edm import clock
from edm.db.availability import RETRY_AFTER_SECONDS, database_unavailable
from edm.events import ingest
from edm.events.unsubscribe import unsubscribe
from edm.observability import mask_email
from edm.security.tokens import TokenData, verify_token
from edm.settings import Settings
from edm.tracking.hits import TrackingStore, tracking_store
from edm.tracking.recipients import Recipient, recipient_of
from edm.vocabulary.events import EventType, NormalizedEvent

log = logging.getLogger("edm.tracking")

router = APIRouter(include_in_schema=False)

# A 1×1 transparent GIF (43 bytes), the answer to every pixel request, valid token or not.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")

TEST_TOKEN = "test"  # the unsubscribe link of admin test sends (docs/providers.md): a page, nothing recorded; template
# test sends carry a real token, and the page sees from the SubTask's task that it was a test
MAX_BODY = 64 * 1024
# With EDM_TRACKING_ANSWER_BEFORE_COMMIT, a pixel answers before its hit is committed only while fewer hits than
# this wait for their commit; past it, each waits for its own (the database is slower than the hits arrive).
# So at most this many answered hits are ever uncommitted: what a crash of EDM can lose.
ANSWER_FIRST = 500

P = ParamSpec("P")


def _page_while_database_down(endpoint: Callable[P, Awaitable[Response]]) -> Callable[P, Awaitable[Response]]:
    """The endpoint, answering a "try again in a moment" page (503, `Retry-After`) instead of an error while the
    database cannot be reached: a person clicked a link and should read a sentence, not an API error body."""

    @functools.wraps(endpoint)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> Response:
        try:
            return await endpoint(*args, **kwargs)
        except (SQLAlchemyError, OSError) as exc:
            if not database_unavailable(exc):
                raise
            log.warning(
                "tracking.database_unavailable", extra={"endpoint": endpoint.__name__, "error": type(exc).__name__}
            )
            request = next(a for a in (*args, *kwargs.values()) if isinstance(a, Request))
            return _page(request, "unavailable", status=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    return guarded


async def open_pixel(request: Request) -> Response:
    """Always the GIF with `no-store` (docs/tracking.md#public-endpoints), even for a bad token or a database hiccup;
    a valid token records an `opened` hit (each hit its own event), classified human or machine when the `events` job
    applies it. HEAD answers alike and records nothing."""
    data = _verified(request, request.path_params["token"], "open")
    if data is not None and request.method == "GET":
        now = clock.utc_now()
        details = {"ip": truncated_ip(request.client.host if request.client else None)}
        event = NormalizedEvent(
            event_type=EventType.OPENED,
            provider_event="pixel",
            raw={"via": "t/o"},
            occurred_at=now,
            subtask_id=str(data.subtask_id),
            provider_event_id=f"open:{uuid.uuid4().hex}",
            user_agent=(request.headers.get("user-agent") or "")[:300],
            details=details,
        )
        row = ingest.event_row("tracking", None, event, now=now)
        settings: Settings = request.app.state.settings
        if settings.tracking_answer_before_commit and tracking_store(request.app.state).hits_backlog < ANSWER_FIRST:
            # The GIF leaves now; the request ends once its hit is committed (docs/tracking.md#capacity).
            return _gif(BackgroundTask(_record_hit, request, row, event.event_type))
        await _record_hit(request, row, event.event_type)
    return _gif()


def _gif(background: BackgroundTask | None = None) -> Response:
    return Response(
        PIXEL, media_type="image/gif", headers={"Cache-Control": "no-store, max-age=0"}, background=background
    )


async def _record_hit(request: Request, row: dict[str, Any], event_type: EventType) -> None:
    """Store one tracking hit (its `ingest.event_row`); a database hiccup loses the hit, never the visitor's
    answer."""
    try:
        await tracking_store(request.app.state).record(row)
    except (SQLAlchemyError, OSError):  # the database down, the pool exhausted, the connection lost
        log.warning("tracking.hit_not_recorded", extra={"event_type": str(event_type)})


def truncated_ip(address: str | None) -> str | None:
    """IPv4 to its /24, IPv6 to its /48 (docs/tracking.md#people-and-machines): enough to recognise a scanner's network,
    not a person."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ip.version == 4:  # integer masking: a third of the cost of building the network
        return str(ipaddress.IPv4Address(int(ip) & 0xFFFFFF00))
    return str(ipaddress.ip_network(f"{ip}/48", strict=False).network_address)


@_page_while_database_down
async def click(request: Request) -> Response:
    """302 to the link's stored URL only when the token is valid and the link belongs to the SubTask's task;
    anything else is a 404 page, never a redirect (there is no URL in the request to be open-redirected to).
    HEAD (link checkers, previews) answers the same redirect and records nothing. A GET reads the link and stores
    its hit in one round trip (`TrackingStore.record_click`)."""
    data = _verified(request, request.path_params["token"], "click")
    url = None
    if data is not None and data.link_id is not None:
        store = tracking_store(request.app.state)
        if request.method == "GET":
            url = await _record_click(request, store, data, data.link_id)
        else:
            url = await store.link_url(data.subtask_id, data.link_id)
    if url is None:
        return _page(request, "link_not_valid", status=404) if request.method == "GET" else Response(status_code=404)
    return Response(status_code=302, headers={"Location": url, "Cache-Control": "no-store"})


def _click_event(request: Request, data: TokenData, link_id: int) -> NormalizedEvent:
    """The click's hit, without its URL: the store adds the link's own (`TrackingStore.record_click`)."""
    return NormalizedEvent(
        event_type=EventType.CLICKED,
        provider_event="click",
        raw={"via": "t/c"},
        occurred_at=clock.utc_now(),
        subtask_id=str(data.subtask_id),
        provider_event_id=f"click:{uuid.uuid4().hex}",
        user_agent=(request.headers.get("user-agent") or "")[:300],
        details={"link_id": link_id, "ip": truncated_ip(request.client.host if request.client else None)},
    )


async def _record_click(request: Request, store: TrackingStore, data: TokenData, link_id: int) -> str | None:
    """The link's URL, its click stored with it (one round trip). If storing fails for a reason other than an
    outage, the link is read alone and the hit is lost: the person still gets where they clicked."""
    event = _click_event(request, data, link_id)
    now = event.occurred_at or clock.utc_now()
    try:
        return await store.record_click(ingest.event_row("tracking", None, event, now=now), data.subtask_id, link_id)
    except (SQLAlchemyError, OSError) as exc:
        if database_unavailable(exc):
            raise  # no URL to send the person to: the "try again" page
        log.warning("tracking.hit_not_recorded", extra={"event_type": str(event.event_type)})
        return await store.link_url(data.subtask_id, link_id)


# The two hit endpoints are plain Starlette routes: no dependency solving or parameter validation, which cost
# more than the rest of the request (docs/performance.md, lesson 9; bench/RESULTS.md, tracking). A GET route
# answers HEAD as well; the endpoints tell the two apart.
router.add_route("/t/o/{token}.gif", open_pixel, methods=["GET"], include_in_schema=False)
router.add_route("/t/c/{token}", click, methods=["GET"], include_in_schema=False)


@router.get("/u/{token}")
@_page_while_database_down
async def unsubscribe_page(token: str, request: Request) -> HTMLResponse:
    if token == TEST_TOKEN:
        return _page(request, "test")
    found = await _recipient_of(request, token)
    if found is None:
        return _page(request, "not_valid", status=404)
    if found.is_test:
        return _page(request, "test")
    return _page(request, "unsubscribe", email=mask_email(found.email))


@router.post("/u/{token}")
@_page_while_database_down
async def one_click_unsubscribe(token: str, request: Request) -> HTMLResponse:
    await _drain(request)  # `List-Unsubscribe=One-Click` or the page's button: the token alone decides
    if token == TEST_TOKEN:
        return _page(request, "test")
    found = await _recipient_of(request, token)
    if found is None:
        return _page(request, "not_valid", status=404)
    if found.is_test:
        return _page(request, "test")
    settings: Settings = request.app.state.settings
    async with request.app.state.sessionmaker() as session, session.begin():
        await unsubscribe(session, found, now=clock.utc_now(), simulated_matches_any=settings.fake_provider_allowed)
    return _page(request, "unsubscribed", email=mask_email(found.email))


def _verified(request: Request, token: str, purpose: str) -> TokenData | None:
    settings: Settings = request.app.state.settings
    keys = [settings.signing_key] + ([settings.secret_key_previous.encode()] if settings.secret_key_previous else [])
    return verify_token(token, purpose, keys=keys) if len(token) <= 200 else None


async def _recipient_of(request: Request, token: str) -> Recipient | None:
    """The token's SubTask, else its unexpired tombstone, else None (the neutral 404 page)."""
    data = _verified(request, token, "unsubscribe")
    if data is None:
        return None
    async with request.app.state.sessionmaker() as session:
        return await recipient_of(session, data.subtask_id, now=clock.utc_now())


async def _drain(request: Request) -> None:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            break


def _page(
    request: Request, kind: str, *, status: int = 200, email: str = "", headers: dict[str, str] | None = None
) -> HTMLResponse:
    """A public page (`edm.console.public.KINDS`): the unsubscribe question (`email` masked) and its answer, the test
    message note (admin service tests and template test sends, docs/templates.md#what-differs-from-a-campaign-mail:
    nothing recorded), an invalid link, or "try again". Never cached, never indexed."""
    page: HTMLResponse = request.app.state.public_page(request, kind, status=status, email=email, headers=headers)
    return page
