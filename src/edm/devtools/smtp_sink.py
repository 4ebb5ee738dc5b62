"""A local SMTP sink on aiosmtpd, for the `make run` demo and for tests. Never for benchmarks (it saturates
at ~2,600 msg/s and would measure itself: docs/performance.md, lesson 1 — use Postfix's `smtp-sink` there).

It runs aiosmtpd's server in its own thread and event loop, so a test's loop (the client) and the sink never
share a loop; every counter it keeps is guarded by one lock.

Typical test use::

    with SmtpSink() as sink:                       # port 0: a free port is picked; see sink.port
        config = ServiceConfig(1, "smtp", "example.com",
                               options={"host": sink.host, "port": sink.port, "security": "none"})
        ...send...
        assert sink.count_by_subtask()["st_1"] == 1
        assert sink.connections_opened <= config.max_concurrency
        assert sink.max_concurrent_transactions <= config.max_concurrency

    async with SmtpSink(require_auth=("user", "secret")) as sink:   # AUTH PLAIN/LOGIN without TLS
        sink.fail_auth = True                     # AUTH → 535 5.7.8
        sink.rcpt_reply = (450, "4.2.0 greylisted")
        sink.reject_addresses["bad@example.org"] = (550, "5.1.1 no such user")
        sink.mail_reply = (421, "4.7.0 Too many messages, slow down")   # 421 also closes the connection
        sink.data_reply = (554, "5.7.1 spam")     # answer the end of DATA (also (250, "Ok: queued as X"))
        sink.data_delay = 2.0                     # sleep before answering the end of DATA
        sink.data_held = True                     # answer no end of DATA until set back to False
        sink.drop_after_data = True               # close without answering: the client sees maybe-sent
        sink.disconnect_all()                     # hang up on every client, like a relay cutting idle ones

    SmtpSink(tls_context=server_ctx) offers STARTTLS (`tls_connections` counts upgrades); SmtpSink(pipelining=False)
    does not advertise PIPELINING (it does by default, like Postfix); SmtpSink(batch_replies=True) writes the
    replies to commands that arrived together in one write, as Postfix does.
    Also: `messages`, `count_by_subtask()`, `wait_for(n)` / `await wait_for_messages(n)`, `connections_opened`
    (sessions that sent EHLO/HELO), `pipelined_mails` (MAILs that came with their RCPT and DATA),
    `connections_open`, `max_concurrent_transactions`, `transaction_starts` ((monotonic, MAIL FROM) pairs),
    `authenticated_users`, `reset_stats()`, `clear()`.

Fault switches are plain attributes read on every command, so they can be flipped while clients are
connected. A message is captured as soon as its DATA is complete — before `data_delay`, `data_held` and
`drop_after_data` hold or hang up — exactly like a real server that committed the mail and then lost the reply:
"maybe sent" messages did arrive.

With `store_dir`, every message is also written as `<time_ns>-<counter>.eml` (atomically: written to a
temp name, then renamed), prefixed with `Return-Path:` and `Delivered-To:` like a local delivery agent
does, so another process (the demo's mailbox page, `edm mailbox`) can list them with `list_stored(store_dir)`
and open one with `read_stored(store_dir, number)`.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, BytesParser
from email.policy import default as default_policy
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

SUBTASK_HEADER = "X-EDM-SubTask-Id"
_HEADER_PARSER = BytesHeaderParser(policy=default_policy)
Reply = tuple[int, str]


# Our own header, one line of ASCII: found with a scan of the header block. Parsing every captured message's headers
# with the email package (~300 µs each) was a sizeable share of the CPU of the tests that send 20,000 mails.
_SUBTASK_LINE = re.compile(
    rb"^" + re.escape(SUBTASK_HEADER.encode()) + rb":[ \t]*([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)",
    re.IGNORECASE | re.MULTILINE,
)


@dataclass(frozen=True, slots=True)
class CapturedMessage:
    envelope_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes  # as received: CRLF line endings, dot-stuffing removed, without the final "."
    received_at: float  # time.time()
    subtask_id: str | None  # the X-EDM-SubTask-Id header

    @property
    def subject(self) -> str | None:
        """The decoded Subject header (parsed when asked)."""
        return _header(_HEADER_PARSER.parsebytes(self.data), "Subject")


def _subtask_id(data: bytes) -> str | None:
    end = data.find(b"\r\n\r\n")
    found = _SUBTASK_LINE.search(data, 0, end if end >= 0 else len(data))
    if found is None:
        return None
    return found.group(1).replace(b"\r", b"").replace(b"\n", b"").decode("ascii", "replace").strip()


@dataclass(slots=True)
class _Stats:
    connections_opened: int = 0
    connections_open: int = 0
    active_transactions: int = 0
    max_concurrent_transactions: int = 0
    tls_connections: int = 0  # connections upgraded with STARTTLS
    pipelined_mails: int = 0  # MAIL commands whose RCPT and DATA had already arrived with them (RFC 2920)
    transaction_starts: list[tuple[float, str]] = field(default_factory=list)
    authenticated_users: list[str] = field(default_factory=list)


class SmtpSink:
    """An in-process SMTP server that records what it receives and can inject faults."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        store_dir: Path | None = None,
        require_auth: tuple[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        pipelining: bool = True,
        batch_replies: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.store_dir = Path(store_dir) if store_dir is not None else None
        self.require_auth = require_auth
        self.tls_context = tls_context  # offered as STARTTLS when given
        # PIPELINING (RFC 2920) is advertised, as Postfix and most relays do; aiosmtpd reads commands in order
        # however they arrive, it only does not say so itself. False: a server the client must not pipeline to.
        self.pipelining = pipelining
        # Like Postfix: replies wait while more of the client's input is already there, and then go out in one
        # write (the replies to a pipelined MAIL, RCPT and DATA arrive together).
        self.batch_replies = batch_replies
        # Fault switches, read on every command (see the module docstring).
        self.fail_auth = False
        self.mail_reply: Reply | None = None
        self.rcpt_reply: Reply | None = None
        self.reject_addresses: dict[str, Reply] = {}
        self.data_reply: Reply | None = None  # answer to the end of DATA instead of "250 OK"
        self.data_delay = 0.0
        self.data_held = False
        self.drop_after_data = False

        self._lock = threading.Condition()
        self._messages: list[CapturedMessage] = []
        self._stats = _Stats()
        self._counter = itertools.count(1)
        self._servers: set[_SinkSMTP] = set()  # greeted connections, for disconnect_all()
        self._controller: _SinkController | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> SmtpSink:
        if self._controller is not None:
            raise RuntimeError("SmtpSink already started")
        if self.store_dir is not None:
            self.store_dir.mkdir(parents=True, exist_ok=True)
        listener = socket.create_server((self.host, self.port))  # port 0: the kernel picks a free one
        self.port = listener.getsockname()[1]
        smtp_kwargs: dict[str, Any] = {"server_hostname": "edm-sink.local", "tls_context": self.tls_context}
        if self.require_auth is not None:
            # AUTH offered without TLS; "auth required" is enforced at MAIL FROM by the handler (aiosmtpd's
            # own auth_required + no TLS only adds warnings).
            smtp_kwargs |= {"authenticator": self._authenticate, "auth_require_tls": False}
        self._controller = _SinkController(self, listener, **smtp_kwargs)
        self._controller.start()
        self.reset_stats()  # the controller's own start-up probe is not a client
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> SmtpSink:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    # -- what was received ---------------------------------------------------------------------------

    @property
    def messages(self) -> list[CapturedMessage]:
        with self._lock:
            return list(self._messages)

    def count_by_subtask(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(m.subtask_id for m in self._messages if m.subtask_id is not None)

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        """Block until at least `count` messages arrived; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self._messages) >= count, timeout)

    async def wait_for_messages(self, count: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self._messages) >= count:
                    return True
            await asyncio.sleep(0.01)
        return False

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    def reset_stats(self) -> None:
        with self._lock:
            open_now = self._stats.connections_open
            self._stats = _Stats(connections_open=open_now)

    @property
    def connections_opened(self) -> int:
        """Client sessions that greeted (EHLO/HELO) since start or reset_stats()."""
        with self._lock:
            return self._stats.connections_opened

    @property
    def connections_open(self) -> int:
        with self._lock:
            return self._stats.connections_open

    @property
    def max_concurrent_transactions(self) -> int:
        """Most transactions in progress at once (MAIL FROM until end of DATA, RSET, QUIT or hang-up)."""
        with self._lock:
            return self._stats.max_concurrent_transactions

    @property
    def transaction_starts(self) -> list[tuple[float, str]]:
        """(time.monotonic(), MAIL FROM address) of every accepted MAIL FROM, for rate checks."""
        with self._lock:
            return list(self._stats.transaction_starts)

    @property
    def transaction_start_times(self) -> list[float]:
        with self._lock:
            return [started for started, _ in self._stats.transaction_starts]

    @property
    def pipelined_mails(self) -> int:
        """MAIL commands that arrived together with their RCPT and DATA, before the MAIL reply was sent."""
        with self._lock:
            return self._stats.pipelined_mails

    @property
    def tls_connections(self) -> int:
        with self._lock:
            return self._stats.tls_connections

    def disconnect_all(self) -> None:
        """Hang up on every client (a relay cutting idle sessions, a restart); returns at once."""
        controller = self._controller
        if controller is None:
            return
        with self._lock:
            servers = list(self._servers)
        for server in servers:
            controller.loop.call_soon_threadsafe(_close, server)

    @property
    def authenticated_users(self) -> list[str]:
        with self._lock:
            return list(self._stats.authenticated_users)

    # -- called from the sink's thread ---------------------------------------------------------------

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert self.require_auth is not None
        user, password = self.require_auth
        ok = (
            not self.fail_auth
            and isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        if ok:
            with self._lock:
                self._stats.authenticated_users.append(user)
        # handled=False: aiosmtpd answers "535 5.7.8 Authentication credentials invalid" itself.
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    def _connection_seen(self, server: _SinkSMTP) -> None:
        if server.counted:
            return  # EHLO again after STARTTLS: same connection
        server.counted = True
        with self._lock:
            self._servers.add(server)
            self._stats.connections_opened += 1
            self._stats.connections_open += 1

    def _connection_gone(self, server: _SinkSMTP) -> None:
        self._end_transaction(server)
        if server.counted:
            server.counted = False
            with self._lock:
                self._servers.discard(server)
                self._stats.connections_open -= 1

    def _begin_transaction(self, server: _SinkSMTP, mail_from: str) -> None:
        if server.in_transaction:
            return
        server.in_transaction = True
        with self._lock:
            stats = self._stats
            stats.active_transactions += 1
            stats.max_concurrent_transactions = max(stats.max_concurrent_transactions, stats.active_transactions)
            stats.transaction_starts.append((time.monotonic(), mail_from))

    def _end_transaction(self, server: _SinkSMTP) -> None:
        if not server.in_transaction:
            return
        server.in_transaction = False
        with self._lock:
            self._stats.active_transactions -= 1

    def _capture(self, envelope: Envelope) -> None:
        data = bytes(envelope.original_content or b"")  # as received, dot-stuffing undone
        message = CapturedMessage(
            envelope_from=str(envelope.mail_from or ""),
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=data,
            received_at=time.time(),
            subtask_id=_subtask_id(data),
        )
        if self.store_dir is not None:
            self._store(message)
        with self._lock:
            self._messages.append(message)
            self._lock.notify_all()

    def _store(self, message: CapturedMessage) -> None:
        assert self.store_dir is not None
        name = f"{time.time_ns()}-{next(self._counter):06d}.eml"
        prefix = (f"Return-Path: <{message.envelope_from}>\r\nDelivered-To: {', '.join(message.rcpt_tos)}\r\n").encode()
        temp = self.store_dir / f".{name}.tmp"
        temp.write_bytes(prefix + message.data)
        os.replace(temp, self.store_dir / name)  # readers never see a half-written file


class _SinkSMTP(SMTP):
    """aiosmtpd's session with the bookkeeping the sink needs per connection."""

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sink: SmtpSink = handler.sink
        self.counted = False
        self.in_transaction = False
        self.held_replies: list[str] = []  # with batch_replies: replies not written yet

    def _create_session(self) -> Session:
        return _SinkSession(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio only sets TCP_NODELAY on sockets whose proto is IPPROTO_TCP, and sockets accepted from
        # a listener made by socket.create_server() have proto 0: without this every multi-line reply
        # (EHLO) stalls ~40 ms on Nagle + delayed ACK.
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.sink._connection_gone(self)
        super().connection_lost(error)

    async def push(self, status: Any) -> None:
        text = status.decode() if isinstance(status, bytes) else str(status)
        if self.sink.batch_replies and _unread_input(self) and not text.startswith("421"):
            self.held_replies.append(text)
            return
        held, self.held_replies = self.held_replies, []
        await super().push("\r\n".join([*held, text]))


class _SinkSession(Session):
    """aiosmtpd logs a deprecation warning on every successful AUTH through this property; keep it quiet."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class _Handler:
    """aiosmtpd hooks. A hook that answers must update the envelope itself (aiosmtpd only does by default)."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self, server: _SinkSMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        self.sink._connection_seen(server)
        if self.sink.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")  # before the last line, "250 HELP"
        return responses

    async def handle_HELO(self, server: _SinkSMTP, session: Session, envelope: Envelope, hostname: str) -> str:
        session.host_name = hostname
        self.sink._connection_seen(server)
        return f"250 {server.hostname}"

    def handle_STARTTLS(self, server: _SinkSMTP, session: Session, envelope: Envelope) -> bool:
        with self.sink._lock:
            self.sink._stats.tls_connections += 1
        return True  # accept any client (no client certificates)

    async def handle_MAIL(
        self, server: _SinkSMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.sink.require_auth is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if self.sink.mail_reply is not None:
            return _fault(server, self.sink.mail_reply)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        self.sink._begin_transaction(server, address)
        if _unread_input(server).startswith(b"RCPT") and b"\nDATA\r\n" in _unread_input(server):
            with self.sink._lock:
                self.sink._stats.pipelined_mails += 1
        return "250 OK"

    async def handle_RCPT(
        self, server: _SinkSMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.sink.reject_addresses.get(address) or self.sink.rcpt_reply
        if reply is not None:
            return _fault(server, reply)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: _SinkSMTP, session: Session, envelope: Envelope) -> str:
        sink = self.sink
        reply = sink.data_reply
        if reply is None or reply[0] < 300:
            sink._capture(envelope)
        if sink.data_delay > 0:
            await asyncio.sleep(sink.data_delay)
        while sink.data_held:
            await asyncio.sleep(0.01)
        if sink.drop_after_data:
            sink._end_transaction(server)
            assert server.transport is not None
            server.transport.close()
            await asyncio.Event().wait()  # connection_lost cancels this hook: no answer is ever sent
        sink._end_transaction(server)
        return _fault(server, reply) if reply is not None else "250 2.0.0 OK"

    async def handle_RSET(self, server: _SinkSMTP, session: Session, envelope: Envelope) -> str:
        self.sink._end_transaction(server)
        return "250 OK"

    async def handle_QUIT(self, server: _SinkSMTP, session: Session, envelope: Envelope) -> str:
        self.sink._end_transaction(server)
        return "221 Bye"


def _fault(server: _SinkSMTP, reply: Reply) -> str:
    code, text = reply
    if code == 421:
        # 421 means "closing the transmission channel": hang up right after the reply is written.
        asyncio.get_running_loop().call_soon(_close, server)
    return f"{code} {text}"


def _unread_input(server: _SinkSMTP) -> bytes:
    """What the client sent that aiosmtpd has not read yet (its stream reader's buffer)."""
    reader = getattr(server, "_reader", None)
    return bytes(getattr(reader, "_buffer", b""))


def _close(server: _SinkSMTP) -> None:
    if server.transport is not None:
        server.transport.close()


class _SinkController(Controller):
    """aiosmtpd's threaded controller, serving on a socket we bound ourselves (so port 0 works)."""

    def __init__(self, sink: SmtpSink, listener: socket.socket, **smtp_kwargs: Any) -> None:
        host, port = listener.getsockname()[:2]
        super().__init__(_Handler(sink), hostname=host, port=port, **smtp_kwargs)
        self._listener = listener

    def factory(self) -> SMTP:
        return _SinkSMTP(self.handler, **self.SMTP_kwargs)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._listener, ssl=self.ssl_context)


def _header(headers: Any, name: str) -> str | None:
    value = headers.get(name)
    return str(value) if value is not None else None


def _stored_paths(store_dir: Path) -> list[Path]:
    """The messages' files, oldest first (names start with the arrival time in nanoseconds)."""
    directory = Path(store_dir)
    return sorted(directory.glob("*.eml")) if directory.is_dir() else []


def _received_at(path: Path) -> float:
    return int(path.name.split("-", 1)[0]) / 1e9


def list_stored(store_dir: Path) -> list[dict[str, Any]]:
    """Messages a sink wrote to `store_dir`, oldest first.

    Each row: number (1 for the oldest: what `read_stored` takes), from, to, subject, subtask_id,
    received_at (epoch seconds), path.
    """
    rows = []
    for number, path in enumerate(_stored_paths(store_dir), start=1):
        with path.open("rb") as handle:
            headers = _HEADER_PARSER.parse(handle)
        return_path = _header(headers, "Return-Path") or ""
        rows.append(
            {
                "number": number,
                "from": return_path.strip().removeprefix("<").removesuffix(">"),
                "to": _header(headers, "Delivered-To") or "",
                "subject": _header(headers, "Subject"),
                "subtask_id": _header(headers, SUBTASK_HEADER),
                "received_at": _received_at(path),
                "path": path,
            }
        )
    return rows


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str | None
    content_type: str
    size: int  # decoded bytes


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One stored message, parsed for reading: what the demo mailbox page and `edm mailbox show` print."""

    number: int
    count: int  # messages in the store when it was read
    received_at: float  # epoch seconds
    headers: list[tuple[str, str]]  # decoded (RFC 2047 words undone), in order, Return-Path first
    subject: str | None
    text: str | None  # the text/plain body, if any
    html: str | None  # the text/html body, if any
    attachments: list[Attachment]
    raw: bytes  # the file as stored: the message as received, after Return-Path and Delivered-To


def read_stored(store_dir: Path, number: int) -> StoredMessage | None:
    """Message `number` (1 = the oldest, as `list_stored` numbers them), or None when there is none."""
    paths = _stored_paths(store_dir)
    if not 1 <= number <= len(paths):
        return None
    path = paths[number - 1]
    raw = path.read_bytes()
    message = BytesParser(policy=default_policy).parsebytes(raw)
    assert isinstance(message, EmailMessage)  # what the default policy builds
    return StoredMessage(
        number=number,
        count=len(paths),
        received_at=_received_at(path),
        headers=[(name, _header_text(message, name, value)) for name, value in message.raw_items()],
        subject=_header(message, "Subject"),
        text=_body(message, "plain"),
        html=_body(message, "html"),
        attachments=[
            Attachment(part.get_filename(), part.get_content_type(), len(_payload(part)))
            for part in message.iter_attachments()
        ],
        raw=raw,
    )


def _header_text(message: EmailMessage, name: str, raw_value: str) -> str:
    """A header's decoded value; the raw text when it is too malformed to decode."""
    try:
        return str(message.policy.header_fetch_parse(name, raw_value))
    except Exception:  # captured mail is arbitrary input: show what arrived rather than fail
        return raw_value


def _body(message: EmailMessage, subtype: str) -> str | None:
    part = message.get_body(preferencelist=(subtype,))
    if part is None:
        return None
    try:
        return str(part.get_content())
    except (LookupError, ValueError):  # an unknown charset or a broken encoding: decode what is there
        return _payload(part).decode("utf-8", "replace")


def _payload(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def format_received(epoch: float) -> str:
    """A stored message's arrival time for people: `2025-01-31 14:05:09 UTC`."""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
