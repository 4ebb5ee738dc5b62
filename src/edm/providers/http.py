"""The common part of every ESP HTTP adapter: clients, timeouts, network-error and status classification.

A provider module subclasses `HttpAdapter` and writes only what is its own: `build_request` (the wire
format, our ids in the provider's metadata field, tracking off) and `parse_response` (per-recipient ids,
the provider's error codes mapped onto the classes of docs/providers.md#how-answers-are-classified, usually by starting
from `classify_status`).

Connections: httpx's async pool degrades above ~8 connections (docs/performance.md, lesson 5), so an adapter
with `max_concurrency` > 8 spreads its calls over several small clients, each with keep-alive.
Timeouts are explicit: connect ≤ 10 s, the rest `request_timeout_seconds`.

Which network failures may have sent the message (docs/providers.md#how-answers-are-classified): a failure to connect,
or waiting for a pooled connection, means the provider never saw the request (`transient`); anything after the request
started to go out (write or read failure, read timeout, the server closing without an answer) may have been
processed (`maybe_sent`), and only the provider's idempotency key (if any) makes a resend safe.
"""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import itertools
import math
import ssl
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import httpx

from edm import clock
from edm.providers.base import (
    Capabilities,
    CredentialCheck,
    OutboundMessage,
    Outcome,
    SendResult,
    ServiceConfig,
    truncate,
)

CONNECTIONS_PER_CLIENT = 8
MAX_CONNECT_TIMEOUT = 10.0

# Answers about the service, not the message: the rest of a multi-call send is not attempted
# (docs/sending.md#failures-and-failover).
SERVICE_LEVEL = (Outcome.THROTTLED, Outcome.QUOTA_EXHAUSTED, Outcome.AUTH_CONFIG)


@functools.cache
def shared_tls_context() -> ssl.SSLContext:
    """The verifying TLS context of every client of every adapter in this process. Building one loads the system's CA
    bundle, about 40 ms of CPU: a service with max_concurrency 100 has 13 clients, and every service check, credential
    probe and worker start built them all again. A context is safe to share between connections and threads."""
    return httpx.create_ssl_context()


_NOT_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
    httpx.ProxyError,
    httpx.InvalidURL,
)


