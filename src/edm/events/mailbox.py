"""The optional bounce mailbox poller (docs/providers.md#bounces-from-smtp-services): fetch DSN/ARF reports (and
replies) from an IMAP or POP3 mailbox and hand each raw message to the caller, which parses and stores it.

    handled = await fetch_reports(config, handle)

`handle(raw)` returns True once the message is safely stored; only then is it removed from the mailbox (POP3
DELE; IMAP `\\Deleted` + expunge when `delete_after`, else `\\Seen`). A message `handle` returns False for stays
where it is and comes back on the next poll; the pipeline's dedupe makes a second delivery harmless.

* IMAP reads `UNSEEN` messages of `folder` with `BODY.PEEK[]`, so reading alone never marks anything seen.
* POP3 has no "seen" flag: it fetches every message in the maildrop, so `delete_after` must be true (otherwise
  the same messages would be fetched forever). Deletions are committed by QUIT.
* If `handle` raises, the messages handled before it are still removed, then the exception propagates.
* The stdlib clients are blocking: every network step runs in a worker thread (`asyncio.to_thread`) with an
  explicit socket timeout. Errors come out as `MailboxError` (`MailboxAuthError` for refused credentials);
  their messages name the host and user, never the password. No database access here.
"""

from __future__ import annotations

import abc
import asyncio
import imaplib
import logging
import poplib
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

Handler = Callable[[bytes], Awaitable[bool]]

_PROTOCOLS = frozenset({"imap", "pop3"})
_SECURITY = frozenset({"tls", "starttls", "none"})
_DEFAULT_PORTS = {
    ("imap", "tls"): 993,
    ("imap", "starttls"): 143,
    ("imap", "none"): 143,
    ("pop3", "tls"): 995,
    ("pop3", "starttls"): 110,
    ("pop3", "none"): 110,
}
_IMAP_ATOM_RE = re.compile(r"[A-Za-z0-9_.\-/]+")
# poplib refuses lines over 2,048 bytes, which non-compliant bounces (one-line HTML) exceed; imaplib allows 1 MB.
poplib._MAXLINE = max(poplib._MAXLINE, 1_000_000)  # type: ignore[attr-defined]


class MailboxError(Exception):
    """The mailbox could not be read: connection, TLS, protocol or server error."""


class MailboxAuthError(MailboxError):
    """The server refused the credentials."""


@dataclass(frozen=True, slots=True)
class MailboxConfig:
    protocol: str  # "imap" | "pop3"
    host: str
    username: str
    password: str = field(repr=False)  # never in repr, logs or error messages
    port: int | None = None  # default by protocol and security: 993/143, 995/110
    security: str = "tls"  # "tls" (implicit), "starttls", "none"
    folder: str = "INBOX"  # IMAP only
    delete_after: bool = False  # IMAP: delete handled messages instead of marking them seen; POP3: required
    timeout_seconds: float = 30.0  # per socket operation (connect, each command)
    max_messages: int = 200  # per poll, oldest first: one poll never runs for ever on a flooded mailbox
    validate_certs: bool = True

    def __post_init__(self) -> None:
        if self.protocol not in _PROTOCOLS:
            raise ValueError(f"mailbox protocol must be one of {sorted(_PROTOCOLS)}, not {self.protocol!r}")
        if self.security not in _SECURITY:
            raise ValueError(f"mailbox security must be one of {sorted(_SECURITY)}, not {self.security!r}")
        if self.protocol == "pop3" and not self.delete_after:
            raise ValueError("POP3 cannot mark messages seen: set delete_after, or use IMAP")
        if not self.host or not self.username:
            raise ValueError("mailbox host and username are required")
        if self.timeout_seconds <= 0 or self.max_messages < 1:
            raise ValueError("mailbox timeout_seconds and max_messages must be positive")

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> MailboxConfig:
        """From a service's inbound settings (`{"protocol": "imap", "host": …, "password": …}`)."""
        known = {name: settings[name] for name in cls.__dataclass_fields__ if name in settings}
        return cls(**known)

    @property
    def effective_port(self) -> int:
        return self.port or _DEFAULT_PORTS[(self.protocol, self.security)]

    @property
    def where(self) -> str:
        """For messages: user, host and port, no secret."""
        return f"{self.protocol}://{self.username}@{self.host}:{self.effective_port}"


