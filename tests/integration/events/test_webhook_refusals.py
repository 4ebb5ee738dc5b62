"""An unauthenticated webhook post learns nothing about the deployment's configuration: whether the provider
has services, whether a service exists, whether it has a webhook secret or the signature is just wrong, the
answer is the same 401 `invalid_signature` with the same message. The real reason is in the log line
`webhook.rejected`, which carries the answer's request id."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import orjson
import pytest

from tests.helpers import drain_inbound
from tests.integration.events.conftest import ENGAGELAB_KEY, SENDGRID_PUBLIC, EventKit, engagelab_headers

SMTP_TOKEN = "inbound-token-for-tests-1234"
EVENT = orjson.dumps(
    {
        "server": "email",
        "message_id": "m1",
        "custom_args": {"subtask_id": "x"},
        "status": {"message_status": "delivered"},
    }
)
DSN = b"From: mailer-daemon@example.org\r\nSubject: failure\r\n\r\nno report\r\n"
WRONG_ENGAGELAB = {**engagelab_headers(), "X-WebHook-Signature": "0" * 64}
WRONG_SMTP = {"Content-Type": "message/rfc822", "Authorization": "Bearer not-the-token"}
# A body every handler would parse if it verified: the answers must differ only where the caller proves itself.
JSON = {"Content-Type": "application/json"}


async def _services(ekit: EventKit) -> dict[str, int]:
    """EngageLab and SendGrid with secrets, Postmark and one SMTP relay without any, one SMTP relay with an
    inbound token. No Mailgun, Brevo, SparkPost, Resend or SES service exists."""
    return {
        "engagelab": await ekit.add_service(
            "el", "engagelab", credentials={"api_user": "u", "api_key": "k", "webhook_secrets": [ENGAGELAB_KEY]}
        ),
        "sendgrid": await ekit.add_service(
            "sg", "sendgrid", credentials={"api_key": "SG.x", "webhook_secrets": [SENDGRID_PUBLIC]}
        ),
        "postmark": await ekit.add_service("pm", "postmark", credentials={"server_token": "pm-token"}),
        "smtp": await ekit.add_service(
            "relay", "smtp", credentials={"webhook_secrets": [SMTP_TOKEN]}, host="127.0.0.1", port=1
        ),
        "smtp_without_token": await ekit.add_service("relay2", "smtp", credentials={}, host="127.0.0.1", port=1),
    }


def _cases(ids: dict[str, int]) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(what the server knows, path, body, headers): each one must answer the same."""
    missing = 987654321
    return [
        ("configured, wrong signature", "/webhooks/engagelab", EVENT, WRONG_ENGAGELAB),
        ("configured, original path, wrong signature", "/webhook/engagelab", EVENT, WRONG_ENGAGELAB),
        ("configured, unsigned", "/webhooks/sendgrid", b"[]", JSON),
        ("configured without a secret", "/webhooks/postmark", b"{}", JSON),
        ("provider with no service", "/webhooks/mailgun", b"{}", JSON),
        ("provider with no service", "/webhooks/brevo", b"{}", JSON),
        ("provider with no service", "/webhooks/ses", b"{}", JSON),
        ("existing service, wrong signature", f"/webhooks/engagelab/{ids['engagelab']}", EVENT, WRONG_ENGAGELAB),
        ("service id that does not exist", f"/webhooks/engagelab/{missing}", EVENT, WRONG_ENGAGELAB),
        ("service of another provider", f"/webhooks/engagelab/{ids['sendgrid']}", EVENT, WRONG_ENGAGELAB),
        ("existing service without a secret", f"/webhooks/postmark/{ids['postmark']}", b"{}", JSON),
        ("DSN: existing service, wrong token", f"/webhooks/smtp/{ids['smtp']}/dsn", DSN, WRONG_SMTP),
        ("DSN: service without a token", f"/webhooks/smtp/{ids['smtp_without_token']}/dsn", DSN, WRONG_SMTP),
        ("DSN: service id that does not exist", f"/webhooks/smtp/{missing}/dsn", DSN, WRONG_SMTP),
        ("DSN: service of another provider", f"/webhooks/smtp/{ids['engagelab']}/dsn", DSN, WRONG_SMTP),
    ]


def _answer(response: httpx.Response) -> tuple[int, str, str, tuple[Any, ...]]:
    error = response.json()["error"]
    return response.status_code, error["code"], error["message"], tuple(error["details"])


async def test_every_unverified_post_gets_the_same_answer(ekit: EventKit, caplog: pytest.LogCaptureFixture) -> None:
    ids = await _services(ekit)
    caplog.set_level(logging.WARNING, logger="edm.webhooks")
    answers = {}
    for what, path, body, headers in _cases(ids):
        response = await ekit.client.post(path, content=body, headers=headers)
        answers[(what, path)] = _answer(response)
    assert set(answers.values()) == {(401, "invalid_signature", "webhook signature missing or invalid", ())}, answers
    assert await ekit.events() == []


async def test_the_real_reason_is_logged_with_the_request_id(ekit: EventKit, caplog: pytest.LogCaptureFixture) -> None:
    ids = await _services(ekit)
    caplog.set_level(logging.WARNING, logger="edm.webhooks")
    expected = [
        ("/webhooks/engagelab", EVENT, WRONG_ENGAGELAB, "invalid_signature"),
        ("/webhooks/postmark", b"{}", JSON, "webhook_secret_missing"),
        ("/webhooks/mailgun", b"{}", JSON, "webhook_secret_missing"),
        (f"/webhooks/engagelab/{ids['sendgrid']}", EVENT, WRONG_ENGAGELAB, "unknown_service"),
        (f"/webhooks/smtp/{ids['smtp_without_token']}/dsn", DSN, WRONG_SMTP, "webhook_secret_missing"),
    ]
    for path, body, headers, reason in expected:
        caplog.clear()
        response = await ekit.client.post(path, content=body, headers=headers)
        request_id = response.json()["error"]["request_id"]
        [record] = [r for r in caplog.records if r.getMessage() == "webhook.rejected"]
        assert (record.reason, record.request_id) == (reason, request_id), path  # type: ignore[attr-defined]


async def test_a_verified_post_still_reaches_its_service(ekit: EventKit) -> None:
    """The uniform refusal does not swallow good requests: a correct token on the DSN endpoint is stored."""
    ids = await _services(ekit)
    response = await ekit.client.post(
        f"/webhooks/smtp/{ids['smtp']}/dsn",
        content=DSN,
        headers={"Content-Type": "message/rfc822", "Authorization": f"Bearer {SMTP_TOKEN}"},
    )
    assert response.status_code == 200, response.text
    await drain_inbound(ekit.sessionmaker)
    assert len(await ekit.events()) == 1
