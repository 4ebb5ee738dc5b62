"""argon2id password hashing (SPEC §3.2)."""

from __future__ import annotations

import functools

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from edm.errors import BadInput

_hasher = PasswordHasher()


def check_password_rules(password: str, *, username: str) -> None:
    if not 10 <= len(password) <= 128:
        raise BadInput.field("password", "must be 10 to 128 characters")
    if password.lower() == username.lower():
        raise BadInput.field("password", "must not equal the username")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def waste_time(password: str) -> None:
    """Verify `password` against a dummy hash: the same cost as a real check, always False."""
    verify_password(_dummy_hash(), password)


@functools.cache
def _dummy_hash() -> str:
    """A real hash to check against when the user does not exist, so a login takes as long either way."""
    return _hasher.hash("edm: no such user")
