"""The one error body every answer of EDM's HTTP interface uses: `{"error": {code, message, details,
request_id, ...}}`. The machine code is what clients (and the console's translations) key on."""

from __future__ import annotations

from typing import Any

from fastapi import Request


def error_body(
    request: Request, code: str, message: str, details: list[Any] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "details": details or [],
            **extra,
            "request_id": getattr(request.state, "request_id", None),
        }
    }
