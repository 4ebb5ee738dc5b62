"""Inbound mail posted by providers (docs/providers.md#inbound-mail-replies-through-a-provider): verify → parse →
queue each message for conversations → answer.

`POST /webhooks/{provider}/inbound` and `POST /webhooks/{provider}/{service_id}/inbound` for SendGrid Inbound
Parse, Mailgun routes (and `…/inbound/mime` for Mailgun's raw MIME), Postmark inbound, Brevo inbound parsing and
SES receiving through SNS. An entry point: it owns the one transaction in which every message of the request (and
Mailgun's single-use token) is queued for the worker's `inbound` job (docs/conversations.md#accepted-then-processed),
so a provider's retry after a failure finds nothing half-done, and the provider waits for one INSERT, not for the
parsing and threading.

The routes are registered per provider rather than as `/webhooks/{provider}/…` patterns: mounted before the event
routes (`edm.api.webhooks`), a pattern would capture `/webhooks/{provider}/inbound` for every provider, including
paths the event router owns. Authentication is the event webhooks' (the same secrets, the same uniform 401 to a
caller that does not prove itself, the same `webhook.rejected` log line); only the body limit differs
(`EDM_INBOUND_MAX_BYTES`, 30 MB: SendGrid and Mailgun post attachments in the body), and each message is held to
`EDM_INBOUND_MESSAGE_MAX_BYTES` (413).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.exc import DBAPIError, OperationalError

from edm import clock
from edm.api.webhooks import (
    Verifier,
    WebhookRefused,
    candidate_targets,
    error_response,
    fetcher,
    json_response,
    read_body,
    verify_target,
)
from edm.conversations import inbound_queue
from edm.db.session import single_statement, unit_of_work
from edm.events import ingest as event_ingest
from edm.events.schemas import InboundReceivedOut, WebhookControlOut
from edm.providers import registry
from edm.providers.inbound import InboundMail
from edm.providers.inbound_webhook import (
    InboundHandler,
    InboundLimits,
    InboundPayload,
    InboundRequest,
    MessageTooLarge,
)
from edm.providers.webhook import InvalidSignature, MalformedPayload, VerifyContext, WebhookError, WebhookTarget
from edm.settings import Settings

log = logging.getLogger("edm.webhooks")

router = APIRouter(tags=["webhooks"])

ANSWER = InboundReceivedOut | WebhookControlOut


# --------------------------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------------------------


def _provider_route(provider: str) -> Callable[[Request], Awaitable[Response]]:
    async def provider_inbound(request: Request) -> Response:
        return await receive_inbound(request, provider, None)

    return provider_inbound


def _service_route(provider: str) -> Callable[[Request, str], Awaitable[Response]]:
    async def service_inbound(request: Request, service_id: str) -> Response:
        return await receive_inbound(request, provider, service_id)

    return service_inbound


async def _probe() -> Response:
    """Providers probe a URL with a GET before (and while) using it, as on the event URLs."""
    return Response(status_code=200)


_NAMES = {"sendgrid": "SendGrid", "mailgun": "Mailgun", "postmark": "Postmark", "brevo": "Brevo", "ses": "SES"}

for _provider in registry.INBOUND_PROVIDERS:
    _suffixes = ("/inbound", "/inbound/mime") if _provider == "mailgun" else ("/inbound",)
    for _suffix in _suffixes:
        _what = "raw MIME" if _suffix.endswith("mime") else "inbound mail"
        router.add_api_route(
            f"/webhooks/{_provider}{_suffix}",
            _provider_route(_provider),
            methods=["POST"],
            summary=f"{_NAMES[_provider]} {_what} (the verifying secret identifies the service)",
            response_model=ANSWER,
        )
        router.add_api_route(
            f"/webhooks/{_provider}/{{service_id}}{_suffix}",
            _service_route(_provider),
            methods=["POST"],
            summary=f"{_NAMES[_provider]} {_what} for one service",
            response_model=ANSWER,
        )
        router.add_api_route(f"/webhooks/{_provider}{_suffix}", _probe, methods=["GET"], include_in_schema=False)
        router.add_api_route(
            f"/webhooks/{_provider}/{{service_id}}{_suffix}", _probe, methods=["GET"], include_in_schema=False
        )


# --------------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------------


async def receive_inbound(request: Request, provider: str, service_ref: str | None) -> Response:
    settings: Settings = request.app.state.settings
    try:
        service_id = None if service_ref is None else _service_id(service_ref)
        handler = registry.inbound_handler(provider)
        if handler is None:  # only registered providers have routes; kept for a handler removed from the registry
            raise WebhookRefused(404, "unknown_provider", f"no inbound endpoint for provider {provider!r}")
        body = await read_body(request, settings.inbound_max_bytes)
        incoming = InboundRequest(body, dict(request.headers), dict(request.query_params), service_id=service_id)
        targets = await candidate_targets(request, provider, service_id)
        service = await _verify(request, handler, incoming, targets, settings, service_id)
        incoming.service_id = service.service_id if service else service_id
        payload = _parse(handler, incoming, InboundLimits(message_max_bytes=settings.inbound_message_max_bytes))
        if payload.control is not None:
            return await _control(request, provider, payload)
        queued = await _hand_over(request, provider, handler.replay_nonce(incoming), payload.mails, settings)
    except WebhookRefused as exc:
        return error_response(request, exc.status_code, exc.error_code, exc.message)
    except WebhookError as exc:
        if exc.status != 401:
            log.warning(
                "webhook.inbound_refused",
                extra={"provider": provider, "service_id": service_ref, "code": exc.code, "error": exc.message},
            )
        return error_response(request, exc.status, exc.code, exc.message)
    except (OperationalError, DBAPIError, OSError) as exc:
        log.error("webhook.database_unavailable", extra={"provider": provider, "error": type(exc).__name__})
        return error_response(
            request, 503, "unavailable", "database unavailable, retry later", headers={"Retry-After": "5"}
        )
    log.info(
        "webhook.inbound_received",
        extra={"provider": provider, "service_id": incoming.service_id, "received": len(payload.mails)},
    )
    return json_response({"received": len(payload.mails), "queued": queued})


def _parse(handler: InboundHandler, incoming: InboundRequest, limits: InboundLimits) -> InboundPayload:
    """The handler's parse; a parser bug on some unforeseen shape is a 400 naming the error, never a 500."""
    try:
        return handler.parse(incoming, limits)
    except WebhookError:
        raise
    except Exception as exc:
        log.exception("webhook.inbound_parser_error", extra={"provider": handler.provider})
        raise MalformedPayload(f"the payload could not be read: {type(exc).__name__}: {exc}"[:500]) from None


