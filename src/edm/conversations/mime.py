"""Parsing one inbound RFC 5322 message (docs/conversations.md#parsing), bounded. Pure: no database.

The standard library's `email` package with `policy.default`. What a conversation keeps of a message: From,
the address it was delivered to (the envelope recipient the source reported, else Delivered-To, else To),
Subject, Message-ID (synthesized from the sha256 of the raw bytes when the message has none, so a retry of the
same bytes dedupes), In-Reply-To, References, Date, the first text/plain and text/html bodies (each bounded),
and the attachments' metadata (name, type, size, part index). Attachment bytes stay in the raw message
(`mail_blobs`); `attachment_part` reads one back by its part index.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import email.utils
import hashlib
import re
from email.message import EmailMessage, Message
from typing import Any

from edm.errors import NotFound, TooLarge
from edm.providers.dsn import part_text

DEFAULT_MAX_BYTES = 10 * 1024 * 1024  # Settings.inbound_message_max_bytes
TEXT_LIMIT = 256 * 1024  # characters of the text body kept
HTML_LIMIT = 1024 * 1024  # characters of the HTML body kept
MAX_ATTACHMENTS = 100  # metadata entries kept per message
MAX_PARTS = 1000  # parts walked per message: a bomb of tiny parts costs no more than this
_ID_LIMIT = 400
_REFERENCES_LIMIT = 50  # newest ids kept from References
_ID_RE = re.compile(r"<([^<>\s]{1,398})>")
# Re:, Fwd:, AW:, WG:, SV:, 回复:, 答复:, 转发: … repeated, with optional [n] counters.
_SUBJECT_PREFIX_RE = re.compile(
    r"^\s*(?:(?:re|fwd?|aw|wg|sv|vs|antw|r|回复|回覆|答复|答覆|转发|轉寄)\s*(?:\[\d+\])?\s*[:：]\s*)+", re.IGNORECASE
)


def too_large(size: int, limit: int) -> TooLarge:
    return TooLarge(f"inbound message of {size} bytes exceeds the {limit}-byte limit", limit=limit)


@dataclasses.dataclass(frozen=True, slots=True)
class Attachment:
    part: int  # index in message.walk() order: what attachment_part takes
    name: str | None
    content_type: str
    size: int
    content_id: str | None  # without angle brackets: what `cid:` URLs in the HTML name
    inline: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "part": self.part,
            "name": self.name,
            "type": self.content_type,
            "size": self.size,
            "content_id": self.content_id,
            "inline": self.inline,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedMail:
    raw: bytes = dataclasses.field(repr=False)
    message: EmailMessage = dataclasses.field(repr=False)
    sha256: str
    size: int
    message_id: str  # without angle brackets
    message_id_synthesized: bool
    in_reply_to: str | None
    references: tuple[str, ...]  # oldest first, as written
    from_address: str | None  # as written (not normalized)
    from_name: str | None
    to_address: str | None  # the envelope recipient, else Delivered-To, else To
    sender: str | None  # the envelope sender, else Return-Path
    subject: str
    date: dt.datetime | None
    text_body: str | None
    html_body: str | None
    attachments: tuple[Attachment, ...]

    def thread_ids(self) -> list[str]:
        """The ids that may name a message of ours, best first: In-Reply-To, then References newest first."""
        ids = [self.in_reply_to] if self.in_reply_to else []
        ids += [i for i in reversed(self.references) if i != self.in_reply_to]
        return ids


def parse(
    raw: bytes, *, recipient: str | None = None, sender: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> ParsedMail:
    """Parse a raw message; TooLarge (413) above `max_bytes`."""
    if len(raw) > max_bytes:
        raise too_large(len(raw), max_bytes)
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    digest = hashlib.sha256(raw).hexdigest()
    own_id = first_id(header(message, "Message-ID"))
    from_name, from_address = _mailbox(header(message, "From"))
    text, html, attachments = _bodies(message)
    return ParsedMail(
        raw=raw,
        message=message,
        sha256=digest,
        size=len(raw),
        message_id=own_id or f"sha256.{digest[:48]}@inbound.edm.invalid",
        message_id_synthesized=own_id is None,
        in_reply_to=first_id(header(message, "In-Reply-To")),
        references=tuple(all_ids(header(message, "References")))[-_REFERENCES_LIMIT:],
        from_address=from_address,
        from_name=from_name,
        to_address=_recipient(message, recipient),
        sender=_bare(sender) or _bare(header(message, "Return-Path")) or None,
        subject=(header(message, "Subject") or "")[:998],
        date=_date(header(message, "Date")),
        text_body=text,
        html_body=html,
        attachments=tuple(attachments),
    )


def normalize_subject(subject: str) -> str:
    """The subject without Re:/Fwd: (and their localized forms) prefixes."""
    return _SUBJECT_PREFIX_RE.sub("", subject or "").strip()[:998]


def header(message: Message, name: str) -> str | None:
    """A header's first value, unfolded; a malformed structured header falls back to its raw text."""
    try:
        value = message.get(name)
    except Exception:  # the stdlib's structured header parser raises on some malformed inputs
        value = next((v for k, v in message.raw_items() if k.lower() == name.lower()), None)
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text or None


