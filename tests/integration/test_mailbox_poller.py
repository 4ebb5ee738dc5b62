"""The bounce mailbox poller against tiny real POP3 and IMAP servers on loopback (test doubles of an external
mail server, written here: they speak just enough of RFC 1939 / RFC 3501 for the stdlib clients)."""

from __future__ import annotations

import shlex
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from edm.events.mailbox import MailboxAuthError, MailboxConfig, MailboxError, fetch_reports
from edm.providers.dsn import parse_report
from edm.vocabulary.events import EventType, NormalizedEvent
from tests.unit.providers.support import sample_bytes

USER, PASSWORD = "bounces@example.com", "pa55-w0rd-secret"


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


HARD = crlf(sample_bytes("smtp", "dsn_hard_bounce_rfc3464.eml"))
DELAYED = crlf(sample_bytes("smtp", "dsn_delayed_rfc3464.eml"))
ARF = crlf(sample_bytes("smtp", "arf_complaint_rfc5965.eml"))
DOTTED = b"From: a@example.org\r\nSubject: dots\r\n\r\n.a line starting with a dot\r\n..two\r\n"


@dataclass
class Mailbox:
    """What the test server holds; shared with its handler threads."""

    messages: list[bytes]
    user: str = USER
    password: str = PASSWORD
    uidplus: bool = True
    seen: set[int] = field(default_factory=set)  # IMAP: indices with \Seen
    deleted: set[int] = field(default_factory=set)  # IMAP: indices with \Deleted, not yet expunged
    commands: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    mailbox: Mailbox


@contextmanager
def serving(handler: type[socketserver.StreamRequestHandler], mailbox: Mailbox) -> Iterator[int]:
    server = _Server(("127.0.0.1", 0), handler)
    server.mailbox = mailbox
    # A short poll interval: shutdown() waits for one, and the default 0.5 s would dominate every test.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def send(self, *lines: str | bytes) -> None:
        self.wfile.write(b"".join((line.encode() if isinstance(line, str) else line) + b"\r\n" for line in lines))


class Pop3Handler(_Handler):
    """RFC 1939 subset: USER/PASS, STAT, LIST, RETR, DELE, NOOP, RSET, QUIT. DELEs apply only on QUIT."""

    def handle(self) -> None:
        box = self.server.mailbox
        self.send("+OK test POP3 ready")
        user, authed, marked = None, False, set[int]()
        while line := self.rfile.readline():
            verb, _, arg = line.decode().strip().partition(" ")
            verb = verb.upper()
            box.commands.append(verb)
            if verb == "USER":
                user = arg
                self.send("+OK")
            elif verb == "PASS":
                authed = (user, arg) == (box.user, box.password)
                self.send("+OK logged in" if authed else "-ERR [AUTH] invalid user name or password")
            elif not authed and verb != "QUIT":
                self.send("-ERR authenticate first")
            elif verb == "LIST":
                self.send(
                    f"+OK {len(box.messages)} messages", *(f"{i + 1} {len(m)}" for i, m in enumerate(box.messages)), "."
                )
            elif verb == "STAT":
                self.send(f"+OK {len(box.messages)} {sum(map(len, box.messages))}")
            elif verb == "RETR":
                message = box.messages[int(arg) - 1]
                lines = [b"." + x if x.startswith(b".") else x for x in message.removesuffix(b"\r\n").split(b"\r\n")]
                self.send(f"+OK {len(message)} octets", *lines, ".")
            elif verb == "DELE":
                marked.add(int(arg) - 1)
                self.send("+OK marked")
            elif verb == "QUIT":
                with box.lock:  # the UPDATE state: only now are the DELEted messages removed
                    box.messages[:] = [m for i, m in enumerate(box.messages) if i not in marked]
                self.send("+OK bye")
                return
            else:
                self.send("+OK")


