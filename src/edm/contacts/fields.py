"""Contact field rules: what a contact's writable fields may hold, and their normalized column values.

Shared by the API, the CLI and the importer, so every way in enforces exactly the same rules (the API schemas
repeat the limits only so that the OpenAPI document shows them)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edm.addresses import normalize_email
from edm.contacts.filters import ATTR_KEY
from edm.errors import BadInput
from edm.models.contacts import ContactStatus
from edm.paging import MAX_ID

TEXT_FIELDS = ("name", "first_name", "last_name", "username", "phone", "company", "position",
               "tiktok_unique_id", "instagram_id", "youtube_id")  # fmt: skip
TEXT_LIMITS = {**dict.fromkeys(TEXT_FIELDS, 200), "source": 100}
WRITABLE_FIELDS = frozenset({"email", "status", "custom_attributes", "timezone", *TEXT_LIMITS})
MAX_ATTR_KEYS, MAX_ATTR_BYTES, MAX_ATTR_TEXT = 100, 16 * 1024, 2000


def check_text(field: str, value: Any, limit: int, *, required: bool = False) -> str | None:
    """Trimmed text of at most `limit` characters; "" becomes None. NUL is refused (PostgreSQL rejects it)."""
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise BadInput.field(field, "must be a string")
    text = value.strip()
    if "\x00" in text:
        raise BadInput.field(field, "must not contain NUL characters")
    if len(text) > limit:
        raise BadInput.field(field, f"must be at most {limit} characters")
    if required and not text:
        raise BadInput.field(field, "must not be empty")
    return text or None


def check_status(value: Any) -> str:
    if value not in set(ContactStatus):
        raise BadInput.field("status", f"must be one of {', '.join(ContactStatus)}")
    return str(value)


def check_timezone(value: Any) -> str | None:
    text = check_text("timezone", value, 64)
    if text is None:
        return None
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadInput.field("timezone", f"{text!r} is not an IANA time zone") from None
    return text


def check_attributes(value: Any) -> dict[str, Any]:
    """Custom attributes (docs/data-model.md#contacts-and-tags): keys `^[A-Za-z_][A-Za-z0-9_]{0,63}$`; scalar values;
    ≤ 100 keys and ≤ 16 KB."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadInput.field("custom_attributes", "must be an object")
    if len(value) > MAX_ATTR_KEYS:
        raise BadInput.field("custom_attributes", f"must have at most {MAX_ATTR_KEYS} keys")
    for key, item in value.items():
        if not isinstance(key, str) or not ATTR_KEY.fullmatch(key):
            raise BadInput.field(f"custom_attributes.{key}", "key must match ^[A-Za-z_][A-Za-z0-9_]{0,63}$")
        _check_attr_value(f"custom_attributes.{key}", item)
    if len(json.dumps(value, ensure_ascii=False).encode()) > MAX_ATTR_BYTES:
        raise BadInput.field("custom_attributes", f"must be at most {MAX_ATTR_BYTES} bytes as JSON")
    return dict(value)


def _check_attr_value(field: str, item: Any) -> None:
    if item is None or isinstance(item, bool):
        return
    if isinstance(item, int):
        if abs(item) > MAX_ID:
            raise BadInput.field(field, "number is out of range")
        return
    if isinstance(item, float):
        if not math.isfinite(item):
            raise BadInput.field(field, "number must be finite")
        return
    if isinstance(item, str):
        if "\x00" in item:
            raise BadInput.field(field, "must not contain NUL characters")
        if len(item) > MAX_ATTR_TEXT:
            raise BadInput.field(field, f"must be at most {MAX_ATTR_TEXT} characters")
        return
    raise BadInput.field(field, "must be a string, number, boolean or null")


def clean_contact_values(values: Mapping[str, Any], *, partial: bool = False) -> dict[str, Any]:
    """Validate and normalize contact fields into column values. `partial` for updates (only given keys)."""
    unknown = sorted(set(values) - WRITABLE_FIELDS)
    if unknown:
        raise BadInput.field(unknown[0], "unknown field")
    out: dict[str, Any] = {}
    if "email" in values or not partial:
        out.update(_email_columns(values.get("email")))
    for field, limit in TEXT_LIMITS.items():
        if field in values:
            out[field] = check_text(field, values[field], limit)
    if "status" in values:
        out["status"] = check_status(values["status"])
    if "custom_attributes" in values:
        out["custom_attributes"] = check_attributes(values["custom_attributes"])
    if "timezone" in values:
        out["timezone"] = check_timezone(values["timezone"])
    return out


def _email_columns(value: Any) -> dict[str, str]:
    if not isinstance(value, str) or not value.strip():
        raise BadInput.field("email", "is required")
    if len(value.strip()) > 320 or "\x00" in value:
        raise BadInput.field("email", "is not a valid email address")
    email = normalize_email(value, field="email")
    return {"email": email.original, "email_normalized": email.normalized, "email_domain": email.domain}
