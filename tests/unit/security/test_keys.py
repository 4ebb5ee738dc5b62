"""Production refuses weak keys: a guessable EDM_SECRET_KEY or EDM_SECRET_KEY_PREVIOUS (short, repeated
characters, a short alphabet, a sequence, a placeholder) and any EDM_ENCRYPTION_KEYS entry that is not a real
Fernet key. Each refusal is one line naming the variable and `edm keys generate`, which prints a good pair.
Outside production the conveniences stay (any passphrase is stretched into an encryption key)."""

from __future__ import annotations

import os
import secrets

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError
from typer.testing import CliRunner

from edm.cli.main import app as cli
from edm.secret_keys import MIN_KEY_BITS, encryption_key_problem, estimated_bits, secret_key_problem
from edm.security.crypto import Vault
from edm.settings import Settings

GOOD_SECRET = secrets.token_urlsafe(48)
GOOD_FERNET = Fernet.generate_key().decode()

WEAK_SECRETS = {
    "32 identical characters": "a" * 32,
    "40 identical characters": "t" * 40,
    "two characters alternating": "ab" * 20,
    "a short alphabet": "0101100110101001011001101010010110",
    "a repeated hex block": "0123456789abcdef" * 3,
    "the alphabet in order": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ",
    "a keyboard walk": "qwertyuiopasdfghjklzxcvbnm1234567890",
    "a repeated phrase": "k3y!" * 12,
    "a placeholder repeated": "changeme" * 4,
    "a placeholder sentence": "please-change-me-this-is-the-secret-key",
    "a short passphrase": "correct horse battery staple correct horse",
    "too short but random": secrets.token_urlsafe(16),
}


def _production(**values: str) -> Settings:
    base = {
        "env": "production",
        "database_url": "sqlite:///./var/none.db",
        "secret_key": GOOD_SECRET,
        "encryption_keys": GOOD_FERNET,
    }
    return Settings(**{**base, **values})  # type: ignore[arg-type]


def _refusal(**values: str) -> str:
    with pytest.raises(ValidationError) as caught:
        _production(**values)
    message = str(caught.value.errors()[0]["msg"])
    assert "\n" not in message and "edm keys generate" in message, message
    return message


@pytest.mark.parametrize("value", WEAK_SECRETS.values(), ids=WEAK_SECRETS.keys())
def test_production_refuses_a_guessable_secret_key(value: str) -> None:
    message = _refusal(secret_key=value)
    assert "EDM_SECRET_KEY " in message and value not in message


@pytest.mark.parametrize("value", WEAK_SECRETS.values(), ids=WEAK_SECRETS.keys())
def test_production_checks_the_previous_secret_key_the_same_way(value: str) -> None:
    assert "EDM_SECRET_KEY_PREVIOUS" in _refusal(secret_key_previous=value)


NOT_FERNET = {
    "one character": "a",
    "44 identical characters (33 bytes)": "k" * 44,
    "32 zero bytes": "A" * 43 + "=",
    "a passphrase": "correct horse battery staple",
    "a truncated key": GOOD_FERNET[:-2],
    "not base64": GOOD_FERNET.replace("=", "") + "!!",
    "a signing key": GOOD_SECRET,
}


@pytest.mark.parametrize("value", NOT_FERNET.values(), ids=NOT_FERNET.keys())
def test_production_refuses_an_encryption_key_that_is_not_a_random_fernet_key(value: str) -> None:
    message = _refusal(encryption_keys=value)
    assert message.startswith("Value error, EDM_ENCRYPTION_KEYS ")
    assert len(value) < 8 or value not in message, "the value itself is never echoed"


def test_every_encryption_key_of_the_list_is_checked_and_named_by_position() -> None:
    assert "EDM_ENCRYPTION_KEYS entry 2 " in _refusal(encryption_keys=f"{GOOD_FERNET},secret")
    assert "EDM_ENCRYPTION_KEYS is not set" in _refusal(encryption_keys=" , ")
    assert "EDM_SECRET_KEY is not set" in _refusal(secret_key="")


