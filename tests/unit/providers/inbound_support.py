"""Shared by the inbound-mail tests (unit and integration): the fixtures of tests/fixtures/inbound, read as the
provider posts them, and what the tests sign them with."""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import hashlib
import hmac
import json
import re
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

INBOUND = Path(__file__).resolve().parents[2] / "fixtures" / "inbound"
MAILGUN_KEY = "mailgun-signing-key-for-tests"  # the fixtures' signatures are made with it
OUR_ID = "<00000000-0000-4000-8000-000000000001@mail.example.com>"  # the Message-ID of our send they answer
SNS_TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-inbound"
SNS_CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem"
SNS_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JSON = {"Content-Type": "application/json"}
SNS = {"Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": "Notification"}


def posted(name: str) -> tuple[dict[str, str], bytes]:
    """(request headers, body) of a fixture: a `.http` file is its Content-Type line, a blank line and the body
    byte for byte; a `.json` file is the body of an application/json (SNS: text/plain) post."""
    data = (INBOUND / name).read_bytes()
    if name.endswith(".http"):
        head, body = data.split(b"\r\n\r\n", 1)
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        return headers, body
    return (SNS if name.startswith("ses_") else JSON), data


def fixture_json(name: str) -> Any:
    return json.loads((INBOUND / name).read_bytes())


def parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def form_field(body: bytes, name: str) -> bytes:
    """One field's bytes from a multipart fixture body."""
    match = re.search(rb'name="' + name.encode() + rb'"(?:; filename="[^"]*")?\r\n(?:[^\r\n]+\r\n)*\r\n', body)
    assert match is not None, name
    end = body.index(b"\r\n--", match.end())
    return body[match.end() : end]


def fixture_timestamp(body: bytes) -> dt.datetime:
    """The signed timestamp of a Mailgun fixture (multipart or urlencoded)."""
    match = re.search(rb"(?:timestamp=|name=\"timestamp\"\r\n\r\n)(\d+)", body)
    assert match is not None
    return dt.datetime.fromtimestamp(int(match.group(1)), tz=dt.UTC)


def mailgun_resigned(body: bytes, *, key: str = MAILGUN_KEY, token: str | None = None) -> bytes:
    """A Mailgun fixture signed now (the pipeline checks the timestamp against the clock), with a fresh token."""
    ts = str(int(time.time()))
    token = token or hashlib.sha256(f"{time.time_ns()}".encode()).hexdigest()[:50]
    signature = hmac.new(key.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()
    values = {"timestamp": ts, "token": token, "signature": signature}
    for name, value in values.items():
        body = re.sub(
            rb'(name="' + name.encode() + rb'"\r\n\r\n)[^\r\n]*', lambda m, v=value: m.group(1) + v.encode(), body
        )
        body = re.sub(rb"(?<![\w-])" + name.encode() + rb"=[^&]*", name.encode() + b"=" + value.encode(), body)
    return body


# -- SNS -------------------------------------------------------------------------------------------------


def sns_certificate() -> bytes:
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


def sns_signed(envelope: dict[str, Any], *, version: str = "2") -> bytes:
    """The envelope signed as SNS signs: `name\\nvalue\\n` of the fields of its type, RSA PKCS#1 v1.5."""
    if envelope["Type"] == "Notification":
        names = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
    else:
        names = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
    envelope = {**envelope, "SignatureVersion": version, "SigningCertURL": SNS_CERT_URL}
    signed = "".join(f"{n}\n{envelope[n]}\n" for n in names if envelope.get(n) is not None).encode()
    algorithm = hashes.SHA256() if version == "2" else hashes.SHA1()
    envelope["Signature"] = base64.b64encode(SNS_KEY.sign(signed, padding.PKCS1v15(), algorithm)).decode()
    return json.dumps(envelope).encode()


def ses_envelope(**message_changes: Any) -> dict[str, Any]:
    """The SES fixture's SNS envelope, its Message changed as asked (None removes a key)."""
    envelope: dict[str, Any] = fixture_json("ses_received_sns.json")
    message = json.loads(envelope["Message"])
    for key, value in message_changes.items():
        if value is None:
            message.pop(key, None)
        else:
            message[key] = value
    envelope["Message"] = json.dumps(message)
    return envelope


def ses_raw() -> bytes:
    """The message the SES fixture carries, as SES received it."""
    return base64.b64decode(json.loads(fixture_json("ses_received_sns.json")["Message"])["content"])


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