def all_ids(value: str | None) -> list[str]:
    """`<a@b> <c@d>` → ["a@b", "c@d"]; a bare id without brackets is taken whole."""
    if not value:
        return []
    found = _ID_RE.findall(value)
    if not found and "@" in value and " " not in value.strip():
        found = [value.strip()]
    return [i[:_ID_LIMIT] for i in found]


def first_id(value: str | None) -> str | None:
    ids = all_ids(value)
    return ids[0] if ids else None


def attachment_part(raw: bytes, part: int) -> tuple[bytes, str, str | None]:
    """The decoded bytes, content type and file name of part `part` (message.walk() order) of a stored message."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    for index, item in enumerate(message.walk()):
        if index > MAX_PARTS:
            break
        if index == part and not item.is_multipart():
            payload = item.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            return data, item.get_content_type(), _filename(item)
    raise NotFound(f"attachment {part} not found")


def parts_by_number(raw: bytes, parts: set[int]) -> dict[int, tuple[bytes, str]]:
    """The decoded bytes and content type of several parts of a stored message, read in one walk."""
    found: dict[int, tuple[bytes, str]] = {}
    message = email.message_from_bytes(raw, policy=email.policy.default)
    for index, item in enumerate(message.walk()):
        if index > MAX_PARTS or len(found) == len(parts):
            break
        if index in parts and not item.is_multipart():
            payload = item.get_payload(decode=True)
            found[index] = (payload if isinstance(payload, bytes) else b"", item.get_content_type())
    return found


# -- helpers ------------------------------------------------------------------------------------------------


def _bodies(message: EmailMessage) -> tuple[str | None, str | None, list[Attachment]]:
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = []
    for index, part in enumerate(message.walk()):
        if index > MAX_PARTS:
            break
        if part.is_multipart():
            continue
        content_type = part.get_content_type()
        disposition = (part.get_content_disposition() or "").lower()
        name = _filename(part)
        is_body = disposition != "attachment" and name is None
        if is_body and content_type == "text/plain" and text is None:
            text = part_text(part)[:TEXT_LIMIT]
            continue
        if is_body and content_type == "text/html" and html is None:
            html = part_text(part)[:HTML_LIMIT]
            continue
        if len(attachments) < MAX_ATTACHMENTS:
            payload = part.get_payload(decode=True)
            attachments.append(
                Attachment(
                    part=index,
                    name=name,
                    content_type=content_type,
                    size=len(payload) if isinstance(payload, bytes) else 0,
                    content_id=first_id(header(part, "Content-ID")) or _bare_id(header(part, "Content-ID")),
                    inline=disposition == "inline" or (disposition == "" and header(part, "Content-ID") is not None),
                )
            )
    return text, html, attachments


def _bare_id(value: str | None) -> str | None:
    return value.strip().strip("<>")[:_ID_LIMIT] or None if value else None


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        return None
    return " ".join(str(name).split())[:255] or None if name else None


def _mailbox(value: str | None) -> tuple[str | None, str | None]:
    if not value:
        return None, None
    name, address = email.utils.parseaddr(value)
    address = address.strip()
    return (name.strip()[:200] or None), (address[:320] if "@" in address else None)


def _bare(value: str | None) -> str | None:
    if not value:
        return None
    address = email.utils.parseaddr(value)[1].strip()
    return address[:320] if "@" in address else None


def _recipient(message: Message, envelope: str | None) -> str | None:
    for value in (envelope, header(message, "Delivered-To"), header(message, "X-Original-To")):
        address = _bare(value)
        if address:
            return address
    try:
        addresses = email.utils.getaddresses([str(v) for v in message.get_all("To") or []])
    except Exception:
        addresses = []
    for _, address in addresses:
        if "@" in address:
            return address.strip()[:320]
    return None


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
