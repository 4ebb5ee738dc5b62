"""SMTP bounce and complaint reports (docs/events.md#smtp-bounce-and-complaint-reports): DSN (RFC 3464), ARF (RFC 5965)
and the free-text bounces many MTAs still send, parsed into normalized events. Pure: no database, no network.

`parse_report(raw, envelope_to=None)` takes the raw MIME bytes (from the DSN endpoint or the mailbox poller)
and returns one `NormalizedEvent` per recipient block:

    delivery-status   Action failed + 5.x.x        -> hard_bounced (5.2.2 mailbox full, 5.4.7 expired -> soft)
                      Action failed + 4.x.x        -> soft_bounced (the MTA gave up retrying: final, not a delay)
                      Action delayed               -> deferred
                      delivered/relayed/expanded   -> delivered
    feedback-report   Feedback-Type abuse or fraud -> complained; any other type (not-spam, virus, other,
                                                      auth-failure) -> unknown (never a complaint: a complaint
                                                      suppresses the address globally)
    free-text bounce  the same table, from the first status code and address found in the body
    anything else     one `unknown` event without our id: the pipeline stores it unmatched for the admin view

Correlation to our SubTask (`NormalizedEvent.subtask_id`, `details["matched_by"]`), best first:

    "verp"            our VERP address `b+<key>@<bounce domain>`: the address the report was delivered to
                      (`envelope_to`, then Delivered-To / X-Original-To / To), then the reported envelope
                      sender (ARF Original-Mail-From, Postfix X-Postfix-Sender, the returned Return-Path)
    "envelope_id"     the DSN's Original-Envelope-Id (our ENVID, RFC 3461 xtext)
    "subtask_header"  X-EDM-SubTask-Id in the returned headers (text/rfc822-headers or message/rfc822)
    "message_id"      our Message-ID `<key@domain>` (or `<key.anything@domain>`) in the returned headers

The key found is passed on as received; the pipeline validates it. `provider_message_id` is the relay's queue
id (`X-Postfix-Queue-ID`) when the report names one: it equals the id our SMTP adapter read from the relay's
"250 queued as …" reply, so a report without any of our ids can still be looked up.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email
import email.policy
import email.utils
import quopri
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.parser import HeaderParser
from typing import Any, ClassVar

from edm.providers.webhook import (
    MalformedPayload,
    ParsedPayload,
    VerifyContext,
    WebhookRequest,
    WebhookTarget,
    basic_or_token_matches,
    text_or_none,
)
from edm.vocabulary.events import BounceClass, EventType, NormalizedEvent

VERP_PREFIX = "b+"
# Our keys are SubTask public ids (UUIDs); test fixtures use "st_…". No "@", "+", "<", dots or spaces, so a
# key survives a local part, an xtext ENVID and a Message-ID left part unchanged.
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_DOMAIN_RE = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_ADDRESS_RE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
# "550 5.1.1 …", "550-5.1.1 …", "421 4.4.1 …": the reply code and the enhanced status after it.
_REPLY_RE = re.compile(r"(?<![\d.])([245]\d\d)(?:[ -]+([245]\.\d{1,3}\.\d{1,3}))?(?![\d.])")
_ANY_REPLY_RE = re.compile(r"(?<![\d.])([45]\d\d)(?:[ -]+([45]\.\d{1,3}\.\d{1,3}))?(?![\d.])")
_STATUS_RE = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d.])")
_XTEXT_RE = re.compile(r"\+([0-9A-Fa-f]{2})")
_RETURNED_SUBTASK_RE = re.compile(r"^X-EDM-SubTask-Id:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
_RETURNED_MESSAGE_ID_RE = re.compile(r"^Message-ID:[ \t]*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)
# Free-text bounces: who sends them and how they are titled (Exim, qmail, Sendmail, Exchange, Gmail…).
_DAEMON_RE = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|mdaemon)@", re.IGNORECASE)
_BOUNCE_SUBJECT_RE = re.compile(
    r"undeliver|returned mail|failure notice|delivery (status|failure|failed|has failed|notification|problem)"
    r"|mail delivery (failed|system)|non-?delivery|could not be delivered|delayed mail|delivery delayed",
    re.IGNORECASE,
)
_DELAY_TEXT_RE = re.compile(
    r"\bdelay|will (be )?retr|still (trying|being retried)|not yet been delivered|will keep trying", re.IGNORECASE
)
_DELIVERED_ACTIONS = frozenset({"delivered", "relayed", "expanded"})
_COMPLAINT_TYPES = frozenset({"abuse", "fraud"})
_RECEIVING_HEADERS = ("Delivered-To", "X-Original-To", "To")  # where the report was delivered, best first
_FREE_TEXT_LIMIT = 64_000  # characters of body text searched in a free-text bounce


# -- VERP ---------------------------------------------------------------------------------------------------


def verp_address(key: str, bounce_domain: str) -> str:
    """The envelope sender that brings a bounce of this message back with our key: `b+<key>@<bounce domain>`."""
    if not _KEY_RE.fullmatch(key):
        raise ValueError(f"key {key!r} cannot be used in a VERP address")
    return f"{VERP_PREFIX}{key}@{bounce_domain_or_error(bounce_domain)}"


def bounce_domain_or_error(bounce_domain: str) -> str:
    """The bounce domain, normalized (lower case, ASCII/IDNA form), or ValueError for a configuration typo."""
    domain = bounce_domain.strip().lower()
    if not _DOMAIN_RE.fullmatch(domain) or ".." in domain:
        raise ValueError(f"bounce domain {bounce_domain!r} is not a valid domain")
    return domain


def key_from_verp(address: str) -> str | None:
    """The key of one of our VERP addresses (`b+<key>@…`, also `<…>` or `rfc822; …`), else None."""
    local, at, _domain = _bare_address(address).rpartition("@")
    if not at or local[: len(VERP_PREFIX)].lower() != VERP_PREFIX:
        return None
    key = local[len(VERP_PREFIX) :]
    return key if _KEY_RE.fullmatch(key) else None


def _bare_address(value: str) -> str:
    """`rfc822; <a@b>` / `Name <a@b>` / `a@b` -> `a@b`."""
    text = value.strip()
    kind, semicolon, rest = text.partition(";")
    if semicolon and "@" not in kind:
        text = rest.strip()
    if "<" in text and ">" in text:
        text = text[text.rindex("<") + 1 : text.rindex(">")]
    return text.strip()


# -- entry point --------------------------------------------------------------------------------------------


def parse_report(raw: bytes, envelope_to: str | None = None) -> ParsedPayload:
    """Normalized events of one bounce/complaint report (see the module docstring). `envelope_to` is the
    address the report was delivered to (RCPT TO / Delivered-To / X-Original-To), when the caller knows it.
    Raises MalformedPayload only for an empty body; anything else parses to at least one event."""
    if not raw.strip():
        raise MalformedPayload("empty message")
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)  # policy.default always builds EmailMessage
    report = _Report.of(message, raw, envelope_to)
    events = _report_events(report)
    return ParsedPayload(items=list(events))


def _report_events(report: _Report) -> list[NormalizedEvent]:
    message = report.message
    if message.get_content_type() == "multipart/report":
        report_type = str(message.get_param("report-type", "") or "").lower()
        if report_type == "delivery-status":
            events = _dsn_events(report)
            if events:
                return events
        elif report_type == "feedback-report":
            events = _arf_events(report)
            if events:
                return events
    if _looks_like_bounce(report):
        return [_free_text_event(report)]
    return [_not_a_report_event(report)]


# -- the report as a whole ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Match:
    key: str
    matched_by: str  # verp | envelope_id | subtask_header | message_id
    source: str  # the header or argument it came from


@dataclass(slots=True)
class _Report:
    """What every recipient block of one report shares: the message, its subject/sender/date, our key."""

    message: EmailMessage
    size: int
    envelope_to: str | None
    subject: str | None
    sender: str | None
    date: dt.datetime | None
    message_id: str | None
    returned: list[Message]  # header blocks of the returned original message

    @classmethod
    def of(cls, message: EmailMessage, raw: bytes, envelope_to: str | None) -> _Report:
        return cls(
            message=message,
            size=len(raw),
            envelope_to=envelope_to,
            subject=_first(message, "Subject"),
            sender=_first(message, "From"),
            date=_date(_first(message, "Date")),
            message_id=_first(message, "Message-ID"),
            returned=list(_returned_headers(message)),
        )

    def summary(self) -> dict[str, Any]:
        return {"subject": self.subject, "from": self.sender}

    def correlate(
        self, *, envelope_id: str | None = None, reported_senders: Iterable[tuple[str, str]] = (), body_text: str = ""
    ) -> _Match | None:
        """Our key for this report, best source first (module docstring)."""
        return (
            self._by_verp(reported_senders)
            or _by_envelope_id(envelope_id)
            or self._by_returned_headers()
            or _by_returned_text(body_text)
        )

    def _by_verp(self, reported_senders: Iterable[tuple[str, str]]) -> _Match | None:
        candidates: list[tuple[str, str]] = []
        if self.envelope_to:
            candidates.append(("envelope_to", self.envelope_to))
        for name in _RECEIVING_HEADERS:
            candidates += [(name, address) for _, address in email.utils.getaddresses(_values(self.message, name))]
        candidates += list(reported_senders)
        candidates += [
            ("returned Return-Path", value) for block in self.returned for value in _values(block, "Return-Path")
        ]
        for source, address in candidates:
            key = key_from_verp(address)
            if key:
                return _Match(key, "verp", source)
        return None

    def _by_returned_headers(self) -> _Match | None:
        for block in self.returned:
            for value in _values(block, "X-EDM-SubTask-Id"):
                if _KEY_RE.fullmatch(value):
                    return _Match(value, "subtask_header", "X-EDM-SubTask-Id")
        for block in self.returned:
            for value in _values(block, "Message-ID"):
                key = _key_from_message_id(value)
                if key:
                    return _Match(key, "message_id", "Message-ID")
        return None


def _by_envelope_id(envelope_id: str | None) -> _Match | None:
    if not envelope_id:
        return None
    decoded = _XTEXT_RE.sub(lambda m: chr(int(m.group(1), 16)), envelope_id.strip())
    return _Match(decoded, "envelope_id", "Original-Envelope-Id") if _KEY_RE.fullmatch(decoded) else None


def _by_returned_text(text: str) -> _Match | None:
    """A free-text bounce quoting the original headers in its body (qmail, old Exchange)."""
    if not text:
        return None
    found = _RETURNED_SUBTASK_RE.search(text)
    if found and _KEY_RE.fullmatch(found.group(1)):
        return _Match(found.group(1), "subtask_header", "body text")
    found = _RETURNED_MESSAGE_ID_RE.search(text)
    key = _key_from_message_id(found.group(1)) if found else None
    return _Match(key, "message_id", "body text") if key else None


def _key_from_message_id(value: str) -> str | None:
    """`<key@domain>` (our composer) or `<key.random@domain>` -> key."""
    local, at, _domain = _bare_address(value).partition("@")
    key = local.split(".", 1)[0]
    return key if at and _KEY_RE.fullmatch(key) else None


def _returned_headers(message: EmailMessage) -> Iterator[Message]:
    """Header blocks of the original message a report returns: text/rfc822-headers or message/rfc822."""
    for part in message.walk():
        content_type = part.get_content_type()
        if content_type in ("text/rfc822-headers", "message/rfc822-headers"):
            text = part_text(part)
            if text:
                yield HeaderParser(policy=email.policy.default).parsestr(text, headersonly=True)
        elif content_type in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                yield payload[0]


# -- delivery status (RFC 3464) -----------------------------------------------------------------------------


def _dsn_events(report: _Report) -> list[NormalizedEvent]:
    blocks = _status_blocks(report.message)
    if len(blocks) < 2:  # no per-recipient block: not a usable DSN, try the free-text path
        return []
    per_message, recipients = blocks[0], blocks[1:]
    match = report.correlate(
        envelope_id=_first(per_message, "Original-Envelope-Id"),
        reported_senders=[("X-Postfix-Sender", v) for v in _values(per_message, "X-Postfix-Sender")],
    )
    queue_id = _first(per_message, "X-Postfix-Queue-ID")
    return [_dsn_event(report, per_message, block, index, match, queue_id) for index, block in enumerate(recipients)]


def _status_blocks(message: EmailMessage) -> list[Message]:
    """The header blocks of the message/delivery-status part: [per-message, per-recipient…]."""
    for part in message.walk():
        if part.get_content_type() not in ("message/delivery-status", "message/global-delivery-status"):
            continue
        return _header_blocks(part)
    return []


def _header_blocks(part: Message) -> list[Message]:
    """A message/delivery-status or message/feedback-report part as its non-empty header blocks."""
    payload = part.get_payload()
    blocks = [block for block in payload if isinstance(block, Message)] if isinstance(payload, list) else []
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding in ("base64", "quoted-printable"):
        # Some MTAs encode the part; the stdlib then reads the encoded text as one header-less block.
        encoded = "".join(block.as_string() for block in blocks) if blocks else str(payload)
        try:
            decoded = base64.b64decode(encoded) if encoding == "base64" else quopri.decodestring(encoded.encode())
        except (binascii.Error, ValueError):
            return []  # undecodable: the free-text fallback still reads the human-readable part
        return _split_blocks(decoded.decode("utf-8", errors="replace"))
    if blocks:
        return [block for block in blocks if len(block)]
    return _split_blocks(part_text(part))


def _split_blocks(text: str) -> list[Message]:
    parser = HeaderParser(policy=email.policy.default)
    chunks = re.split(r"\r?\n[ \t]*\r?\n", text.strip())
    return [block for block in (parser.parsestr(chunk + "\n") for chunk in chunks if chunk.strip()) if len(block)]


def _dsn_event(
    report: _Report, per_message: Message, block: Message, index: int, match: _Match | None, queue_id: str | None
) -> NormalizedEvent:
    action = (_first(block, "Action") or "").lower()
    diagnostic = _Diagnostic.parse(_first(block, "Diagnostic-Code"))
    status = _status(_first(block, "Status")) or diagnostic.enhanced
    event_type, bounce_class = classify(action, status, diagnostic.smtp_code)
    recipient = _recipient(block)
    occurred_at = _date(_first(block, "Last-Attempt-Date")) or report.date or _date(_first(per_message, "Arrival-Date"))
    details: dict[str, Any] = {"report_type": "delivery-status", "action": action or None}
    details.update(_match_details(match))
    for name, key in (
        ("Remote-MTA", "remote_mta"),
        ("Reporting-MTA", "reporting_mta"),
        ("Will-Retry-Until", "will_retry_until"),
    ):
        value = _first(block, name) or _first(per_message, name)
        if value:
            details[key] = value
    return NormalizedEvent(
        event_type=event_type,
        provider_event=f"dsn:{action or 'unknown'}",
        raw={**report.summary(), "per_message": _fields(per_message), "per_recipient": _fields(block)},
        occurred_at=occurred_at,
        subtask_id=match.key if match else None,
        provider_message_id=queue_id,
        provider_event_id=_event_id(report, recipient, index),
        recipient=recipient,
        bounce_class=bounce_class,
        smtp_code=diagnostic.smtp_code,
        enhanced_code=status,
        reason=diagnostic.reason,
        details=details,
    )


def classify(action: str, status: str | None, smtp_code: int | None = None) -> tuple[EventType, BounceClass | None]:
    """Event type and bounce class of one recipient: the DSN Action, then the status class
    (docs/events.md#smtp-bounce-and-complaint-reports)."""
    klass = status[0] if status else (str(smtp_code)[0] if smtp_code else "")
    if action in _DELIVERED_ACTIONS or (not action and klass == "2"):
        return EventType.DELIVERED, None
    if action == "delayed" or (not action and klass == "4"):
        return EventType.DEFERRED, None
    if not (action == "failed" or (not action and klass == "5")):
        return EventType.UNKNOWN, None  # an action RFC 3464 does not define
    if klass == "4" or (status and status[1:] in (".2.2", ".4.7")):
        # 4.x.x on a *failed* action means the MTA stopped retrying; 5.2.2 (mailbox full) and 5.4.7 (delivery
        # time expired) are temporary conditions by nature: final temporary failures, not bad addresses.
        return EventType.SOFT_BOUNCED, BounceClass.SOFT
    if klass == "5":
        return EventType.HARD_BOUNCED, _permanent_class(status)
    return EventType.HARD_BOUNCED, BounceClass.UNDETERMINED  # "failed" without any code


def _permanent_class(status: str | None) -> BounceClass:
    """5.7.x (policy, authentication, reputation), 5.6.x (content) and 5.3.4 (too big) refuse the message, not
    the address: `block`, which never suppresses the recipient (docs/events.md#applying-events). Everything else is
    the address."""
    if status and (status[1:4] in (".7.", ".6.") or status[1:] == ".3.4"):
        return BounceClass.BLOCK
    return BounceClass.HARD


@dataclass(frozen=True, slots=True)
class _Diagnostic:
    smtp_code: int | None = None
    enhanced: str | None = None
    reason: str | None = None

    @classmethod
    def parse(cls, value: str | None) -> _Diagnostic:
        """`smtp; 550 5.1.1 <a@b>: User unknown` -> (550, "5.1.1", "550 5.1.1 <a@b>: User unknown")."""
        if not value:
            return cls()
        kind, semicolon, text = value.partition(";")
        text = text.strip() if semicolon else value.strip()
        if not semicolon or kind.strip().lower() == "smtp":
            found = _REPLY_RE.match(text)  # "550 5.1.1 …": the reply is the text itself
        else:
            found = _ANY_REPLY_RE.search(text)  # "X-Postfix; host x said: 550 5.1.1 …"
        enhanced = (found.group(2) if found else None) or _status(text)
        return cls(int(found.group(1)) if found else None, enhanced, text_or_none(text))


def _status(value: str | None) -> str | None:
    found = _STATUS_RE.search(value) if value else None
    return found.group(1) if found else None


def _recipient(block: Message) -> str | None:
    """The address we sent to: Original-Recipient is our ORCPT, Final-Recipient may be an alias it was
    forwarded to (suppressing that one would be wrong); either may carry an `rfc822;` type prefix."""
    for name in ("Original-Recipient", "Final-Recipient"):
        address = _bare_address(_first(block, name) or "")
        if "@" in address:
            return address
    return None


def _event_id(report: _Report, recipient: str | None, index: int) -> str | None:
    """The same report fetched twice (mailbox poll retried, endpoint retried) dedupes on this."""
    if not report.message_id:
        return None
    return f"{report.message_id}#{(recipient or str(index)).lower()}"


def _match_details(match: _Match | None) -> dict[str, Any]:
    return {"matched_by": match.matched_by, "match_source": match.source} if match else {"matched_by": None}


# -- feedback reports (ARF, RFC 5965) -----------------------------------------------------------------------


def _arf_events(report: _Report) -> list[NormalizedEvent]:
    feedback = next(
        (part for part in report.message.walk() if part.get_content_type() == "message/feedback-report"), None
    )
    if feedback is None:
        return []
    blocks = _header_blocks(feedback)
    if not blocks:
        return []
    fields = blocks[0]
    feedback_type = (_first(fields, "Feedback-Type") or "").lower()
    match = report.correlate(
        reported_senders=[("Original-Mail-From", v) for v in _values(fields, "Original-Mail-From")],
    )
    recipients: list[str | None] = [_bare_address(v) for v in _values(fields, "Original-Rcpt-To")]
    recipients = recipients or [_returned_to(report)]
    return [
        _arf_event(report, fields, feedback_type, recipient, index, match) for index, recipient in enumerate(recipients)
    ]


def _returned_to(report: _Report) -> str | None:
    for block in report.returned:
        for value in _values(block, "To"):
            address = _bare_address(value)
            if "@" in address:
                return address
    return None


def _arf_event(
    report: _Report, fields: Message, feedback_type: str, recipient: str | None, index: int, match: _Match | None
) -> NormalizedEvent:
    event_type = EventType.COMPLAINED if feedback_type in _COMPLAINT_TYPES else EventType.UNKNOWN
    details: dict[str, Any] = {"report_type": "feedback-report", "feedback_type": feedback_type or None}
    details.update(_match_details(match))
    for name, key in (("Source-IP", "source_ip"), ("User-Agent", "reporter"), ("Reported-Domain", "reported_domain")):
        value = _first(fields, name)
        if value:
            details[key] = value
    return NormalizedEvent(
        event_type=event_type,
        provider_event=f"arf:{feedback_type or 'unknown'}",
        raw={**report.summary(), "feedback_report": _fields(fields)},
        # The complaint happened when the report was written; Arrival-Date is when our mail arrived.
        occurred_at=report.date or _date(_first(fields, "Arrival-Date")),
        subtask_id=match.key if match else None,
        provider_event_id=_event_id(report, recipient, index),
        recipient=recipient or None,
        reason=text_or_none(f"feedback report: {feedback_type}") if feedback_type else None,
        details=details,
    )


# -- free-text bounces and other mail -----------------------------------------------------------------------


def _looks_like_bounce(report: _Report) -> bool:
    """Not a parsable report, but sent by a mail system about a failed delivery."""
    message = report.message
    if message.get_content_type() == "multipart/report":
        # A delivery-status or feedback report we could not read structurally; other report types (read
        # receipts: disposition-notification) are not bounces.
        return str(message.get_param("report-type", "") or "").lower() in ("delivery-status", "feedback-report")
    sender = _bare_address(report.sender or "")
    return_path = _first(message, "Return-Path")
    return bool(
        _DAEMON_RE.match(sender)
        or (return_path is not None and _bare_address(return_path) == "")
        or _BOUNCE_SUBJECT_RE.search(report.subject or "")
    )


def _free_text_event(report: _Report) -> NormalizedEvent:
    text = _body_text(report.message)
    code, status, line = _first_reply(text)
    action = "delayed" if _DELAY_TEXT_RE.search(f"{report.subject or ''}\n{text[:2000]}") else "failed"
    event_type, bounce_class = classify(action, status, code) if (code or status) else (EventType.UNKNOWN, None)
    match = report.correlate(body_text=text)
    recipient = _free_text_recipient(line, text, report) or _returned_to(report)
    details: dict[str, Any] = {"report_type": "free-text", "action": action if (code or status) else None}
    details.update(_match_details(match))
    return NormalizedEvent(
        event_type=event_type,
        provider_event="bounce:free-text" if (code or status) else "bounce:unparsed",
        raw={**report.summary(), "status_line": text_or_none(line)},
        occurred_at=report.date,
        subtask_id=match.key if match else None,
        provider_event_id=_event_id(report, recipient, 0),
        recipient=recipient,
        bounce_class=bounce_class,
        smtp_code=code,
        enhanced_code=status,
        reason=text_or_none(line),
        details=details,
    )


def _first_reply(text: str) -> tuple[int | None, str | None, str]:
    """The first line with an enhanced status (or else an SMTP reply code): (code, status, the line)."""
    lines = text.splitlines()
    for line in lines:
        status = _status(line)
        if status and status[0] in "45":
            reply = _REPLY_RE.search(line)
            return (int(reply.group(1)) if reply and reply.group(1)[0] == status[0] else None), status, line.strip()
    for line in lines:
        reply = _REPLY_RE.search(line)
        if reply and reply.group(1)[0] in "45" and re.search(r"said|reply|error|rejected|refused", line, re.I):
            return int(reply.group(1)), None, line.strip()
    return None, None, ""


def _free_text_recipient(line: str, text: str, report: _Report) -> str | None:
    """The address on the status line, else the first address in the body that is neither ours nor the
    mail system's own."""
    ignore = {_bare_address(report.sender or "").lower(), (report.envelope_to or "").lower()}
    for source in (line, text):
        address: str
        for address in _ADDRESS_RE.findall(source):
            if address.lower() not in ignore and key_from_verp(address) is None and not _DAEMON_RE.match(address):
                return address
    return None


def _not_a_report_event(report: _Report) -> NormalizedEvent:
    """A reply, an auto-reply or spam sent to the bounce address: kept for the admin view, never matched."""
    return NormalizedEvent(
        event_type=EventType.UNKNOWN,
        provider_event="mail:not-a-report",
        raw={**report.summary(), "size": report.size},
        occurred_at=report.date,
        details={"report_type": None, "matched_by": None},
    )


def _body_text(message: EmailMessage) -> str:
    """The text/plain parts (outside attached messages), capped: enough to find the status line."""
    chunks: list[str] = []
    for part in _parts_outside_attached_messages(message):
        if part.get_content_type() == "text/plain":
            chunks.append(part_text(part))
    if not chunks and message.get_content_type() == "text/html":
        chunks.append(re.sub(r"<[^>]+>", " ", part_text(message)))
    return "\n".join(chunks)[:_FREE_TEXT_LIMIT]


def _parts_outside_attached_messages(message: Message) -> Iterator[Message]:
    if message.is_multipart():
        for part in message.get_payload():
            if isinstance(part, Message) and part.get_content_maintype() != "message":
                yield from _parts_outside_attached_messages(part)
    else:
        yield message


# -- header and part helpers --------------------------------------------------------------------------------


def _values(message: Message, name: str) -> list[str]:
    """Every value of a header, unfolded. Malformed structured headers fall back to the raw text rather
    than failing the whole report."""
    try:
        values = [str(value) for value in (message.get_all(name) or [])]
    except Exception:  # the stdlib's structured header parser raises on some malformed inputs
        values = [str(value) for key, value in message.raw_items() if key.lower() == name.lower()]
    return [" ".join(value.split()) for value in values if value and value.strip()]


def _first(message: Message, name: str) -> str | None:
    values = _values(message, name)
    return values[0] if values else None


def _fields(block: Message) -> dict[str, str | list[str]]:
    """A header block as a JSON-ready dict; a repeated field keeps all its values."""
    fields: dict[str, str | list[str]] = {}
    for name in dict.fromkeys(block.keys()):
        values = _values(block, name)
        if values:
            fields[name] = values[0] if len(values) == 1 else values
    return fields


def part_text(part: Message) -> str:
    """A leaf part's text, decoded (transfer encoding and charset), whatever its declared type."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # an unknown charset name
        return payload.decode("utf-8", errors="replace")


def _date(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


# -- the DSN endpoint (POST /webhooks/smtp/{service_id}/dsn) ------------------------------------------------


class DsnWebhook:
    """Raw DSN/ARF MIME posted by a mail server pipe, authenticated by the service's inbound token (one of
    `WebhookTarget.secrets`) as `Authorization: Bearer <token>`, `X-Webhook-Token` or `?token=`. The envelope
    recipient may be passed as `?envelope_to=` or an `X-Original-To` request header (Postfix pipe `${recipient}`).
    """

    provider: ClassVar[str] = "smtp"
    needs_secret: ClassVar[bool] = True

    async def verify(self, request: WebhookRequest, target: WebhookTarget, ctx: VerifyContext) -> bool:
        return basic_or_token_matches(request, target.secrets)

    def replay_nonce(self, request: WebhookRequest) -> str | None:
        return None  # a re-posted report dedupes on its Message-ID + recipient instead

    def parse(self, request: WebhookRequest) -> ParsedPayload:
        envelope_to = request.query.get("envelope_to") or request.header("x-original-to")
        return parse_report(request.body, envelope_to=envelope_to)
