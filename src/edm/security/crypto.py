"""Authenticated encryption of service credentials and webhook secrets at rest (SPEC §20.6).

`EDM_ENCRYPTION_KEYS` is a comma-separated list of Fernet keys (or any passphrases, which are stretched
into keys); the first encrypts, all decrypt, so keys rotate with `edm secrets rotate`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from edm.settings import Settings


def _to_fernet_key(raw: str) -> bytes:
    try:
        if len(base64.urlsafe_b64decode(raw.encode())) == 32:
            return raw.encode()
    except (ValueError, base64.binascii.Error):  # type: ignore[attr-defined]
        pass
    return base64.urlsafe_b64encode(hashlib.sha256(("edm-encryption:" + raw).encode()).digest())


class Vault:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("at least one encryption key is required")
        self._fernet = MultiFernet([Fernet(_to_fernet_key(k)) for k in keys])

    @classmethod
    def from_settings(cls, settings: Settings) -> Vault:
        keys = [k.strip() for k in settings.encryption_keys.split(",") if k.strip()]
        # Outside production a key is derived from the signing key so demos and tests need no setup;
        # production refuses to start without EDM_ENCRYPTION_KEYS (settings validator).
        return cls(keys or [settings.signing_key.decode()])

    def encrypt_json(self, value: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(value, separators=(",", ":")).encode()).decode()

    def decrypt_json(self, token: str | None) -> dict[str, Any]:
        if not token:
            return {}
        try:
            return json.loads(self._fernet.decrypt(token.encode()))  # type: ignore[no-any-return]
        except InvalidToken as exc:
            raise ValueError("stored credentials cannot be decrypted with the configured keys") from exc

    def rotate(self, token: str) -> str:
        return self._fernet.rotate(token.encode()).decode()
