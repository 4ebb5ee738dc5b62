"""The EDM error tree. Services raise these; one handler in app.py maps them to HTTP answers.

EdmError (500 internal_error)
├── BadInput (422 validation_error)        field errors in `details`
│   ├── InvalidSchedule (422 invalid_schedule)
│   ├── NoRecipients (422 no_recipients)
│   └── TemplateSyntaxError (422 template_syntax_error)  line and column in details
├── NotFound (404 not_found)               also for other users' objects: existence is not leaked
├── Conflict (409 conflict)
│   ├── InvalidTransition (409 invalid_transition)  current state + allowed actions
│   ├── TaskLocked (409 task_locked)
│   ├── InsufficientCredit (409 insufficient_credit)  needed + available
│   ├── InUse (409 in_use)
│   └── ComplianceIncomplete (409 compliance_incomplete)
├── Unauthenticated (401 unauthenticated) / InvalidToken (401 invalid_token)
├── Forbidden (403 forbidden)
├── TooLarge (413 payload_too_large)
└── Unavailable (503 unavailable)
"""

from __future__ import annotations

from typing import Any


class EdmError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message, "details": self.details}
        body.update(self.extra)
        return body


class BadInput(EdmError):
    status, code = 422, "validation_error"

    @classmethod
    def field(cls, field: str, message: str) -> BadInput:
        return cls(f"{field}: {message}", details=[{"field": field, "message": message}])


class InvalidSchedule(BadInput):
    code = "invalid_schedule"


class NoRecipients(BadInput):
    code = "no_recipients"


class TemplateSyntaxError(BadInput):
    code = "template_syntax_error"


class NotFound(EdmError):
    status, code = 404, "not_found"


class Conflict(EdmError):
    status, code = 409, "conflict"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class TaskLocked(Conflict):
    code = "task_locked"


class InsufficientCredit(Conflict):
    code = "insufficient_credit"


class InUse(Conflict):
    code = "in_use"


class LastAdmin(Conflict):
    code = "last_admin"


class ComplianceIncomplete(Conflict):
    code = "compliance_incomplete"


class Unauthenticated(EdmError):
    status, code = 401, "unauthenticated"


class InvalidToken(Unauthenticated):
    code = "invalid_token"


class Forbidden(EdmError):
    status, code = 403, "forbidden"


class TooLarge(EdmError):
    status, code = 413, "payload_too_large"


class Unavailable(EdmError):
    status, code = 503, "unavailable"
