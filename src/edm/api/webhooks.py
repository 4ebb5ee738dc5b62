"""Provider webhook endpoints (docs/events.md): verify → parse → store once → answer.

An entry point: it owns its transactions. Applying the stored events to SubTasks is the `events` job's work
(`edm.events.apply`), so a request costs one read of the candidate services (cached for a few seconds), the
signature check, parsing and one INSERT — webhook batches are the highest-volume input EDM has.

These routes are lean on purpose (docs/performance.md, lesson 9): raw bytes in, orjson out, no pydantic models on
the request path. Their `response_model`s only describe the answers in the OpenAPI document: a route that
returns a `Response` itself is never validated against it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.exc import DBAPIError, OperationalError

from edm import clock
from edm.conversations import inbound_queue
from edm.db.session import single_statement
from edm.email_services.webhook_secrets import webhook_targets
from edm.events import ingest
from edm.events.schemas import WebhookControlOut, WebhookStoredOut
from edm.providers import registry
from edm.providers.inbound import InboundMail
from edm.providers.inbound_webhook import InboundLimits
from edm.providers.webhook import (
    InvalidSignature,
    ParsedPayload,
    VerifyContext,
    WebhookError,
    WebhookHandler,
    WebhookRequest,
    WebhookTarget,
)
from edm.security.crypto import Vault
from edm.settings import Settings
from edm.vocabulary.events import BadElement, EventType, NormalizedEvent

log = logging.getLogger("edm.webhooks")

router = APIRouter(tags=["webhooks"])

TARGET_CACHE_SECONDS = 5.0  # a changed secret is honoured within this time
MISSING_ID_MESSAGE = "missing custom_args.subtask_id"
SMTP = "smtp"  # its "webhook" is the DSN endpoint: raw reports, stored under source dsn / arf
# The one answer to a caller that did not prove who it is, whatever the reason: a URL naming no service, a
# service without a configured secret, or a signature that does not verify. Distinct answers would let
# anyone probe which providers and services a deployment has configured; the log keeps the real reason.
NOT_VERIFIED_MESSAGE = "webhook signature missing or invalid"


class WebhookRefused(WebhookError):
    """An answer other than 200 decided before verification (unknown provider, malformed URL, body too large)
    or after it (no id to match)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status_code, self.error_code = status, code


# --------------------------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------------------------


# What a request stored, or the answer to a control message (a subscription confirmation).
ANSWER = WebhookStoredOut | WebhookControlOut


@router.post(
    "/webhooks/{provider}",
    summary="Provider events (the verifying secret identifies the service)",
    response_model=ANSWER,
)
async def provider_events(request: Request, provider: str) -> Response:
    return await receive(request, provider, None)


@router.post("/webhooks/{provider}/{service_id}", summary="Provider events for one service", response_model=ANSWER)
async def service_events(request: Request, provider: str, service_id: str) -> Response:
    return await receive(request, provider, service_id)


@router.post(
    "/webhook/engagelab",
    summary="The original system's EngageLab path (same as /webhooks/engagelab)",
    response_model=ANSWER,
)
async def legacy_engagelab(request: Request) -> Response:
    return await receive(request, "engagelab", None)


@router.post(
    "/webhooks/smtp/{service_id}/dsn",
    summary="A raw DSN/ARF report (message/rfc822) from a mail server",
    response_model=WebhookStoredOut,
)
async def smtp_report(request: Request, service_id: str) -> Response:
    return await receive(request, "smtp", service_id)


@router.get("/webhooks/{provider}", include_in_schema=False)
@router.get("/webhooks/{provider}/{service_id}", include_in_schema=False)
@router.get("/webhook/engagelab", include_in_schema=False)
async def probe() -> Response:
    """Providers probe the URL with a GET before (and while) using it (docs/events.md#endpoints)."""
    return Response(status_code=200)


# --------------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------------


