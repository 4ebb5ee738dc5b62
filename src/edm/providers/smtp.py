"""SMTP adapter: sends pre-built MIME bytes through a relay or MTA with a small per-service connection pool.

Wire behaviour
--------------
* One transaction per message: MAIL FROM, RCPT TO, DATA. When the server's EHLO offers PIPELINING (RFC 2920),
  the three commands (after an RSET when the last transaction was refused) go in one write and their replies
  are read in order, then the body in a second write (`SmtpAdapter._pipelined`); otherwise one by one. Either
  way each reply maps to the same outcome in the same phase. The envelope sender is `message.envelope_from`, or,
  when `options["bounce_domain"]` is set, the VERP address `b+<message.key>@<bounce_domain>` so that every
  bounce names its SubTask (edm.providers.dsn, docs/events.md#smtp-bounce-and-complaint-reports).
* `options["request_dsn"]` (default false): when the server advertises DSN (RFC 3461), MAIL FROM carries
  `RET=HDRS ENVID=<message.key>` and RCPT TO `NOTIFY=FAILURE,DELAY ORCPT=rfc822;<recipient>`.
* `security`: "tls" connects with implicit TLS (465), "starttls" upgrades opportunistically whenever the
  server offers STARTTLS (docs/security.md#outgoing-requests), "none" never encrypts. AUTH only when a username is
  configured.
* Connections are reused: at most `max_concurrency` per adapter instance, idle ones are kept LIFO so the
  warmest is reused first, a broken or stale one is discarded and replaced.
* TCP_NODELAY is set on every socket and the body is written together with the final "." line in one
  write (docs/performance.md, lesson 3): no Nagle / delayed-ACK stall per message.

"After the DATA payload was written"
------------------------------------
aiosmtplib's `SMTP.data()` sends DATA, waits for 354, writes the body and waits for the final reply in one
call, so a timeout there does not say whether the body left. We therefore send the DATA command with
`execute_command`, and on 354 write the dot-stuffed body through `smtp.protocol.write()` ourselves and
read the final reply with `protocol.read_response()`. The phase switches to BODY right after that write:
any timeout, disconnect or garbage from then on is `maybe_sent`; anything earlier is `transient`.

Classification (docs/sending.md#failures-and-failover, docs/providers.md#how-answers-are-classified) lives in
`classify_reply()`, a pure function of (phase, code, text).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import re
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import MAX_RESPONSE_LENGTH, SMTPProtocol

from edm.providers.base import (
    Capabilities,
    CredentialCheck,
    OutboundMessage,
    Outcome,
    SendResult,
    ServiceConfig,
    truncate,
)
from edm.providers.dsn import bounce_domain_or_error, verp_address

_DEFAULT_PORTS = {"tls": 465, "starttls": 587, "none": 25}
_SECURITY_MODES = frozenset(_DEFAULT_PORTS)
_DEFAULT_IDLE_SECONDS = 30.0  # relays drop idle sessions after 60–300 s; close ours well before that
_RSET_BUDGET_SECONDS = 2.0

# RFC 3463 enhanced status code at the start of the reply text: "5.1.1 <x>: user unknown".
_ENHANCED_RE = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")
# Words relays put in rate-limit replies ("421 4.7.0 Too many messages", "rate limit exceeded").
_RATE_RE = re.compile(r"\brate|too many|throttl|slow down", re.IGNORECASE)
_RELAY_RE = re.compile(r"relay", re.IGNORECASE)
# Queue ids in 250 replies: Postfix "queued as 4ABC12", Exim "id=1abc-0001", SES/Gmail "OK <token>".
_QUEUE_ID_RES = (
    re.compile(r"queued as\s+<?([\w.\-@]+)>?", re.IGNORECASE),
    re.compile(r"\bid=<?([\w.\-@]+)>?", re.IGNORECASE),
    re.compile(r"^\s*ok\b[:\s]+<?([A-Za-z0-9][\w.\-@]{5,})>?", re.IGNORECASE),
)
_LINE_ENDINGS_RE = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT_RE = re.compile(rb"(?m)^\.")
_NETWORK_ERRORS = (OSError, TimeoutError, aiosmtplib.SMTPException)


class Phase(enum.Enum):
    """Where in the session an answer or failure happened; decides the error class."""

    CONNECT = "connect"  # TCP, TLS, greeting, EHLO, STARTTLS
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"  # the DATA command, before 354
    BODY = "body"  # the payload was written: failures from here on are maybe-sent


_AFTER_RCPT = (Phase.RCPT, Phase.DATA, Phase.BODY)


@dataclass(frozen=True, slots=True)
class Classification:
    outcome: Outcome
    recipient_level: bool = False
    recipient_rejected: bool = False


def enhanced_code(text: str) -> str | None:
    """The RFC 3463 status ("5.1.1") at the start of a reply text, if any."""
    match = _ENHANCED_RE.match(text)
    return match.group(1) if match else None


def queue_id(text: str) -> str | None:
    """The server's queue id from a 250 reply after DATA, when it gives one."""
    text = _ENHANCED_RE.sub("", text, count=1)
    for pattern in _QUEUE_ID_RES:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def classify_reply(phase: Phase, code: int, text: str) -> Classification:
    """Map one negative (or unexpected) SMTP reply to an error class (docs/providers.md#how-answers-are-classified)."""
    enhanced = enhanced_code(text) or ""
    klass = code // 100
    if enhanced.endswith(".7.28") or (_is_rate_code(code, enhanced) and _RATE_RE.search(text)):
        return Classification(Outcome.THROTTLED)  # Gmail 4.7.28/5.7.28, "421 4.7.0 too many messages"
    if code in (530, 534, 535, 538) or enhanced == "5.7.8":
        return Classification(Outcome.AUTH_CONFIG)  # auth required / credentials invalid / mechanism
    if phase is Phase.AUTH:
        return Classification(Outcome.TRANSIENT if klass == 4 else Outcome.AUTH_CONFIG)
    if code == 421 or phase is Phase.CONNECT or klass not in (4, 5):
        return Classification(Outcome.TRANSIENT)  # service-level: closing, greeting refused, odd reply
    if enhanced[2:] == "2.2":
        # Mailbox full: soft even when sent as 5.2.2; the recipient's fault, not the service's.
        return Classification(Outcome.TRANSIENT, recipient_level=phase in _AFTER_RCPT)
    if klass == 4:
        return Classification(Outcome.TRANSIENT, recipient_level=phase in _AFTER_RCPT)
    return _classify_permanent(phase, code, enhanced, text)


