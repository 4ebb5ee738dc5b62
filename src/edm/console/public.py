"""The public pages that people reach from a mail (the unsubscribe page and its answers, an invalid link, "try
again"), in the console's look without its menu, in the browser's language.

`edm.api.tracking` serves them but sits below the console in the layers, so it cannot import this module:
`edm.app` hands `public_page` to it as `app.state.public_page`.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import Request
from fastapi.responses import HTMLResponse

from edm.console.i18n import N_
from edm.console.rendering import catalogue_of, render

TITLES = {
    "unsubscribe": N_("Unsubscribe"),
    "unsubscribed": N_("Unsubscribed"),
    "test": N_("Test message"),
    "not_valid": N_("Link not valid"),
    "link_not_valid": N_("Link not valid"),
    "unavailable": N_("Try again in a moment"),
}
KINDS = frozenset(TITLES)


def public_page(
    request: Request,
    kind: str,
    *,
    status: int = 200,
    email: str = "",
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """One of the public pages (`KINDS`); `email` is the masked address the unsubscribe pages name."""
    if kind not in KINDS:
        raise ValueError(f"no public page {kind!r}")
    title = catalogue_of(request).gettext(TITLES[kind])
    context = {"kind": kind, "title": title, "email": email}
    return render(request, "public/message.html", context, status=status, headers=headers)
