"""API conventions through the real ASGI app and database (docs/api.md): `Idempotency-Key` on creating
POSTs (replay, reuse with another body, in progress, per user, key syntax, 24 h expiry and purge, 5xx not
stored), the per-credential rate limit (429 with `Retry-After`, public endpoints exempt), and the
input rules every endpoint shares (unknown fields, `limit`, cursors, oversized ids, bad JSON, content type)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update

from edm import clock
from edm.api.idempotency import BODY_SLACK
from edm.api.ratelimit import TokenBuckets
from edm.app import create_app
from edm.db.session import unit_of_work
from edm.models.contacts import Contact
from edm.models.system import IdempotencyRecord
from edm.models.users import Role
from edm.operations import retention
from edm.system import idempotency
from edm.system.runtime_settings import RuntimeSettings
from tests.helpers import api_client, make_account, openapi_document, settings_for

API = "/api/v1"


def _error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["code"] == code, body
    assert body["request_id"], body
    return body


async def _contacts(sessionmaker: Any, user_id: int) -> int:
    async with unit_of_work(sessionmaker) as session:
        return int(
            (
                await session.execute(select(func.count()).select_from(Contact).where(Contact.user_id == user_id))
            ).scalar_one()
        )


# --------------------------------------------------------------------------------------------------------
# Idempotency-Key
# --------------------------------------------------------------------------------------------------------


async def test_repeat_with_same_key_and_body_replays_the_first_answer(
    client: httpx.AsyncClient, sessionmaker: Any
) -> None:
    alice = await make_account(sessionmaker, "alice")
    headers = {**alice.headers, "Idempotency-Key": "create-ann-1"}
    first = await client.post(f"{API}/contacts", json={"email": "ann@example.com"}, headers=headers)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    again = await client.post(f"{API}/contacts", json={"email": "ann@example.com"}, headers=headers)
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert await _contacts(sessionmaker, alice.id) == 1
    # Without the header the request runs again (and meets the duplicate).
    plain = await client.post(f"{API}/contacts", json={"email": "ann@example.com"}, headers=alice.headers)
    _error(plain, 409, "conflict")


async def test_a_stored_error_answer_is_replayed_too(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    headers = {**alice.headers, "Idempotency-Key": "k-invalid"}
    first = await client.post(f"{API}/contacts", json={"email": "not an address"}, headers=headers)
    _error(first, 422, "validation_error")
    again = await client.post(f"{API}/contacts", json={"email": "not an address"}, headers=headers)
    assert (again.status_code, again.headers["idempotent-replayed"]) == (422, "true")
    assert again.json()["error"]["details"] == first.json()["error"]["details"]


async def test_same_key_with_another_body_or_path_is_refused(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    headers = {**alice.headers, "Idempotency-Key": "k1"}
    assert (await client.post(f"{API}/contacts", json={"email": "a@example.com"}, headers=headers)).status_code == 201
    other = await client.post(f"{API}/contacts", json={"email": "b@example.com"}, headers=headers)
    _error(other, 422, "idempotency_key_reused")
    elsewhere = await client.post(f"{API}/tags", json={"name": "x"}, headers=headers)
    _error(elsewhere, 422, "idempotency_key_reused")
    assert await _contacts(sessionmaker, alice.id) == 1


async def test_keys_are_per_user(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    body = {"email": "same@example.com"}
    a = await client.post(f"{API}/contacts", json=body, headers={**alice.headers, "Idempotency-Key": "shared"})
    b = await client.post(f"{API}/contacts", json=body, headers={**bob.headers, "Idempotency-Key": "shared"})
    assert (a.status_code, b.status_code) == (201, 201)
    assert "idempotent-replayed" not in b.headers
    assert a.json()["id"] != b.json()["id"]
    assert (await _contacts(sessionmaker, alice.id), await _contacts(sessionmaker, bob.id)) == (1, 1)


async def test_repeat_while_the_first_is_running_answers_409(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    headers = {**alice.headers, "Idempotency-Key": "slow"}
    assert (await client.post(f"{API}/tags", json={"name": "t"}, headers=headers)).status_code == 201
    # The record of a request still running has no answer yet: make the stored one look like that.
    async with unit_of_work(sessionmaker) as session:
        await session.execute(update(IdempotencyRecord).values(status_code=None, response_body=None))
    _error(await client.post(f"{API}/tags", json={"name": "t"}, headers=headers), 409, "idempotency_in_progress")


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "caf\u00e9"])
async def test_bad_keys_are_refused_with_a_clear_message(
    client: httpx.AsyncClient, sessionmaker: Any, key: str
) -> None:
    alice = await make_account(sessionmaker, "alice")
    headers = [(b"authorization", f"Bearer {alice.token}".encode()), (b"idempotency-key", key.encode())]
    r = await client.post(f"{API}/tags", json={"name": "t"}, headers=headers)
    body = _error(r, 422, "validation_error")
    assert "Idempotency-Key" in body["message"]
    assert body["details"][0]["field"] == "Idempotency-Key"
    # 255 printable characters are fine.
    ok = await client.post(f"{API}/tags", json={"name": "t"}, headers={**alice.headers, "Idempotency-Key": "~" * 255})
    assert ok.status_code == 201, ok.text


async def test_unauthenticated_request_with_a_key_gets_401(client: httpx.AsyncClient) -> None:
    r = await client.post(f"{API}/tags", json={"name": "t"}, headers={"Idempotency-Key": "k"})
    _error(r, 401, "unauthenticated")
    r = await client.post(
        f"{API}/tags", json={"name": "t"}, headers={"Idempotency-Key": "k", "Authorization": "Bearer nope"}
    )
    assert r.status_code == 401


async def test_multipart_import_is_replayed(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    headers = {**alice.headers, "Idempotency-Key": "import-1"}
    files = {"file": ("list.csv", b"email\na@example.com\nb@example.com\n", "text/csv")}
    first = await client.post(f"{API}/suppressions/import", files=files, headers=headers)
    assert first.status_code < 300, first.text
    again = await client.post(f"{API}/suppressions/import", files=files, headers=headers)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()


async def test_an_oversized_body_with_a_key_is_refused_before_it_is_spooled(
    db_url: str, engine: Any, sessionmaker: Any
) -> None:
    """The middleware copies a keyed body aside to replay it: that copy must stop at the upload limit too."""
    alice = await make_account(sessionmaker, "alice")
    limit = 1000 + BODY_SLACK
    chunk = b"x" * 16384

    async def endless() -> Any:  # no Content-Length: only counting the bytes can stop it
        for _ in range(1000):  # 16 MB, far past the limit
            yield chunk

    async with api_client(db_url, engine, import_max_bytes=1000) as client:
        declared = {
            **alice.headers,
            "Idempotency-Key": "big-1",
            "Content-Type": "multipart/form-data; boundary=b",
            "Content-Length": str(limit + 1),
        }
        r = await client.post(f"{API}/contacts/imports", content=b"", headers=declared)
        assert "exceeds" in _error(r, 413, "too_large")["message"]
        streamed = {**alice.headers, "Idempotency-Key": "big-2", "Content-Type": "multipart/form-data; boundary=b"}
        r = await client.post(f"{API}/contacts/imports", content=endless(), headers=streamed)
        _error(r, 413, "too_large")
    async with unit_of_work(sessionmaker) as session:
        assert (await session.execute(select(func.count()).select_from(IdempotencyRecord))).scalar_one() == 0


async def test_records_expire_after_24_hours_and_are_purged(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    headers = {**alice.headers, "Idempotency-Key": "day-old"}
    assert (await client.post(f"{API}/tags", json={"name": "t"}, headers=headers)).status_code == 201
    clock.shift(dt.timedelta(hours=23))
    assert (await client.post(f"{API}/tags", json={"name": "t"}, headers=headers)).headers[
        "idempotent-replayed"
    ] == "true"
    assert await _purge(sessionmaker) == 0
    clock.shift(dt.timedelta(hours=2))
    # Past 24 h the key is forgotten: the request runs again (and meets the tag it created the first time).
    late = await client.post(f"{API}/tags", json={"name": "t"}, headers=headers)
    _error(late, 409, "conflict")
    assert "idempotent-replayed" not in late.headers
    clock.shift(dt.timedelta(hours=25))
    assert await _purge(sessionmaker) == 1
    async with unit_of_work(sessionmaker) as session:
        assert (await session.execute(select(func.count()).select_from(IdempotencyRecord))).scalar_one() == 0


async def _purge(sessionmaker: Any) -> int:
    """The worker's hourly `idempotency` job: the retention of Idempotency-Key records alone."""
    runs = await retention.run(sessionmaker, now=clock.utc_now(), runtime=RuntimeSettings(), only=("idempotency_keys",))
    return runs[0].rows