async def fetch_reports(config: MailboxConfig, handle: Handler) -> int:
    """Fetch pending messages, hand each to `handle`, remove those it returned True for. Returns that count."""
    session: _Session = _ImapSession(config) if config.protocol == "imap" else _Pop3Session(config)
    await asyncio.to_thread(session.open)
    handled = 0
    try:
        pending = await asyncio.to_thread(session.pending)
        for message_id in pending[: config.max_messages]:
            raw = await asyncio.to_thread(session.fetch, message_id)
            if await handle(raw):
                await asyncio.to_thread(session.mark_handled, message_id)
                handled += 1
    except Exception:
        # Keep what was already stored from coming back: commit the handled ones, then report the failure.
        await asyncio.to_thread(_commit_quietly, session)
        raise
    except BaseException:  # cancelled: drop the connection; a POP3 server then keeps every message
        session.abort()
        raise
    await asyncio.to_thread(session.commit)
    log.info(
        "mailbox.polled",
        extra={"host": config.host, "port": config.effective_port, "handled": handled, "pending": len(pending)},
    )
    return handled


def _commit_quietly(session: _Session) -> None:
    try:
        session.commit()
    except MailboxError:
        session.abort()


class _Session(Protocol):
    """One mailbox connection; every method blocks (run in a thread) and raises only MailboxError."""

    def open(self) -> None: ...
    def pending(self) -> list[str]: ...
    def fetch(self, message_id: str) -> bytes: ...
    def mark_handled(self, message_id: str) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class _Connection(abc.ABC):
    """What opening a mailbox connection shares between the protocols: the steps (connect, with implicit TLS or
    then STARTTLS; log in; get ready to read) and how their failures are told apart. A protocol provides
    each step; `open` runs them and raises only MailboxError (MailboxAuthError when the login is refused)."""

    PROTOCOL_ERRORS: tuple[type[Exception], ...]  # what the stdlib client raises for a server's refusal
    STARTTLS_STEP: str  # the protocol's name for the STARTTLS command, for messages

    def __init__(self, config: MailboxConfig) -> None:
        self.config = config

    def open(self) -> None:
        config = self.config
        failures: tuple[type[BaseException], ...] = (*self.PROTOCOL_ERRORS, OSError)
        step = "connect"
        try:
            self._connect(_tls_context(config) if config.security == "tls" else None)
            if config.security == "starttls":
                step = self.STARTTLS_STEP
                self._starttls(_tls_context(config))
            step = "login"
            self._login()
            step = self._ready_step()
            self._ready()
        except failures as exc:
            self.abort()
            if step == "login" and not isinstance(exc, OSError):
                raise MailboxAuthError(f"{config.where}: login refused: {_text(exc)}") from None
            raise _failure(config, step, exc) from None

    @abc.abstractmethod
    def _connect(self, tls: ssl.SSLContext | None) -> None:
        """Connect, with implicit TLS when `tls` is given."""

    @abc.abstractmethod
    def _starttls(self, tls: ssl.SSLContext) -> None:
        """Upgrade the plain connection to TLS."""

    @abc.abstractmethod
    def _login(self) -> None:
        """Log in with the configured user and password."""

    def _ready_step(self) -> str:
        """The name of the step after the login, for messages."""
        return "ready"

    @abc.abstractmethod
    def _ready(self) -> None:
        """What the protocol does after the login before messages can be listed."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop the connection without committing anything."""


def _tls_context(config: MailboxConfig) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not config.validate_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _failure(config: MailboxConfig, step: str, exc: BaseException) -> MailboxError:
    text = str(exc).replace(config.password, "***") if config.password else str(exc)
    return MailboxError(f"{config.where}: {step} failed: {type(exc).__name__}: {text}")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# -- IMAP ------------------------------------------------------------------------------------------------


