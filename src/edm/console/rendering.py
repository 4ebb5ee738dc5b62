"""Rendering console pages: one plain Jinja2 environment per language (autoescaped; not the sandbox that renders
mail templates), the formatting filters, and `render()`, which every page calls.

Each environment has its language's catalogue installed with `install_gettext_callables` (newstyle gettext:
`{{ _("Hello %(name)s", name=user) }}`, and a literal percent sign is written `%%`), so a render never swaps
callables on a shared object. The filters format for the request's language and the viewer's time zone:

- `datetime` (`medium` by default, or `short`, `long`, `full`), `date`: Babel's formats, in the viewer's zone
- `number`: grouped digits; `percent`: a ratio 0–1 as a percentage (None: "—")
- `timeago`: "3 minutes ago", "in 2 hours"
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from babel import Locale
from babel.dates import format_date, format_datetime, format_timedelta
from babel.numbers import format_decimal, format_percent
from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, pass_context, select_autoescape
from jinja2.runtime import Context

from edm.clock import utc_now
from edm.console import i18n, pages
from edm.console.labels import Labels
from edm.console.static import static_url
from edm.settings import Settings

TEMPLATES_DIR = i18n.LOCALE_DIR.parent / "templates"
EMPTY = "—"

# Every console answer carries these. The policy allows no inline script or style and nothing from another host;
# `frame-ancestors` and X-Frame-Options keep the console out of other sites' frames.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
HSTS = "max-age=31536000"


def security_headers(settings: Settings) -> dict[str, str]:
    headers = dict(SECURITY_HEADERS)
    if settings.public_url.lower().startswith("https://"):
        headers["Strict-Transport-Security"] = HSTS
    return headers


@functools.cache
def time_zones() -> list[str]:
    """The IANA zone names a user may choose, sorted."""
    return sorted(z for z in available_timezones() if "/" in z and not z.startswith(("Etc/", "SystemV/"))) + ["UTC"]


def zone_of(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


# ---- filters ----------------------------------------------------------------------------------------------


def _locale(context: Context) -> Locale:
    locale: Locale = context["locale"]
    return locale


@pass_context
def datetime_filter(context: Context, value: dt.datetime | None, format: str = "medium") -> str:
    if value is None:
        return EMPTY
    return format_datetime(value, format, tzinfo=context["tz"], locale=_locale(context))


@pass_context
def date_filter(context: Context, value: dt.date | dt.datetime | None, format: str = "medium") -> str:
    if value is None:
        return EMPTY
    if isinstance(value, dt.datetime):
        value = value.astimezone(context["tz"]).date()
    return format_date(value, format, locale=_locale(context))


@pass_context
def number_filter(context: Context, value: float | int | None) -> str:
    return EMPTY if value is None else format_decimal(value, locale=_locale(context))


@pass_context
def percent_filter(context: Context, value: float | None) -> str:
    return EMPTY if value is None else format_percent(value, format="#,##0.#%", locale=_locale(context))


@pass_context
def timeago_filter(context: Context, value: dt.datetime | None) -> str:
    if value is None:
        return EMPTY
    delta = value - context["now"]
    return format_timedelta(delta, add_direction=True, threshold=0.9, locale=_locale(context))


@functools.cache
def environment(language: str, *, strict: bool, auto_reload: bool) -> Environment:
    catalogue = i18n.catalogue(language, strict=strict)
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(["html"]),
        extensions=["jinja2.ext.i18n"],
        auto_reload=auto_reload,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.policies["ext.i18n.trimmed"] = True  # as babel.cfg extracts: whitespace in {% trans %} collapsed
    env.install_gettext_callables(catalogue.gettext, catalogue.ngettext, newstyle=True)  # type: ignore[attr-defined]
    env.filters.update(
        datetime=datetime_filter,
        date=date_filter,
        number=number_filter,
        percent=percent_filter,
        timeago=timeago_filter,
    )
    env.globals.update(
        static=static_url,
        PAGES=pages.PAGES,
        LABELS=Labels,
        LANGUAGES=i18n.NAMES,
        language=language,
        html_lang=i18n.HTML_LANG[language],
    )
    return env


POLL_MS = 5000  # live views (task progress, imports, dashboard) ask the server again this often


def poll_interval_ms(settings: Settings) -> int:
    """The live views' poll interval: 5 s, shortened by the testing switch `time_scale` but never under 1 s."""
    return max(1000, round(POLL_MS * settings.time_scale))


# ---- the request's language and catalogue -------------------------------------------------------------------


def language_of(request: Request) -> str:
    """The viewer's own choice, else the browser's Accept-Language, else English."""
    viewer = getattr(request.state, "viewer", None)
    chosen = getattr(viewer, "locale", None)
    if chosen in i18n.NAMES:
        return str(chosen)
    return i18n.negotiate(request.headers.get("accept-language"))


def catalogue_of(request: Request) -> i18n.Catalogue:
    """The request's catalogue, for messages made in Python (`catalogue_of(request).gettext(msgid)`)."""
    settings: Settings = request.app.state.settings
    return i18n.catalogue(language_of(request), strict=settings.env == "test")


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """The page `template` for this request: the viewer (set by the `Viewer` dependency), the language, the
    time zone and the menu are in every template's context, beside `context`."""
    settings: Settings = request.app.state.settings
    language = language_of(request)
    env = environment(language, strict=settings.env == "test", auto_reload=settings.env == "development")
    viewer = getattr(request.state, "viewer", None)
    path = request.url.path
    values: dict[str, Any] = {
        "request": request,
        "viewer": viewer,
        "csrf_token": getattr(viewer, "csrf_token", ""),
        "locale": Locale.parse(language),
        "tz": zone_of(getattr(viewer, "timezone", None)),
        "now": utc_now(),
        "path": path,
        "request_id": getattr(request.state, "request_id", ""),
        "menu": pages.menu(pages.MENU, path) if viewer else [],
        "admin_menu": pages.menu(pages.ADMIN_MENU, path) if viewer and viewer.is_admin else [],
        "poll_ms": poll_interval_ms(settings),
    }
    values.update(context or {})
    body = env.get_template(template).render(values)
    return HTMLResponse(body, status_code=status, headers={**security_headers(settings), **(headers or {})})
