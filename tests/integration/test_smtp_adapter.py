"""SmtpAdapter against a real SMTP server on loopback (SmtpSink on aiosmtpd): pool, auth and error classes."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from edm.devtools.smtp_sink import SmtpSink, list_stored
from edm.providers.base import OutboundMessage, Outcome, ServiceConfig
from edm.providers.smtp import Phase, SmtpAdapter, classify_reply, queue_id, smtp_payload

PASSWORD = "s3cret-Pa55"


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


def smtp_config(
    port: int, *, max_concurrency: int = 2, timeout: float = 2.0, creds: dict[str, Any] | None = None, **options: Any
) -> ServiceConfig:
    return ServiceConfig(
        service_id=1,
        provider="smtp",
        domain="example.com",
        credentials=creds or {},
        options={"host": "127.0.0.1", "port": port, "security": "none", "helo_name": "edm.test", **options},
        max_concurrency=max_concurrency,
        request_timeout_seconds=timeout,
    )


def message(i: int, to: str = "reader@example.org") -> OutboundMessage:
    mail = EmailMessage()
    mail["From"] = "News <news@example.com>"
    mail["To"] = to
    mail["Subject"] = f"Spring campaign {i}"
    mail["X-EDM-SubTask-Id"] = f"st_{i}"
    mail.set_content(f"Hello {i}\n.a line starting with a dot\nbye\n")
    return OutboundMessage(
        key=f"st_{i}",
        envelope_from=f"b+st_{i}@bounce.example.com",
        from_address="news@example.com",
        from_name="News",
        to_address=to,
        to_name="",
        subject=f"Spring campaign {i}",
        html="",
        text="",
        custom_args={"subtask_id": f"st_{i}"},
        mime=mail.as_bytes(),
    )


async def send_one(adapter: SmtpAdapter, msg: OutboundMessage) -> Any:
    results = await adapter.send([msg])
    assert len(results) == 1 and results[0].key == msg.key
    return results[0]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def eventually(predicate: Any, timeout: float = 1.0) -> bool:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


# -- accepted, pool ----------------------------------------------------------------------------------


async def test_accepted_message_arrives_byte_for_byte(sink: SmtpSink) -> None:
    adapter = SmtpAdapter(smtp_config(sink.port))
    msg = message(1)
    result = await send_one(adapter, msg)
    await adapter.aclose()

    assert result.outcome is Outcome.ACCEPTED and result.status == 250
    assert result.provider_message_id is None  # the sink's "250 2.0.0 OK" carries no queue id
    assert 0 <= result.latency_ms < 1000
    [got] = sink.messages
    assert got.data == msg.mime.replace(b"\n", b"\r\n")  # dot-stuffing undone, CRLF on the wire
    assert got.subtask_id == "st_1" and got.subject == "Spring campaign 1"
    assert got.envelope_from == "b+st_1@bounce.example.com" and got.rcpt_tos == ("reader@example.org",)


async def test_queue_id_from_the_250_reply_becomes_the_provider_message_id(sink: SmtpSink) -> None:
    sink.data_reply = (250, "2.0.0 Ok: queued as 4Q8xYz1abc")
    adapter = SmtpAdapter(smtp_config(sink.port))
    result = await send_one(adapter, message(1))
    await adapter.aclose()
    assert result.outcome is Outcome.ACCEPTED
    assert result.provider_message_id == "4Q8xYz1abc" and result.provider_code == "2.0.0"


async def test_sequential_sends_reuse_one_connection(sink: SmtpSink) -> None:
    adapter = SmtpAdapter(smtp_config(sink.port, max_concurrency=4))
    results = [await send_one(adapter, message(i)) for i in range(20)]
    assert {r.outcome for r in results} == {Outcome.ACCEPTED}
    assert sink.connections_opened == 1 and adapter.connections_opened == 1
    assert sink.count_by_subtask() == {f"st_{i}": 1 for i in range(20)}
    await adapter.aclose()
    assert await eventually(lambda: sink.connections_open == 0)  # QUIT on close


async def test_concurrent_sends_stay_within_max_concurrency(sink: SmtpSink) -> None:
    sink.data_delay = 0.02  # keep transactions open long enough to overlap
    adapter = SmtpAdapter(smtp_config(sink.port, max_concurrency=3))
    batches = await asyncio.gather(*(adapter.send([message(i)]) for i in range(30)))
    await adapter.aclose()
    assert all(batch[0].outcome is Outcome.ACCEPTED for batch in batches)
    assert len(sink.messages) == 30
    assert sink.connections_opened == 3  # the pool filled up, and never beyond
    assert sink.max_concurrent_transactions == 3
    assert len(sink.transaction_starts) == 30


async def test_server_dropping_idle_connections_is_not_a_failure(sink: SmtpSink) -> None:
    adapter = SmtpAdapter(smtp_config(sink.port))
    assert (await send_one(adapter, message(1))).outcome is Outcome.ACCEPTED
    sink.disconnect_all()
    assert await eventually(lambda: sink.connections_open == 0)
    assert (await send_one(adapter, message(2))).outcome is Outcome.ACCEPTED
    assert adapter.connections_opened == 2
    await adapter.aclose()


async def test_a_pooled_connection_found_dead_on_use_is_redialled(sink: SmtpSink) -> None:
    adapter = SmtpAdapter(smtp_config(sink.port))
    assert (await send_one(adapter, message(1))).outcome is Outcome.ACCEPTED
    sink.disconnect_all()
    # Block this loop (time.sleep, not asyncio.sleep) so the client has not yet read the EOF: the pooled
    # connection still looks alive and only fails when MAIL FROM is sent on it.
    for _ in range(200):
        if sink.connections_open == 0:
            break
        time.sleep(0.005)
    result = await send_one(adapter, message(2))
    assert result.outcome is Outcome.ACCEPTED
    assert adapter.connections_opened == 2
    assert sink.count_by_subtask() == {"st_1": 1, "st_2": 1}
    await adapter.aclose()


# -- auth --------------------------------------------------------------------------------------------


async def test_login_with_credentials() -> None:
    with SmtpSink(require_auth=("mailer", PASSWORD)) as sink:
        adapter = SmtpAdapter(smtp_config(sink.port, creds={"username": "mailer", "password": PASSWORD}))
        results = [await send_one(adapter, message(i)) for i in range(3)]
        await adapter.aclose()
        assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 3
        assert sink.authenticated_users == ["mailer"]  # logged in once: the connection was reused


async def test_rejected_credentials_are_auth_config_without_the_password() -> None:
    with SmtpSink(require_auth=("mailer", PASSWORD)) as sink:
        sink.fail_auth = True
        adapter = SmtpAdapter(smtp_config(sink.port, creds={"username": "mailer", "password": PASSWORD}))
        result = await send_one(adapter, message(1))
        await adapter.aclose()
        assert result.outcome is Outcome.AUTH_CONFIG
        assert result.status == 535 and result.provider_code == "5.7.8"
        assert PASSWORD not in result.message
        assert sink.messages == []


async def test_missing_credentials_are_auth_config() -> None:
    with SmtpSink(require_auth=("mailer", PASSWORD)) as sink:
        adapter = SmtpAdapter(smtp_config(sink.port))
        result = await send_one(adapter, message(1))
        await adapter.aclose()
        assert result.outcome is Outcome.AUTH_CONFIG and result.status == 530


async def test_credentials_for_a_server_without_auth_are_auth_config(sink: SmtpSink) -> None:
    adapter = SmtpAdapter(smtp_config(sink.port, creds={"username": "mailer", "password": PASSWORD}))
    result = await send_one(adapter, message(1))
    await adapter.aclose()
    assert result.outcome is Outcome.AUTH_CONFIG
    assert PASSWORD not in result.message


# -- recipient and service replies ---------------------------------------------------------------------


async def test_greylisting_at_rcpt_is_recipient_level_transient_and_keeps_the_connection(sink: SmtpSink) -> None:
    sink.rcpt_reply = (450, "4.2.0 Greylisted, try again later")
    adapter = SmtpAdapter(smtp_config(sink.port))
    result = await send_one(adapter, message(1))
    assert result.outcome is Outcome.TRANSIENT and result.recipient_level
    assert result.status == 450 and result.provider_code == "4.2.0"
    sink.rcpt_reply = None
    assert (await send_one(adapter, message(2))).outcome is Outcome.ACCEPTED  # after an RSET
    assert sink.connections_opened == 1
    assert sink.count_by_subtask() == {"st_2": 1}
    await adapter.aclose()


async def test_mailbox_full_is_recipient_level_transient_even_as_5yz(sink: SmtpSink) -> None:
    sink.rcpt_reply = (552, "5.2.2 Mailbox full")
    adapter = SmtpAdapter(smtp_config(sink.port))
    result = await send_one(adapter, message(1))
    await adapter.aclose()
    assert result.outcome is Outcome.TRANSIENT and result.recipient_level and not result.recipient_rejected


async def test_unknown_user_is_a_permanent_recipient_rejection(sink: SmtpSink) -> None:
    sink.reject_addresses["nobody@example.org"] = (550, "5.1.1 <nobody@example.org>: User unknown")
    adapter = SmtpAdapter(smtp_config(sink.port))
    rejected = await send_one(adapter, message(1, to="nobody@example.org"))
    accepted = await send_one(adapter, message(2))
    await adapter.aclose()
    assert rejected.outcome is Outcome.PERMANENT and rejected.recipient_rejected
    assert rejected.status == 550 and rejected.provider_code == "5.1.1"
    assert "User unknown" in rejected.message
    assert accepted.outcome is Outcome.ACCEPTED
    assert [m.subtask_id for m in sink.messages] == ["st_2"]


async def test_rate_limit_421_is_throttled_and_the_next_send_redials(sink: SmtpSink) -> None:
    sink.mail_reply = (421, "4.7.0 Too many messages from your IP, slow down")
    adapter = SmtpAdapter(smtp_config(sink.port))
    result = await send_one(adapter, message(1))
    assert result.outcome is Outcome.THROTTLED and result.status == 421 and not result.recipient_level
    sink.mail_reply = None
    assert (await send_one(adapter, message(2))).outcome is Outcome.ACCEPTED
    assert adapter.connections_opened == 2  # 421 closes the channel
    await adapter.aclose()


async def test_421_without_rate_words_is_service_level_transient(sink: SmtpSink) -> None:
    sink.mail_reply = (421, "4.3.2 Service shutting down")
    adapter = SmtpAdapter(smtp_config(sink.port))
    result = await send_one(adapter, message(1))
    await adapter.aclose()
    assert result.outcome is Outcome.TRANSIENT and not result.recipient_level


async def test_5yz_after_data_is_permanent(sink: SmtpSink) -> None:
    sink.data_reply = (554, "5.7.1 Message rejected as spam")
    adapter = SmtpAdapter(smtp_config(sink.port))
    result = await send_one(adapter, message(1))
    assert result.outcome is Outcome.PERMANENT and not result.recipient_rejected
    sink.data_reply = None
    assert (await send_one(adapter, message(2))).outcome is Outcome.ACCEPTED
    assert sink.connections_opened == 1
    await adapter.aclose()


# -- network failures: before and after the body -------------------------------------------------------


async def test_connection_refused_is_service_level_transient() -> None:
    adapter = SmtpAdapter(smtp_config(closed_port()))
    result = await send_one(adapter, message(1))
    await adapter.aclose()
    assert result.outcome is Outcome.TRANSIENT and not result.recipient_level
    assert result.message.startswith("connect:")


async def test_server_that_never_greets_times_out_as_transient() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts TCP, never says 220
        adapter = SmtpAdapter(smtp_config(silent.getsockname()[1], timeout=0.3))
        result = await send_one(adapter, message(1))
        await adapter.aclose()
    assert result.outcome is Outcome.TRANSIENT and not result.recipient_level
    assert 250 <= result.latency_ms < 1500


async def test_connection_lost_after_the_body_is_maybe_sent(sink: SmtpSink) -> None:
    sink.drop_after_data = True
    adapter = SmtpAdapter(smtp_config(sink.port))
    result = await send_one(adapter, message(1))
    await adapter.aclose()
    assert result.outcome is Outcome.MAYBE_SENT
    assert sink.count_by_subtask() == {"st_1": 1}  # it did arrive: exactly why it is "maybe"


async def test_timeout_waiting_for_the_final_reply_is_maybe_sent(sink: SmtpSink) -> None:
    sink.data_delay = 1.0
    adapter = SmtpAdapter(smtp_config(sink.port, timeout=0.3))
    result = await send_one(adapter, message(1))
    await adapter.aclose()
    assert result.outcome is Outcome.MAYBE_SENT
    assert 250 <= result.latency_ms < 900
    assert "Timed out" in result.message


# -- TLS -----------------------------------------------------------------------------------------------


def self_signed_context(tmp_path: Path) -> ssl.SSLContext:
    crypto = pytest.importorskip("cryptography")
    del crypto
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


async def test_starttls_is_used_when_offered_and_skipped_with_security_none(tmp_path: Path) -> None:
    with SmtpSink(tls_context=self_signed_context(tmp_path)) as sink:
        tls = SmtpAdapter(smtp_config(sink.port, security="starttls", validate_certs=False))
        plain = SmtpAdapter(smtp_config(sink.port, security="none"))
        assert (await send_one(tls, message(1))).outcome is Outcome.ACCEPTED
        assert sink.tls_connections == 1
        assert (await send_one(plain, message(2))).outcome is Outcome.ACCEPTED
        assert sink.tls_connections == 1 and sink.connections_opened == 2
        await tls.aclose()
        await plain.aclose()


async def test_untrusted_certificate_is_a_transient_tls_failure(tmp_path: Path) -> None:
    with SmtpSink(tls_context=self_signed_context(tmp_path)) as sink:
        adapter = SmtpAdapter(smtp_config(sink.port, security="starttls", validate_certs=True))
        result = await send_one(adapter, message(1))
        await adapter.aclose()
        assert result.outcome is Outcome.TRANSIENT and not result.recipient_level
        assert sink.messages == []


async def test_starttls_is_optional_when_the_server_does_not_offer_it(sink: SmtpSink) -> None:
    adapter = SmtpAdapter(smtp_config(sink.port, security="starttls"))
    assert (await send_one(adapter, message(1))).outcome is Outcome.ACCEPTED
    assert sink.tls_connections == 0
    await adapter.aclose()


# -- the sink's store, for the demo --------------------------------------------------------------------


async def test_sink_store_dir_lists_messages_for_other_processes(tmp_path: Path) -> None:
    with SmtpSink(store_dir=tmp_path / "mail") as sink:
        adapter = SmtpAdapter(smtp_config(sink.port))
        for i in range(3):
            await send_one(adapter, message(i))
        await adapter.aclose()
    rows = list_stored(tmp_path / "mail")
    assert [row["subtask_id"] for row in rows] == ["st_0", "st_1", "st_2"]
    assert rows[0]["from"] == "b+st_0@bounce.example.com" and rows[0]["to"] == "reader@example.org"
    assert rows[0]["subject"] == "Spring campaign 0" and rows[0]["received_at"] > 0
    assert rows[0]["path"].read_bytes().endswith(message(0).mime.replace(b"\n", b"\r\n"))


# -- pure classification ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "code", "text", "expected"),
    [
        (Phase.RCPT, 450, "4.2.0 greylisted", (Outcome.TRANSIENT, True, False)),
        (Phase.RCPT, 451, "4.3.0 try later", (Outcome.TRANSIENT, True, False)),
        (Phase.BODY, 451, "4.7.1 greylisted, try later", (Outcome.TRANSIENT, True, False)),
        (Phase.MAIL, 451, "4.3.0 local error", (Outcome.TRANSIENT, False, False)),
        (Phase.RCPT, 421, "4.4.2 closing", (Outcome.TRANSIENT, False, False)),
        (Phase.CONNECT, 554, "5.7.1 no service for you", (Outcome.TRANSIENT, False, False)),
        (Phase.RCPT, 552, "5.2.2 mailbox full", (Outcome.TRANSIENT, True, False)),
        (Phase.MAIL, 421, "4.7.0 Too many connections", (Outcome.THROTTLED, False, False)),
        (Phase.RCPT, 450, "4.7.28 unusual rate of unsolicited mail", (Outcome.THROTTLED, False, False)),
        (Phase.BODY, 550, "5.7.28 unusual rate of unsolicited mail", (Outcome.THROTTLED, False, False)),
        (Phase.RCPT, 450, "4.2.1 user receiving mail at a rate that prevents", (Outcome.TRANSIENT, True, False)),
        (Phase.MAIL, 530, "5.7.0 Authentication required", (Outcome.AUTH_CONFIG, False, False)),
        (Phase.AUTH, 535, "5.7.8 bad credentials", (Outcome.AUTH_CONFIG, False, False)),
        (Phase.AUTH, 534, "5.7.9 mechanism too weak", (Outcome.AUTH_CONFIG, False, False)),
        (Phase.AUTH, 454, "4.7.0 temporary auth failure", (Outcome.TRANSIENT, False, False)),
        (Phase.MAIL, 553, "5.7.1 sender not owned by user", (Outcome.AUTH_CONFIG, False, False)),
        (Phase.RCPT, 554, "5.7.1 <x@y>: Relay access denied", (Outcome.AUTH_CONFIG, False, False)),
        (Phase.RCPT, 550, "5.1.1 user unknown", (Outcome.PERMANENT, False, True)),
        (Phase.RCPT, 550, "5.1.10 null MX", (Outcome.PERMANENT, False, True)),
        (Phase.RCPT, 550, "5.2.1 mailbox disabled", (Outcome.PERMANENT, False, True)),
        (Phase.RCPT, 550, "No such user here", (Outcome.PERMANENT, False, True)),
        (Phase.RCPT, 550, "5.7.1 recipient refused by policy", (Outcome.PERMANENT, False, False)),
        (Phase.MAIL, 550, "5.5.2 syntax", (Outcome.PERMANENT, False, False)),
        (Phase.BODY, 552, "5.3.4 message too big", (Outcome.PERMANENT, False, False)),
    ],
)
def test_classify_reply(phase: Phase, code: int, text: str, expected: tuple[Outcome, bool, bool]) -> None:
    verdict = classify_reply(phase, code, text)
    assert (verdict.outcome, verdict.recipient_level, verdict.recipient_rejected) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2.0.0 Ok: queued as 4Q8xYz1abc", "4Q8xYz1abc"),
        ("OK id=1tXyZa-000123-AB", "1tXyZa-000123-AB"),
        ("Ok 0100018f3c2d4e5f-1a2b3c4d-000000", "0100018f3c2d4e5f-1a2b3c4d-000000"),
        ("2.0.0 OK", None),
        ("Great success", None),
    ],
)
def test_queue_id(text: str, expected: str | None) -> None:
    assert queue_id(text) == expected


def test_payload_is_crlf_dot_stuffed_and_terminated() -> None:
    assert smtp_payload(b"a\n.b\r\nc") == b"a\r\n..b\r\nc\r\n.\r\n"
