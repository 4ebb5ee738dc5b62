"""Admin service API: write-only credentials, actions with status-log rows, usage correction, mappings."""

from __future__ import annotations

from edm.models.users import Role
from edm.secret_keys import generate_encryption_key, generate_secret_key
from tests.helpers import api_client, make_account

SERVICE = {
    "name": "relay-1",
    "provider": "smtp",
    "domain": "mail.example.com",
    "options": {"host": "127.0.0.1", "port": 2525, "security": "none"},
    "credentials": {"username": "mailer", "password": "s3cret-password-value"},
    "sending_interval_seconds": 0.02,
    "max_concurrency": 4,
    "daily_quota": 500,
    "timezone": "Asia/Shanghai",
    "quota_reset_time": "02:00",
}


async def test_service_admin_flow(db_url, engine, sessionmaker):  # type: ignore[no-untyped-def]
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    user = await make_account(sessionmaker, "alice")
    async with api_client(db_url, engine) as client:
        created = await client.post("/api/v1/admin/services", json=SERVICE, headers=admin.headers)
        assert created.status_code == 201, created.text
        body = created.json()
        assert "s3cret" not in created.text and "credentials" not in body
        assert body["credentials_set"] is True and body["credentials_hint"]["password"] == "…alue"
        assert body["sending_interval_seconds"] == 0.02 and body["label"] == "Channel 1"
        sid = body["id"]
        listed = await client.get("/api/v1/admin/services", headers=admin.headers)
        assert "s3cret" not in listed.text and listed.json()[0]["state"] == "available"

        kept = await client.patch(
            f"/api/v1/admin/services/{sid}",
            headers=admin.headers,
            json={"credentials": {"password": ""}, "daily_quota": 600},
        )
        assert kept.status_code == 200 and kept.json()["credentials_set"] and kept.json()["daily_quota"] == 600

        frozen = await client.post(
            f"/api/v1/admin/services/{sid}/freeze", json={"reason": "maintenance"}, headers=admin.headers
        )
        assert frozen.status_code == 200
        state = (await client.get(f"/api/v1/admin/services/{sid}", headers=admin.headers)).json()
        assert state["state"] == "frozen" and state["frozen_reason"] == "manual"
        await client.post(f"/api/v1/admin/services/{sid}/unfreeze", headers=admin.headers)
        usage = await client.post(f"/api/v1/admin/services/{sid}/usage", json={"used_today": 42}, headers=admin.headers)
        assert usage.json()["adjustment_delta"] == 42
        state = (await client.get(f"/api/v1/admin/services/{sid}", headers=admin.headers)).json()
        assert state["state"] == "available" and state["used_today"] == 42
        log = (await client.get(f"/api/v1/admin/status-log?service_id={sid}", headers=admin.headers)).json()["items"]
        assert [entry["change"] for entry in log][:3] == ["usage_adjusted", "unfrozen", "frozen"]

        mapped = await client.post(
            "/api/v1/admin/mappings", json={"user_ids": [user.id], "service_ids": [sid]}, headers=admin.headers
        )
        assert mapped.status_code == 201
        mine = (await client.get("/api/v1/me/services", headers=user.headers)).json()
        assert mine == [{"id": sid, "label": "Channel 1", "domain": "mail.example.com", "sending_now": True}]
        assert (await client.get("/api/v1/admin/services", headers=user.headers)).status_code == 403
        in_use = await client.delete(f"/api/v1/admin/services/{sid}", headers=admin.headers)
        assert in_use.status_code == 409 and in_use.json()["error"]["code"] == "in_use"


async def test_service_bad_input(db_url, engine, sessionmaker):  # type: ignore[no-untyped-def]
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    async with api_client(db_url, engine) as client:
        for field, value in [
            ("sending_interval_seconds", -1),
            ("max_concurrency", 0),
            ("quota_reset_time", "25:00"),
            ("domain", "not a host"),
            ("provider", "carrier-pigeon"),
            ("timezone", "Mars/Base"),
        ]:
            answer = await client.post("/api/v1/admin/services", json={**SERVICE, field: value}, headers=admin.headers)
            assert answer.status_code == 422, (field, answer.text)
            assert field in answer.json()["error"]["message"], answer.text
        await client.post("/api/v1/admin/services", json=SERVICE, headers=admin.headers)
        duplicate = await client.post("/api/v1/admin/services", json=SERVICE, headers=admin.headers)
        assert duplicate.status_code == 409
        missing = await client.post("/api/v1/admin/services/99999/freeze", json={"reason": "x"}, headers=admin.headers)
        assert missing.status_code == 404


async def test_fake_provider_refused_in_production(db_url, engine, sessionmaker):  # type: ignore[no-untyped-def]
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    async with api_client(
        db_url, engine, env="production", secret_key=generate_secret_key(), encryption_keys=generate_encryption_key()
    ) as client:
        answer = await client.post(
            "/api/v1/admin/services",
            headers=admin.headers,
            json={"name": "f", "provider": "fake", "domain": "f.example.com"},
        )
        assert answer.status_code == 422 and "provider" in answer.json()["error"]["message"]


async def test_provider_options_and_batch_size_are_checked_when_saved(db_url, engine, sessionmaker):  # type: ignore[no-untyped-def]
    """An option the provider refuses (unknown region) or a batch larger than the provider takes fails with a
    422 naming the field, at save time rather than at the first send; a valid ESP service saves."""
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    base = {"provider": "sendgrid", "domain": "mail.example.com", "credentials": {"api_key": "SG.secret"}}
    async with api_client(db_url, engine) as client:
        bad_region = await client.post(
            "/api/v1/admin/services",
            headers=admin.headers,
            json={**base, "name": "sg-1", "options": {"region": "mars"}},
        )
        assert bad_region.status_code == 422 and "region" in bad_region.json()["error"]["message"]
        too_big = await client.post(
            "/api/v1/admin/services",
            headers=admin.headers,
            json={**base, "name": "ses-1", "provider": "ses", "batch_size": 50, "options": {"region": "eu-west-1"}},
        )
        assert too_big.status_code == 422
        assert too_big.json()["error"]["details"][0]["field"] == "batch_size"
        fine = await client.post(
            "/api/v1/admin/services",
            headers=admin.headers,
            json={**base, "name": "sg-2", "batch_size": 500, "options": {"region": "eu"}},
        )
        assert fine.status_code == 201, fine.text
        later = await client.patch(
            f"/api/v1/admin/services/{fine.json()['id']}", headers=admin.headers, json={"options": {"region": "moon"}}
        )
        assert later.status_code == 422
        no_url = await client.post(
            "/api/v1/admin/services",
            headers=admin.headers,
            json={
                "name": "fake-events",
                "provider": "fake",
                "domain": "f.example.com",
                "options": {"events": {"delivered_pct": 90}},
            },
        )
        assert no_url.status_code == 422 and no_url.json()["error"]["details"][0]["field"] == "options"