class _ImapSession(_Connection):
    PROTOCOL_ERRORS = (imaplib.IMAP4.error,)
    STARTTLS_STEP = "STARTTLS"

    def __init__(self, config: MailboxConfig) -> None:
        super().__init__(config)
        self.conn: imaplib.IMAP4 | None = None
        self.deleted: list[str] = []

    def _connect(self, tls: ssl.SSLContext | None) -> None:
        config = self.config
        if tls is not None:
            self.conn = imaplib.IMAP4_SSL(
                config.host, config.effective_port, ssl_context=tls, timeout=config.timeout_seconds
            )
        else:
            self.conn = imaplib.IMAP4(config.host, config.effective_port, timeout=config.timeout_seconds)

    def _starttls(self, tls: ssl.SSLContext) -> None:
        self._conn().starttls(ssl_context=tls)

    def _login(self) -> None:
        self._conn().login(self.config.username, self.config.password)

    def _ready_step(self) -> str:
        return f"select {self.config.folder!r}"

    def _ready(self) -> None:
        typ, data = self._conn().select(_imap_mailbox(self.config.folder))
        if typ != "OK":
            raise imaplib.IMAP4.error(_text(data[0] if data else typ))

    def pending(self) -> list[str]:
        data = self._uid("SEARCH", "UNSEEN")
        words = _text(data[0]).split() if data and data[0] else []
        return sorted(words, key=int)

    def fetch(self, message_id: str) -> bytes:
        for item in self._uid("FETCH", message_id, "(BODY.PEEK[])"):
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes):
                return item[1]
        raise MailboxError(f"{self.config.where}: message uid {message_id} has no body")

    def mark_handled(self, message_id: str) -> None:
        flags = r"(\Deleted \Seen)" if self.config.delete_after else r"(\Seen)"
        self._uid("STORE", message_id, "+FLAGS.SILENT", flags)
        if self.config.delete_after:
            self.deleted.append(message_id)

    def commit(self) -> None:
        conn = self._conn()
        try:
            if self.deleted:
                if "UIDPLUS" in conn.capabilities:  # expunge only ours, not what another client flagged
                    conn.uid("EXPUNGE", ",".join(self.deleted))
                else:
                    conn.expunge()
            conn.logout()
        except (imaplib.IMAP4.error, OSError) as exc:
            self.abort()
            raise _failure(self.config, "expunge/logout", exc) from None
        self.conn = None

    def abort(self) -> None:
        if self.conn is not None:
            try:
                self.conn.shutdown()
            except OSError:
                pass
            self.conn = None

    def _conn(self) -> imaplib.IMAP4:
        if self.conn is None:
            raise MailboxError(f"{self.config.where}: not connected")
        return self.conn

    def _uid(self, command: str, *args: str) -> list[Any]:
        try:
            typ, data = self._conn().uid(command, *args)
        except (imaplib.IMAP4.error, OSError) as exc:
            self.abort()
            raise _failure(self.config, f"UID {command}", exc) from None
        if typ != "OK":
            raise MailboxError(f"{self.config.where}: UID {command} refused: {_text(data[0] if data else typ)}")
        return list(data)


def _imap_mailbox(name: str) -> str:
    """A mailbox name as an IMAP astring: quoted unless it is a plain atom (imaplib sends it verbatim)."""
    if _IMAP_ATOM_RE.fullmatch(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- POP3 ------------------------------------------------------------------------------------------------


class _Pop3Session(_Connection):
    PROTOCOL_ERRORS = (poplib.error_proto,)
    STARTTLS_STEP = "STLS"

    def __init__(self, config: MailboxConfig) -> None:
        super().__init__(config)
        self.conn: poplib.POP3 | None = None

    def _connect(self, tls: ssl.SSLContext | None) -> None:
        config = self.config
        if tls is not None:
            self.conn = poplib.POP3_SSL(config.host, config.effective_port, context=tls, timeout=config.timeout_seconds)
        else:
            self.conn = poplib.POP3(config.host, config.effective_port, timeout=config.timeout_seconds)

    def _starttls(self, tls: ssl.SSLContext) -> None:
        self._connected().stls(context=tls)

    def _login(self) -> None:
        conn = self._connected()
        conn.user(self.config.username)
        conn.pass_(self.config.password)

    def _ready(self) -> None:
        """Nothing: the maildrop can be listed right after the login."""

    def pending(self) -> list[str]:
        _response, listing, _octets = self._call("LIST", lambda conn: conn.list())
        numbers = [_text(line).split()[0] for line in listing if _text(line).strip()]
        return sorted(numbers, key=int)

    def fetch(self, message_id: str) -> bytes:
        _response, lines, _octets = self._call("RETR", lambda conn: conn.retr(int(message_id)))
        return b"\r\n".join(lines) + b"\r\n"

    def mark_handled(self, message_id: str) -> None:
        self._call("DELE", lambda conn: conn.dele(int(message_id)))

    def commit(self) -> None:
        self._call("QUIT", lambda conn: conn.quit())  # the server deletes the DELEted messages now
        self.conn = None

    def abort(self) -> None:
        if self.conn is not None:
            self.conn.close()  # no QUIT: the server forgets every DELE of this session
            self.conn = None

    def _connected(self) -> poplib.POP3:
        if self.conn is None:
            raise MailboxError(f"{self.config.where}: not connected")
        return self.conn

    def _call(self, step: str, command: Callable[[poplib.POP3], Any]) -> Any:
        conn = self._connected()
        try:
            return command(conn)
        except (poplib.error_proto, OSError) as exc:
            self.abort()
            raise _failure(self.config, step, exc) from None
