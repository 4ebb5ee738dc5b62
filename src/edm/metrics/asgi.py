"""The web app's HTTP metrics: every request counted and timed by its route template, and the provider webhooks also
counted by provider and result (docs/operations.md#metrics). `/metrics` itself is a route of `edm.app`.

A plain ASGI middleware, outermost of all, so that it times the whole answer, the tracking fast path included.
Labels stay bounded whatever the requests: the route is the matched route's template (`/api/v1/tasks/{task_id}`)
or `unmatched`, the method one of the HTTP methods EDM serves or `other`, the provider one EDM knows or `other`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from edm import telemetry
from edm.providers.registry import PROVIDERS

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UNMATCHED = "unmatched"
ROUTE_TEMPLATE = "edm.route_template"  # set by handlers that answer without routing (the tracking fast path)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
WEBHOOK_PREFIXES = ("/webhooks/", "/webhook/")
WEBHOOK_PROVIDERS = frozenset(PROVIDERS)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self._count(scope, status, time.perf_counter() - started)

    def _count(self, scope: Scope, status: int, seconds: float) -> None:
        route = route_template(scope)
        method = scope["method"] if scope["method"] in METHODS else telemetry.OTHER
        key = (method, route, str(status))
        children = self._children.get(key)
        if children is None:
            children = (telemetry.HTTP_REQUESTS.labels(*key), telemetry.HTTP_DURATION.labels(*key))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if method == "POST" and route.startswith(WEBHOOK_PREFIXES):
            provider, kind = webhook_provider(route, scope.get("path_params") or {})
            telemetry.WEBHOOK_REQUESTS.labels(provider, kind, webhook_result(status)).inc()


def route_template(scope: Scope) -> str:
    """The template of the route that answered (`/api/v1/tasks/{task_id}`), or `unmatched`: never the path itself."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    template = scope.get(ROUTE_TEMPLATE)
    return template if isinstance(template, str) else UNMATCHED


def webhook_provider(route: str, path_params: MutableMapping[str, Any]) -> tuple[str, str]:
    """(provider, kind) of a webhook route: the provider from the URL when the route takes it, else the one the
    route is for; kind `dsn` (an SMTP service's reports), `inbound` (replies) or `events`."""
    named = path_params.get("provider") if "{provider}" in route else route.split("/")[2]
    provider = telemetry.bounded(named, WEBHOOK_PROVIDERS)
    kind = "dsn" if route.endswith("/dsn") else "inbound" if "/inbound" in route else "events"
    return provider, kind


def webhook_result(status: int) -> str:
    if 200 <= status < 300:
        return "accepted"
    if status in (401, 403):
        return "rejected"
    if status == 404:
        return "not_found"
    if status == 413:
        return "too_large"
    if status == 429:
        return "rate_limited"
    if status == 503:
        return "unavailable"
    if 400 <= status < 500:
        return "invalid"
    return "error"