async def receive(request: Request, provider: str, service_ref: str | None) -> Response:
    settings: Settings = request.app.state.settings
    try:
        service_id = None if service_ref is None else _service_id(service_ref)
        handler = _handler(provider, settings)
        limit = max(settings.webhook_max_bytes, settings.inbound_message_max_bytes) if provider == SMTP else None
        body = await read_body(request, limit or settings.webhook_max_bytes)
        incoming = _webhook_request(request, body)
        targets = await candidate_targets(request, provider, service_id)
        service = await _verify(request, handler, incoming, targets, settings, service_id)
        if provider == SMTP:
            counts = await _receive_mail(request, service, incoming)
            return json_response(counts.as_dict())
        parsed = _parse(handler, incoming)
        if parsed.control is not None:
            return await _control(request, provider, parsed)
        _require_ids(parsed)
        counts = await _store(request, provider, service, handler, incoming, parsed)
    except WebhookRefused as exc:
        return error_response(request, exc.status_code, exc.error_code, exc.message)
    except WebhookError as exc:
        return error_response(request, exc.status, exc.code, exc.message)
    except (OperationalError, DBAPIError, OSError) as exc:
        log.error("webhook.database_unavailable", extra={"provider": provider, "error": type(exc).__name__})
        return error_response(
            request, 503, "unavailable", "database unavailable, retry later", headers={"Retry-After": "5"}
        )
    log.info(
        "webhook.stored",
        extra={"provider": provider, "service_id": service.service_id if service else None, **counts.as_dict()},
    )
    return json_response(counts.as_dict())


def _parse(handler: WebhookHandler, incoming: WebhookRequest) -> ParsedPayload:
    """The handler's parse; a parser bug on some unforeseen shape keeps the payload as one bad element (200:
    stored for the admin view, nothing lost, no 500 for the provider to retry forever)."""
    try:
        return handler.parse(incoming)
    except WebhookError:
        raise
    except Exception as exc:
        log.exception("webhook.parser_error", extra={"provider": handler.provider})
        try:
            raw: Any = orjson.loads(incoming.body)
        except orjson.JSONDecodeError:
            raw = incoming.body[: ingest.RAW_LIMIT].decode("utf-8", "replace")
        return ParsedPayload(
            items=[BadElement(raw=raw, error=f"parser error: {type(exc).__name__}: {exc}"[:500])], batch=True
        )


def _handler(provider: str, settings: Settings) -> WebhookHandler:
    handler = registry.webhook_handler(provider)
    if handler is None or (provider in registry.SIMULATED_PROVIDERS and not settings.fake_provider_allowed):
        raise WebhookRefused(404, "unknown_provider", f"no webhook endpoint for provider {provider!r}")
    return handler


