from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

import pytest

from edm.security.tokens import MAC_BYTES, TokenData, sign_token, verify_token

KEY = b"k" * 32
OLD = b"o" * 32
SUBTASK = uuid.UUID("0d8c0a3e-1f7a-4a5b-9c1e-2b3c4d5e6f70")
PURPOSES = ("open", "click", "unsubscribe", "view")


def _sign(purpose: str, key: bytes = KEY) -> str:
    return sign_token(purpose, SUBTASK, key=key, link_id=42 if purpose == "click" else None)


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize("purpose", PURPOSES)
def test_the_layout_of_docs_tracking_md_so_links_in_mail_already_sent_keep_working(purpose: str) -> None:
    """version | purpose | SubTask id | [varint link id] | HMAC-SHA256(purpose key, all before)[:12], the purpose key
    being HMAC-SHA256(secret, "edm-token:" + purpose): computed here from the definition, not by the code."""
    code = {"open": 1, "click": 2, "unsubscribe": 3, "view": 4}[purpose]
    payload = bytes((1, code)) + SUBTASK.bytes + (bytes((42,)) if purpose == "click" else b"")
    purpose_key = hmac.new(KEY, b"edm-token:" + purpose.encode(), hashlib.sha256).digest()
    assert _sign(purpose) == _b64(payload + hmac.digest(purpose_key, payload, "sha256")[:12])


@pytest.mark.parametrize("purpose", PURPOSES)
def test_round_trip(purpose: str) -> None:
    token = _sign(purpose)
    data = verify_token(token, purpose, keys=[KEY])
    assert data == TokenData(1, purpose, SUBTASK, 42 if purpose == "click" else None)


def test_compact_url_safe_and_free_of_personal_data() -> None:
    token = _sign("open")
    assert len(token) == 40  # 30 bytes: version, purpose, uuid, 96-bit tag
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len(_raw(token)) - 18 == MAC_BYTES


@pytest.mark.parametrize("link_id", [0, 1, 127, 128, 300, 2**31, 2**63 - 1, 2**64 - 1])
def test_click_link_ids(link_id: int) -> None:
    token = sign_token("click", SUBTASK, key=KEY, link_id=link_id)
    data = verify_token(token, "click", keys=[KEY])
    assert data is not None and data.link_id == link_id


@pytest.mark.parametrize("purpose", PURPOSES)
def test_every_single_character_change_fails(purpose: str) -> None:
    token = _sign(purpose)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, char in enumerate(token):
        for other in alphabet:
            if other != char:
                forged = token[:i] + other + token[i + 1 :]
                assert verify_token(forged, purpose, keys=[KEY]) is None, (i, other)


@pytest.mark.parametrize("purpose", PURPOSES)
def test_every_single_byte_flip_fails(purpose: str) -> None:
    raw = _raw(_sign(purpose))
    for i in range(len(raw)):
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[i] ^= 1 << bit
            assert verify_token(_b64(bytes(flipped)), purpose, keys=[KEY]) is None, (i, bit)


@pytest.mark.parametrize("purpose", PURPOSES)
def test_truncated_and_extended_tokens_fail(purpose: str) -> None:
    token = _sign(purpose)
    raw = _raw(token)
    for n in range(len(token)):
        assert verify_token(token[:n], purpose, keys=[KEY]) is None
    for n in range(len(raw)):
        assert verify_token(_b64(raw[:n]), purpose, keys=[KEY]) is None
    assert verify_token(token + "A", purpose, keys=[KEY]) is None
    assert verify_token(_b64(raw + b"\x00"), purpose, keys=[KEY]) is None


@pytest.mark.parametrize("bad", ["", "!!!!", "a", "abc=", "a" * 500, "AAAA AAAA", "é" * 40, "AAAA=="])
def test_garbage_is_none(bad: str) -> None:
    assert verify_token(bad, "open", keys=[KEY]) is None


def test_purpose_separation() -> None:
    for signed in PURPOSES:
        token = _sign(signed)
        for checked in PURPOSES:
            result = verify_token(token, checked, keys=[KEY])
            assert (result is not None) == (signed == checked), (signed, checked)


def test_relabelled_purpose_byte_fails() -> None:
    # Re-stamping the purpose byte of an open token as unsubscribe must not verify: the key differs too.
    raw = bytearray(_raw(_sign("open")))
    raw[1] = 3
    assert verify_token(_b64(bytes(raw)), "unsubscribe", keys=[KEY]) is None


def test_wrong_version_fails() -> None:
    raw = bytearray(_raw(_sign("open")))
    raw[0] = 2
    assert verify_token(_b64(bytes(raw)), "open", keys=[KEY]) is None


def test_rotation() -> None:
    old_token = _sign("unsubscribe", key=OLD)
    assert verify_token(old_token, "unsubscribe", keys=[KEY, OLD]) is not None
    assert verify_token(old_token, "unsubscribe", keys=[KEY]) is None
    new_token = _sign("unsubscribe", key=KEY)
    assert verify_token(new_token, "unsubscribe", keys=[KEY, OLD]) is not None
    assert verify_token(new_token, "unsubscribe", keys=[OLD]) is None
    assert verify_token(new_token, "unsubscribe", keys=[]) is None
    assert verify_token(new_token, "unsubscribe", keys=[b""]) is None


def test_different_subtasks_give_different_tokens() -> None:
    other = uuid.UUID(int=SUBTASK.int + 1)
    assert sign_token("open", SUBTASK, key=KEY) != sign_token("open", other, key=KEY)
    assert sign_token("open", SUBTASK, key=KEY) == sign_token("open", SUBTASK, key=KEY)


def test_sign_refuses_misuse() -> None:
    with pytest.raises(ValueError):
        sign_token("click", SUBTASK, key=KEY)  # click needs a link id
    with pytest.raises(ValueError):
        sign_token("open", SUBTASK, key=KEY, link_id=1)
    with pytest.raises(ValueError):
        sign_token("click", SUBTASK, key=KEY, link_id=-1)
    with pytest.raises(ValueError):
        sign_token("bogus", SUBTASK, key=KEY)
    with pytest.raises(ValueError):
        sign_token("open", SUBTASK, key=b"")
    with pytest.raises(ValueError):
        verify_token(_sign("open"), "bogus", keys=[KEY])