def _is_rate_code(code: int, enhanced: str) -> bool:
    return code == 421 or enhanced.startswith("4.7.")


def _classify_permanent(phase: Phase, code: int, enhanced: str, text: str) -> Classification:
    if phase is Phase.MAIL and (enhanced.startswith("5.7.") or enhanced in ("5.1.7", "5.1.8")):
        # The sender or its domain is not allowed on this account: a service configuration problem,
        # not this message's (auth_config in docs/sending.md#failures-and-failover: "unverified domain or sender").
        return Classification(Outcome.AUTH_CONFIG)
    if phase is Phase.RCPT and _RELAY_RE.search(text) and not enhanced.startswith("5.1."):
        return Classification(Outcome.AUTH_CONFIG)  # "554 5.7.1 Relay access denied": we are not logged in
    if phase in _AFTER_RCPT and (enhanced.startswith("5.1.") or enhanced == "5.2.1"):
        return Classification(Outcome.PERMANENT, recipient_rejected=True)
    if phase is Phase.RCPT and not enhanced and code in (550, 551, 553):
        return Classification(Outcome.PERMANENT, recipient_rejected=True)
    return Classification(Outcome.PERMANENT)


def smtp_payload(mime: bytes, *, crlf: bool = False) -> bytes:
    """The DATA payload: CRLF line endings, dot-stuffed, terminated by the end-of-data line. `crlf`: the
    caller vouches that `mime` has CRLF line ends only (`OutboundMessage.mime_crlf`)."""
    data = mime if crlf or _is_clean_crlf(mime) else _LINE_ENDINGS_RE.sub(b"\r\n", mime)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b".") or b"\n." in data:
        data = _LEADING_DOT_RE.sub(b"..", data)
    return data + b".\r\n"


def _is_clean_crlf(data: bytes) -> bool:
    """Our own MIME builder already writes CRLF everywhere: two byte counts (C speed) skip the regex, which
    was ~11 % of a worker's CPU at 1,000 msg/s."""
    return data.count(b"\n") == data.count(b"\r\n") and data.count(b"\r") == data.count(b"\r\n")