class HttpAdapter:
    provider: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities(needs_mime=False)
    default_base_url: ClassVar[str] = ""
    # region (or data-centre) option value -> base URL; `options["base_url"]` overrides both
    regional_base_urls: ClassVar[Mapping[str, str]] = {}
    # credentials without which no call can succeed: their absence is `auth_config` without a request
    required_credentials: ClassVar[tuple[str, ...]] = ()
    # (method, path) of the provider's cheapest call that authenticates and sends nothing, for `edm doctor`; None
    # where every read call needs a permission a sending-only key may lack (the check would blame a good key)
    credentials_probe: ClassVar[tuple[str, str] | None] = None

    def __init__(self, config: ServiceConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.base_url = self.resolve_base_url(config.options)
        timeout = httpx.Timeout(
            config.request_timeout_seconds, connect=min(MAX_CONNECT_TIMEOUT, config.request_timeout_seconds)
        )
        per_client = min(CONNECTIONS_PER_CLIENT, max(1, config.max_concurrency))
        limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
        count = max(1, math.ceil(config.max_concurrency / CONNECTIONS_PER_CLIENT))
        self._clients = [
            httpx.AsyncClient(
                base_url=self.base_url,
                timeout=timeout,
                limits=limits,
                transport=transport,
                verify=shared_tls_context(),
                headers=self.default_headers(),
                follow_redirects=False,
            )
            for _ in range(count)
        ]
        self._next_client = itertools.cycle(self._clients)

    # -- what a provider module writes ---------------------------------------------------------------------

    def default_headers(self) -> dict[str, str]:
        """Headers on every request (authentication, content type). Credentials come from self.config."""
        return {}

    def build_request(self, client: httpx.AsyncClient, messages: Sequence[OutboundMessage]) -> httpx.Request:
        """The provider call for `messages` (≤ capabilities.max_batch). ValueError: the messages cannot be
        expressed for this provider (every one of them fails `permanent` with the error's text)."""
        raise NotImplementedError

    def parse_response(
        self, messages: Sequence[OutboundMessage], response: httpx.Response, latency_ms: int
    ) -> list[SendResult]:
        """One SendResult per message, same order, from the provider's answer."""
        raise NotImplementedError

    # -- the shared part -----------------------------------------------------------------------------------

    async def check_credentials(self) -> CredentialCheck:
        """The `credentials_probe` call: 2xx means the credentials work, 401/403 that they are refused; it sends
        nothing (`edm doctor`)."""
        if self.credentials_probe is None:
            return CredentialCheck(None, f"{self.provider} has no call that checks credentials without sending")
        missing = [name for name in self.required_credentials if not self.config.credentials.get(name)]
        if missing:
            return CredentialCheck(False, f"credentials {', '.join(missing)} are missing")
        method, path = self.credentials_probe
        try:
            response = await next(self._next_client).request(method, path)
        except httpx.HTTPError as exc:
            return CredentialCheck(False, f"could not reach {self.base_url}: {type(exc).__name__}")
        if 200 <= response.status_code < 300:
            return CredentialCheck(True, f"{self.provider} accepted the credentials")
        if response.status_code in (401, 403):
            return CredentialCheck(False, f"{self.provider} refused the credentials (HTTP {response.status_code})")
        return CredentialCheck(None, f"{self.provider} answered HTTP {response.status_code}")

    @classmethod
    def resolve_base_url(cls, options: Mapping[str, Any]) -> str:
        explicit = options.get("base_url")
        if explicit:
            return str(explicit).rstrip("/")
        region = options.get("region")
        if region:
            if str(region) not in cls.regional_base_urls:
                known = ", ".join(sorted(cls.regional_base_urls)) or "none"
                raise ValueError(f"{cls.provider}: unknown region {region!r} (known: {known})")
            return cls.regional_base_urls[str(region)]
        return cls.default_base_url

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        missing = [name for name in self.required_credentials if not self.config.credentials.get(name)]
        if missing:  # a service saved without its key needs an admin, not a retry
            note = f"{self.provider}: credentials {', '.join(missing)} are required"
            return [failure(m, Outcome.AUTH_CONFIG, "missing_credentials", note) for m in messages]
        groups = self.plan_requests(messages)
        if len(groups) == 1 and type(self).send_group is HttpAdapter.send_group:
            return await self.send_request(messages)
        return await self.send_groups(messages, groups)

    def plan_requests(self, messages: Sequence[OutboundMessage]) -> list[list[int]]:
        """Which messages share a provider call (indexes). Default: chunks of `max_batch` (a caller that hands
        more than that still gets every message sent)."""
        most = self.capabilities.max_batch
        return [list(range(i, min(i + most, len(messages)))) for i in range(0, len(messages), most)] or [[]]

    async def send_group(
        self, messages: Sequence[OutboundMessage], group: list[int], results: list[SendResult | None]
    ) -> None:
        """Send one planned group and put its results at their indexes (providers that split or resend a
        refused group override this)."""
        for index, result in zip(group, await self.send_request([messages[i] for i in group]), strict=True):
            results[index] = result

    async def send_groups(self, messages: Sequence[OutboundMessage], groups: Sequence[list[int]]) -> list[SendResult]:
        """One provider call per group, one after the other (each call counts against the service's rate);
        results in input order. After a throttled, quota or auth/config answer the remaining groups are not
        sent: they get the same class, so the service's state sees it once."""
        results: list[SendResult | None] = [None] * len(messages)
        for group in groups:
            if group and not _blocked_by_earlier(results, group, messages):
                await self.send_group(messages, group, results)
        missing = [index for index, result in enumerate(results) if result is None]
        if missing:  # a bug in the planning: never hand back a shorter, misaligned list
            raise RuntimeError(f"no result for messages {missing}")
        return [result for result in results if result is not None]

    async def send_request(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        """One provider call for `messages`, classified."""
        client = next(self._next_client)
        try:
            request = self.build_request(client, messages)
        except ValueError as exc:
            return [failure(m, Outcome.PERMANENT, "invalid_message", str(exc)) for m in messages]
        started = time.perf_counter()
        try:
            response = await client.send(request)
        except httpx.HTTPError as exc:
            latency_ms = elapsed_ms(started)
            outcome = Outcome.TRANSIENT if isinstance(exc, _NOT_SENT) else Outcome.MAYBE_SENT
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return [failure(m, outcome, "network", text, latency_ms=latency_ms) for m in messages]
        latency_ms = elapsed_ms(started)
        try:
            return self.parse_response(messages, response, latency_ms)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            # A 2xx that is not the API's answer (a proxy page, a wrong base URL): configuration
            # (docs/providers.md#how-answers-are-classified).
            note = f"unexpected answer from {self.provider} (HTTP {response.status_code}): {exc}"
            return [
                failure(
                    m,
                    Outcome.AUTH_CONFIG,
                    "unexpected_response",
                    note,
                    status=response.status_code,
                    latency_ms=latency_ms,
                )
                for m in messages
            ]

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


# --------------------------------------------------------------------------------------------------------
# Classification helpers
# --------------------------------------------------------------------------------------------------------


def classify_status(status: int) -> Outcome:
    """The default class of an HTTP status (docs/providers.md#how-answers-are-classified); provider modules refine it
    with their error codes."""
    if 200 <= status < 300:
        return Outcome.ACCEPTED
    if status == 429:
        return Outcome.THROTTLED
    if status in (401, 403, 404, 405, 407):  # credentials, permissions, wrong endpoint/domain/region
        return Outcome.AUTH_CONFIG
    if status in (408, 425) or status >= 500:
        return Outcome.TRANSIENT
    return Outcome.PERMANENT


def retry_after_seconds(response: httpx.Response) -> float | None:
    """`Retry-After` as seconds (delta or HTTP date), or None."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - clock.utc_now()).total_seconds())


def json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def failure(
    message: OutboundMessage,
    outcome: Outcome,
    code: str | None,
    text: str,
    *,
    status: int | None = None,
    retry_after: float | None = None,
    latency_ms: int = 0,
    recipient_rejected: bool = False,
    recipient_level: bool = False,
) -> SendResult:
    return SendResult(
        key=message.key,
        outcome=outcome,
        status=status,
        provider_code=code,
        message=truncate(text),
        retry_after=retry_after,
        latency_ms=latency_ms,
        recipient_rejected=recipient_rejected,
        recipient_level=recipient_level,
    )


def accepted(message: OutboundMessage, provider_message_id: str | None, *, status: int, latency_ms: int) -> SendResult:
    return SendResult(
        key=message.key,
        outcome=Outcome.ACCEPTED,
        status=status,
        provider_message_id=provider_message_id,
        latency_ms=latency_ms,
    )


def _blocked_by_earlier(
    results: list[SendResult | None], group: list[int], messages: Sequence[OutboundMessage]
) -> bool:
    earlier = next((r for r in results if r is not None and r.outcome in SERVICE_LEVEL), None)
    if earlier is None:
        return False
    for index in group:
        results[index] = dataclasses.replace(
            earlier,
            key=messages[index].key,
            provider_message_id=None,
            latency_ms=0,
            message=f"not sent: an earlier request of this call got {earlier.outcome.value}: {earlier.message}"[:500],
        )
    return True


def elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
