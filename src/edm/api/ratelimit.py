"""The API rate limit (docs/api.md#rate-limits): `EDM_API_RATE_LIMIT` requests a minute per credential (600).

A token bucket per credential — the bearer token, or the console session cookie — holding up to the limit
and refilling at limit/60 per second: a client may burst a minute's worth, then keeps the steady rate. Over
it the request gets 429 `rate_limited` with `Retry-After` (whole seconds until one request is allowed).

The buckets live in the API process: with N API processes a credential may make up to N × the limit. That
is deliberate: a shared counter would cost a database write on every request (the limit exists to protect
the database), and the limit is a guard against runaway clients, not a billing meter. Run one API process
per host, or divide the setting by the number of processes, when the exact figure matters.

Only requests that present a credential under `/api/` are counted; public endpoints (tracking, webhooks,
`/healthz`, `/readyz`, the OpenAPI document, login) are not limited by this. A credential is keyed by its
SHA-256, never kept in clear. The table is bounded: the least recently seen buckets are dropped past
`MAX_BUCKETS` (a dropped bucket was idle, so refilled anyway, or belongs to a flood of made-up tokens).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

MAX_BUCKETS = 100_000
SESSION_COOKIES = ("edm_session", "session")
UNLIMITED_PATHS = ("/api/v1/auth/login", "/api/v1/openapi.json", "/api/docs")


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """`take(key)` → 0 when allowed, else the seconds to wait. `now` is injectable for tests."""

    def __init__(
        self, per_minute: int, *, now: Callable[[], float] = time.monotonic, max_buckets: int = MAX_BUCKETS
    ) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.now = now
        self.max_buckets = max_buckets
        self.buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str) -> float:
        now = self.now()
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = _Bucket(self.capacity, now)
            while len(self.buckets) > self.max_buckets:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(key)
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


def credential_of(scope: Scope) -> str | None:
    """A stable key for the credential the request presents (hashed), or None."""
    headers = Headers(scope=scope)
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return "t:" + hashlib.sha256(token.strip().encode()).hexdigest()
    cookies = headers.get("cookie")
    if cookies:
        for part in cookies.split(";"):
            name, _, value = part.strip().partition("=")
            if name in SESSION_COOKIES and value:
                return "s:" + hashlib.sha256(value.encode()).hexdigest()
    return None


class RateLimitMiddleware:
    """Counts every credentialed `/api/` request against its credential's bucket (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.buckets: TokenBuckets | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/") or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        if self.buckets is None:
            self.buckets = TokenBuckets(scope["app"].state.settings.api_rate_limit)
        key = credential_of(scope)
        wait = self.buckets.take(key) if key is not None else 0.0
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        retry_after = max(1, math.ceil(wait))
        limit = int(self.buckets.capacity)
        message = f"too many requests: the limit is {limit} a minute per token or session; retry in {retry_after} s"
        body = json.dumps(
            {
                "error": {
                    "code": "rate_limited",
                    "message": message,
                    "details": [],
                    "request_id": scope.get("state", {}).get("request_id"),
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(retry_after).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})
