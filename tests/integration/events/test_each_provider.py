"""Every provider's webhook, end to end: a task sent through the fake provider, then one delivery event per
SubTask posted exactly as each provider posts it (format, content type, authentication), through the ASGI app
into the event store and onto the SubTasks. Outside production a fake-sent SubTask matches any provider."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import time
import uuid
from collections.abc import Callable

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from edm.models.tasks import SubTask
from edm.providers import ses as ses_provider
from edm.tasks.stats import recount, task_stats
from tests.integration.events.conftest import (
    EventKit,
    engagelab_headers,
    mailgun_body,
    sendgrid_headers,
)

Posted = tuple[str, bytes, dict[str, str]]  # path, body, headers

RESEND_SECRET = "whsec_" + base64.b64encode(b"resend-test-secret-32-bytes-long").decode()
SNS_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SNS_CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem"
SNS_TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-events"
FAKE_SECRET = "fake-webhook-secret"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def engagelab(st: SubTask) -> Posted:
    body = {
        "server": "email",
        "message_id": "m1",
        "itime": int(time.time() * 1000),
        "to": st.recipient_email,
        "status": {
            "message_status": "delivered",
            "status_data": {"email_id": f"m1{st.id}${st.recipient_email}", "message": "250 OK"},
        },
        "custom_args": {"subtask_id": str(st.public_id), "task_id": str(st.task_id)},
    }
    return "/webhook/engagelab", orjson.dumps(body), engagelab_headers()


def sendgrid(st: SubTask) -> Posted:
    body = orjson.dumps(
        [
            {
                "email": st.recipient_email,
                "timestamp": int(time.time()),
                "event": "delivered",
                "sg_event_id": f"sg-{st.id}",
                "sg_message_id": "abc.filter1",
                "subtask_id": str(st.public_id),
                "task_id": str(st.task_id),
            }
        ]
    )
    return "/webhooks/sendgrid", body, sendgrid_headers(body)


def mailgun(st: SubTask) -> Posted:
    data = {
        "event": "delivered",
        "id": f"mg-{st.id}",
        "timestamp": time.time(),
        "recipient": st.recipient_email,
        "user-variables": {"subtask_id": str(st.public_id), "task_id": str(st.task_id)},
        "message": {"headers": {"message-id": f"{st.id}@mg.example.com"}},
        "delivery-status": {"code": 250, "message": "OK"},
    }
    return "/webhooks/mailgun", mailgun_body(data, token=uuid.uuid4().hex * 2), {"Content-Type": "application/json"}


def ses(st: SubTask) -> Posted:
    message = {
        "eventType": "Delivery",
        "mail": {
            "timestamp": _now_iso(),
            "messageId": f"ses-{st.id}",
            "destination": [st.recipient_email],
            "tags": {"subtask_id": [str(st.public_id)], "task_id": [str(st.task_id)]},
        },
        "delivery": {
            "timestamp": _now_iso(),
            "recipients": [st.recipient_email],
            "smtpResponse": "250 2.6.0 Message received",
        },
    }
    envelope = {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": SNS_TOPIC,
        "Subject": "Amazon SES Email Event Notification",
        "Message": orjson.dumps(message).decode(),
        "Timestamp": _now_iso(),
        "SignatureVersion": "2",
        "SigningCertURL": SNS_CERT_URL,
    }
    # AWS's string to sign for a Notification: name\nvalue\n for each present field, in this order.
    signed = "".join(
        f"{name}\n{envelope[name]}\n" for name in ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
    )
    envelope["Signature"] = base64.b64encode(
        SNS_KEY.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    ).decode()
    return "/webhooks/ses", orjson.dumps(envelope), {"Content-Type": "text/plain; charset=UTF-8"}


def postmark(st: SubTask) -> Posted:
    body = {
        "RecordType": "Delivery",
        "ServerID": 1,
        "MessageStream": "broadcast",
        "MessageID": f"pm-{st.id}",
        "Recipient": st.recipient_email,
        "DeliveredAt": _now_iso(),
        "Details": "250 OK",
        "Metadata": {"subtask_id": str(st.public_id), "task_id": str(st.task_id)},
    }
    return (
        "/webhooks/postmark",
        orjson.dumps(body),
        {"Content-Type": "application/json", "Authorization": _basic("postmark", "pm-pass")},
    )


def brevo(st: SubTask) -> Posted:
    body = {
        "event": "delivered",
        "email": st.recipient_email,
        "id": 1,
        "ts_event": int(time.time()),
        "message-id": f"<{st.id}@smtp-relay.mailin.fr>",
        "X-Mailin-custom": orjson.dumps({"subtask_id": str(st.public_id), "task_id": str(st.task_id)}).decode(),
    }
    return (
        "/webhooks/brevo",
        orjson.dumps(body),
        {"Content-Type": "application/json", "Authorization": "Bearer brevo-token"},
    )


def sparkpost(st: SubTask) -> Posted:
    body = [
        {
            "msys": {
                "message_event": {
                    "type": "delivery",
                    "event_id": f"sp-{st.id}",
                    "rcpt_to": st.recipient_email,
                    "timestamp": str(int(time.time())),
                    "transmission_id": f"t{st.id}",
                    "rcpt_meta": {"subtask_id": str(st.public_id), "task_id": str(st.task_id)},
                }
            }
        }
    ]
    return (
        "/webhooks/sparkpost",
        orjson.dumps(body),
        {"Content-Type": "application/json", "Authorization": _basic("sparkpost", "sp-pass")},
    )


def resend(st: SubTask) -> Posted:
    body = orjson.dumps(
        {
            "type": "email.delivered",
            "created_at": _now_iso(),
            "data": {
                "email_id": f"re-{st.id}",
                "created_at": _now_iso(),
                "to": [st.recipient_email],
                "tags": {"subtask_id": str(st.public_id), "task_id": str(st.task_id)},
            },
        }
    )
    msg_id, ts = f"msg_{st.id}", str(int(time.time()))
    key = base64.b64decode(RESEND_SECRET.removeprefix("whsec_"))
    signature = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest())
    return (
        "/webhooks/resend",
        body,
        {
            "Content-Type": "application/json",
            "svix-id": msg_id,
            "svix-timestamp": ts,
            "svix-signature": "v1," + signature.decode(),
        },
    )


def fake(st: SubTask) -> Posted:
    body = orjson.dumps(
        {
            "events": [
                {
                    "event_id": f"f-{st.id}",
                    "event": "delivered",
                    "subtask_id": str(st.public_id),
                    "task_id": str(st.task_id),
                    "email": st.recipient_email,
                    "timestamp": time.time(),
                }
            ]
        }
    )
    ts = str(int(time.time()))
    signature = hmac.new(FAKE_SECRET.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return "/webhooks/fake", body, {"Content-Type": "application/json", "X-Fake-Signature": f"t={ts},v1={signature}"}


BUILDERS: dict[str, Callable[[SubTask], Posted]] = {
    "engagelab": engagelab,
    "sendgrid": sendgrid,
    "mailgun": mailgun,
    "ses": ses,
    "postmark": postmark,
    "brevo": brevo,
    "sparkpost": sparkpost,
    "resend": resend,
    "fake": fake,
}


def _self_signed_certificate() -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(SNS_KEY.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(SNS_KEY, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


async def _configure_remaining_providers(ekit: EventKit) -> None:
    await ekit.add_service(
        "ses-1",
        "ses",
        credentials={"access_key_id": "AKIA", "secret_access_key": "s"},
        region="us-east-1",
        sns_topic_arns=[SNS_TOPIC],
    )
    await ekit.add_service(
        "pm-1", "postmark", credentials={"server_token": "t", "webhook_secrets": ["postmark:pm-pass"]}
    )
    await ekit.add_service("br-1", "brevo", credentials={"api_key": "k", "webhook_secrets": ["brevo-token"]})
    await ekit.add_service("sp-1", "sparkpost", credentials={"api_key": "k", "webhook_secrets": ["sparkpost:sp-pass"]})
    await ekit.add_service("re-1", "resend", credentials={"api_key": "k", "webhook_secrets": [RESEND_SECRET]})
    ekit.outbound_pages[SNS_CERT_URL] = _self_signed_certificate()


async def test_a_delivery_event_from_each_provider_reaches_its_subtask(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(len(BUILDERS), fake_options={})
    ses_provider.clear_certificate_cache()  # the certificate cache is process-wide
    await _configure_remaining_providers(ekit)
    await _set_fake_secret(ekit)
    for (provider, build), st in zip(BUILDERS.items(), subtasks, strict=True):
        path, body, headers = build(st)
        response = await ekit.client.post(path, content=body, headers=headers)
        assert response.status_code == 200, f"{provider}: {response.status_code} {response.text}"
        assert response.json()["stored"] == 1, provider
        replay_status = (await ekit.client.post(path, content=body, headers=headers)).status_code
        assert replay_status in (200, 401), provider  # 401 only for Mailgun's single-use token
    counts = await ekit.apply()
    assert (counts.processed, counts.matched) == (len(BUILDERS), len(BUILDERS))
    sources = {e.source: e.subtask_id for e in await ekit.events()}
    assert sources == {provider: st.id for provider, st in zip(BUILDERS, subtasks, strict=True)}
    assert all(st.delivery_state == "delivered" for st in await ekit.dkit.subtasks(task_id))
    async with ekit.sessionmaker() as session:
        stats = await task_stats(session, task_id)
        assert stats == await recount(session, task_id)
    assert stats["delivered"] == len(BUILDERS)
    assert SNS_CERT_URL in ekit.outbound_requests


async def _set_fake_secret(ekit: EventKit) -> None:
    from edm.db.session import unit_of_work
    from edm.email_services import service as services
    from tests import factories

    async with unit_of_work(ekit.sessionmaker) as session:
        await services.update_service(
            session,
            factories.vault_for(ekit.dkit.settings),
            ekit.service_ids["fake"],
            values={},
            credentials={"webhook_secrets": [FAKE_SECRET]},
            fake_allowed=True,
        )


def _sns_signed(envelope: dict[str, str]) -> bytes:
    fields = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
    signed = "".join(f"{name}\n{envelope[name]}\n" for name in fields)
    signature = SNS_KEY.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    return orjson.dumps({**envelope, "Signature": base64.b64encode(signature).decode()})


async def test_an_sns_subscription_is_verified_then_confirmed_by_fetching_its_url(ekit: EventKit) -> None:
    """SNS asks to confirm a subscription: EDM verifies the signed request, then GETs the SubscribeURL (only
    on an SNS host); a request whose SubscribeURL points elsewhere is refused and nothing is fetched."""
    await ekit.send_task(1)
    ses_provider.clear_certificate_cache()
    await _configure_remaining_providers(ekit)
    confirm = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=x&Token=t"
    ekit.outbound_pages[confirm] = b"<ConfirmSubscriptionResponse/>"
    envelope = {
        "Type": "SubscriptionConfirmation",
        "MessageId": str(uuid.uuid4()),
        "Token": "t",
        "TopicArn": SNS_TOPIC,
        "Message": "You have chosen to subscribe",
        "SubscribeURL": confirm,
        "Timestamp": _now_iso(),
        "SignatureVersion": "2",
        "SigningCertURL": SNS_CERT_URL,
    }
    headers = {"Content-Type": "text/plain; charset=UTF-8"}
    response = await ekit.client.post("/webhooks/ses", content=_sns_signed(envelope), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"control": "subscription_confirmation"}
    assert confirm in ekit.outbound_requests and await ekit.events() == []

    evil = {**envelope, "SubscribeURL": "https://evil.example.com/?Action=ConfirmSubscription"}
    refused = await ekit.client.post("/webhooks/ses", content=_sns_signed(evil), headers=headers)
    assert refused.status_code in (400, 401)
    assert not any("evil" in url for url in ekit.outbound_requests)
    wrong_topic = {**envelope, "TopicArn": "arn:aws:sns:us-east-1:999999999999:other"}
    assert (
        await ekit.client.post("/webhooks/ses", content=_sns_signed(wrong_topic), headers=headers)
    ).status_code == 401
