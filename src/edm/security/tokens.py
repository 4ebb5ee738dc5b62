"""Compact signed tokens for tracking, unsubscribe and view links (docs/tracking.md#tokens).

Layout before base64url (no padding):

    version (1 byte) | purpose (1 byte) | SubTask id (16 bytes) | [click only: link id, LEB128 varint]
    | HMAC-SHA256(purpose key, everything before)[:12]

An open/unsubscribe/view token is 30 bytes (40 characters), a click token 31–40 bytes. The 96-bit tag is
computed under a key derived per purpose from the secret, and the purpose byte is inside the MAC as well,
so a token of one purpose never verifies as another. Tokens carry no personal data and do not expire.
Verification accepts several secrets (current first, then `EDM_SECRET_KEY_PREVIOUS`) for key rotation.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

TOKEN_VERSION = 1
MAC_BYTES = 12  # 96 bits, the floor set by docs/tracking.md#tokens

Purpose = Literal["open", "click", "unsubscribe", "view"]
_PURPOSE_BYTES: dict[str, int] = {"open": 1, "click": 2, "unsubscribe": 3, "view": 4}
_HEAD = 2 + 16  # version + purpose + uuid
_MAX_VARINT = 10  # bytes: enough for any 64-bit link id
_MAX_TOKEN_CHARS = 64  # longest valid token is 54 characters; anything longer is refused before decoding
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class TokenData:
    version: int
    purpose: str
    subtask_id: uuid.UUID
    link_id: int | None = None


def _purpose_byte(purpose: str) -> int:
    try:
        return _PURPOSE_BYTES[purpose]
    except KeyError:
        raise ValueError(f"unknown token purpose {purpose!r}") from None


@functools.lru_cache(maxsize=32)
def _purpose_mac(secret: bytes, purpose: str) -> hmac.HMAC:
    """The HMAC under the purpose's key, keyed once and never updated: each token works on a copy of it. One key
    per purpose: a leak or misuse of one kind of token says nothing about another."""
    key = hmac.new(secret, b"edm-token:" + purpose.encode("ascii"), hashlib.sha256).digest()
    return hmac.new(key, digestmod=hashlib.sha256)


def _mac(secret: bytes, purpose: str, payload: bytes) -> bytes:
    # A copy of a keyed HMAC, not the one-shot hmac.digest: that one releases the GIL around every call, and
    # getting it back behind a busy thread takes up to the 5 ms switch interval. The worker signs several tokens
    # per recipient on its render threads beside the event loop: 5 ms a token beside a busy thread (1.5 µs alone),
    # and composing a claim of 500 took 1.6 s of wall time (bench/RESULTS.md, batch ESP).
    mac = _purpose_mac(secret, purpose).copy()
    mac.update(payload)
    return mac.digest()[:MAC_BYTES]


@functools.lru_cache(maxsize=4096)  # the link ids of the tasks being sent repeat for every recipient
def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _decode_varint(data: bytes) -> int | None:
    """The whole of `data` must be one minimal varint; None otherwise."""
    if not data or len(data) > _MAX_VARINT or data[-1] & 0x80 or (len(data) > 1 and data[-1] == 0):
        return None
    value = 0
    for shift, byte in enumerate(data):
        if shift < len(data) - 1 and not byte & 0x80:
            return None
        value |= (byte & 0x7F) << (7 * shift)
    return value


def sign_token(purpose: str, subtask_id: uuid.UUID, *, key: bytes, link_id: int | None = None) -> str:
    """A token for `purpose`; `link_id` is required for click tokens and refused for the others."""
    code = _purpose_byte(purpose)
    if not key:
        raise ValueError("empty signing key")
    if (purpose == "click") != (link_id is not None):
        raise ValueError("link_id is required for click tokens and only for them")
    payload = bytes((TOKEN_VERSION, code)) + subtask_id.bytes
    if link_id is not None:
        if link_id < 0 or link_id >= 1 << 64:
            raise ValueError("link_id out of range")
        payload += _encode_varint(link_id)
    raw = payload + _mac(key, purpose, payload)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode(token: str) -> bytes | None:
    if not isinstance(token, str) or len(token) > _MAX_TOKEN_CHARS or not _B64URL.fullmatch(token):
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    # base64 ignores the unused low bits of the last character: insist on the one canonical spelling,
    # so no two strings are the same token.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
        return None
    return raw


def verify_token(token: str, purpose: str, *, keys: Sequence[bytes]) -> TokenData | None:
    """The token's data when it is a valid `purpose` token under one of `keys`; None for anything else."""
    code = _purpose_byte(purpose)
    raw = _decode(token)
    if raw is None or len(raw) < _HEAD + MAC_BYTES:
        return None
    payload, tag = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    if payload[0] != TOKEN_VERSION or payload[1] != code:
        return None
    if not any(key and hmac.compare_digest(_mac(key, purpose, payload), tag) for key in keys):
        return None
    link_id = None
    if purpose == "click":
        link_id = _decode_varint(payload[_HEAD:])
        if link_id is None:
            return None
    elif len(payload) != _HEAD:
        return None
    return TokenData(TOKEN_VERSION, purpose, uuid.UUID(bytes=payload[2:_HEAD]), link_id)