def _service_id(text: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise WebhookRefused(404, "not_found", f"no webhook endpoint at service {text!r}")
    return int(text)


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than `limit` bytes without reading them all (413)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise WebhookRefused(413, "payload_too_large", f"body of {declared} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise WebhookRefused(413, "payload_too_large", f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _webhook_request(request: Request, body: bytes) -> WebhookRequest:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return WebhookRequest(
        body=body,
        headers={k.lower(): v for k, v in request.headers.items()},
        query=dict(request.query_params),
        content_type=content_type,
    )


# -- candidate services and their secrets ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Cached:
    at: float
    targets: tuple[WebhookTarget, ...]


async def candidate_targets(request: Request, provider: str, service_id: int | None) -> tuple[WebhookTarget, ...]:
    """The services of `provider` a request may come from, with their unexpired secrets (only the service the URL
    names, when it names one); cached per provider for TARGET_CACHE_SECONDS. The inbound routes use it too."""
    state = request.app.state
    cache: dict[str, _Cached] | None = getattr(state, "webhook_targets", None)
    if cache is None:
        cache = state.webhook_targets = {}
    entry = cache.get(provider)
    if entry is None or time.monotonic() - entry.at > TARGET_CACHE_SECONDS:
        entry = _Cached(time.monotonic(), await _load_targets(request, provider))
        cache[provider] = entry
    if service_id is None:
        return entry.targets
    return tuple(t for t in entry.targets if t.service_id == service_id)


async def _load_targets(request: Request, provider: str) -> tuple[WebhookTarget, ...]:
    vault: Vault | None = getattr(request.app.state, "vault", None)
    if vault is None:
        vault = request.app.state.vault = Vault.from_settings(request.app.state.settings)
    async with request.app.state.sessionmaker() as session:
        return await webhook_targets(session, vault, provider, now=clock.utc_now())


# -- verification ----------------------------------------------------------------------------------------


async def _verify(
    request: Request,
    handler: WebhookHandler,
    incoming: WebhookRequest,
    targets: Sequence[WebhookTarget],
    settings: Settings,
    service_id: int | None,
) -> WebhookTarget | None:
    """The service whose secret verifies the event request (`verify_target`)."""

    async def verifies(target: WebhookTarget, ctx: VerifyContext) -> bool:
        return await handler.verify(incoming, target, ctx)

    return await verify_target(
        request,
        Verifier(handler.provider, handler.needs_secret, lambda target: target.secrets, verifies),
        targets,
        settings,
        service_id,
    )


@dataclass(frozen=True)
class Verifier:
    """How one provider's requests are verified: the event webhooks' handler, or its inbound-mail handler."""

    provider: str
    needs_secret: bool
    secrets_of: Callable[[WebhookTarget], Sequence[str]]
    verifies: Callable[[WebhookTarget, VerifyContext], Awaitable[bool]]
    inbound: bool = False


async def verify_target(
    request: Request,
    verifier: Verifier,
    targets: Sequence[WebhookTarget],
    settings: Settings,
    service_id: int | None,
) -> WebhookTarget | None:
    """The service whose secret verifies the request. Otherwise the same 401 `invalid_signature` whether the
    URL names no such service, no candidate has a secret, or none verifies; the reason goes to the log."""
    if service_id is not None and not targets:
        raise _not_verified(request, verifier, service_id, "unknown_service")
    usable = [t for t in targets if verifier.secrets_of(t) or not verifier.needs_secret]
    if not usable:
        if settings.allow_unsigned_webhooks:
            return targets[0] if len(targets) == 1 else None
        raise _not_verified(request, verifier, service_id, "webhook_secret_missing")
    ctx = VerifyContext(now=clock.utc_now(), fetch=fetcher(request))
    for target in usable:
        if await verifier.verifies(target, ctx):
            return target
    raise _not_verified(request, verifier, service_id, "invalid_signature")


def _not_verified(request: Request, verifier: Verifier, service_id: int | None, reason: str) -> InvalidSignature:
    extra: dict[str, Any] = {
        "provider": verifier.provider,
        "service_id": service_id,
        "reason": reason,
        "request_id": getattr(request.state, "request_id", None),
    }
    if verifier.inbound:
        extra["inbound"] = True
    log.warning("webhook.rejected", extra=extra)
    return InvalidSignature(NOT_VERIFIED_MESSAGE)


def fetcher(request: Request) -> Callable[[str], Awaitable[bytes]]:
    """GET for SNS certificates and subscription confirmations; the handler checks the host first."""

    async def fetch(url: str) -> bytes:
        response = await outbound_client(request).get(url)
        response.raise_for_status()
        return response.content

    return fetch


def outbound_client(request: Request) -> httpx.AsyncClient:
    state = request.app.state
    client = getattr(state, "webhook_http", None)
    if client is None:
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0), follow_redirects=False, transport=getattr(state, "outbound_transport", None)
        )
        state.webhook_http = client
    return client


# -- parsing, control messages, storing ------------------------------------------------------------------


def _require_ids(parsed: ParsedPayload) -> None:
    """A single-event payload must carry our id or a provider message id (docs/events.md#pipeline-and-responses):
    the original system's rule, kept so a provider misconfiguration shows up at once. Inbound replies carry neither and
    pass."""
    if parsed.batch:
        return
    for item in parsed.items:
        if isinstance(item, NormalizedEvent) and item.event_type != EventType.REPLIED and not item.has_lookup_id:
            raise WebhookRefused(400, "missing_subtask_id", MISSING_ID_MESSAGE)


async def _control(request: Request, provider: str, parsed: ParsedPayload) -> Response:
    if parsed.confirm_url:
        try:
            await fetcher(request)(parsed.confirm_url)
        except httpx.HTTPError as exc:
            log.warning("webhook.confirm_failed", extra={"provider": provider, "error": type(exc).__name__})
            return error_response(
                request, 502, "confirmation_failed", "could not confirm the subscription; retry later"
            )
        log.info("webhook.subscription_confirmed", extra={"provider": provider})
    return json_response({"control": parsed.control})