# The replies a pipelined transaction expects, in order, and the phase each belongs to. A refused RSET fails
# in the MAIL phase, as it does when sent alone before MAIL.
_RSET_STEP = (Phase.MAIL, frozenset({250}))
_PIPELINED_STEPS = [
    (Phase.MAIL, frozenset({250})),
    (Phase.RCPT, frozenset({250, 251})),
    (Phase.DATA, frozenset({354})),
]
_CONTROL_RE = re.compile(rb"[\x00-\x1f\x7f]")
# A plain dot-atom address: quoted as it is. Anything else goes through aiosmtplib's own parsing, as the
# commands sent one by one do (`SMTP.mail`, `SMTP.rcpt`).
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_PLAIN_ADDRESS_RE = re.compile(_DOT_ATOM + "@" + _DOT_ATOM)


def _quoted(address: str, encoding: str) -> bytes:
    if _PLAIN_ADDRESS_RE.fullmatch(address):
        return b"<" + address.encode("ascii") + b">"
    return quote_address(address).encode(encoding)


def _command(verb: bytes, address: bytes, options: list[str]) -> bytes:
    """One command line without its CRLF; refuses control characters (command injection), like aiosmtplib."""
    line = b" ".join([verb + address, *(o.encode("ascii") for o in options)])
    if _CONTROL_RE.search(line):
        raise ValueError("an SMTP command argument contains a control character")
    return line


class _PipeliningProtocol(SMTPProtocol):
    """aiosmtplib's protocol, able to read the replies to several commands written at once (RFC 2920).

    The stock protocol parses one reply per `data_received()` call and drops data that arrives while no read
    is waiting, which is right for one command at a time (nothing unsolicited is mistaken for a reply), but
    loses or strands the replies of a pipelined group that arrive together or between two reads. While
    `pending` replies are due, this one keeps every byte, and `read_response()` first takes a reply already
    complete in the buffer. Connections get this class right after they are opened (`_adopt_protocol`)."""

    pending = 0  # replies still due to commands written together

    def expect(self, count: int) -> None:
        self.pending = count

    def data_received(self, data: bytes) -> None:
        waiter = self._response_waiter
        if self.pending and waiter is not None and (waiter.done() or not self._response_pending):
            self._buffer.extend(data)  # a later reply of the group: kept for the next read
            if len(self._buffer) > _MAX_BUFFERED and self.transport is not None:
                self.transport.close()  # a server streaming garbage: connection_lost fails the read
            return
        super().data_received(data)

    async def read_response(self, timeout: float | None = None) -> aiosmtplib.SMTPResponse:
        if self.pending:
            self.pending -= 1
            if self._buffer and self._response_waiter is not None and not self._response_waiter.done():
                reply = self._read_response_from_buffer()
                if reply is not None:
                    return reply
        return await super().read_response(timeout)


_MAX_BUFFERED = 4 * MAX_RESPONSE_LENGTH


def _adopt_protocol(smtp: aiosmtplib.SMTP) -> None:
    """Give a freshly opened connection's protocol the pipelining reads. The class is swapped in place (it adds
    behaviour, no state), because aiosmtplib builds its protocol inside `connect()`."""
    protocol = smtp.protocol
    if type(protocol) is SMTPProtocol:
        protocol.__class__ = _PipeliningProtocol