class ImapHandler(_Handler):
    """RFC 3501 subset for imaplib: CAPABILITY, LOGIN, SELECT, UID SEARCH/FETCH/STORE/EXPUNGE, EXPUNGE, LOGOUT.
    UIDs are message index + 1 and stay stable because expunged messages are blanked, not removed."""

    def handle(self) -> None:
        box = self.server.mailbox
        self.send("* OK [CAPABILITY IMAP4rev1] test IMAP ready")
        authed = False
        while line := self.rfile.readline():
            tag, _, rest = line.decode().strip().partition(" ")
            command, _, args = rest.partition(" ")
            command = command.upper()
            box.commands.append(f"{command} {args}".strip())
            if command == "CAPABILITY":
                self.send("* CAPABILITY IMAP4rev1" + (" UIDPLUS" if box.uidplus else ""), f"{tag} OK done")
            elif command == "LOGIN":
                authed = shlex.split(args) == [box.user, box.password]
                self.send(f"{tag} OK logged in" if authed else f"{tag} NO [AUTHENTICATIONFAILED] Invalid credentials")
            elif not authed and command != "LOGOUT":
                self.send(f"{tag} NO authenticate first")
            elif command == "SELECT":
                self.send(f"* {len(box.messages)} EXISTS", r"* FLAGS (\Seen \Deleted)", f"{tag} OK [READ-WRITE] ok")
            elif command == "UID":
                self._uid(tag, args, box)
            elif command == "EXPUNGE":
                self._expunge(box, set(box.deleted))
                self.send(f"{tag} OK expunged")
            elif command == "LOGOUT":
                self.send("* BYE", f"{tag} OK bye")
                return
            else:
                self.send(f"{tag} BAD unknown command")

    def _uid(self, tag: str, args: str, box: Mailbox) -> None:
        sub, _, rest = args.partition(" ")
        sub = sub.upper()
        live = [i for i, m in enumerate(box.messages) if m]
        if sub == "SEARCH":
            unseen = [str(i + 1) for i in live if i not in box.seen]
            self.send("* SEARCH " + " ".join(unseen) if unseen else "* SEARCH", f"{tag} OK search done")
        elif sub == "FETCH":
            index = int(rest.split()[0]) - 1
            body = box.messages[index]
            self.send(f"* {live.index(index) + 1} FETCH (UID {index + 1} BODY[] {{{len(body)}}}")
            self.wfile.write(body + b")\r\n")
            self.send(f"{tag} OK fetch done")
        elif sub == "STORE":
            uid, _, flags = rest.partition(" ")
            with box.lock:
                if r"\Seen" in flags:
                    box.seen.add(int(uid) - 1)
                if r"\Deleted" in flags:
                    box.deleted.add(int(uid) - 1)
            self.send(f"{tag} OK store done")
        elif sub == "EXPUNGE":
            self._expunge(box, {int(uid) - 1 for uid in rest.split(",")} & box.deleted)
            self.send(f"{tag} OK expunged")
        else:
            self.send(f"{tag} BAD unknown UID command")

    @staticmethod
    def _expunge(box: Mailbox, indices: set[int]) -> None:
        with box.lock:
            for index in indices:
                box.messages[index] = b""
            box.deleted -= indices


def pop3_config(port: int, **overrides: Any) -> MailboxConfig:
    settings: dict[str, Any] = {
        "protocol": "pop3",
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "username": USER,
        "password": PASSWORD,
        "delete_after": True,
        "timeout_seconds": 2.0,
    }
    return MailboxConfig(**{**settings, **overrides})


def imap_config(port: int, **overrides: Any) -> MailboxConfig:
    return pop3_config(port, **{"protocol": "imap", "delete_after": False, **overrides})


class Collector:
    """The caller's handler: stores (here: keeps) what it accepts, refuses what `refuse` matches."""

    def __init__(self, refuse: bytes | None = None, fail_on: bytes | None = None) -> None:
        self.received: list[bytes] = []
        self.refuse, self.fail_on = refuse, fail_on

    async def __call__(self, raw: bytes) -> bool:
        self.received.append(raw)
        if self.fail_on is not None and self.fail_on in raw:
            raise RuntimeError("database unavailable")
        return self.refuse is None or self.refuse not in raw


# -- POP3 ------------------------------------------------------------------------------------------------


async def test_pop3_handled_messages_are_deleted_and_unhandled_ones_kept() -> None:
    box = Mailbox([HARD, DELAYED, DOTTED])
    collector = Collector(refuse=b"Delayed Mail")
    with serving(Pop3Handler, box) as port:
        handled = await fetch_reports(pop3_config(port), collector)
    assert handled == 2
    assert collector.received == [HARD, DELAYED, DOTTED]  # byte for byte, dot-stuffing undone
    assert box.messages == [DELAYED]
    assert box.commands[-1] == "QUIT"


async def test_pop3_fetched_reports_parse_to_their_events() -> None:
    box = Mailbox([HARD, ARF])
    kinds: list[EventType] = []

    async def store(raw: bytes) -> bool:
        kinds.extend(e.event_type for e in parse_report(raw).items if isinstance(e, NormalizedEvent))
        return True

    with serving(Pop3Handler, box) as port:
        assert await fetch_reports(pop3_config(port), store) == 2
    assert kinds == [EventType.HARD_BOUNCED, EventType.COMPLAINED] and box.messages == []


