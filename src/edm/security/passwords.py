"""argon2id password hashing, at a cost set by the process's settings, and the password rules."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from edm.errors import BadInput

if TYPE_CHECKING:
    from edm.settings import Settings


@dataclass(frozen=True)
class HashingCost:
    """argon2id work factors: passes over memory, memory in KiB, lanes."""

    time_cost: int
    memory_cost: int
    parallelism: int


# argon2-cffi's defaults, the RFC 9106 low-memory profile: about a quarter of a second per hash.
STANDARD_COST = HashingCost(time_cost=3, memory_cost=64 * 1024, parallelism=4)
# The least argon2id accepts. Only a test environment (EDM_ENV=test) hashes with it: a test suite creates
# thousands of accounts, and the real cost made a fifth of its API tests' time.
TEST_COST = HashingCost(time_cost=1, memory_cost=8, parallelism=1)

_cost = STANDARD_COST


def configure(settings: Settings) -> None:
    """Set the hashing cost for this process from its settings; every entry point calls it at start-up.
    Production, demo and development always hash at the standard cost."""
    global _cost
    _cost = TEST_COST if settings.env == "test" else STANDARD_COST


def check_password_rules(password: str, *, username: str) -> None:
    if not 10 <= len(password) <= 128:
        raise BadInput.field("password", "must be 10 to 128 characters")
    if password.lower() == username.lower():
        raise BadInput.field("password", "must not equal the username")


def hash_password(password: str) -> str:
    return _hasher(_cost).hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    # A hash carries its own parameters: one made at either cost verifies whatever the configured cost.
    if not password_hash:
        return False
    try:
        return _hasher(_cost).verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def waste_time(password: str) -> None:
    """Verify `password` against a dummy hash: the same cost as a real check, always False."""
    verify_password(_dummy_hash(_cost), password)


@functools.cache
def _hasher(cost: HashingCost) -> PasswordHasher:
    return PasswordHasher(time_cost=cost.time_cost, memory_cost=cost.memory_cost, parallelism=cost.parallelism)


@functools.cache
def _dummy_hash(cost: HashingCost) -> str:
    """A real hash to check against when the user does not exist, so a login takes as long either way."""
    return _hasher(cost).hash("edm: no such user")