def test_production_accepts_generated_keys_and_common_random_formats() -> None:
    for secret in (GOOD_SECRET, secrets.token_urlsafe(32), secrets.token_hex(32), Fernet.generate_key().decode()):
        settings = _production(
            secret_key=secret,
            secret_key_previous=secrets.token_urlsafe(32),
            encryption_keys=f"{Fernet.generate_key().decode()},{GOOD_FERNET}",
        )
        assert Vault.from_settings(settings).decrypt_json(Vault.from_settings(settings).encrypt_json({"a": 1})) == {
            "a": 1
        }


def test_random_keys_estimate_far_above_the_bar_and_patterns_far_below() -> None:
    """Not a flaky edge: 500 keys of each generator we document clear the bar."""
    generators = (
        lambda: secrets.token_urlsafe(32),
        lambda: secrets.token_hex(32),
        lambda: Fernet.generate_key().decode(),
    )
    for make in generators:
        assert min(estimated_bits(make()) for _ in range(500)) >= MIN_KEY_BITS
    assert all(estimated_bits(v) < MIN_KEY_BITS for k, v in WEAK_SECRETS.items() if k != "too short but random")
    assert secret_key_problem(GOOD_SECRET) is None and encryption_key_problem(GOOD_FERNET) is None


def test_outside_production_weak_keys_and_passphrases_still_work() -> None:
    for env in ("development", "demo", "test"):
        settings = Settings(env=env, secret_key="t" * 40, encryption_keys="a")  # type: ignore[arg-type]
        vault = Vault.from_settings(settings)
        assert vault.decrypt_json(vault.encrypt_json({"k": "v"})) == {"k": "v"}
    keyless = Vault.from_settings(Settings(env="demo"))  # type: ignore[arg-type]
    assert keyless.decrypt_json(keyless.encrypt_json({"k": 1})) == {"k": 1}


def test_the_vault_itself_refuses_to_stretch_a_passphrase_in_production_mode() -> None:
    with pytest.raises(ValueError, match="url-safe base64"):
        Vault(["a"], allow_passphrases=False)
    Vault([GOOD_FERNET], allow_passphrases=False)


def _cli(*args: str, **env: str) -> tuple[int, str, str]:
    cleared: dict[str, str | None] = {k: None for k in os.environ if k.startswith("EDM_")}
    result = CliRunner().invoke(cli, list(args), env={**cleared, **env}, prog_name="edm")
    return result.exit_code, result.stdout, result.stderr


def test_edm_keys_generate_prints_a_pair_production_accepts() -> None:
    code, out, _ = _cli("keys", "generate")
    assert code == 0
    lines = out.splitlines()
    assert [line.split("=", 1)[0] for line in lines] == ["EDM_SECRET_KEY", "EDM_ENCRYPTION_KEYS"]
    values = dict(line.split("=", 1) for line in lines)
    _production(secret_key=values["EDM_SECRET_KEY"], encryption_keys=values["EDM_ENCRYPTION_KEYS"])
    assert _cli("keys", "generate")[1] != out, "fresh keys every time"
    code, exported, _ = _cli("keys", "generate", "--export")
    assert code == 0 and all(line.startswith("export EDM_") for line in exported.splitlines())


def test_a_command_started_with_a_weak_key_in_production_exits_2_with_one_line() -> None:
    code, out, err = _cli(
        "settings",
        "list",
        EDM_ENV="production",
        EDM_SECRET_KEY="a" * 32,
        EDM_ENCRYPTION_KEYS=GOOD_FERNET,
        EDM_DATABASE_URL="sqlite:///./var/never-created.db",
    )
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "EDM_SECRET_KEY" in err and "edm keys generate" in err and "a" * 32 not in err