async def test_pop3_bad_credentials_give_a_clear_auth_error_without_the_password() -> None:
    box = Mailbox([HARD])
    with serving(Pop3Handler, box) as port, pytest.raises(MailboxAuthError) as caught:
        await fetch_reports(pop3_config(port, password="wrong-password"), Collector())
    message = str(caught.value)
    assert "login refused" in message and USER in message and f"127.0.0.1:{port}" in message
    assert "wrong-password" not in message and "RETR" not in box.commands and box.messages == [HARD]


async def test_pop3_handler_failure_still_deletes_what_was_handled_before_and_propagates() -> None:
    box = Mailbox([HARD, DELAYED, ARF])
    with serving(Pop3Handler, box) as port, pytest.raises(RuntimeError, match="database unavailable"):
        await fetch_reports(pop3_config(port), Collector(fail_on=b"Delayed Mail"))
    assert box.messages == [DELAYED, ARF]


async def test_pop3_one_poll_takes_at_most_max_messages_oldest_first() -> None:
    box = Mailbox([HARD, DELAYED, ARF])
    collector = Collector()
    with serving(Pop3Handler, box) as port:
        assert await fetch_reports(pop3_config(port, max_messages=2), collector) == 2
    assert collector.received == [HARD, DELAYED] and box.messages == [ARF]


# -- IMAP ------------------------------------------------------------------------------------------------


async def test_imap_handled_messages_are_deleted_and_expunged_unhandled_ones_stay_unseen() -> None:
    box = Mailbox([HARD, DELAYED, ARF])
    collector = Collector(refuse=b"Delayed Mail")
    with serving(ImapHandler, box) as port:
        handled = await fetch_reports(imap_config(port, delete_after=True), collector)
    assert handled == 2 and collector.received == [HARD, DELAYED, ARF]
    assert box.messages == [b"", DELAYED, b""] and box.seen == {0, 2}
    assert "UID EXPUNGE 1,3" in box.commands  # UIDPLUS: only our own deletions are expunged
    assert all("BODY.PEEK[]" in c for c in box.commands if c.startswith("UID FETCH"))


async def test_imap_without_delete_marks_handled_seen_so_the_next_poll_skips_them() -> None:
    box = Mailbox([HARD, DELAYED])
    with serving(ImapHandler, box) as port:
        assert await fetch_reports(imap_config(port), Collector(refuse=b"Delayed Mail")) == 1
        again = Collector()
        assert await fetch_reports(imap_config(port), again) == 1
    assert again.received == [DELAYED]  # only the one refused the first time comes back
    assert box.messages == [HARD, DELAYED] and box.seen == {0, 1} and not box.deleted


async def test_imap_without_uidplus_expunges_the_folder() -> None:
    box = Mailbox([HARD], uidplus=False)
    with serving(ImapHandler, box) as port:
        assert await fetch_reports(imap_config(port, delete_after=True), Collector()) == 1
    assert box.messages == [b""] and "EXPUNGE" in box.commands


async def test_imap_bad_credentials_give_a_clear_auth_error() -> None:
    box = Mailbox([HARD])
    with serving(ImapHandler, box) as port, pytest.raises(MailboxAuthError, match="login refused") as caught:
        await fetch_reports(imap_config(port, password="nope-nope"), Collector())
    assert "nope-nope" not in str(caught.value) and box.seen == set()


# -- connection failures and configuration ---------------------------------------------------------------


async def test_connection_refused_is_a_mailbox_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(MailboxError, match="connect failed"):
        await fetch_reports(pop3_config(port), Collector())


async def test_a_server_that_never_greets_times_out_after_timeout_seconds() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the handshake completes in the backlog; nobody ever answers
        started = time.monotonic()
        with pytest.raises(MailboxError, match="connect failed"):
            await fetch_reports(imap_config(silent.getsockname()[1], timeout_seconds=0.3), Collector())
    assert time.monotonic() - started < 2.0


def test_config_hides_the_password_and_refuses_pop3_without_delete() -> None:
    config = MailboxConfig.from_settings(
        {"protocol": "imap", "host": "mail.example.com", "username": USER, "password": PASSWORD, "unknown_key": 1}
    )
    assert PASSWORD not in repr(config) and config.effective_port == 993 and config.folder == "INBOX"
    with pytest.raises(ValueError, match="POP3 cannot mark messages seen"):
        MailboxConfig(protocol="pop3", host="h", username="u", password="p")
    with pytest.raises(ValueError, match="protocol"):
        MailboxConfig(protocol="smtp", host="h", username="u", password="p")
