"""Address syntax and normalization (docs/data-model.md#contacts-and-tags): trimmed, lower-cased, domain in IDNA ASCII.
No DNS."""

from __future__ import annotations

import re
from dataclasses import dataclass

from edm.errors import BadInput

_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True, slots=True)
class Email:
    original: str
    normalized: str
    domain: str


def normalize_email(value: str, *, field: str = "email") -> Email:
    text = (value or "").strip()
    if text.count("@") != 1:
        raise BadInput.field(field, f"{text!r} is not a valid email address")
    local, domain = text.rsplit("@", 1)
    if not _LOCAL.fullmatch(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        raise BadInput.field(field, f"{text!r} is not a valid email address")
    try:
        ascii_domain = domain.strip().rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise BadInput.field(field, f"{text!r} has an invalid domain") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or len(ascii_domain) > 253 or not all(_LABEL.fullmatch(lbl) for lbl in labels):
        raise BadInput.field(field, f"{text!r} has an invalid domain")
    normalized = f"{local.lower()}@{ascii_domain}"
    return Email(text, normalized, ascii_domain)


def is_valid_email(value: str) -> bool:
    try:
        normalize_email(value)
    except BadInput:
        return False
    return True
