"""What the console says when something goes wrong, in the viewer's language
(docs/console.md#what-the-frame-does-for-you).

Pages show messages chosen by the machine code of an error (`EdmError.code`), never the English text the API
sends: `message_for(catalogue, exc)`. A field error (an entry in `details`) is shown beside its field, looked up
by the English detail in `FIELD_MESSAGES`; a detail that is not listed there is passed through the catalogue
as it is, which shows it in English in production and as ⟦MISSING: …⟧ in tests, so a test finds it.

`error_page` answers 403, 404, 500, 503 and the like with a page in the console's look; a 500 page says only
that something went wrong, with the request id to quote, never the exception.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse

from edm.console.i18n import N_, Catalogue
from edm.console.rendering import catalogue_of, render
from edm.db.availability import RETRY_AFTER_SECONDS
from edm.errors import EdmError

# Error code → what a person reads. `%(wait)s` is filled for rate_limited.
MESSAGES = {
    "validation_error": N_("Some fields need your attention."),
    "invalid_json": N_("The request could not be read."),
    "not_found": N_("This page does not exist, or it is not yours to see."),
    "conflict": N_("This conflicts with something that already exists."),
    "in_use": N_("This is still in use."),
    "last_admin": N_("The last active admin cannot be demoted, deactivated or deleted."),
    "invalid_transition": N_("This action is not possible in the current state."),
    "task_locked": N_("This campaign is being changed by another action. Try again in a moment."),
    "insufficient_credit": N_("There is not enough credit for this."),
    "compliance_incomplete": N_("The sender's compliance details are incomplete."),
    "invalid_schedule": N_("This schedule is not possible."),
    "no_recipients": N_("No recipient matches."),
    "template_syntax_error": N_("The template has a syntax error."),
    "unauthenticated": N_("Wrong username or password."),
    "invalid_token": N_("This token is not valid."),
    "forbidden": N_("You are not allowed to do this."),
    "read_only": N_("Your account can look but not change anything."),
    "csrf_failed": N_("This form has expired. Reload the page and try again."),
    "password_change_required": N_("Change your password first."),
    "rate_limited": N_("Too many failed attempts. Try again in %(wait)s."),
    "unavailable": N_("The service is unavailable for a moment. Try again shortly."),
    "internal_error": N_("Something went wrong on our side."),
}

# The English detail of a field error (as services raise it) → what a person reads beside the field.
FIELD_MESSAGES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^is not correct$"), N_("This is not your current password.")),
    (re.compile(r"^must be 10 to 128 characters$"), N_("Use 10 to 128 characters.")),
    (re.compile(r"^must not equal the username$"), N_("The password must not be your username.")),
    (re.compile(r"^must be 1–100 characters$"), N_("Use 1 to 100 characters.")),
    (re.compile(r"is not a valid email address$"), N_("Enter a valid email address.")),
    (re.compile(r"has an invalid domain$"), N_("The domain of this address is not valid.")),
    (re.compile(r"is not an IANA time zone name$"), N_("Choose a time zone from the list.")),
    (re.compile(r"^already (exists|in use)$"), N_("This is already in use.")),
    (re.compile(r"^must be one of .* or null$"), N_("Choose one of the options.")),
    (re.compile(r"^must be read or write$"), N_("Choose one of the options.")),
    (re.compile(r"^unknown field$"), N_("This field is not expected here.")),
    # senders, templates, media (C3)
    (
        re.compile(r"^must be 1–64 of A-Z a-z 0-9"),
        N_("Use 1 to 64 letters, digits, dots, hyphens or underscores, with no dot at either end or two in a row."),
    ),
    # campaigns (C4)
    (re.compile(r"^must list at least one tag$"), N_("Choose at least one tag.")),
    (re.compile(r"required to schedule$"), N_("This is needed to schedule the campaign.")),
    (re.compile(r"^out of range$"), N_("Choose a time between now and a year from now.")),
    (re.compile(r"^naive time$"), N_("Enter a valid date and time.")),
    (re.compile(r"^a template is listed twice$"), N_("Choose each template once.")),
    (re.compile(r"^must be an integer from 1 to 100$"), N_("Use a whole number from 1 to 100.")),
    (re.compile(r"^not found: "), N_("This no longer exists: choose again.")),
    (re.compile(r"^(subject|html|text|preheader): "), N_("This template does not render for the first recipient.")),
    # suppressions (C5)
    (re.compile(r"^give either an email or a domain$"), N_("Enter an address or a domain.")),
    (re.compile(r"is not a valid domain$"), N_("Enter a valid domain, e.g. example.org.")),
    (re.compile(r"^already on this list$"), N_("This is already on your list.")),
    (re.compile(r"^must not contain NUL characters$"), N_("This value is not valid.")),
    (re.compile(r"^at most \d+ characters"), N_("This is too long.")),
    (re.compile(r"^empty file$"), N_("The file is empty.")),
    (re.compile(r"^no email or domain column$"), N_("The file has no “email” or “domain” column.")),
    (re.compile(r"is not an ISO 8601 time"), N_("Enter a valid date and time.")),
]

# Pydantic's error types (from validating a form with an API request model) → a message.
VALIDATION_MESSAGES = {
    "missing": N_("This field is required."),
    "string_too_short": N_("Use at least %(min_length)s characters."),
    "string_too_long": N_("Use at most %(max_length)s characters."),
    "literal_error": N_("Choose one of the options."),
    "enum": N_("Choose one of the options."),
    "int_parsing": N_("Enter a whole number."),
    "greater_than_equal": N_("This number is too small."),
    "less_than_equal": N_("This number is too large."),
    "datetime_parsing": N_("Enter a valid date and time."),
    "datetime_from_date_parsing": N_("Enter a valid date and time."),
    "date_parsing": N_("Enter a valid date."),
    "timezone_aware": N_("Enter a valid date and time."),
}
INVALID = N_("This value is not valid.")

TITLES = {
    400: N_("Bad request"),
    403: N_("Not allowed"),
    404: N_("Page not found"),
    405: N_("Page not found"),
    422: N_("Bad request"),
    429: N_("Too many requests"),
    500: N_("Something went wrong"),
    503: N_("Try again in a moment"),
}
EXPLANATIONS = {
    404: MESSAGES["not_found"],
    405: MESSAGES["not_found"],
    500: N_("Something went wrong on our side. It has been logged; if it keeps happening, quote the request id."),
    503: MESSAGES["unavailable"],
}


def message_for(catalogue: Catalogue, exc: EdmError, **values: Any) -> str:
    text = catalogue.gettext(MESSAGES.get(exc.code, MESSAGES["internal_error"]))
    return text % values if values else text


def field_message(catalogue: Catalogue, detail: str) -> str:
    for pattern, msgid in FIELD_MESSAGES:
        if pattern.search(detail):
            return catalogue.gettext(msgid)
    return catalogue.gettext(detail)


def wants_html(request: Request) -> bool:
    """A browser asking for a page outside the API and the webhooks (whose errors stay JSON)."""
    path = request.url.path
    if path == "/api" or path.startswith(("/api/", "/webhooks/")):
        return False
    return "text/html" in request.headers.get("accept", "")


def error_page(request: Request, status: int, exc: EdmError | None = None) -> HTMLResponse:
    """The HTML page for an error: inside the console's frame when the viewer is known, else the public one."""
    catalogue = catalogue_of(request)
    if exc is not None and status not in (404, 405, 500, 503):
        explanation = message_for(catalogue, exc)
    else:
        explanation = catalogue.gettext(EXPLANATIONS.get(status, MESSAGES["forbidden"]))
    title = catalogue.gettext(TITLES.get(status, TITLES[400] if status < 500 else TITLES[500]))
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    context = {"status": status, "title": title, "explanation": explanation}
    return render(request, "error.html", context, status=status, headers=headers)