class _Deadline:
    """The request timeout covers the whole send: connect, TLS, AUTH and the transaction."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request timeout exceeded")
        return remaining


class _Failed(Exception):
    """A send step failed; carries the phase, the reply (if any) and whether the connection was stale."""

    def __init__(self, phase: Phase, exc: BaseException, *, stale: bool = False) -> None:
        super().__init__(str(exc))
        self.phase = phase
        self.exc = exc
        self.stale = stale


@dataclass(slots=True)
class _Conn:
    smtp: aiosmtplib.SMTP
    last_used: float
    needs_rset: bool = False  # the last transaction failed mid-way: reset before the next MAIL


@dataclass(frozen=True, slots=True)
class _Settings:
    host: str
    port: int
    security: str
    helo_name: str | None
    validate_certs: bool
    username: str | None
    password: str
    idle_seconds: float
    request_dsn: bool
    bounce_domain: str | None  # VERP envelope senders under this domain when set

    @classmethod
    def from_config(cls, config: ServiceConfig) -> _Settings:
        options, creds = config.options, config.credentials
        security = str(options.get("security", "starttls")).lower()
        if security not in _SECURITY_MODES:
            raise ValueError(f"smtp security must be one of {sorted(_SECURITY_MODES)}, not {security!r}")
        username = creds.get("username") or None
        bounce_domain = str(options.get("bounce_domain") or "").strip()
        return cls(
            host=str(options.get("host", "localhost")),
            port=int(options.get("port") or _DEFAULT_PORTS[security]),
            security=security,
            helo_name=options.get("helo_name") or None,
            validate_certs=bool(options.get("validate_certs", True)),
            username=str(username) if username else None,
            password=str(creds.get("password") or ""),
            idle_seconds=float(options.get("idle_timeout", _DEFAULT_IDLE_SECONDS)),
            request_dsn=bool(options.get("request_dsn", False)),
            bounce_domain=bounce_domain_or_error(bounce_domain) if bounce_domain else None,
        )


class SmtpAdapter:
    """Adapter for `provider = "smtp"`. One instance per service configuration; never raises from send()."""

    provider: ClassVar[str] = "smtp"

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.capabilities = Capabilities(needs_mime=True, max_batch=1, honours_idempotency=False)
        self._settings = _Settings.from_config(config)
        self._slots = asyncio.Semaphore(max(1, config.max_concurrency))
        self._idle: list[_Conn] = []
        self._tls_context: ssl.SSLContext | None = None
        self._helo: str | None = self._settings.helo_name
        self._closed = False
        self.connections_opened = 0  # for tests and diagnostics: how often the pool had to dial

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        # max_batch is 1; a longer sequence is still served, one transaction per message, in order.
        return [await self._send_one(message) for message in messages]

    async def check_credentials(self) -> CredentialCheck:
        """Connect, EHLO, STARTTLS when offered (or TLS), log in when credentials are set, then QUIT: what a send
        does before MAIL FROM, without sending anything (`edm doctor`). The connection is not pooled."""
        deadline = _Deadline(self.config.request_timeout_seconds)
        try:
            conn = await self._open(deadline)
        except _Failed as failure:
            result = self._failure_result("check", failure)
            return CredentialCheck(False, f"{result.outcome.value}: {result.message}")
        await self._quit(conn)
        where = f"{self._settings.host}:{self._settings.port}"
        if self._settings.username is None:
            return CredentialCheck(True, f"connected to {where} (no login configured)")
        return CredentialCheck(True, f"logged in at {where}")

    async def aclose(self) -> None:
        """QUIT idle connections; connections in use are closed when their send finishes."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(conn) for conn in idle))

    # -- one message ---------------------------------------------------------------------------------

    async def _send_one(self, message: OutboundMessage) -> SendResult:
        if message.mime is None:
            return SendResult(message.key, Outcome.PERMANENT, message="smtp adapter needs the MIME message")
        async with self._slots:
            started = time.monotonic()
            try:
                result = await self._deliver(message, message.mime)
            except Exception as exc:  # a bug, not a provider answer: never let it escape send()
                result = self._result(message.key, Outcome.TRANSIENT, message=f"internal error: {exc!r}")
            return _with_latency(result, started)

    async def _deliver(self, message: OutboundMessage, mime: bytes) -> SendResult:
        deadline = _Deadline(self.config.request_timeout_seconds)
        payload = smtp_payload(mime, crlf=message.mime_crlf)
        for _attempt in range(2):  # a second try only when a pooled connection turned out to be stale
            try:
                reply = await self._attempt(message, payload, deadline)
            except _Failed as failure:
                if failure.stale:
                    self._drop_idle()  # the server dropped its sessions (restart, idle cut): redial
                    continue
                return self._failure_result(message.key, failure)
            return self._result(
                message.key,
                Outcome.ACCEPTED,
                status=reply.code,
                text=reply.message,
                provider_message_id=queue_id(reply.message),
            )
        return self._result(message.key, Outcome.TRANSIENT, message="mail: pooled connections went stale")

    async def _attempt(self, message: OutboundMessage, payload: bytes, deadline: _Deadline) -> aiosmtplib.SMTPResponse:
        """One transaction on a pooled (or new) connection, which goes back to the pool or is closed."""
        conn = await self._checkout(deadline)
        returned = False
        try:
            reply = await self._transaction(conn, message, payload, deadline)
            self._checkin(conn)
            returned = True
            return reply
        except _Failed as failure:
            returned = self._keep_after_failure(conn, failure)
            raise
        finally:
            if not returned:  # failures and cancellation: the session state is unknown
                conn.smtp.close()

    async def _transaction(
        self, conn: _Conn, message: OutboundMessage, payload: bytes, deadline: _Deadline
    ) -> aiosmtplib.SMTPResponse:
        smtp, reused = conn.smtp, conn.last_used > 0
        if isinstance(smtp.protocol, _PipeliningProtocol) and smtp.supports_extension("pipelining"):
            return await self._pipelined(conn, message, payload, deadline)
        phase = Phase.MAIL
        try:
            if conn.needs_rset:
                await smtp.rset(timeout=min(deadline.left(), _RSET_BUDGET_SECONDS))
                conn.needs_rset = False
            sender = self._envelope_sender(message)
            mail_options, rcpt_options, encoding = self._envelope_options(smtp, message, sender, payload)
            await smtp.mail(sender, options=mail_options, encoding=encoding, timeout=deadline.left())
            phase = Phase.RCPT
            await smtp.rcpt(message.to_address, options=rcpt_options, encoding=encoding, timeout=deadline.left())
            phase = Phase.DATA
            reply = await smtp.execute_command(b"DATA", timeout=deadline.left())
            if reply.code != 354:
                raise aiosmtplib.SMTPDataError(reply.code, reply.message)
            protocol = smtp.protocol
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("connection lost after 354")
            protocol.write(payload)  # body and "." in one write: no Nagle stall on the final line
            phase = Phase.BODY
            reply = await protocol.read_response(timeout=deadline.left())
        except Exception as exc:  # whatever it is, the phase decides what it means
            # A pooled connection the server already dropped fails on its first command: that is not
            # the service failing; dial again (nothing of this message reached the server).
            stale = reused and phase is Phase.MAIL and isinstance(exc, ConnectionError)
            raise _Failed(phase, exc, stale=stale) from exc
        if reply.code != 250:
            raise _Failed(Phase.BODY, aiosmtplib.SMTPDataError(reply.code, reply.message))
        return reply

    async def _pipelined(
        self, conn: _Conn, message: OutboundMessage, payload: bytes, deadline: _Deadline
    ) -> aiosmtplib.SMTPResponse:
        """The transaction with PIPELINING (RFC 2920): [RSET,] MAIL, RCPT and DATA in one write, their replies
        read in order, then the body and "." in a second write: 2 writes and 2 round trips instead of 4.

        Each reply is judged as if its command had been sent alone: the first refused one decides the outcome,
        in its own phase (a refused MAIL is a MAIL failure, whatever RCPT and DATA answered after it). The
        replies after a refusal are still read, so the session stays in step and is pooled again (RSET before
        its next MAIL); a reply that does not come, a 421, or a 354 after a refusal closes it instead."""
        smtp, reused = conn.smtp, conn.last_used > 0
        protocol = smtp.protocol
        assert isinstance(protocol, _PipeliningProtocol)
        phase = Phase.MAIL
        refusal: _Failed | None = None
        try:
            # One timer for the whole transaction: aiosmtplib's per-read timeout is an `asyncio.wait_for` each.
            async with asyncio.timeout(deadline.left()):
                sender = self._envelope_sender(message)
                mail_options, rcpt_options, encoding = self._envelope_options(smtp, message, sender, payload)
                steps = [_RSET_STEP] if conn.needs_rset else []
                steps += _PIPELINED_STEPS
                commands = [b"RSET"] if conn.needs_rset else []
                commands += [
                    _command(b"MAIL FROM:", _quoted(sender, encoding), mail_options),
                    _command(b"RCPT TO:", _quoted(message.to_address, encoding), rcpt_options),
                    b"DATA",
                ]
                protocol.expect(len(commands))
                protocol.write(b"\r\n".join(commands) + b"\r\n")
                code = 0
                for step, accepted in steps:
                    if refusal is None:
                        phase = step
                    try:
                        reply = await protocol.read_response()
                    except Exception:
                        if refusal is None:
                            raise
                        smtp.close()  # the refusal decides; a session out of step is not pooled
                        break
                    code = reply.code
                    if refusal is None and code not in accepted:
                        refusal = _Failed(step, aiosmtplib.SMTPResponseException(code, reply.message))
                    if code == 421:
                        smtp.close()  # "closing the channel", as aiosmtplib does for a command sent alone
                        break
                if refusal is not None:
                    if code == 354:
                        smtp.close()  # the server waits for a body that will not come
                    raise refusal
                conn.needs_rset = False
                protocol.write(payload)  # body and "." in one write: no Nagle stall on the final line
                phase = Phase.BODY
                reply = await protocol.read_response()
        except _Failed:
            raise
        except Exception as exc:  # whatever it is, the phase decides what it means
            if refusal is not None:  # the time ran out reading the replies after a refusal: the refusal decides
                smtp.close()
                raise refusal from None
            if type(exc) is TimeoutError:  # the transaction's timer, or the deadline already past
                exc = aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response")
            stale = reused and phase is Phase.MAIL and isinstance(exc, ConnectionError)
            raise _Failed(phase, exc, stale=stale) from exc
        if reply.code != 250:
            raise _Failed(Phase.BODY, aiosmtplib.SMTPDataError(reply.code, reply.message))
        return reply

    def _envelope_sender(self, message: OutboundMessage) -> str:
        """MAIL FROM: our VERP address when a bounce domain is configured (raises ValueError for a key that
        cannot be a local part: a permanent failure of this message)."""
        bounce_domain = self._settings.bounce_domain
        return verp_address(message.key, bounce_domain) if bounce_domain else message.envelope_from

    def _envelope_options(
        self, smtp: aiosmtplib.SMTP, message: OutboundMessage, sender: str, payload: bytes
    ) -> tuple[list[str], list[str], str]:
        mail_options: list[str] = []
        rcpt_options: list[str] = []
        encoding = "ascii"
        if not payload.isascii() and smtp.supports_extension("8bitmime"):
            mail_options.append("BODY=8BITMIME")
        if not (sender.isascii() and message.to_address.isascii()):
            if not smtp.supports_extension("smtputf8"):
                raise ValueError("non-ASCII address and the server does not offer SMTPUTF8")
            mail_options.append("SMTPUTF8")
            encoding = "utf-8"
        if self._settings.request_dsn and smtp.supports_extension("dsn"):
            # The key, like the VERP address and our Message-ID: a DSN names the SubTask by all three.
            mail_options += ["RET=HDRS", f"ENVID={_xtext(message.key)}"]
            rcpt_options += ["NOTIFY=FAILURE,DELAY", f"ORCPT=rfc822;{_xtext(message.to_address)}"]
        return mail_options, rcpt_options, encoding

    # -- the pool ------------------------------------------------------------------------------------

    async def _checkout(self, deadline: _Deadline) -> _Conn:
        """An idle pooled connection if a fresh one is there, else a new one. Caller holds a slot."""
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # LIFO: the most recently used is the least likely to be stale
            if conn.smtp.is_connected and now - conn.last_used < self._settings.idle_seconds:
                return conn
            conn.smtp.close()
        return await self._open(deadline)

    def _checkin(self, conn: _Conn) -> None:
        if self._closed or not conn.smtp.is_connected:
            conn.smtp.close()
            return
        conn.last_used = time.monotonic()
        self._idle.append(conn)

    def _keep_after_failure(self, conn: _Conn, failure: _Failed) -> bool:
        """A refused command leaves a healthy session: pool it again. Timeouts and lost replies don't."""
        exc = failure.exc
        refused = isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code >= 0
        if not (refused and conn.smtp.is_connected):
            return False
        # After a refused MAIL/RCPT/DATA the transaction is still open: RSET it before the next MAIL
        # (lazily, so this send's result is not delayed). After the final reply it is already closed.
        conn.needs_rset = failure.phase is not Phase.BODY
        self._checkin(conn)
        return True

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.smtp.close()

    async def _open(self, deadline: _Deadline) -> _Conn:
        settings = self._settings
        phase = Phase.CONNECT
        smtp = aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.port,
            local_hostname=await self._helo_name(),
            use_tls=settings.security == "tls",
            start_tls=None if settings.security == "starttls" else False,  # None = when offered
            validate_certs=settings.validate_certs,
            tls_context=await self._tls(),
        )
        self.connections_opened += 1
        try:
            async with asyncio.timeout(deadline.left()):
                await smtp.connect(timeout=deadline.left())
                _set_nodelay(smtp)
                await _greet(smtp)
                _adopt_protocol(smtp)
                if settings.username is not None:
                    phase = Phase.AUTH
                    await smtp.login(settings.username, settings.password)
        except Exception as exc:  # network, TLS, refused greeting, bad settings: the phase decides
            smtp.close()
            raise _Failed(phase, exc) from exc
        except BaseException:  # cancelled: don't leak the socket
            smtp.close()
            raise
        return _Conn(smtp=smtp, last_used=0.0)

    async def _tls(self) -> ssl.SSLContext | None:
        """One TLS context per adapter: building one loads the CA bundle (~10 ms), too slow per dial."""
        if self._settings.security == "none":
            return None
        if self._tls_context is None:
            self._tls_context = await asyncio.to_thread(_build_tls_context, self._settings.validate_certs)
        return self._tls_context

    async def _helo_name(self) -> str:
        if self._helo is None:
            self._helo = await asyncio.to_thread(_local_fqdn)  # may do DNS: once per process, off the loop
        return self._helo

    async def _quit(self, conn: _Conn) -> None:
        try:
            if conn.smtp.is_connected:
                await conn.smtp.quit(timeout=_RSET_BUDGET_SECONDS)
        except (*_NETWORK_ERRORS, ValueError):
            pass  # closing anyway
        finally:
            conn.smtp.close()

    # -- results -------------------------------------------------------------------------------------

    def _failure_result(self, key: str, failure: _Failed) -> SendResult:
        exc, phase = failure.exc, failure.phase
        if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code >= 0:
            verdict = classify_reply(phase, exc.code, exc.message)
            return self._result(
                key,
                verdict.outcome,
                status=exc.code,
                text=exc.message,
                recipient_level=verdict.recipient_level,
                recipient_rejected=verdict.recipient_rejected,
            )
        detail = _describe(exc)
        if phase is Phase.BODY:
            return self._result(key, Outcome.MAYBE_SENT, message=f"no reply after the body: {detail}")
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return self._result(key, Outcome.TRANSIENT, message=f"{phase.value}: {detail}")
        if phase is Phase.AUTH or (phase is Phase.CONNECT and isinstance(exc, ValueError)):
            # No AUTH offered, no usable mechanism, an invalid HELO name: the configuration is wrong.
            return self._result(key, Outcome.AUTH_CONFIG, message=f"{phase.value}: {detail}")
        if isinstance(exc, (ValueError, UnicodeError)):
            return self._result(key, Outcome.PERMANENT, message=f"message cannot be sent: {detail}")
        return self._result(key, Outcome.TRANSIENT, message=f"{phase.value}: {detail}")

    def _result(
        self,
        key: str,
        outcome: Outcome,
        *,
        status: int | None = None,
        text: str = "",
        message: str = "",
        **fields: Any,
    ) -> SendResult:
        body = message or (f"{status} {text}" if status is not None else text)
        return SendResult(
            key=key,
            outcome=outcome,
            status=status,
            provider_code=enhanced_code(text) if text else None,
            message=truncate(self._scrub(body)),
            **fields,
        )

    def _scrub(self, text: str) -> str:
        password = self._settings.password
        return text.replace(password, "***") if len(password) >= 3 else text


def _with_latency(result: SendResult, started: float) -> SendResult:
    return dataclasses.replace(result, latency_ms=int((time.monotonic() - started) * 1000))


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


async def _greet(smtp: aiosmtplib.SMTP) -> None:
    """EHLO (HELO for old servers) unless connect() already did: it does before an opportunistic STARTTLS,
    and the server's capabilities must be asked again after one."""
    if not smtp.is_ehlo_or_helo_needed:
        return
    try:
        await smtp.ehlo()
    except aiosmtplib.SMTPHeloError:
        if not smtp.is_connected:
            raise
        await smtp.helo()


def _set_nodelay(smtp: aiosmtplib.SMTP) -> None:
    sock = smtp.get_transport_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@functools.cache
def _local_fqdn() -> str:
    return socket.getfqdn()


def _build_tls_context(validate_certs: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if not validate_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _xtext(value: str) -> str:
    """RFC 3461 xtext: printable ASCII except '+' and '=' as is, anything else as +HH."""
    return "".join(
        ch if 33 <= ord(ch) <= 126 and ch not in "+=" else "".join(f"+{b:02X}" for b in ch.encode()) for ch in value
    )