def _service_id(text: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise WebhookRefused(404, "not_found", f"no inbound endpoint at service {text!r}")
    return int(text)


async def _verify(
    request: Request,
    handler: InboundHandler,
    incoming: InboundRequest,
    targets: Sequence[WebhookTarget],
    settings: Settings,
    service_id: int | None,
) -> WebhookTarget | None:
    """As the event webhooks verify, with the secrets the handler may use for inbound mail."""

    async def verifies(target: WebhookTarget, ctx: VerifyContext) -> bool:
        return await handler.verify(incoming, target, ctx)

    verifier = Verifier(handler.provider, handler.needs_secret, handler.usable_secrets, verifies, inbound=True)
    return await verify_target(request, verifier, targets, settings, service_id)


async def _control(request: Request, provider: str, payload: InboundPayload) -> Response:
    if payload.confirm_url:
        try:
            await fetcher(request)(payload.confirm_url)
        except httpx.HTTPError as exc:
            log.warning("webhook.confirm_failed", extra={"provider": provider, "error": type(exc).__name__})
            return error_response(
                request, 502, "confirmation_failed", "could not confirm the subscription; retry later"
            )
        log.info("webhook.subscription_confirmed", extra={"provider": provider, "inbound": True})
    return json_response({"control": payload.control})


async def _hand_over(
    request: Request, provider: str, nonce: str | None, mails: Sequence[InboundMail], settings: Settings
) -> int:
    """Every message of the request queued for the `inbound` job, in one transaction with the single-use token."""
    limit = settings.inbound_message_max_bytes
    if any(len(mail.raw) > limit for mail in mails):  # the parsers hold each message to the limit: a safety net
        raise MessageTooLarge(f"a message exceeds the {limit}-byte limit")
    now = clock.utc_now()
    if not nonce:  # one INSERT of every message: atomic by itself
        async with single_statement(request.app.state.engine) as connection:
            return await inbound_queue.enqueue(connection, mails, now=now)
    async with unit_of_work(request.app.state.sessionmaker) as session:
        if not await event_ingest.claim_nonce(session, provider, nonce, now=now):
            raise InvalidSignature("this signed request was already received (replay)")
        return await inbound_queue.enqueue(session, mails, now=now)
