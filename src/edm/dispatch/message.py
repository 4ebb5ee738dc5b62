"""Rendered content + identity -> `OutboundMessage` (docs/sending.md#the-message), with MIME bytes written by hand.

Why by hand: building a message with `email.message.EmailMessage` costs ~0.8 ms (docs/performance.md, lesson 2),
more than sending it. Everything here is string/bytes assembly plus C-level encoders (`binascii.b2a_qp`,
base64); the email package is used only by the tests, to prove the output parses back exactly.

Choices that keep the output valid for any input:
- bodies are quoted-printable, or base64 when mostly non-ASCII (smaller); both only emit `[A-Za-z0-9+/=]`
  escapes, so the boundary `=_edm_<key>` (`=_` can never appear in either encoding) cannot collide;
- header text that is not plain ASCII (or looks like an encoded word) becomes RFC 2047 `B` encoded words
  of at most 42 UTF-8 bytes, cut on character boundaries, each fitting a 78-column line;
- ASCII header text is folded at spaces (reversible: unfolding only removes the CRLF);
- CR and LF in addresses, names or extra headers raise ValueError; the subject has them replaced.
From, Reply-To and the subject repeat across a task's recipients, so their encoded lines are cached.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import re
from collections.abc import Mapping
from email.utils import format_datetime
from typing import Any

from edm import clock
from edm.content.render import RenderedContent, clean_subject
from edm.providers.base import OutboundMessage

LINE_LIMIT = 78  # RFC 5322 SHOULD; encoded words are cut so that they always fit
_WORD_BYTES = 42  # 42 bytes -> 56 base64 chars -> a 68-char encoded word
_LONGEST_ATOM = 900  # an unbreakable ASCII run longer than this is sent as encoded words (998 MUST)

_KEY = re.compile(r"[A-Za-z0-9._+-]{1,64}")
_DOMAIN = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_ADDRESS = re.compile(r"[^\s\x00-\x1f\x7f<>()\[\],;:\"\\@]+@[^\s\x00-\x1f\x7f<>()\[\],;:\"\\@]+")
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")  # printable ASCII except ":" (RFC 5322 ftext)
_CTL = re.compile(r"[\r\n\x00]")
_URL_BAD = re.compile(r"[\s<>\x00-\x1f\x7f]")
_SPECIALS = re.compile(r'[][\\()<>@,:;".]')
_HIGH_BYTES = bytes(range(128, 256))

_RESERVED = frozenset(
    name.lower()
    for name in (
        "From", "To", "Cc", "Bcc", "Reply-To", "Sender", "Subject", "Date", "Message-ID", "MIME-Version",
        "Content-Type", "Content-Transfer-Encoding", "List-Unsubscribe", "List-Unsubscribe-Post",
        "X-EDM-SubTask-Id", "Feedback-ID", "Return-Path",
    )
)  # fmt: skip


# --------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------


def _refuse_ctl(value: str, field: str) -> str:
    if _CTL.search(value):
        raise ValueError(f"{field}: CR, LF and NUL are not allowed")
    return value


def _check_address(value: str, field: str) -> str:
    _refuse_ctl(value, field)
    if not _ADDRESS.fullmatch(value):
        raise ValueError(f"{field}: not a valid address: {value!r}")
    return value


def _ascii_domain(domain: str, field: str = "domain") -> str:
    """The domain as it goes into headers: IDNA (punycode) when not ASCII."""
    _refuse_ctl(domain, field)
    ascii_domain = domain if domain.isascii() else domain.encode("idna").decode("ascii")
    if not _DOMAIN.fullmatch(ascii_domain):
        raise ValueError(f"{field}: not a valid domain: {domain!r}")
    return ascii_domain


def _header_address(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return address if domain.isascii() else f"{local}@{_ascii_domain(domain, 'address')}"


def _check_url(value: str, field: str) -> str:
    _refuse_ctl(value, field)
    if _URL_BAD.search(value):
        raise ValueError(f"{field}: URL must not contain spaces or angle brackets")
    return value


# --------------------------------------------------------------------------------------------------------
# Header encoding
# --------------------------------------------------------------------------------------------------------


def _encoded_words(text: str) -> list[str]:
    """RFC 2047 `B` words of ≤ 42 UTF-8 bytes, never splitting a character (decoders rejoin them)."""
    data = text.encode("utf-8", "replace")
    words: list[str] = []
    start = 0
    while start < len(data):
        end = min(start + _WORD_BYTES, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # step back off a continuation byte
            end -= 1
        words.append("=?utf-8?b?" + binascii.b2a_base64(data[start:end], newline=False).decode() + "?=")
        start = end
    return words


def _plain(text: str) -> bool:
    """ASCII that can go into a header as it is: no encoded-word look-alike, no overlong unbreakable run."""
    return text.isascii() and "=?" not in text and all(len(w) <= _LONGEST_ATOM for w in text.split(" "))


def _fold(name: str, atoms: list[str]) -> str:
    """`Name: atom atom...`, breaking lines at the joining spaces so they stay within 78 columns."""
    lines: list[str] = []
    line = f"{name}: {atoms[0]}" if atoms else f"{name}:"
    for atom in atoms[1:]:
        if atom and len(line) + 1 + len(atom) > LINE_LIMIT:
            lines.append(line)  # the joining space starts the continuation line: unfolding restores it
            line = " " + atom
        else:
            line += " " + atom
    lines.append(line)
    return "\r\n".join(lines)


def _unstructured(name: str, value: str) -> str:
    if _plain(value):
        return _fold(name, value.split(" "))
    return _fold(name, _encoded_words(value))


def _mailbox(name: str, display: str, address: str) -> str:
    address = f"<{_header_address(address)}>"
    if not display:
        return _fold(name, [address])
    if _plain(display) and len(name) + len(display) + len(address) + 5 <= LINE_LIMIT:
        quoted = '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return _fold(name, [quoted, address])
    return _fold(name, [*_encoded_words(display), address])


@functools.lru_cache(maxsize=8)  # a claim's messages are built within the same second or two
def _date_header(date: dt.datetime) -> str:
    return f"Date: {format_datetime(date)}"


# The same sender and subject go to thousands of recipients: encode them once.
_cached_mailbox = functools.lru_cache(maxsize=256)(_mailbox)
_cached_unstructured = functools.lru_cache(maxsize=256)(_unstructured)


# --------------------------------------------------------------------------------------------------------
# Body encoding
# --------------------------------------------------------------------------------------------------------


def _encode_body(text: str) -> tuple[bytes, bytes]:
    """(Content-Transfer-Encoding, encoded body with CRLF lines). Text is encoded in canonical CRLF form."""
    data = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8", "replace")
    high = 0 if data.isascii() else len(data) - len(data.translate(None, _HIGH_BYTES))
    # QP costs 3 bytes per non-ASCII byte, base64 4/3 for everything: pick the smaller.
    if high * 200 > len(data) * 37:
        canonical = data.replace(b"\n", b"\r\n")
        return b"base64", base64.encodebytes(canonical).replace(b"\n", b"\r\n").rstrip(b"\r\n")
    # b2a_qp keeps LF hard breaks as LF (and soft breaks follow the input): make them all CRLF after.
    return b"quoted-printable", binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n")


def _part(subtype: bytes, body: str) -> bytes:
    encoding, encoded = _encode_body(body)
    return (
        b"Content-Type: text/" + subtype + b'; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: " + encoding + b"\r\n\r\n" + encoded
    )


# --------------------------------------------------------------------------------------------------------
# The message
# --------------------------------------------------------------------------------------------------------


def _list_unsubscribe(unsubscribe_url: str, unsubscribe_mailto: str | None) -> str:
    value = f"<{_check_url(unsubscribe_url, 'unsubscribe_url')}>"
    if unsubscribe_mailto:
        mailto = _check_url(unsubscribe_mailto, "unsubscribe_mailto")
        value += f", <{mailto if mailto.lower().startswith('mailto:') else 'mailto:' + mailto}>"
    return value


def _extra(extra_headers: Mapping[str, str] | None) -> dict[str, str]:
    checked: dict[str, str] = {}
    for name, value in (extra_headers or {}).items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"extra header name {name!r} is not valid")
        if name.lower() in _RESERVED:
            raise ValueError(f"extra header {name!r} would override a header EDM sets")
        checked[name] = _refuse_ctl(str(value), f"header {name}")
    return checked


def build_message(
    *,
    key: str,
    task_id: Any,
    user_id: Any,
    domain: str,
    from_local: str,
    from_name: str,
    to_address: str,
    to_name: str,
    reply_to: str | None,
    content: RenderedContent,
    unsubscribe_url: str,
    unsubscribe_mailto: str | None = None,
    envelope_from: str | None = None,
    extra_headers: dict[str, str] | None = None,
    with_mime: bool,
    date: dt.datetime | None = None,
) -> OutboundMessage:
    """One recipient's message. `unsubscribe_mailto` is a full `mailto:addr?subject=unsubscribe-<token>`.

    An empty `unsubscribe_url` omits the List-Unsubscribe headers: only for conversation answers
    (docs/conversations-answers.md#the-message); every task mail and test send must pass one. Raises ValueError on
    invalid or injected values.
    """
    if not _KEY.fullmatch(key):
        raise ValueError(f"key {key!r} is not a valid idempotency key")
    header_domain = _ascii_domain(domain)
    from_address = _check_address(f"{from_local}@{domain}", "from")
    _check_address(to_address, "to_address")
    if reply_to:
        _check_address(reply_to, "reply_to")
    envelope = _check_address(envelope_from, "envelope_from") if envelope_from else from_address
    _refuse_ctl(from_name, "from_name")
    _refuse_ctl(to_name, "to_name")
    feedback_id = _refuse_ctl(f"{task_id}:{user_id}:edm", "feedback_id")
    subject = clean_subject(content.subject)

    headers = {"Message-ID": f"<{key}@{header_domain}>"}
    if unsubscribe_url:
        headers["List-Unsubscribe"] = _list_unsubscribe(unsubscribe_url, unsubscribe_mailto)
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    headers["X-EDM-SubTask-Id"] = key
    headers["Feedback-ID"] = feedback_id
    headers.update(_extra(extra_headers))

    mime = None
    if with_mime:
        mime = _mime(
            key=key,
            from_header=_cached_mailbox("From", from_name, from_address),
            to_header=_mailbox("To", to_name, to_address),
            reply_to_header=_cached_mailbox("Reply-To", "", reply_to) if reply_to else None,
            subject_header=_cached_unstructured("Subject", subject),
            date=date or clock.utc_now(),
            headers=headers,
            content=content,
        )
    return OutboundMessage(
        key=key,
        envelope_from=envelope,
        from_address=from_address,
        from_name=from_name,
        to_address=to_address,
        to_name=to_name,
        subject=subject,
        html=content.html,
        text=content.text,
        reply_to=reply_to or None,
        headers=headers,
        custom_args={"subtask_id": key, "task_id": str(task_id)},
        mime=mime,
        mime_crlf=mime is not None,  # every line of _mime() ends in CRLF, and no CR or LF stands alone
    )


def _mime(
    *,
    key: str,
    from_header: str,
    to_header: str,
    reply_to_header: str | None,
    subject_header: str,
    date: dt.datetime,
    headers: dict[str, str],
    content: RenderedContent,
) -> bytes:
    boundary = ("=_edm_" + key)[:70].encode("ascii")
    lines = [from_header, to_header]
    if reply_to_header:
        lines.append(reply_to_header)
    lines += [subject_header, _date_header(date.replace(microsecond=0)), "MIME-Version: 1.0"]
    # Our own headers are ASCII tokens and URLs: fold at spaces only. Extra headers may carry any text.
    lines += [
        _fold(name, value.split(" ")) if name.lower() in _RESERVED else _unstructured(name, value)
        for name, value in headers.items()
    ]
    lines.append(f'Content-Type: multipart/alternative;\r\n boundary="{boundary.decode()}"')
    delimiter = b"\r\n--" + boundary + b"\r\n"
    return b"".join(
        (
            # Non-ASCII here only from an internationalized local part (RFC 6532): raw UTF-8.
            "\r\n".join(lines).encode("utf-8"),
            b"\r\n\r\n--" + boundary + b"\r\n",
            _part(b"plain", content.text),
            delimiter,
            _part(b"html", content.html),
            b"\r\n--" + boundary + b"--\r\n",
        )
    )
