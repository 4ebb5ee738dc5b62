"""Authenticated encryption of service credentials and webhook secrets at rest (docs/security.md#secrets-at-rest).

`EDM_ENCRYPTION_KEYS` is a comma-separated list of Fernet keys; the first encrypts, all decrypt. A key is rotated
by putting a new one (`edm keys generate`) first and keeping the old ones after it (docs/operations.md#deploying).
No command re-encrypts what is stored: a value moves to the new key only when it is written again (new credentials
through `edm service credentials` or the API, a webhook secret added or removed), so an old key must stay listed
while anything encrypted with it remains. Outside production any passphrase is accepted too and stretched into a
key (one SHA-256, no salt: convenient for demos and tests, too weak for real credentials), and without any key
one is derived from the signing key. Production accepts real Fernet keys only: the settings refuse to start
otherwise, and the vault itself refuses to stretch.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from edm.secret_keys import encryption_key_problem, split_keys
from edm.settings import Settings


def _to_fernet_key(raw: str, *, allow_passphrase: bool) -> bytes:
    if not allow_passphrase:
        problem = encryption_key_problem(raw)
        if problem is not None:
            raise ValueError(f"an encryption key {problem}")
        return raw.encode()
    try:
        if len(base64.urlsafe_b64decode(raw.encode())) == 32:
            return raw.encode()
    except (ValueError, binascii.Error):
        pass
    return base64.urlsafe_b64encode(hashlib.sha256(("edm-encryption:" + raw).encode()).digest())


class Vault:
    def __init__(self, keys: list[str], *, allow_passphrases: bool = True) -> None:
        if not keys:
            raise ValueError("at least one encryption key is required")
        self._fernet = MultiFernet([Fernet(_to_fernet_key(k, allow_passphrase=allow_passphrases)) for k in keys])

    @classmethod
    def from_settings(cls, settings: Settings) -> Vault:
        keys = split_keys(settings.encryption_keys)
        if settings.is_production:
            return cls(keys, allow_passphrases=False)
        # Outside production a key is derived from the signing key so demos and tests need no setup.
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
