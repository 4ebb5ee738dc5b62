"""Shared helpers for provider adapter and webhook tests: samples, messages, captured requests."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from edm.providers.base import OutboundMessage, ServiceConfig
from edm.providers.webhook import VerifyContext, WebhookRequest, WebhookTarget

SAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "provider_samples"


def sample_bytes(provider: str, name: str) -> bytes:
    return (SAMPLES / provider / name).read_bytes()


def sample(provider: str, name: str) -> Any:
    return json.loads(sample_bytes(provider, name))


def outbound(i: int = 1, *, to: str | None = None, subject: str | None = None) -> OutboundMessage:
    """A message as the composer builds it: our headers and custom_args included."""
    key = f"00000000-0000-4000-8000-{i:012d}"
    return OutboundMessage(
        key=key,
        envelope_from="news@mail.example.com",
        from_address="news@mail.example.com",
        from_name="Example News",
        to_address=to or f"user{i}@example.org",
        to_name=f"User {i}",
        subject=subject or f"Hello {i}",
        html=f"<p>Hello {i}</p>",
        text=f"Hello {i}",
        reply_to="support@example.com",
        headers={
            "Message-ID": f"<{key}@mail.example.com>",
            "List-Unsubscribe": f"<https://edm.example.com/u/tok{i}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "X-EDM-SubTask-Id": key,
            "Feedback-ID": "7:3:edm",
        },
        custom_args={"subtask_id": key, "task_id": "7"},
    )


def config(
    provider: str,
    *,
    credentials: dict[str, Any] | None = None,
    batch_size: int = 1,
    max_concurrency: int = 2,
    timeout: float = 5.0,
    **options: Any,
) -> ServiceConfig:
    return ServiceConfig(
        service_id=1,
        provider=provider,
        domain="mail.example.com",
        credentials=credentials or {},
        options=options,
        max_concurrency=max_concurrency,
        batch_size=batch_size,
        request_timeout_seconds=timeout,
    )


class Recorder:
    """An httpx.MockTransport that records every request and answers with `answer(request)`."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response]) -> None:
        self.requests: list[httpx.Request] = []
        self._answer = answer
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self._answer(request)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def last_json(self) -> Any:
        return json.loads(self.last.content)


def answer(
    status: int, body: Any = None, *, headers: dict[str, str] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    def respond(request: httpx.Request) -> httpx.Response:
        if body is None:
            return httpx.Response(status, headers=headers)
        if isinstance(body, (bytes, str)):
            return httpx.Response(status, content=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return respond


def raising(exc: Exception) -> Callable[[httpx.Request], httpx.Response]:
    def respond(request: httpx.Request) -> httpx.Response:
        raise exc

    return respond


def webhook_request(
    body: bytes,
    *,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> WebhookRequest:
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    return WebhookRequest(body=body, headers=lowered, query=query or {}, content_type=content_type)


def target(provider: str, *secrets: str, **options: Any) -> WebhookTarget:
    return WebhookTarget(service_id=1, provider=provider, secrets=tuple(secrets), options=options)


async def _no_fetch(url: str) -> bytes:
    raise AssertionError(f"unexpected fetch of {url}")


def context(now: dt.datetime, fetch: Any = None) -> VerifyContext:
    return VerifyContext(now=now, fetch=fetch or _no_fetch)