@asynccontextmanager
async def _app_with_flaky_route(db_url: str, engine: Any) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The real app plus one route that fails with an unhandled error on its first call."""
    app = create_app(settings_for(db_url), engine=engine)
    calls = {"n": 0}

    @app.post(f"{API}/flaky", status_code=201)
    async def flaky() -> dict[str, int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("first call fails")
        return {"call": calls["n"]}

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://edm.test") as c:
            yield app, c


async def test_server_errors_are_not_stored(db_url: str, engine: Any, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    async with _app_with_flaky_route(db_url, engine) as (_, c):
        headers = {**alice.headers, "Idempotency-Key": "retry-me"}
        _error(await c.post(f"{API}/flaky", json={}, headers=headers), 500, "internal_error")
        second = await c.post(f"{API}/flaky", json={}, headers=headers)
        assert (second.status_code, second.json()) == (201, {"call": 2})
        assert "idempotent-replayed" not in second.headers
        third = await c.post(f"{API}/flaky", json={}, headers=headers)
        assert (third.json(), third.headers["idempotent-replayed"]) == ({"call": 2}, "true")


async def test_claim_race_gives_one_winner(sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    args = {"user_id": alice.id, "key": "k", "method": "POST", "path": "/api/v1/x", "request_hash": "h"}
    first = await idempotency.claim(sessionmaker, **args)
    second = await idempotency.claim(sessionmaker, **args)
    assert first.record_id is not None
    assert second.error is not None and second.error[1] == "idempotency_in_progress"


# --------------------------------------------------------------------------------------------------------
# Rate limit
# --------------------------------------------------------------------------------------------------------


async def test_rate_limit_per_token_answers_429_with_retry_after(db_url: str, engine: Any, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    async with api_client(db_url, engine, api_rate_limit=5) as c:
        for _ in range(5):
            assert (await c.get(f"{API}/me", headers=alice.headers)).status_code == 200
        r = await c.get(f"{API}/me", headers=alice.headers)
        body = _error(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1
        assert "5 a minute" in body["message"]
        # Writes count too, and nothing runs past the limit.
        _error(await c.post(f"{API}/tags", json={"name": "t"}, headers=alice.headers), 429, "rate_limited")
        # Another credential has its own bucket; public endpoints are not limited.
        assert (await c.get(f"{API}/me", headers=bob.headers)).status_code == 200
        for _ in range(10):
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get(f"{API}/openapi.json")).status_code == 200
            assert (await c.post("/webhooks/fake", content=b"{}")).status_code != 429


async def test_default_limit_is_600_a_minute(db_url: str, engine: Any, sessionmaker: Any) -> None:
    assert settings_for(db_url).api_rate_limit == 600


def test_token_bucket_refills_at_the_steady_rate() -> None:
    now = [1000.0]
    buckets = TokenBuckets(60, now=lambda: now[0])
    assert all(buckets.take("a") == 0 for _ in range(60))
    wait = buckets.take("a")
    assert wait == pytest.approx(1.0)
    now[0] += 1.0
    assert buckets.take("a") == 0
    assert buckets.take("a") > 0
    now[0] += 120.0  # never more than a minute's worth
    assert sum(1 for _ in range(100) if buckets.take("a") == 0) == 60


def test_token_bucket_table_is_bounded() -> None:
    buckets = TokenBuckets(10, max_buckets=3)
    for key in "abcde":
        buckets.take(key)
    assert list(buckets.buckets) == ["c", "d", "e"]


# --------------------------------------------------------------------------------------------------------
# Input rules (docs/api.md#errors)
# --------------------------------------------------------------------------------------------------------


async def test_unknown_body_field_is_422(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    r = await client.post(f"{API}/contacts", json={"email": "a@example.com", "favourite": 1}, headers=alice.headers)
    body = _error(r, 422, "validation_error")
    assert body["details"] == [{"field": "favourite", "message": "unknown field"}]


def _paged_lists() -> dict[str, dict[str, str]]:
    """Every GET without path parameters that takes `limit` (from the OpenAPI document: new lists join),
    with a value for each of its other required query parameters."""
    spec = openapi_document()
    found: dict[str, dict[str, str]] = {}
    for path, ops in spec["paths"].items():
        params = ops.get("get", {}).get("parameters", [])
        if "{" in path or not any(p.get("name") == "limit" for p in params):
            continue
        found[path[len(API) :]] = {
            p["name"]: "someone@example.com" for p in params if p.get("required") and p.get("in") == "query"
        }
    return found


PAGED = _paged_lists()


def test_the_main_lists_are_paged() -> None:
    assert {
        "/contacts",
        "/tags",
        "/templates",
        "/senders",
        "/tasks",
        "/suppressions",
        "/events",
        "/me/tokens",
        "/admin/status-log",
        "/admin/mappings",
    } <= set(PAGED)


@pytest.mark.parametrize("path", sorted(PAGED))
async def test_limit_and_cursor_are_checked_on_lists(client: httpx.AsyncClient, sessionmaker: Any, path: str) -> None:
    alice = await make_account(sessionmaker, "alice", role=Role.ADMIN)
    required = PAGED[path]
    for limit in (0, 201, "many"):
        r = await client.get(f"{API}{path}", params={**required, "limit": limit}, headers=alice.headers)
        body = _error(r, 422, "validation_error")
        assert body["details"][0]["field"] == "limit"
    ok = await client.get(f"{API}{path}", params={**required, "limit": 200}, headers=alice.headers)
    assert ok.status_code == 200, ok.text
    for cursor in ("garbage!", "eyJhIjogMX0", "e30"):
        r = await client.get(f"{API}{path}", params={**required, "cursor": cursor}, headers=alice.headers)
        body = _error(r, 422, "validation_error")
        assert body["details"][0]["field"] == "cursor"


async def test_ids_beyond_64_bits_are_422_not_500(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice", role=Role.ADMIN)
    huge = str(2**64)
    for path in (
        f"/contacts/{huge}",
        f"/tasks/{huge}",
        f"/admin/users/{huge}",
        f"/tags/{2**63}",
        f"/tasks/1/subtasks/{huge}",
    ):
        _error(await client.get(f"{API}{path}", headers=alice.headers), 422, "validation_error")
    r = await client.post(f"{API}/contacts", json={"email": "a@example.com", "tag_ids": [2**64]}, headers=alice.headers)
    _error(r, 422, "validation_error")
    r = await client.get(f"{API}/contacts", params={"cursor": _cursor(2**64)}, headers=alice.headers)
    _error(r, 422, "validation_error")


def _cursor(after: int) -> str:
    import base64
    import json

    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode().rstrip("=")


async def test_malformed_json_is_refused_with_a_message(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    r = await client.post(
        f"{API}/contacts", content=b'{"email": ', headers={**alice.headers, "Content-Type": "application/json"}
    )
    body = _error(r, 400, "invalid_json")  # docs/api.md#errors: malformed JSON → 400 invalid_json
    assert "JSON" in body["message"]


async def test_wrong_content_type_is_415_or_422(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        r = await client.post(
            f"{API}/contacts",
            content=b'{"email": "a@example.com"}',
            headers={**alice.headers, "Content-Type": content_type},
        )
        assert r.status_code in (415, 422), (content_type, r.status_code, r.text)
        assert r.json()["error"]["code"] in ("unsupported_media_type", "validation_error")
    assert await _contacts(sessionmaker, alice.id) == 0


@pytest.mark.parametrize(
    "field", ["priority", "track_opens", "track_clicks", "on_capacity_exhausted", "templates", "timezone"]
)
async def test_null_for_a_required_task_field_is_422_not_500(
    client: httpx.AsyncClient, sessionmaker: Any, field: str
) -> None:
    """Found by the fuzzer: an explicit null reached a NOT NULL column (500)."""
    alice = await make_account(sessionmaker, "alice")
    r = await client.post(f"{API}/tasks", json={"name": "n", field: None}, headers=alice.headers)
    body = _error(r, 422, "validation_error")
    assert body["details"][0]["field"] == field
    created = await client.post(f"{API}/tasks", json={"name": "n"}, headers=alice.headers)
    assert created.status_code == 201, created.text
    r = await client.patch(f"{API}/tasks/{created.json()['id']}", json={field: None}, headers=alice.headers)
    _error(r, 422, "validation_error")


def _integer_query_params() -> list[tuple[str, str, list[str]]]:
    """(method, path, parameters) for every operation with integer query parameters in the OpenAPI document."""
    spec = openapi_document()
    found = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            names = []
            for p in op.get("parameters", []):
                schema = p.get("schema", {})
                kinds = {schema.get("type")} | {o.get("type") for o in schema.get("anyOf", [])}
                if p.get("in") == "query" and "integer" in kinds:
                    names.append(p["name"])
            if names and "{" not in path:
                found.append((method.upper(), path, names))
    return found


@pytest.mark.parametrize(("method", "path", "names"), _integer_query_params())
async def test_integer_query_parameters_beyond_64_bits_are_4xx(
    client: httpx.AsyncClient, sessionmaker: Any, method: str, path: str, names: list[str]
) -> None:
    """Found by this test: id filters without bounds reached the database (500 on SQLite and PostgreSQL)."""
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    for name in names:
        for value in (2**63, 2**64, -(2**63) - 1):
            r = await client.request(method, path, params={name: value}, headers=admin.headers)
            assert 400 <= r.status_code < 500, (method, path, name, value, r.status_code, r.text[:300])


async def test_stored_answers_are_encrypted_so_a_new_token_is_not_kept_in_clear(
    client: httpx.AsyncClient, sessionmaker: Any
) -> None:
    alice = await make_account(sessionmaker, "alice")
    headers = {**alice.headers, "Idempotency-Key": "new-token"}
    first = await client.post(f"{API}/me/tokens", json={"name": "deploy-pipeline"}, headers=headers)
    assert first.status_code == 201, first.text
    token = first.json()["token"]
    async with unit_of_work(sessionmaker) as session:
        stored = (await session.execute(select(IdempotencyRecord.response_body))).scalar_one()
    assert token not in stored and "deploy-pipeline" not in stored
    again = await client.post(f"{API}/me/tokens", json={"name": "deploy-pipeline"}, headers=headers)
    assert (again.json()["token"], again.headers["idempotent-replayed"]) == (token, "true")


async def test_nul_characters_are_422_on_every_backend(
    client: httpx.AsyncClient, sessionmaker: Any, db_url: str
) -> None:
    """Found by probing PostgreSQL (text cannot hold NUL): a task name with NUL was a 500 there."""
    alice = await make_account(sessionmaker, "alice")
    r = await client.post(f"{API}/tasks", json={"name": "a\u0000b"}, headers=alice.headers)
    assert _error(r, 422, "validation_error")["details"][0]["field"] == "name"
    # The safety net: input an endpoint does not check is still not a 500 when the database refuses it.
    r = await client.get(f"{API}/subtasks", params={"email": "a\u0000b@example.com"}, headers=alice.headers)
    if db_url.startswith("postgresql"):
        _error(r, 422, "validation_error")
    else:
        assert r.status_code == 200, r.text
