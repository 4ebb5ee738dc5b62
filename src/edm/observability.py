"""Logging: one line per event with a dotted name and the ids involved; JSON by default (docs/operations.md#logs).

Never logged: passwords, tokens, API keys, webhook secrets, Authorization headers, message bodies.
Recipient addresses go through `mask_email`. Records carry their fields as `extra={...}`.

Every line written while an HTTP request is served carries that request's id (`request_id`, also the answer's
`X-Request-Id` header) and, once it is known, the id of the user it authenticated as (`user_id`): the request-id
middleware binds the request's state to this task's context (`bind_request`), and the formatters read it.

Lines of other libraries (uvicorn, SQLAlchemy, …) keep their logger's name as the event (`uvicorn.error`) and their
text as `message`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

# Record attributes that are not fields of the line (uvicorn adds `color_message`, its text with terminal colours).
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "color_message"}
_SECRET_WORDS = (
    "password",
    "secret",
    "token",
    "authorization",
    "api_key",
    "credentials",
    "cookie",
    "signature",
    "body",
)
_EMAIL = re.compile(r"(?<![\w.+-])([\w.+-])[\w.+-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")
# The state of the HTTP request being served in this context (Starlette's `scope["state"]`: `request_id`, and
# `user_id` once authenticated), or None outside a request.
_REQUEST: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("edm_request", default=None)
_REQUEST_FIELDS = ("request_id", "user_id")


def mask_email(address: str) -> str:
    """`jane@example.com` → `j***@example.com`."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


def mask_addresses(text: str) -> str:
    """Every email address in `text` masked as `mask_email` does: for text EDM did not write itself (an exception's
    message, a provider's or a library's answer)."""
    return _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)


def bind_request(state: Mapping[str, Any]) -> contextvars.Token[Mapping[str, Any] | None]:
    """Lines logged from now on in this context carry the request's id and user id (read from `state` when the
    line is written). Undo with `unbind_request`."""
    return _REQUEST.set(state)


def unbind_request(token: contextvars.Token[Mapping[str, Any] | None]) -> None:
    _REQUEST.reset(token)


def current_request_id() -> str | None:
    state = _REQUEST.get()
    return None if state is None else state.get("request_id")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    state = _REQUEST.get()
    if state is not None:
        for key in _REQUEST_FIELDS:
            if state.get(key) is not None:
                fields[key] = state[key]
    for key, value in record.__dict__.items():
        if key in _STANDARD or key.startswith("_"):
            continue
        if value is None and key in fields:
            continue  # an explicit `request_id: None` must not hide the bound one
        if any(word in key.lower() for word in _SECRET_WORDS):
            fields[key] = "[redacted]"
        elif isinstance(value, str) and "message_id" not in key:
            fields[key] = mask_addresses(value)
        else:
            fields[key] = value
    return fields


def _event(record: logging.LogRecord) -> dict[str, Any]:
    """EDM's own lines: the message is the dotted event name. Other libraries': the logger's name, and the text."""
    if record.name == "edm" or record.name.startswith("edm."):
        return {"event": record.getMessage()}
    return {"event": record.name, "message": mask_addresses(record.getMessage())}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            **_event(record),
            **_fields(record),
        }
        if record.exc_info:
            body["exception"] = mask_addresses(self.formatException(record.exc_info))
        return json.dumps(body, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = _event(record)
        extra = " ".join(f"{k}={v}" for k, v in {**_fields(record), **event}.items() if k != "event")
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {event['event']} {extra}".rstrip()
        if record.exc_info:
            line += "\n" + mask_addresses(self.formatException(record.exc_info))
        return line


def configure_logging(*, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries whose debug lines would carry what must never be logged: aiosmtpd's and aiosmtplib's SMTP
    # conversations (AUTH, message bodies), httpx's and httpcore's requests (headers, URLs with tokens),
    # SQLAlchemy's statements and result rows (addresses, hashes, bodies).
    for noisy in ("aiosqlite", "asyncio", "mail.log", "aiosmtplib", "httpx", "httpcore", "multipart", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
