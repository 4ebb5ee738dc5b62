"""Bad webhook input answers a clear 4xx (or 503 when the database is down), stores nothing it should not,
and never answers 500 (docs/events.md)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import httpx
import orjson

from edm import clock
from edm.app import create_app
from edm.db.session import unit_of_work
from edm.email_services import service as services
from tests import factories
from tests.helpers import settings_for
from tests.integration.events.conftest import (
    ENGAGELAB_KEY,
    SENDGRID_KEY,
    EventKit,
    engagelab_headers,
    sendgrid_headers,
)


def engagelab_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "server": "email",
        "message_id": "m1",
        "itime": int(time.time() * 1000),
        "status": {"message_status": "delivered", "status_data": {"message": "250 OK"}},
    }
    event.update(overrides)
    return event


async def post_engagelab(ekit: EventKit, body: bytes, path: str = "/webhook/engagelab", **headers: str) -> Any:
    return await ekit.client.post(path, content=body, headers={**engagelab_headers(), **headers})


async def stored(ekit: EventKit) -> int:
    return len(await ekit.events())


async def test_engagelab_event_without_any_id_is_refused_with_the_original_message(ekit: EventKit) -> None:
    await ekit.send_task(1)
    response = await post_engagelab(ekit, orjson.dumps(engagelab_event()), **{"X-Request-Id": "req-42"})
    assert response.status_code == 400
    assert response.headers["x-request-id"] == "req-42" and response.json()["error"]["request_id"] == "req-42"
    assert response.json()["error"]["code"] == "missing_subtask_id"
    assert response.json()["error"]["message"] == "missing custom_args.subtask_id"
    assert await stored(ekit) == 0


async def test_engagelab_original_and_new_paths_both_store_and_apply(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(2)
    for path, st in (("/webhook/engagelab", subtasks[0]), ("/webhooks/engagelab", subtasks[1])):
        event = engagelab_event(custom_args={"subtask_id": str(st.public_id), "task_id": str(task_id)})
        response = await post_engagelab(ekit, orjson.dumps(event), path)
        assert response.status_code == 200, response.text
    await ekit.apply()
    assert [st.delivery_state for st in await ekit.dkit.subtasks(task_id)] == ["delivered", "delivered"]


async def test_per_service_url_accepts_only_its_own_provider_and_service(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(1)
    event = orjson.dumps(engagelab_event(custom_args={"subtask_id": str(subtasks[0].public_id)}))
    own = await post_engagelab(ekit, event, f"/webhooks/engagelab/{ekit.service_ids['engagelab']}")
    assert own.status_code == 200
    other = await post_engagelab(ekit, event, f"/webhooks/engagelab/{ekit.service_ids['sendgrid']}")
    assert other.status_code == 401 and other.json()["error"]["code"] == "invalid_signature"
    assert (await post_engagelab(ekit, event, "/webhooks/engagelab/abc")).status_code == 404
    stored_events = await ekit.events()
    assert len(stored_events) == 1 and stored_events[0].service_id == ekit.service_ids["engagelab"]


async def test_bad_signatures_are_401_and_store_nothing(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(1)
    body = orjson.dumps(
        [
            {
                "event": "delivered",
                "email": "a@example.org",
                "timestamp": 1,
                "sg_event_id": "e1",
                "subtask_id": str(subtasks[0].public_id),
            }
        ]
    )
    good = sendgrid_headers(body)
    tampered = body.replace(b"delivered", b"bounce\x20\x20\x20")
    stale = sendgrid_headers(body, timestamp=int(time.time()) - 3600)
    from cryptography.hazmat.primitives.asymmetric import ec

    other_key = sendgrid_headers(body, key=ec.derive_private_key(12345, ec.SECP256R1()))
    unsigned = {"Content-Type": "application/json"}
    for content, headers in ((tampered, good), (body, stale), (body, other_key), (body, unsigned)):
        response = await ekit.client.post("/webhooks/sendgrid", content=content, headers=headers)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "invalid_signature"
    wrong_engagelab = await post_engagelab(
        ekit, orjson.dumps(engagelab_event(custom_args={"subtask_id": "x"})), **{"X-WebHook-Signature": "0" * 64}
    )
    assert wrong_engagelab.status_code == 401
    assert await stored(ekit) == 0
    assert SENDGRID_KEY is not None and ENGAGELAB_KEY


async def test_a_provider_without_any_configured_secret_refuses_webhooks(ekit: EventKit) -> None:
    await ekit.send_task(1)
    response = await ekit.client.post("/webhooks/postmark", content=b"{}", headers={"Content-Type": "application/json"})
    # The same answer as a wrong signature: an unauthenticated caller does not learn what is configured.
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_signature"


async def test_malformed_payloads_wrong_content_type_and_huge_bodies(ekit: EventKit) -> None:
    await ekit.send_task(1)
    malformed = b'[{"event": "delivered",'
    response = await ekit.client.post("/webhooks/sendgrid", content=malformed, headers=sendgrid_headers(malformed))
    assert response.status_code == 400 and response.json()["error"]["code"] == "malformed_payload"
    not_a_list = b'{"event": "delivered"}'
    response = await ekit.client.post("/webhooks/sendgrid", content=not_a_list, headers=sendgrid_headers(not_a_list))
    assert response.status_code == 400 and response.json()["error"]["code"] == "malformed_payload"
    form = b"event=delivered"
    headers = {**sendgrid_headers(form), "Content-Type": "application/x-www-form-urlencoded"}
    response = await ekit.client.post("/webhooks/sendgrid", content=form, headers=headers)
    assert response.status_code == 400 and "content type" in response.json()["error"]["message"]
    huge = b"[" + b" " * (6 * 1024 * 1024) + b"]"
    response = await ekit.client.post("/webhooks/sendgrid", content=huge, headers=sendgrid_headers(huge))
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    assert (await ekit.client.post("/webhooks/nosuchprovider", content=b"{}")).status_code == 404
    assert await stored(ekit) == 0


async def test_providers_probing_the_url_with_get_get_an_empty_200(ekit: EventKit) -> None:
    for path in ("/webhook/engagelab", "/webhooks/sendgrid", "/webhooks/mailgun/1"):
        response = await ekit.client.get(path)
        assert response.status_code == 200 and response.content == b""


async def test_secret_rotation_accepts_both_until_the_old_one_expires(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(1)
    service_id = ekit.service_ids["engagelab"]
    in_an_hour = (clock.utc_now() + dt.timedelta(hours=1)).isoformat()
    async with unit_of_work(ekit.sessionmaker) as session:
        await services.update_service(
            session,
            factories.vault_for(ekit.dkit.settings),
            service_id,
            values={},
            credentials={"webhook_secrets": ["new-key", {"value": ENGAGELAB_KEY, "expires_at": in_an_hour}]},
            fake_allowed=True,
        )
    await _forget_cached_targets(ekit)
    body = orjson.dumps(engagelab_event(custom_args={"subtask_id": str(subtasks[0].public_id)}))
    assert (await post_engagelab(ekit, body)).status_code == 200  # old key, not yet expired
    assert (await post_engagelab(ekit, body, **engagelab_headers(key="new-key"))).status_code == 200
    clock.shift(dt.timedelta(hours=2))
    await _forget_cached_targets(ekit)
    now = int(clock.utc_now().timestamp())
    assert (await post_engagelab(ekit, body, **engagelab_headers(timestamp=now))).status_code == 401
    assert (await post_engagelab(ekit, body, **engagelab_headers(key="new-key", timestamp=now))).status_code == 200


async def _forget_cached_targets(ekit: EventKit) -> None:
    """The app caches each provider's secrets for a few seconds; the test does not wait for that."""
    transport = ekit.client._transport
    assert isinstance(transport, httpx.ASGITransport)
    transport.app.state.webhook_targets = {}  # type: ignore[attr-defined]


