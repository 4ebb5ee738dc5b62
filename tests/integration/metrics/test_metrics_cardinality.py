"""The metrics' labels stay bounded whatever the requests (docs/operations.md#metrics): 10,000 distinct paths — unknown
ones carrying addresses and tokens, API routes with made-up ids, tracking links with forged tokens, webhooks of
made-up providers, odd methods — leave the set of series exactly as it was, and no label holds an address, a token
or anything else taken from a request."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Response
from prometheus_client import REGISTRY, generate_latest

from edm.app import create_app
from edm.metrics.asgi import MetricsMiddleware
from tests.helpers import settings_for
from tests.integration.metrics.metrics_scrape import Samples, parse, scrape

DISTINCT = 10_000
REAL_APP = 100  # distinct paths through the whole app


def _request(i: int, secret: str) -> tuple[str, str]:
    """The i-th request: (method, path), every path different."""
    match i % 5:
        case 0:
            return "GET", f"/nowhere/{secret}/jane.{i}@example.com"
        case 1:
            return "GET", f"/api/v1/tasks/{i + 1}"
        case 2:
            return "GET", f"/t/o/{secret}.gif"
        case 3:
            return "POST", f"/webhooks/made-up-{secret}"
        case _:
            return ("PROPFIND" if i % 2 else "GET"), f"/t/c/{secret}"


async def _call(app: Any, method: str, path: str) -> int:
    """One request straight into the ASGI app (an HTTP client would cost more than the app here)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"token=" + path.encode()[-8:],
        "root_path": "",
        "headers": [(b"host", b"edm.test"), (b"user-agent", b"test")],
        "client": ("127.0.0.1", 40000),
        "server": ("edm.test", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


def _scrape() -> Samples:
    """This process's series (those the middleware counts; the real app's /metrics adds the database's)."""
    return parse(generate_latest(REGISTRY).decode())


async def test_ten_thousand_distinct_paths_add_no_series() -> None:
    """10,000 distinct paths through the metrics middleware in front of a small app with the real route shapes: on
    the whole app an unmatched path walks all ~340 routes twice (~5 ms each on this machine), which would make this
    test a minute long; the labels come from the matched route either way, as the next test shows on the real app."""
    app = FastAPI()

    @app.get("/api/v1/tasks/{task_id}")
    async def task(task_id: int) -> Response:
        return Response(status_code=401)

    @app.post("/webhooks/{provider}")
    async def webhook(provider: str) -> Response:
        return Response(status_code=404)

    app.add_middleware(MetricsMiddleware)
    for i in range(10):  # each kind of request once, so its series exist before the count
        await _call(app, *_request(i, f"warm{i}"))
    before = _scrape()
    secrets = [uuid.uuid4().hex for _ in range(DISTINCT)]
    started = time.perf_counter()
    statuses = {await _call(app, *_request(i, secret)) for i, secret in enumerate(secrets)}
    elapsed = time.perf_counter() - started
    after = _scrape()

    assert statuses <= {200, 302, 401, 404, 405}, statuses
    assert set(after) == set(before), sorted(set(after) ^ set(before))[:10]
    assert _requests(after) - _requests(before) == DISTINCT, "every request was counted"
    _check_labels(after, before, secrets, {"/api/v1/tasks/{task_id}", "/webhooks/{provider}"})
    print(f"{DISTINCT} requests in {elapsed:.2f} s")


@pytest.mark.any_database
async def test_the_real_app_labels_every_kind_of_path_by_its_template(db_url: str, engine: Any) -> None:
    app = create_app(settings_for(db_url), engine=engine)
    async with app.router.lifespan_context(app):
        for i in range(10):
            await _call(app, *_request(i, f"warm{i}"))
        await _scrape_app(app)  # /metrics counts itself too: its series exist from here on
        before = await _scrape_app(app)
        secrets = [uuid.uuid4().hex for _ in range(REAL_APP)]
        for i, secret in enumerate(secrets):
            await _call(app, *_request(i, secret))
        after = await _scrape_app(app)

    assert set(after) == set(before), sorted(set(after) ^ set(before))[:10]
    assert _requests(after) - _requests(before) == REAL_APP
    templates = {route.path for route in app.router.routes}  # type: ignore[attr-defined]
    routes = _check_labels(after, before, secrets, templates)
    assert {"/t/o/{token}.gif", "/t/c/{token}"} <= routes


async def _scrape_app(app: Any) -> Samples:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edm.test") as client:
        return await scrape(client)


def _requests(samples: Samples) -> float:
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "edm_http_requests_total" and ("route", "/metrics") not in labels
    )


def _check_labels(after: Samples, before: Samples, secrets: list[str], templates: set[str]) -> set[str]:
    """The routes these requests were counted under; every label value from a fixed set, none from a request."""
    values = {value for _, labels in after for _, value in labels}
    assert not [v for v in values if "@" in v or "made-up" in v or "warm" in v or "nowhere" in v]
    assert not values & set(secrets)
    grown = [(name, labels) for (name, labels), v in after.items() if v != before.get((name, labels), 0)]
    routes = {v for (name, labels) in grown if name.startswith("edm_http_") for k, v in labels if k == "route"}
    assert routes <= templates | {"unmatched", "/t/o/{token}.gif", "/t/c/{token}"}, routes - templates
    assert {"unmatched", "/api/v1/tasks/{task_id}", "/webhooks/{provider}"} <= routes
    providers = {
        v for (name, labels) in grown if name == "edm_webhook_requests_total" for k, v in labels if k == "provider"
    }
    assert providers == {"other"}
    methods = {v for (name, labels) in grown if name == "edm_http_requests_total" for k, v in labels if k == "method"}
    assert "PROPFIND" not in methods and "other" in methods
    return routes
