"""Forms: read what was typed, validate it, and keep it with the errors beside their fields
(docs/console.md#a-complete-example-a-list-with-a-form).

    form = await read_form(request)
    try:
        body = form.parse(TokenCreate, name=form["name"], scope=form["scope"])  # the API's request model
        ...call the service...
    except BadInput as exc:
        form.fail(catalogue_of(request), exc)
        return render(request, "page.html", {"form": form}, status=422)

In the template, `field(form, "name", _("Name"))` (templates/_macros.html) draws the label, the input with the
value typed, and the error under it, tied to the input with `aria-describedby`. A field error is translated from
the service's English detail (`errors.FIELD_MESSAGES`), a pydantic one from its type
(`errors.VALIDATION_MESSAGES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from edm.console.auth import CSRF_FIELD
from edm.console.errors import INVALID, VALIDATION_MESSAGES, field_message, message_for
from edm.console.i18n import Catalogue
from edm.errors import BadInput, EdmError

M = TypeVar("M", bound=BaseModel)


@dataclass
class Form:
    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # field → translated message
    error: str = ""  # the message over the whole form

    def __getitem__(self, name: str) -> str:
        return self.values.get(name, "")

    def get(self, name: str, default: str = "") -> str:
        return self.values.get(name, default)

    def parse(self, model: type[M], **values: Any) -> M:
        """`model` validated from `values`: a pydantic error becomes BadInput with one detail per field, whose
        message is a msgid (`errors.VALIDATION_MESSAGES`)."""
        try:
            return model.model_validate(values)
        except ValidationError as exc:
            details = []
            for e in exc.errors():
                kind = "missing" if e["type"] == "string_too_short" and e.get("input") == "" else e["type"]
                details.append(
                    {
                        "field": ".".join(str(p) for p in e["loc"]) or "form",
                        "message": VALIDATION_MESSAGES.get(kind, INVALID),
                        "params": {k: v for k, v in (e.get("ctx") or {}).items() if isinstance(v, int | str)},
                        "translated": True,
                    }
                )
            raise BadInput("validation failed", details=details) from None

    def fail(self, catalogue: Catalogue, exc: EdmError, *, rename: dict[str, str] | None = None) -> None:
        """Take the error's messages: each field error beside its field (`rename` maps a service's field name to
        the form's), and a message over the form."""
        for detail in exc.details:
            name = (rename or {}).get(str(detail.get("field")), str(detail.get("field")))
            message = str(detail.get("message", ""))
            if detail.get("translated"):
                text = catalogue.gettext(message) % (detail.get("params") or {})
            else:
                text = field_message(catalogue, message)
            self.errors.setdefault(name, text)
        self.error = message_for(catalogue, exc)

    def invalid(self, name: str, message: str) -> BadInput:
        """A field error raised by the console itself (`message` is a msgid)."""
        return BadInput(message, details=[{"field": name, "message": message, "translated": True}])


async def read_form(request: Request) -> Form:
    """The submitted fields as text (files and the CSRF token left out; a repeated field keeps its first value)."""
    data = await request.form()
    values: dict[str, str] = {}
    for key, value in data.multi_items():
        if key != CSRF_FIELD and isinstance(value, str):
            values.setdefault(key, value if "password" in key else value.strip())
    return Form(values)