async def test_database_down_answers_503_so_the_provider_retries(db_url: str) -> None:
    del db_url  # the same answer whatever the configured backend
    settings = settings_for("postgresql://postgres@127.0.0.1:9/nowhere")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edm.test") as client:
            body = orjson.dumps([{"event": "delivered"}])
            response = await client.post("/webhooks/sendgrid", content=body, headers=sendgrid_headers(body))
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "unavailable"


class _BrokenParser:
    """A handler whose parser has a bug (stands in for an unforeseen payload shape)."""

    provider = "sendgrid"
    needs_secret = True

    def __init__(self, real: Any) -> None:
        self.real = real

    async def verify(self, request: Any, target: Any, ctx: Any) -> bool:
        return bool(await self.real.verify(request, target, ctx))

    def replay_nonce(self, request: Any) -> None:
        return None

    def parse(self, request: Any) -> Any:
        raise TypeError("'int' object is not iterable")


async def test_a_parser_bug_keeps_the_payload_as_a_bad_element_instead_of_a_500(ekit: EventKit) -> None:
    from edm.providers import registry

    await ekit.send_task(1)
    real = registry.webhook_handler("sendgrid")
    registry._webhook_instances["sendgrid"] = _BrokenParser(real)  # type: ignore[assignment]
    try:
        body = orjson.dumps([{"event": "delivered", "sg_event_id": "odd"}])
        response = await ekit.client.post("/webhooks/sendgrid", content=body, headers=sendgrid_headers(body))
    finally:
        registry._webhook_instances["sendgrid"] = real  # type: ignore[assignment]
    assert response.status_code == 200 and response.json()["bad"] == 1
    kept = await ekit.events()
    assert len(kept) == 1 and kept[0].raw == [{"event": "delivered", "sg_event_id": "odd"}]
    assert kept[0].processing_error.startswith("parser error: TypeError")
