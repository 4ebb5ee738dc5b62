"""argon2id password hashing (SPEC §3.2)."""

from __future__ import annotations

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
