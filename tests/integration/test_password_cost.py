"""Password hashing cost: argon2id at the standard cost in every environment but a test one, which alone may
lower it; each entry point (the app, the CLI) takes the cost from its settings."""

from __future__ import annotations

import secrets

import argon2
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.app import create_app
from edm.models.users import User
from edm.security import passwords
from edm.settings import Settings
from tests.helpers import run_cli

# argon2id, 3 passes over 64 MiB in 4 lanes: the RFC 9106 low-memory profile.
STANDARD = argon2.Parameters(
    type=argon2.Type.ID, version=19, salt_len=16, hash_len=32, time_cost=3, memory_cost=65536, parallelism=4
)
PASSWORD = "a long password"


def _settings(env: str) -> Settings:
    values: dict[str, object] = {"env": env, "database_url": "sqlite://"}
    if env == "production":
        values.update(secret_key=secrets.token_urlsafe(48), encryption_keys=Fernet.generate_key().decode())
    return Settings(**values)  # type: ignore[arg-type]


def _cost_of(password_hash: str) -> tuple[int, int, int]:
    params = argon2.extract_parameters(password_hash)
    return params.time_cost, params.memory_cost, params.parallelism


@pytest.mark.parametrize("env", ["production", "demo", "development"])
def test_every_environment_but_test_hashes_at_the_standard_cost(env: str) -> None:
    passwords.configure(_settings(env))
    assert argon2.extract_parameters(passwords.hash_password(PASSWORD)) == STANDARD


def test_a_test_environment_hashes_cheaply_and_both_costs_verify() -> None:
    passwords.configure(_settings("production"))
    strong = passwords.hash_password(PASSWORD)
    passwords.configure(_settings("test"))
    cheap = passwords.hash_password(PASSWORD)
    assert _cost_of(cheap) == (1, 8, 1)
    # A hash names its own cost, so lowering or raising the cost never locks anyone out.
    assert passwords.verify_password(strong, PASSWORD) and passwords.verify_password(cheap, PASSWORD)
    assert not passwords.verify_password(strong, "another password")
    passwords.configure(_settings("production"))
    assert passwords.verify_password(cheap, PASSWORD) and not passwords.verify_password(cheap, "another password")


def test_the_app_takes_the_cost_from_its_settings() -> None:
    create_app(_settings("production"))
    assert argon2.extract_parameters(passwords.hash_password(PASSWORD)) == STANDARD
    create_app(_settings("test"))
    assert _cost_of(passwords.hash_password(PASSWORD)) == (1, 8, 1)


@pytest.mark.parametrize("env, standard", [("development", True), ("test", False)])
async def test_the_cli_takes_the_cost_from_its_settings(
    db_url: str,
    sessionmaker: async_sessionmaker[AsyncSession],
    env: str,
    standard: bool,
) -> None:
    created = run_cli(
        db_url,
        "user",
        "create",
        "--username",
        "ann",
        "--email",
        "ann@example.com",
        "--password-stdin",
        stdin=PASSWORD + "\n",
        EDM_ENV=env,
    )
    assert created.returncode == 0, created.stderr
    async with sessionmaker() as session:
        stored = await session.scalar(select(User.password_hash).where(User.username == "ann"))
    assert stored is not None
    assert (argon2.extract_parameters(stored) == STANDARD) is standard, _cost_of(stored)
