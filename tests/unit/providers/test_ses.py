"""Amazon SES v2: the signed SendEmail request, error classes, SNS verification and SES event parsing."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import email.header
import email.utils
import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from edm.providers import ses
from edm.providers.base import Outcome
from edm.providers.ses import SesAdapter
from edm.providers.webhook import MalformedPayload
from edm.vocabulary.events import BounceClass, EventType, NormalizedEvent
from tests.unit.providers import support

PROVIDER = "amazon_ses"
KEY_ID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-events"
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem"
NOW = dt.datetime.now(dt.UTC)
SEND_URL = "https://email.eu-west-1.amazonaws.com/v2/email/outbound-emails"


# --------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _empty_certificate_cache() -> Iterator[None]:
    ses.clear_certificate_cache()
    yield
    ses.clear_certificate_cache()


def _self_signed(key: rsa.RSAPrivateKey, *, days: int = 365, start_days_ago: int = 1) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    start = NOW - dt.timedelta(days=start_days_ago)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def cert_pem(rsa_key: rsa.RSAPrivateKey) -> bytes:
    return _self_signed(rsa_key)


class FakeFetch:
    """Serves PEM certificates by URL and records every fetch."""

    def __init__(self, pems: dict[str, bytes]) -> None:
        self.pems = pems
        self.urls: list[str] = []

    async def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        if url not in self.pems:
            raise httpx.HTTPStatusError("404", request=httpx.Request("GET", url), response=httpx.Response(404))
        return self.pems[url]


@pytest.fixture
def fetch(cert_pem: bytes) -> FakeFetch:
    return FakeFetch({CERT_URL: cert_pem})


def canonical(envelope: dict[str, Any]) -> bytes:
    """The SNS string to sign, written from the AWS documentation independently of the module."""
    if envelope["Type"] == "Notification":
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    return "".join(f"{n}\n{envelope[n]}\n" for n in names if envelope.get(n) is not None).encode()


def sign(
    envelope: dict[str, Any], key: rsa.RSAPrivateKey, *, version: str = "1", cert_url: str = CERT_URL
) -> dict[str, Any]:
    envelope = {**envelope, "SignatureVersion": version, "SigningCertURL": cert_url}
    algorithm = hashes.SHA256() if version == "2" else hashes.SHA1()
    envelope["Signature"] = base64.b64encode(key.sign(canonical(envelope), padding.PKCS1v15(), algorithm)).decode()
    return envelope


def envelope_of(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = support.sample(PROVIDER, name)
    return loaded


def sns_request(envelope: dict[str, Any] | bytes, content_type: str = "text/plain") -> Any:
    body = envelope if isinstance(envelope, bytes) else json.dumps(envelope).encode()
    return support.webhook_request(body, content_type=content_type, headers={"x-amz-sns-message-type": "Notification"})


def notification(
    message: dict[str, Any],
    *,
    message_id: str = "11111111-2222-4333-8444-555555555555",
    subject: str | None = "Amazon SES Email Event Notification",
) -> dict[str, Any]:
    envelope = {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": TOPIC,
        "Message": json.dumps(message),
        "Timestamp": "2024-05-01T10:00:01.000Z",
        "SignatureVersion": "1",
        "Signature": "x",
        "SigningCertURL": CERT_URL,
    }
    if subject is not None:
        envelope["Subject"] = subject
    return envelope


def parse(envelope: dict[str, Any]) -> list[NormalizedEvent]:
    items = ses.webhook.parse(sns_request(envelope)).items
    assert all(isinstance(item, NormalizedEvent) for item in items)
    return [item for item in items if isinstance(item, NormalizedEvent)]


def only(envelope: dict[str, Any]) -> NormalizedEvent:
    events = parse(envelope)
    assert len(events) == 1
    return events[0]


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def verify(
    envelope: dict[str, Any], fetch: Any, *, topics: list[str] | None = None, now: dt.datetime = NOW
) -> bool:
    target = support.target("ses", sns_topic_arns=[TOPIC] if topics is None else topics)
    return await ses.webhook.verify(sns_request(envelope), target, support.context(now, fetch))


def adapter(recorder: support.Recorder, *, credentials: dict[str, Any] | None = None, **options: Any) -> SesAdapter:
    options = {"region": "eu-west-1", "configuration_set": "edm-events", **options}
    creds = {"access_key_id": KEY_ID, "secret_access_key": SECRET} if credentials is None else credentials
    return SesAdapter(support.config("ses", credentials=creds, **options), transport=recorder.transport)


OK = support.answer(200, support.sample(PROVIDER, "api_sesv2_send_email_response.json"))
SAMPLE_MESSAGE_ID = "0100018c1a2b3c4d-5e6f7a8b-1111-2222-3333-444455556666-000000"


# --------------------------------------------------------------------------------------------------------
# Sending: the request
# --------------------------------------------------------------------------------------------------------


async def test_send_posts_simple_content_with_our_ids_in_tags_and_header() -> None:
    recorder = support.Recorder(OK)
    message = support.outbound(1)

    [result] = await adapter(recorder).send([message])

    assert result.outcome is Outcome.ACCEPTED
    assert result.provider_message_id == SAMPLE_MESSAGE_ID
    request = recorder.last
    assert (request.method, str(request.url)) == ("POST", SEND_URL)
    body = recorder.last_json()
    assert body["FromEmailAddress"] == "Example News <news@mail.example.com>"
    assert body["Destination"] == {"ToAddresses": ["User 1 <user1@example.org>"]}
    assert body["ReplyToAddresses"] == ["support@example.com"]
    assert body["ConfigurationSetName"] == "edm-events"
    assert body["EmailTags"] == [{"Name": "subtask_id", "Value": message.key}, {"Name": "task_id", "Value": "7"}]
    simple = body["Content"]["Simple"]
    assert simple["Subject"] == {"Data": "Hello 1", "Charset": "UTF-8"}
    assert simple["Body"]["Html"]["Data"] == "<p>Hello 1</p>"
    assert simple["Body"]["Text"]["Data"] == "Hello 1"
    headers = {h["Name"]: h["Value"] for h in simple["Headers"]}
    assert headers == {
        "X-EDM-SubTask-Id": message.key,
        "List-Unsubscribe": "<https://edm.example.com/u/tok1>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "Feedback-ID": "7:3:edm",
    }  # Message-ID is left out: SES overwrites it


async def test_send_request_has_the_shape_of_the_documented_boto3_kwargs() -> None:
    recorder = support.Recorder(OK)
    await adapter(recorder).send([support.outbound(1)])
    documented = support.sample(PROVIDER, "api_sesv2_send_email_kwargs.json")
    body = recorder.last_json()
    assert set(body) == set(documented)
    assert set(body["Content"]["Simple"]) == set(documented["Content"]["Simple"])


async def test_send_signs_with_sigv4_for_the_ses_service_and_configured_region() -> None:
    recorder = support.Recorder(OK)
    await adapter(recorder).send([support.outbound(1)])

    request = recorder.last
    authorization = request.headers["authorization"]
    match = re.fullmatch(
        r"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/(\d{8})/eu-west-1/ses/aws4_request, "
        r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
        authorization,
    )
    assert match, authorization
    signed_headers = match.group(2).split(";")
    assert {"host", "x-amz-date", "content-type"} <= set(signed_headers)
    assert request.headers["x-amz-date"].startswith(match.group(1))
    assert request.headers["x-amz-content-sha256"] == hashlib.sha256(request.content).hexdigest()
    assert SECRET not in authorization


async def test_sigv4_signature_recomputed_from_the_aws_algorithm_matches() -> None:
    recorder = support.Recorder(OK)
    await adapter(recorder).send([support.outbound(1)])
    request = recorder.last
    credential, signed_headers, signature = re.findall(
        r"(?:Credential|SignedHeaders|Signature)=([^,\s]+)", request.headers["authorization"]
    )
    date, region, service, _ = credential.split("/")[1:]
    names = signed_headers.split(";")
    canonical_request = "\n".join(
        [
            "POST",
            "/v2/email/outbound-emails",
            "",
            "".join(f"{n}:{request.headers[n].strip()}\n" for n in names),
            signed_headers,
            hashlib.sha256(request.content).hexdigest(),
        ]
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            request.headers["x-amz-date"],
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = f"AWS4{SECRET}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    assert hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest() == signature


async def test_session_token_is_sent_and_signed() -> None:
    recorder = support.Recorder(OK)
    creds = {"access_key_id": KEY_ID, "secret_access_key": SECRET, "session_token": "FQoGZXIvYXdzE"}
    await adapter(recorder, credentials=creds).send([support.outbound(1)])
    assert recorder.last.headers["x-amz-security-token"] == "FQoGZXIvYXdzE"
    assert "x-amz-security-token" in recorder.last.headers["authorization"]


async def test_non_ascii_display_names_are_rfc2047_encoded_and_idn_domains_punycoded() -> None:
    recorder = support.Recorder(OK)
    message = dataclasses.replace(
        support.outbound(1, to="joerg@bücher.example"), from_name="Zoë Newsletter", to_name="Jörg"
    )
    await adapter(recorder).send([message])
    body = recorder.last_json()
    sender, [to] = body["FromEmailAddress"], body["Destination"]["ToAddresses"]
    assert sender.isascii() and to.isascii()
    assert decoded(sender) == ("Zoë Newsletter", "news@mail.example.com")
    assert decoded(to) == ("Jörg", "joerg@xn--bcher-kva.example")


def decoded(mailbox: str) -> tuple[str, str]:
    name, address = email.utils.parseaddr(mailbox)
    return str(email.header.make_header(email.header.decode_header(name))), address


async def test_a_non_ascii_local_part_is_permanent_without_calling_aws() -> None:
    recorder = support.Recorder(OK)
    [result] = await adapter(recorder).send([support.outbound(1, to="jörg@example.org")])
    assert result.outcome is Outcome.PERMANENT
    assert recorder.requests == []


async def test_base_url_option_overrides_the_regional_endpoint_but_region_still_scopes_the_signature() -> None:
    recorder = support.Recorder(OK)
    await adapter(recorder, base_url="https://vpce.example.internal/").send([support.outbound(1)])
    assert str(recorder.last.url) == "https://vpce.example.internal/v2/email/outbound-emails"
    assert "/eu-west-1/ses/aws4_request" in recorder.last.headers["authorization"]


@pytest.mark.parametrize("region", [None, "", "Europe", "eu-west-1.evil.com"])
def test_a_missing_or_odd_region_is_a_configuration_error(region: str | None) -> None:
    with pytest.raises(ValueError, match="region"):
        SesAdapter(support.config("ses", credentials={"access_key_id": "a", "secret_access_key": "b"}, region=region))


async def test_missing_credentials_fail_auth_config_without_calling_aws() -> None:
    recorder = support.Recorder(OK)
    [result] = await adapter(recorder, credentials={}).send([support.outbound(1)])
    assert result.outcome is Outcome.AUTH_CONFIG
    assert recorder.requests == []


async def test_tag_values_ses_would_refuse_are_left_out_but_the_header_still_carries_the_id() -> None:
    recorder = support.Recorder(OK)
    message = support.outbound(1)
    message = dataclasses.replace(message, custom_args={"subtask_id": message.key, "task_id": "7 8"})
    await adapter(recorder).send([message])
    body = recorder.last_json()
    assert body["EmailTags"] == [{"Name": "subtask_id", "Value": message.key}]


# --------------------------------------------------------------------------------------------------------
# Sending: answers and errors
# --------------------------------------------------------------------------------------------------------


def aws_error(status: int, name: str | None, *, in_header: bool = True, text: str = "details") -> Any:
    headers = (
        {"x-amzn-ErrorType": f"{name}:http://internal.amazon.com/coral/com.amazonaws.sesv2/"}
        if name and in_header
        else {}
    )
    body: dict[str, Any] = {"message": text}
    if name and not in_header:
        body["__type"] = f"com.amazonaws.sesv2#{name}"
    return support.answer(status, body, headers=headers)


@pytest.mark.parametrize(
    ("status", "name", "in_header", "expected"),
    [
        (429, "TooManyRequestsException", True, Outcome.THROTTLED),
        (400, "LimitExceededException", True, Outcome.QUOTA_EXHAUSTED),
        (400, "MailFromDomainNotVerifiedException", True, Outcome.AUTH_CONFIG),
        (400, "AccountSuspendedException", True, Outcome.AUTH_CONFIG),
        (400, "SendingPausedException", True, Outcome.AUTH_CONFIG),
        (404, "NotFoundException", True, Outcome.AUTH_CONFIG),
        (403, "InvalidSignatureException", True, Outcome.AUTH_CONFIG),
        (403, "UnrecognizedClientException", False, Outcome.AUTH_CONFIG),
        (400, "MessageRejected", True, Outcome.PERMANENT),
        (400, "MessageRejected", False, Outcome.PERMANENT),
        (400, "BadRequestException", True, Outcome.PERMANENT),
        (500, "InternalFailure", True, Outcome.TRANSIENT),
        (503, "ServiceUnavailable", False, Outcome.TRANSIENT),
        (502, None, True, Outcome.TRANSIENT),
        (403, None, True, Outcome.AUTH_CONFIG),
    ],
)
async def test_aws_error_names_map_to_error_classes(
    status: int, name: str | None, in_header: bool, expected: Outcome
) -> None:
    recorder = support.Recorder(aws_error(status, name, in_header=in_header))
    [result] = await adapter(recorder).send([support.outbound(1)])
    assert result.outcome is expected
    assert result.status == status
    assert result.provider_code == (name or str(status))
    assert SECRET not in result.message


async def test_throttling_carries_retry_after_when_aws_sends_one() -> None:
    recorder = support.Recorder(
        support.answer(
            429,
            {"message": "Maximum sending rate exceeded."},
            headers={"x-amzn-ErrorType": "TooManyRequestsException", "Retry-After": "3"},
        )
    )
    [result] = await adapter(recorder).send([support.outbound(1)])
    assert (result.outcome, result.retry_after) == (Outcome.THROTTLED, 3.0)
    assert "Maximum sending rate exceeded" in result.message


@pytest.mark.parametrize("body", [{"Something": "else"}, "<html>proxy</html>", {"MessageId": ""}])
async def test_a_2xx_without_a_message_id_is_a_configuration_problem(body: Any) -> None:
    recorder = support.Recorder(support.answer(200, body))
    [result] = await adapter(recorder).send([support.outbound(1)])
    assert result.outcome is Outcome.AUTH_CONFIG


async def test_connect_error_is_transient() -> None:
    recorder = support.Recorder(support.raising(httpx.ConnectError("refused")))
    [result] = await adapter(recorder).send([support.outbound(1)])
    assert result.outcome is Outcome.TRANSIENT


async def test_read_timeout_after_sending_is_maybe_sent() -> None:
    recorder = support.Recorder(support.raising(httpx.ReadTimeout("slow")))
    [result] = await adapter(recorder).send([support.outbound(1)])
    assert result.outcome is Outcome.MAYBE_SENT


def test_capabilities_say_one_message_per_call() -> None:
    assert SesAdapter.capabilities.max_batch == 1
    assert SesAdapter.capabilities.needs_mime is False


# --------------------------------------------------------------------------------------------------------
# SNS verification
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
async def test_signed_notification_verifies_with_signature_v1_and_v2(
    version: str, rsa_key: rsa.RSAPrivateKey, fetch: FakeFetch
) -> None:
    envelope = sign(envelope_of("bounce_permanent.sns.json"), rsa_key, version=version)
    assert await verify(envelope, fetch)
    assert fetch.urls == [CERT_URL]


async def test_notification_without_subject_verifies(rsa_key: rsa.RSAPrivateKey, fetch: FakeFetch) -> None:
    envelope = envelope_of("delivery.sns.json")
    del envelope["Subject"]
    assert await verify(sign(envelope, rsa_key), fetch)


async def test_signed_subscription_confirmation_verifies(rsa_key: rsa.RSAPrivateKey, fetch: FakeFetch) -> None:
    envelope = sign(envelope_of("sns_subscription_confirmation.json"), rsa_key, version="2")
    topic = envelope["TopicArn"]
    assert await verify(envelope, fetch, topics=[topic])


async def test_tampered_message_fails(rsa_key: rsa.RSAPrivateKey, fetch: FakeFetch) -> None:
    envelope = sign(envelope_of("bounce_permanent.sns.json"), rsa_key)
    envelope["Message"] = envelope["Message"].replace("Permanent", "Transient")
    assert not await verify(envelope, fetch)


async def test_a_changed_body_byte_fails(rsa_key: rsa.RSAPrivateKey, fetch: FakeFetch) -> None:
    body = json.dumps(sign(envelope_of("delivery.sns.json"), rsa_key)).encode()
    tampered = body.replace(b"250 2.6.0", b"250 2.6.1")
    target = support.target("ses", sns_topic_arns=[TOPIC])
    assert await ses.webhook.verify(sns_request(body), target, support.context(NOW, fetch))
    assert not await ses.webhook.verify(sns_request(tampered), target, support.context(NOW, fetch))


async def test_signature_from_another_key_fails(fetch: FakeFetch) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert not await verify(sign(envelope_of("send.sns.json"), other), fetch)


@pytest.mark.parametrize(
    "url",
    [
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
        "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-test.pem",
        "https://evil.example/sns.us-east-1.amazonaws.com/cert.pem",
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.txt",
        "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-test.pem",
        "https://user@sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
        "https://s3.amazonaws.com/SimpleNotificationService-test.pem",
    ],
)
async def test_certificate_outside_sns_hosts_fails_without_being_fetched(
    url: str, rsa_key: rsa.RSAPrivateKey, cert_pem: bytes
) -> None:
    fetch = FakeFetch({url: cert_pem})
    assert not await verify(sign(envelope_of("send.sns.json"), rsa_key, cert_url=url), fetch)
    assert fetch.urls == []


async def test_china_region_certificate_host_is_accepted(rsa_key: rsa.RSAPrivateKey, cert_pem: bytes) -> None:
    url = "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-test.pem"
    assert await verify(sign(envelope_of("send.sns.json"), rsa_key, cert_url=url), FakeFetch({url: cert_pem}))


async def test_topic_not_in_the_allow_list_fails(rsa_key: rsa.RSAPrivateKey, fetch: FakeFetch) -> None:
    envelope = sign(envelope_of("send.sns.json"), rsa_key)
    assert not await verify(envelope, fetch, topics=["arn:aws:sns:us-east-1:123456789012:other"])
    assert not await verify(envelope, fetch, topics=[])
    assert fetch.urls == []


@pytest.mark.parametrize(
    "change",
    [
        {"SignatureVersion": "3"},
        {"Signature": None},
        {"Signature": "not base64!"},
        {"Timestamp": None},
        {"Type": "Other"},
    ],
)
async def test_unusable_signature_fields_fail(
    change: dict[str, Any], rsa_key: rsa.RSAPrivateKey, fetch: FakeFetch
) -> None:
    envelope = {**sign(envelope_of("send.sns.json"), rsa_key), **change}
    assert not await verify({k: v for k, v in envelope.items() if v is not None}, fetch)


async def test_non_json_body_fails_verification(fetch: FakeFetch) -> None:
    target = support.target("ses", sns_topic_arns=[TOPIC])
    assert not await ses.webhook.verify(sns_request(b"{not json"), target, support.context(NOW, fetch))


async def test_unfetchable_certificate_fails(rsa_key: rsa.RSAPrivateKey) -> None:
    assert not await verify(sign(envelope_of("send.sns.json"), rsa_key), FakeFetch({}))


async def test_expired_certificate_fails(rsa_key: rsa.RSAPrivateKey) -> None:
    expired = _self_signed(rsa_key, days=10, start_days_ago=30)
    assert not await verify(sign(envelope_of("send.sns.json"), rsa_key), FakeFetch({CERT_URL: expired}))


async def test_certificate_is_fetched_once_and_cached(rsa_key: rsa.RSAPrivateKey, fetch: FakeFetch) -> None:
    assert await verify(sign(envelope_of("send.sns.json"), rsa_key), fetch)
    assert await verify(sign(envelope_of("delivery.sns.json"), rsa_key), fetch)
    assert fetch.urls == [CERT_URL]


async def test_certificate_cache_is_bounded(rsa_key: rsa.RSAPrivateKey, cert_pem: bytes) -> None:
    urls = [f"https://sns.us-east-1.amazonaws.com/cert-{i}.pem" for i in range(ses.CERT_CACHE_SIZE + 5)]
    fetch = FakeFetch(dict.fromkeys(urls, cert_pem))
    for url in urls:
        assert await verify(sign(envelope_of("send.sns.json"), rsa_key, cert_url=url), fetch)
    assert len(ses._CERT_CACHE) == ses.CERT_CACHE_SIZE


def test_ses_needs_no_secret_and_has_no_replay_nonce() -> None:
    assert ses.SesWebhook.needs_secret is False
    assert ses.webhook.replay_nonce(sns_request(envelope_of("send.sns.json"))) is None


# --------------------------------------------------------------------------------------------------------
# Parsing the sample notifications
# --------------------------------------------------------------------------------------------------------

DOC_MESSAGE_ID = "EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000"


@pytest.mark.parametrize(
    "name",
    [
        "bounce_permanent",
        "click",
        "delivery",
        "legacy_notification_bounce",
        "open",
        "reject",
        "rendering_failure",
        "send",
    ],
)
def test_message_samples_are_the_decoded_sns_messages(name: str) -> None:
    envelope = envelope_of(f"{name}.sns.json")
    assert json.loads(envelope["Message"]) == support.sample(PROVIDER, f"{name}.message.json")


def test_send_sample_is_accepted_with_our_tag_ids() -> None:
    event = only(envelope_of("send.sns.json"))
    assert event.event_type is EventType.ACCEPTED
    assert event.provider_event == "Send"
    assert (event.subtask_id, event.provider_message_id) == ("st_000123", DOC_MESSAGE_ID)
    assert event.provider_event_id == "00000000-0000-4000-8000-000000000004"
    assert event.recipient == "recipient@example.com"
    assert event.occurred_at == at("2016-10-14T05:02:16.645Z")
    assert event.raw == support.sample(PROVIDER, "send.message.json")


def test_delivery_sample_is_delivered_with_the_smtp_answer() -> None:
    event = only(envelope_of("delivery.sns.json"))
    assert event.event_type is EventType.DELIVERED
    assert (event.subtask_id, event.provider_message_id) == ("st_000123", DOC_MESSAGE_ID)
    assert event.provider_event_id == "00000000-0000-4000-8000-000000000003"
    assert event.recipient == "recipient@example.com"
    assert event.occurred_at == at("2016-10-19T23:21:04.133Z")
    assert (event.smtp_code, event.enhanced_code) == (250, "2.6.0")


def test_permanent_bounce_sample_is_a_hard_bounce() -> None:
    event = only(envelope_of("bounce_permanent.sns.json"))
    assert event.event_type is EventType.HARD_BOUNCED
    assert event.bounce_class is BounceClass.HARD
    assert event.subtask_id == "st_000123"
    assert event.recipient == "recipient@example.com"
    assert event.occurred_at == at("2017-08-05T00:41:02.669Z")
    assert (event.smtp_code, event.enhanced_code) == (550, "5.1.1")
    assert event.reason == "smtp; 550 5.1.1 user unknown"
    assert event.provider_event_id == "00000000-0000-4000-8000-000000000000"


def test_reject_sample_is_a_content_block() -> None:
    event = only(envelope_of("reject.sns.json"))
    assert event.event_type is EventType.REJECTED
    assert event.bounce_class is BounceClass.BLOCK
    assert event.reason == "Bad content"
    assert event.subtask_id == "st_000123"
    assert event.occurred_at == at("2016-10-14T17:38:15.211Z")


def test_open_sample_is_opened_with_ip_and_user_agent() -> None:
    event = only(envelope_of("open.sns.json"))
    assert event.event_type is EventType.OPENED
    assert event.provider_message_id == "7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000"
    assert event.subtask_id is None
    assert event.recipient == "recipient@example.com"
    assert event.occurred_at == at("2017-08-09T22:00:19.652Z")
    assert event.ip == "192.0.2.1"
    assert event.user_agent is not None and event.user_agent.startswith("Mozilla/5.0 (iPhone")


def test_click_sample_is_clicked_with_the_link() -> None:
    event = only(envelope_of("click.sns.json"))
    assert event.event_type is EventType.CLICKED
    assert event.url == "https://docs.aws.amazon.com/ses/latest/DeveloperGuide/"
    assert event.ip == "192.0.2.1"
    assert event.occurred_at == at("2017-08-09T23:51:25.570Z")
    assert event.provider_event_id == "00000000-0000-4000-8000-000000000008"


def test_rendering_failure_sample_is_rejected_as_a_block_at_the_sns_time() -> None:
    event = only(envelope_of("rendering_failure.sns.json"))
    assert event.event_type is EventType.REJECTED
    assert event.bounce_class is BounceClass.BLOCK
    assert event.reason == "Attribute 'attributeName' is not present in the rendering data."
    assert event.occurred_at == at("2017-08-05T00:41:03.123Z")  # no event time: the SNS Timestamp


def test_legacy_notification_bounce_has_no_tags_but_the_message_id() -> None:
    event = only(envelope_of("legacy_notification_bounce.sns.json"))
    assert event.event_type is EventType.HARD_BOUNCED
    assert event.provider_event == "Bounce"
    assert event.subtask_id is None
    assert event.provider_message_id == "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000"
    assert event.recipient == "jane@example.com"
    assert event.occurred_at == at("2016-01-27T14:59:44.101Z")
    assert event.provider_event_id == "00000000-0000-4000-8000-000000000010"


def test_inbound_receipt_becomes_a_replied_event_without_subtask_ids() -> None:
    event = only(envelope_of("inbound_received_s3.sns.json"))
    assert event.event_type is EventType.REPLIED
    assert (event.subtask_id, event.provider_message_id) == (None, None)
    assert event.provider_event_id == "8f6dee70-c885-558a-be7d-bd48bbf5335e"
    assert event.details["source"] == "envelope-from@example.org"
    assert event.details["receipt_recipients"] == ["inbound@example.com"]
    assert event.details["action"]["objectKey"] == "inbound/fqef5sop459utgdf4o9lqbsv7jeo73pejig34301"
    assert event.occurred_at == at("2018-03-30T17:21:51.636Z")


def test_subscription_confirmation_is_a_control_message_with_the_confirm_url() -> None:
    payload = ses.webhook.parse(sns_request(envelope_of("sns_subscription_confirmation.json")))
    assert payload.control == "subscription_confirmation"
    assert payload.confirm_url == "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn=..."
    assert payload.items == []


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/?Action=ConfirmSubscription",
        "http://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription",
        None,
    ],
)
def test_subscription_confirmation_to_a_foreign_host_is_malformed(url: str | None) -> None:
    envelope = {**envelope_of("sns_subscription_confirmation.json"), "SubscribeURL": url}
    with pytest.raises(MalformedPayload):
        ses.webhook.parse(sns_request(envelope))


def test_unsubscribe_confirmation_and_ses_setup_message_are_control_messages() -> None:
    unsubscribe = {**envelope_of("sns_subscription_confirmation.json"), "Type": "UnsubscribeConfirmation"}
    assert ses.webhook.parse(sns_request(unsubscribe)).control == "unsubscribe_confirmation"
    setup = notification({"notificationType": "AmazonSnsSubscriptionSucceeded", "message": "ok"})
    assert ses.webhook.parse(sns_request(setup)).control == "ses_subscription_succeeded"


def test_json_content_type_is_accepted_too() -> None:
    payload = ses.webhook.parse(sns_request(envelope_of("send.sns.json"), content_type="application/json"))
    assert len(payload.items) == 1


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{nope", "text/plain"),
        (b"[]", "text/plain"),
        (json.dumps(envelope_of("send.sns.json")).encode(), "application/x-www-form-urlencoded"),
        (json.dumps({**envelope_of("send.sns.json"), "Message": "plain text"}).encode(), "text/plain"),
        (json.dumps({**envelope_of("send.sns.json"), "Message": '{"other": 1}'}).encode(), "text/plain"),
        (json.dumps({**envelope_of("send.sns.json"), "Type": "Weird"}).encode(), "text/plain"),
    ],
)
def test_bodies_that_are_not_sns_ses_messages_are_malformed(body: bytes, content_type: str) -> None:
    with pytest.raises(MalformedPayload):
        ses.webhook.parse(support.webhook_request(body, content_type=content_type))


# --------------------------------------------------------------------------------------------------------
# Documented event formats that the samples folder leaves out
# --------------------------------------------------------------------------------------------------------

MAIL = {
    "timestamp": "2024-05-01T09:59:00.000Z",
    "messageId": "0102018f-ses-id-000000",
    "destination": ["a@example.org"],
    "tags": {"subtask_id": ["st_9"], "task_id": ["42"]},
}
SNS_ID = "11111111-2222-4333-8444-555555555555"


def test_complaint_with_two_recipients_gives_one_event_each_with_its_own_dedupe_key() -> None:
    events = parse(
        notification(
            {
                "eventType": "Complaint",
                "mail": MAIL,
                "complaint": {
                    "complainedRecipients": [{"emailAddress": "a@example.org"}, {"emailAddress": "b@example.org"}],
                    "timestamp": "2024-05-01T10:00:00.000Z",
                    "feedbackId": "fb",
                    "complaintFeedbackType": "abuse",
                    "userAgent": "Yahoo!-Mail-Feedback/2.0",
                },
            }
        )
    )
    assert [e.event_type for e in events] == [EventType.COMPLAINED, EventType.COMPLAINED]
    assert [e.recipient for e in events] == ["a@example.org", "b@example.org"]
    assert [e.provider_event_id for e in events] == [f"{SNS_ID}:a@example.org", f"{SNS_ID}:b@example.org"]
    assert {(e.subtask_id, e.task_id, e.provider_message_id) for e in events} == {
        ("st_9", "42", "0102018f-ses-id-000000")
    }
    assert events[0].reason == "abuse"
    assert events[0].occurred_at == at("2024-05-01T10:00:00.000Z")


def test_complaint_on_the_account_suppression_list_is_a_suppressed_rejection() -> None:
    event = only(
        notification(
            {
                "eventType": "Complaint",
                "mail": MAIL,
                "complaint": {
                    "complainedRecipients": [{"emailAddress": "a@example.org"}],
                    "timestamp": "2024-05-01T10:00:00.000Z",
                    "complaintSubType": "OnAccountSuppressionList",
                },
            }
        )
    )
    assert (event.event_type, event.bounce_class) == (EventType.REJECTED, BounceClass.SUPPRESSED)


def test_delivery_delay_is_deferred_per_recipient() -> None:
    events = parse(
        notification(
            {
                "eventType": "DeliveryDelay",
                "mail": MAIL,
                "deliveryDelay": {
                    "timestamp": "2024-05-01T10:05:00.000Z",
                    "delayType": "TransientCommunicationFailure",
                    "expirationTime": "2024-05-01T22:00:00.000Z",
                    "delayedRecipients": [
                        {
                            "emailAddress": "a@example.org",
                            "status": "4.4.1",
                            "diagnosticCode": "smtp; 421 4.4.1 Unable to connect",
                        }
                    ],
                },
            }
        )
    )
    [event] = events
    assert event.event_type is EventType.DEFERRED
    assert (event.smtp_code, event.enhanced_code) == (421, "4.4.1")
    assert event.details["expirationTime"] == "2024-05-01T22:00:00.000Z"
    assert event.provider_event_id == SNS_ID


@pytest.mark.parametrize(
    ("bounce_type", "sub_type", "event_type", "bounce_class"),
    [
        ("Permanent", "General", EventType.HARD_BOUNCED, BounceClass.HARD),
        ("Permanent", "NoEmail", EventType.HARD_BOUNCED, BounceClass.HARD),
        ("Permanent", "Suppressed", EventType.REJECTED, BounceClass.SUPPRESSED),
        ("Permanent", "OnAccountSuppressionList", EventType.REJECTED, BounceClass.SUPPRESSED),
        ("Transient", "MailboxFull", EventType.SOFT_BOUNCED, BounceClass.SOFT),
        ("Transient", "General", EventType.SOFT_BOUNCED, BounceClass.SOFT),
        ("Transient", "ContentRejected", EventType.SOFT_BOUNCED, BounceClass.BLOCK),
        ("Undetermined", "Undetermined", EventType.SOFT_BOUNCED, BounceClass.UNDETERMINED),
    ],
)
def test_bounce_types_and_subtypes_map_to_event_types_and_classes(
    bounce_type: str, sub_type: str, event_type: EventType, bounce_class: BounceClass
) -> None:
    event = only(
        notification(
            {
                "eventType": "Bounce",
                "mail": MAIL,
                "bounce": {
                    "bounceType": bounce_type,
                    "bounceSubType": sub_type,
                    "timestamp": "2024-05-01T10:00:00.000Z",
                    "bouncedRecipients": [{"emailAddress": "a@example.org"}],
                },
            }
        )
    )
    assert (event.event_type, event.bounce_class) == (event_type, bounce_class)


def test_bounce_with_several_recipients_gives_one_event_per_recipient() -> None:
    events = parse(
        notification(
            {
                "notificationType": "Bounce",
                "mail": MAIL,
                "bounce": {
                    "bounceType": "Permanent",
                    "bounceSubType": "General",
                    "timestamp": "2024-05-01T10:00:00.000Z",
                    "bouncedRecipients": [
                        {"emailAddress": "a@example.org", "status": "5.1.1"},
                        {"emailAddress": "b@example.org", "status": "5.1.2"},
                    ],
                },
            }
        )
    )
    assert [(e.recipient, e.enhanced_code) for e in events] == [("a@example.org", "5.1.1"), ("b@example.org", "5.1.2")]
    assert len({e.provider_event_id for e in events}) == 2


def test_subtask_id_falls_back_to_our_header_in_the_legacy_format() -> None:
    mail = {
        "messageId": "m-1",
        "destination": ["a@example.org"],
        "headers": [
            {"name": "x-edm-subtask-id", "value": "st_from_header"},
            {"name": "Feedback-ID", "value": "42:3:edm"},
        ],
    }
    event = only(
        notification(
            {
                "notificationType": "Delivery",
                "mail": mail,
                "delivery": {
                    "timestamp": "2024-05-01T10:00:00.000Z",
                    "recipients": ["a@example.org"],
                    "smtpResponse": "250 ok",
                },
            }
        )
    )
    assert (event.subtask_id, event.task_id, event.provider_message_id) == ("st_from_header", "42", "m-1")


def test_list_management_unsubscribe_is_unsubscribed() -> None:
    event = only(
        notification(
            {
                "eventType": "Subscription",
                "mail": MAIL,
                "subscription": {
                    "contactList": "news",
                    "timestamp": "2024-05-01T10:00:00.000Z",
                    "source": "UnsubscribeHeader",
                    "newTopicPreferences": {"unsubscribeAll": True, "topicSubscriptionStatus": []},
                },
            }
        )
    )
    assert event.event_type is EventType.UNSUBSCRIBED
    assert event.recipient == "a@example.org"
    assert event.occurred_at == at("2024-05-01T10:00:00.000Z")


def test_unknown_event_type_is_kept_as_unknown() -> None:
    event = only(notification({"eventType": "SomethingNew", "mail": MAIL}))
    assert event.event_type is EventType.UNKNOWN
    assert event.provider_event == "SomethingNew"
    assert event.subtask_id == "st_9"
