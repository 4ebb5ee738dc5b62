"""The sending-service pages (/admin/services, /admin/services/new, /admin/services/<id>) over the ASGI app: admins
only (a user gets 404 on every page and every form post); an SMTP service created with only that provider's fields
against a real SMTP sink, refused beside its fields (422, what was typed kept), credentials never shown back; a
test send with its classified answer; freeze and unfreeze, enable, disable and clear the back-off, audited as the
API audits them; editing keeps an empty credential; webhook secrets added (shown once) and removed."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.session import unit_of_work
from edm.devtools.smtp_sink import SmtpSink
from edm.models.system import AuditLog
from edm.providers.registry import PROVIDERS
from tests import factories
from tests.helpers import Account, console_log_in, field_error, make_account, page_field, settings_for


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


async def _audit_actions(sessionmaker: async_sessionmaker[AsyncSession], service_id: int) -> list[str]:
    async with sessionmaker() as session:
        rows = await session.scalars(
            select(AuditLog.action)
            .where(AuditLog.target_type == "email_service", AuditLog.target_id == str(service_id))
            .order_by(AuditLog.id)
        )
        return list(rows)


async def _api_service(client: httpx.AsyncClient, admin: Account, service_id: int) -> dict[str, Any]:
    got = await client.get(f"/api/v1/admin/services/{service_id}", headers=admin.headers)
    assert got.status_code == 200, got.text
    answer: dict[str, Any] = got.json()
    return answer


def _smtp_form(csrf: str, sink: SmtpSink, **overrides: str) -> dict[str, str]:
    return {
        "csrf_token": csrf,
        "provider": "smtp",
        "name": "relay-1",
        "label": "",
        "domain": "mail.example.com",
        "daily_quota": "500",
        "sending_interval_seconds": "0.5",
        "max_concurrency": "2",
        "batch_size": "1",
        "opt_host": sink.host,
        "opt_port": str(sink.port),
        "opt_security": "none",
        "cred_username": "",
        "cred_password": "s3cret-pass-9876",
        **overrides,
    }


async def test_an_smtp_service_is_created_test_sent_frozen_and_unfrozen_by_an_admin_only(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], sink: SmtpSink
) -> None:
    admin = await make_account(sessionmaker, "sam", role="admin")
    csrf = await console_log_in(client, admin)
    empty = await client.get("/admin/services")
    assert empty.status_code == 200 and "No sending service yet" in empty.text

    picker = await client.get("/admin/services/new")
    assert picker.status_code == 200 and 'name="opt_host"' not in picker.text
    smtp = await client.get("/admin/services/new?provider=smtp")
    assert 'name="opt_host"' in smtp.text and 'name="cred_password"' in smtp.text
    assert 'name="cred_api_key"' not in smtp.text, "only the provider's own fields"
    sendgrid = await client.get("/admin/services/new?provider=sendgrid")
    assert 'name="cred_api_key"' in sendgrid.text and 'name="opt_host"' not in sendgrid.text
    for provider in sorted(PROVIDERS):
        form = await client.get(f"/admin/services/new?provider={provider}")
        assert form.status_code == 200 and "⟦MISSING" not in form.text, provider
        assert f'name="provider" value="{provider}"' in form.text, provider

    bad = await client.post(
        "/admin/services/new", data=_smtp_form(csrf, sink, opt_host="", daily_quota="lots", opt_port="x")
    )
    assert bad.status_code == 422
    assert field_error(bad.text, "opt_host") == "This field is required."
    assert page_field(bad.text, "daily_quota") == "lots" and page_field(bad.text, "name") == "relay-1"
    assert "s3cret-pass-9876" not in bad.text, "a credential is never rendered back"
    bad_quota = await client.post("/admin/services/new", data=_smtp_form(csrf, sink, daily_quota="lots"))
    assert bad_quota.status_code == 422 and field_error(bad_quota.text, "daily_quota") == "Enter a whole number."
    bad_domain = await client.post("/admin/services/new", data=_smtp_form(csrf, sink, domain="not a host"))
    assert bad_domain.status_code == 422
    assert field_error(bad_domain.text, "domain") == "Enter a host name such as mail.example.com."

    created = await client.post("/admin/services/new", data=_smtp_form(csrf, sink))
    assert created.status_code == 303, created.text
    found = re.fullmatch(r"/admin/services/(\d+)\?notice=created", created.headers["location"])
    assert found is not None
    service_id = int(found.group(1))
    api = await _api_service(client, admin, service_id)
    assert api["provider"] == "smtp" and api["daily_quota"] == 500 and api["sending_interval_seconds"] == 0.5
    assert api["options"] == {
        "host": sink.host,
        "port": sink.port,
        "security": "none",
        "validate_certs": False,
        "request_dsn": False,
    }
    assert api["credentials_set"] is True
    taken = await client.post("/admin/services/new", data=_smtp_form(csrf, sink))
    assert taken.status_code == 409 and field_error(taken.text, "name") == "This is already in use."

    page = await client.get(f"/admin/services/{service_id}")
    assert page.status_code == 200 and "s3cret-pass-9876" not in page.text
    assert "Set: leave empty to keep it." in page.text
    listed = await client.get("/admin/services")
    assert "relay-1" in listed.text and "500" in listed.text and "Available" in listed.text
    # The live values poll the API with the console's cookie: the list by position, the page by the health view.
    assert 'data-poll="/api/v1/admin/services"' in listed.text and 'data-field="0.used_today"' in listed.text
    polled = await client.get("/api/v1/admin/services")
    assert polled.status_code == 200 and polled.json()[0]["id"] == service_id
    assert (await client.get(f"/api/v1/admin/services/{service_id}/health")).status_code == 200

    bad_to = await client.post(
        f"/admin/services/{service_id}/test-send", data={"csrf_token": csrf, "to": "nobody", "from_local_part": "test"}
    )
    assert bad_to.status_code == 422 and field_error(bad_to.text, "to")
    assert page_field(bad_to.text, "to") == "nobody"
    sent = await client.post(
        f"/admin/services/{service_id}/test-send",
        data={"csrf_token": csrf, "to": "kim@example.org", "from_local_part": "test"},
    )
    assert sent.status_code == 200 and 'id="test-result"' in sent.text and "Accepted" in sent.text
    assert await sink.wait_for_messages(1)

    no_reason = await client.post(f"/admin/services/{service_id}/freeze", data={"csrf_token": csrf, "reason": ""})
    assert no_reason.status_code == 422 and field_error(no_reason.text, "reason") == "This field is required."
    frozen = await client.post(f"/admin/services/{service_id}/freeze", data={"csrf_token": csrf, "reason": "check"})
    assert frozen.status_code == 303
    assert "Frozen" in (await client.get("/admin/services")).text
    assert (await _api_service(client, admin, service_id))["state"] == "frozen"
    unfrozen = await client.post(f"/admin/services/{service_id}/unfreeze", data={"csrf_token": csrf})
    assert unfrozen.status_code == 303 and unfrozen.headers["location"].endswith("notice=unfreeze")
    assert (await _api_service(client, admin, service_id))["state"] != "frozen"
    page = await client.get(f"/admin/services/{service_id}")
    assert "Test send" in page.text and "Unfrozen" in page.text, "the status log lists the changes"
    assert "⟦MISSING" not in page.text and "⟦MISSING" not in sent.text and "⟦MISSING" not in listed.text
    assert await _audit_actions(sessionmaker, service_id) == [
        "service.create",
        "service.test_send",
        "service.freeze",
        "service.unfreeze",
    ]

    user = await make_account(sessionmaker, "ursula")
    user_csrf = await console_log_in(client, user)
    for path in ("/admin/services", "/admin/services/new", f"/admin/services/{service_id}"):
        assert (await client.get(path)).status_code == 404, path
    for path in (
        "/admin/services/new",
        f"/admin/services/{service_id}",
        f"/admin/services/{service_id}/freeze",
        f"/admin/services/{service_id}/unfreeze",
        f"/admin/services/{service_id}/disable",
        f"/admin/services/{service_id}/test-send",
        f"/admin/services/{service_id}/webhook-secrets",
    ):
        refused = await client.post(path, data={**_smtp_form(user_csrf, sink), "reason": "x", "to": "a@b.example"})
        assert refused.status_code == 404, path
    assert len(sink.messages) == 1
    assert await _audit_actions(sessionmaker, service_id) == [
        "service.create",
        "service.test_send",
        "service.freeze",
        "service.unfreeze",
    ]


async def test_editing_keeps_an_empty_credential_and_the_actions_and_webhook_secrets_work(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], sink: SmtpSink
) -> None:
    admin = await make_account(sessionmaker, "sue", role="admin")
    csrf = await console_log_in(client, admin)
    created = await client.post("/admin/services/new", data=_smtp_form(csrf, sink, name="relay-2"))
    assert created.status_code == 303
    service_id = int(created.headers["location"].split("/")[3].split("?")[0])
    hint = (await _api_service(client, admin, service_id))["credentials_hint"]

    page = (await client.get(f"/admin/services/{service_id}")).text
    form = {name: page_field(page, name) for name in ("name", "label", "domain", "daily_quota", "opt_host", "opt_port")}
    bad = await client.post(
        f"/admin/services/{service_id}",
        data={**form, "csrf_token": csrf, "timezone": "Mars/Base", "quota_reset_time": "07:00", "cred_password": ""},
    )
    assert bad.status_code == 422
    assert field_error(bad.text, "timezone") == "Choose a time zone such as Europe/Berlin or UTC."
    assert page_field(bad.text, "timezone") == "Mars/Base"
    saved = await client.post(
        f"/admin/services/{service_id}",
        data={**form, "csrf_token": csrf, "daily_quota": "900", "opt_security": "none", "cred_password": ""},
    )
    assert saved.status_code == 303 and saved.headers["location"].endswith("notice=saved")
    api = await _api_service(client, admin, service_id)
    assert api["daily_quota"] == 900 and api["credentials_hint"] == hint, "an empty credential keeps the stored one"

    for action, state in (("disable", "disabled"), ("enable", None), ("clear-backoff", None)):
        done = await client.post(f"/admin/services/{service_id}/{action}", data={"csrf_token": csrf})
        assert done.status_code == 303 and done.headers["location"].endswith(f"notice={action}")
        if state:
            assert (await _api_service(client, admin, service_id))["state"] == state
    assert (await client.post(f"/admin/services/{service_id}/explode", data={"csrf_token": csrf})).status_code == 404

    added = await client.post(f"/admin/services/{service_id}/webhook-secrets", data={"csrf_token": csrf, "value": ""})
    assert added.status_code == 200 and 'id="new-secret"' in added.text
    value = html.unescape(re.search(r'id="new-secret">.*?<code>([^<]+)</code>', added.text, re.S).group(1))  # type: ignore[union-attr]
    assert len(value) >= 16 and value not in (await client.get(f"/admin/services/{service_id}")).text
    short = await client.post(f"/admin/services/{service_id}/webhook-secrets", data={"csrf_token": csrf, "value": "x"})
    assert short.status_code == 422 and field_error(short.text, "value")
    secrets = await client.get(f"/api/v1/admin/services/{service_id}/webhook-secrets", headers=admin.headers)
    [secret] = secrets.json()
    removed = await client.post(
        f"/admin/services/{service_id}/webhook-secrets/{secret['id']}/remove", data={"csrf_token": csrf}
    )
    assert removed.status_code == 303
    assert (
        await client.get(f"/api/v1/admin/services/{service_id}/webhook-secrets", headers=admin.headers)
    ).json() == []
    assert await _audit_actions(sessionmaker, service_id) == [
        "service.create",
        "service.update",
        "service.disable",
        "service.enable",
        "service.clear_backoff",
        "service.webhook_secret_added",
        "service.webhook_secret_removed",
    ]


async def test_usage_correction_archive_and_an_expiring_secret_from_the_service_page(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await make_account(sessionmaker, "sam", role="admin", credit=0)
    user = await make_account(sessionmaker, "una")
    async with unit_of_work(sessionmaker) as session:
        kept = await factories.service(session, settings_for("sqlite://"), "kept", map_to=[user.id])
        spare = await factories.service(session, settings_for("sqlite://"), "spare")
    csrf = await console_log_in(client, admin)

    # Usage: a reason is required and a count must be a whole number ≥ 0, each refused beside its field.
    no_reason = await client.post(f"/admin/services/{kept}/usage", data={"csrf_token": csrf, "used_today": "40"})
    assert no_reason.status_code == 422 and field_error(no_reason.text, "usage_reason") == "This field is required."
    assert page_field(no_reason.text, "used_today") == "40"
    negative = await client.post(
        f"/admin/services/{kept}/usage", data={"csrf_token": csrf, "used_today": "-3", "usage_reason": "count"}
    )
    assert negative.status_code == 422 and field_error(negative.text, "used_today")
    fixed = await client.post(
        f"/admin/services/{kept}/usage",
        data={"csrf_token": csrf, "used_today": "40", "usage_reason": "provider dashboard says 40"},
    )
    assert fixed.status_code == 303 and fixed.headers["location"].endswith("notice=usage")
    assert (await _api_service(client, admin, kept))["used_today"] == 40
    page = (await client.get(fixed.headers["location"])).text
    assert "Today&#39;s usage was corrected." in page and "provider dashboard says 40" in page, "in the status log"
    async with sessionmaker() as session:
        usage = await session.scalar(select(AuditLog).where(AuditLog.action == "service.set_usage"))
    assert usage is not None and usage.details is not None
    assert usage.details["reason"] == "provider dashboard says 40" and usage.details["adjustment_delta"] == 40

    # A secret that expires: a past or unreadable time is refused beside the field; a future one is listed with it.
    past = await client.post(
        f"/admin/services/{kept}/webhook-secrets", data={"csrf_token": csrf, "expires_at": "2001-01-01T10:00"}
    )
    assert past.status_code == 422 and field_error(past.text, "expires_at") == "Choose a time in the future."
    garbled = await client.post(
        f"/admin/services/{kept}/webhook-secrets", data={"csrf_token": csrf, "expires_at": "soon"}
    )
    assert garbled.status_code == 422 and field_error(garbled.text, "expires_at") == "Enter a valid date and time."
    added = await client.post(
        f"/admin/services/{kept}/webhook-secrets", data={"csrf_token": csrf, "expires_at": "2099-06-01T12:30"}
    )
    assert added.status_code == 200 and 'id="new-secret"' in added.text
    [secret] = (await client.get(f"/api/v1/admin/services/{kept}/webhook-secrets", headers=admin.headers)).json()
    assert secret["expires_at"].startswith("2099-06-01T12:30"), "the admin's zone is UTC"

    # Archive: refused beside the button while a user is mapped; an unmapped service goes, audited.
    refused = await client.post(f"/admin/services/{kept}/archive", data={"csrf_token": csrf})
    assert refused.status_code == 409 and 'id="archive-error"' in refused.text
    assert "1 users may still send through it" in html.unescape(refused.text)
    archived = await client.post(f"/admin/services/{spare}/archive", data={"csrf_token": csrf})
    assert archived.status_code == 303 and archived.headers["location"] == "/admin/services?notice=archived"
    listed = (await client.get(archived.headers["location"])).text
    assert "The service was archived" in listed and ">spare<" not in listed and ">kept<" in listed
    assert await _audit_actions(sessionmaker, spare) == ["service.archive"]

    user_csrf = await console_log_in(client, user)  # a plain user reaches none of it
    for action in ("usage", "archive", "webhook-secrets"):
        answer = await client.post(f"/admin/services/{kept}/{action}", data={"csrf_token": user_csrf})
        assert answer.status_code == 404, action