async def _store(
    request: Request,
    provider: str,
    service: WebhookTarget | None,
    handler: WebhookHandler,
    incoming: WebhookRequest,
    parsed: ParsedPayload,
) -> ingest.StoreCounts:
    now = clock.utc_now()
    service_id = service.service_id if service else None
    settings: Settings = request.app.state.settings
    limits = InboundLimits(message_max_bytes=settings.inbound_message_max_bytes)
    rows: list[dict[str, Any]] = []
    mails: list[InboundMail] = []
    for item in parsed.items:
        if isinstance(item, BadElement):
            rows.append(ingest.bad_element_row(provider, service_id, item, now=now))
            continue
        try:
            carried = _inbound_mails(handler, item, service_id, limits)
        except WebhookError as exc:  # inbound mail that cannot be read: kept with the reason for the admin view
            log.warning(
                "webhook.inbound_refused",
                extra={"provider": provider, "service_id": service_id, "code": exc.code, "error": exc.message},
            )
            bad = BadElement(raw=item.raw, error=f"inbound mail not taken ({exc.code}): {exc.message}")
            rows.append(ingest.bad_element_row(provider, service_id, bad, now=now))
            continue
        if carried is None:
            rows.append(ingest.event_row(provider, service_id, item, now=now))
        else:
            mails.extend(carried)
    fitting = [mail for mail in mails if len(mail.raw) <= settings.inbound_message_max_bytes]
    nonce = handler.replay_nonce(incoming)
    async with request.app.state.sessionmaker() as session, session.begin():
        # The single-use token is recorded with the events, so a retry after a failed store is not a replay.
        if nonce and not await ingest.claim_nonce(session, provider, nonce, now=now):
            raise InvalidSignature("this signed request was already received (replay)")
        counts = await ingest.store(session, rows)
        counts.queued = await inbound_queue.enqueue(session, fitting, now=now)
    counts.received += len(mails)
    counts.bad += len(mails) - len(fitting)  # the parsers hold each message to the limit: kept as a safety net
    return counts


def _inbound_mails(
    handler: WebhookHandler, event: NormalizedEvent, service_id: int | None, limits: InboundLimits
) -> list[InboundMail] | None:
    """The mail an inbound `replied` event carries, for conversations (docs/events.md#endpoints): EngageLab's
    `route` events (its handler's `inbound_mail`), and the inbound mail SES, Postmark and Brevo post to their event
    URL when their inbound feature points there, read by the parsers of their `…/inbound` URLs
    (`providers/<provider>_inbound.py`). None for any other event, which is stored as an event."""
    if event.event_type is not EventType.REPLIED:
        return None
    inbound = registry.inbound_handler(handler.provider)
    if inbound is not None:
        return inbound.event_mails(event, service_id, limits)
    own: Callable[[NormalizedEvent, int | None], InboundMail | None] | None = getattr(handler, "inbound_mail", None)
    mail = own(event, service_id) if own is not None else None
    return None if mail is None else [mail]


async def _receive_mail(
    request: Request, service: WebhookTarget | None, incoming: WebhookRequest
) -> ingest.StoreCounts:
    """The SMTP endpoint: the raw mail is queued for the worker's `inbound` job, which sends a bounce or complaint
    report to the event store and any other mail to its conversation, or keeps it unrouted
    (docs/conversations.md#sources)."""
    if not incoming.body.strip():
        raise WebhookRefused(400, "malformed_payload", "empty message")
    settings: Settings = request.app.state.settings
    limit = settings.inbound_message_max_bytes
    if len(incoming.body) > limit:
        raise WebhookRefused(413, "payload_too_large", f"the message exceeds the {limit}-byte limit")
    mail = InboundMail(
        raw=incoming.body,
        source=SMTP,
        service_id=service.service_id if service else None,
        recipient=incoming.query.get("envelope_to") or incoming.header("x-original-to"),
        sender=incoming.query.get("envelope_from"),
    )
    async with single_statement(request.app.state.engine) as connection:
        queued = await inbound_queue.enqueue(connection, [mail], now=clock.utc_now())
    log.info("webhook.inbound_queued", extra={"provider": SMTP, "service_id": mail.service_id, "queued": queued})
    return ingest.StoreCounts(received=1, queued=queued)


def error_response(
    request: Request, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
) -> Response:
    body: dict[str, Any] = {
        "error": {
            "code": code,
            "message": message,
            "details": [],
            "request_id": getattr(request.state, "request_id", None),
        }
    }
    return json_response(body, status=status, headers=headers)


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")
