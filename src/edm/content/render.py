"""The one rendering function set (docs/templates.md), shared by preview, test send and real send. Pure: no I/O.

Pipeline of `CompiledTemplate.render` (docs/templates.md#the-pipeline):

    render subject, preheader, HTML, text  ->  insert the preheader as hidden text at the top of the body
    ->  append the compliance footer when the template does not use `unsubscribe_url`
        (docs/tracking.md#compliance-content)
    ->  inline CSS when the template asks (`<style>` rules become `style` attributes; @media rules stay)
    ->  `postprocess` hook: link rewriting (docs/tracking.md#rewriting); the caller adds the open pixel
    ->  text part: the template's text, or else `html_to_text(final html)`

Limits: every part renders in the guarded environment of `edm.content.sandbox`, which bounds the time
(2 s for one whole `render()` call), the size of every value (2 MB), the items of every operation and the
total work of the render, checking before each costly step rather than after it. Every part is streamed
chunk by chunk and abandoned once it passes 2 MB of output. A limit violation is a
`RenderLimitExceeded` (a `RenderError` with `limit` = "time", "size", "work" or "depth"); any other
runtime error and any sandbox violation is a plain `RenderError` (code `render_error`). Exceptions from
the `postprocess` hook are not wrapped: that code is ours, not the template author's.

Rendering is CPU work that may take up to the time limit: callers on an event loop run it through
`off_loop`, on a small pool of threads, so the loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import datetime as dt
import functools
import re
import time
from collections.abc import Callable, Generator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from html import escape
from html.parser import HTMLParser
from typing import Any, TypeVar, cast

import css_inline
import jinja2
from jinja2 import nodes
from jinja2.meta import find_undeclared_variables

from edm.content import sandbox
from edm.content.sandbox import LimitExceeded, Sandbox
from edm.errors import TemplateSyntaxError

MAX_OUTPUT_BYTES = 2 * 1024 * 1024  # per rendered part (docs/templates.md#limits)
RENDER_TIME_LIMIT = 2.0  # seconds for one whole render() call (docs/templates.md#limits)
# The probe renders of a compilation (see _derive_text) only decide an optimisation: they get less time.
PROBE_TIME_LIMIT = 0.25
# Renders running at once in one process. Rendering holds the GIL, so more threads would not render
# faster; the bound keeps N parallel requests from holding N renders' memory at once (they queue).
RENDER_THREADS = 2

# Called as postprocess(part, value) with part "html" or "text"; returns the new value. The seam for
# link rewriting and the open pixel (docs/tracking.md#rewriting), which belong to the tracking module.
Postprocess = Callable[[str, str], str]

CONTACT_FIELDS: tuple[str, ...] = (
    "email", "name", "first_name", "last_name", "username", "phone", "company", "position",
    "tiktok_unique_id", "instagram_id", "youtube_id", "source", "status", "created_at",
)  # fmt: skip

# The data of preview and test sends without a chosen contact (docs/templates.md#preview, docs/templates.md#test-sends):
# one definition, so a test send without a contact shows exactly what the preview showed.
SAMPLE_CONTACT: dict[str, Any] = {
    "email": "jane.doe@example.com", "name": "Jane Doe", "first_name": "Jane", "last_name": "Doe",
    "username": "janedoe", "phone": "+1 555 0100", "company": "Example Inc.", "position": "Marketing lead",
    "tiktok_unique_id": "janedoe", "instagram_id": "janedoe", "youtube_id": "janedoe", "source": "sample",
    "status": "active", "attributes": {}, "tags": ["Sample tag"],
}  # fmt: skip


class RenderError(Exception):
    """The template could not be rendered for this recipient: the SubTask fails `permanent`."""

    code = "render_error"

    def __init__(self, message: str, *, part: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.part = part


class RenderLimitExceeded(RenderError):
    """A render limit stopped the template: `limit` is "time", "size", "work" or "depth".

    Unlike an ordinary render error (a missing value, a type error for one contact), a limit is a property
    of the template: a worker stops rendering that template for the rest of its recipients."""

    def __init__(self, message: str, *, part: str, limit: str) -> None:
        super().__init__(message, part=part)
        self.limit = limit


def _limit_error(part: str, exc: LimitExceeded) -> RenderLimitExceeded:
    if exc.limit == "time":
        return _timeout(part)
    return RenderLimitExceeded(f"{part}: {exc.detail}", part=part, limit=exc.limit)


def _timeout(part: str) -> RenderLimitExceeded:
    return RenderLimitExceeded(f"{part}: rendering took longer than {RENDER_TIME_LIMIT:g} s", part=part, limit="time")


_T = TypeVar("_T")
_RENDER_POOL = ThreadPoolExecutor(max_workers=RENDER_THREADS, thread_name_prefix="edm-render")


async def off_loop(func: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
    """Run `func` (compiling or rendering templates) on the render threads and wait for it: the event
    loop goes on serving other requests meanwhile. The time limit starts when the work starts."""
    call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_RENDER_POOL, call)


def time_limit(seconds: float | None = None) -> AbstractContextManager[None]:
    """A scope for several steps that share one deadline (compile + render of a preview): a `render()`
    inside it ends at the scope's deadline if that comes first. Its time is the clock's: someone waits for
    the answer. (A render on its own counts the CPU time it spends, so a busy host never fails a send.)"""
    return sandbox.allowance(RENDER_TIME_LIMIT if seconds is None else seconds, wall_clock=True)


_HTML_ENV = sandbox.make_env(autoescape=True)
_TEXT_ENV = sandbox.make_env(autoescape=False)  # subject, preheader, text


# --------------------------------------------------------------------------------------------------------
# Compilation
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RenderedContent:
    subject: str
    preheader: str
    html: str
    text: str


@dataclass(frozen=True, slots=True)
class _Part:
    name: str
    template: jinja2.Template
    variables: frozenset[str]  # top-level names the source reads from the context


def _syntax_error(part: str, message: str, line: int | None) -> TemplateSyntaxError:
    where = f" line {line}" if line else ""
    detail = {"field": part, "message": message, "line": line, "column": None}  # jinja reports no column
    return TemplateSyntaxError(f"{part}:{where}: {message}", details=[detail])


# The size of one part's template code. Lexing and parsing grow with its tokens, and Python's compile() of
# the generated module, one C call that holds the GIL (stalling every other thread of the process), grows
# with its nodes: ~10 µs a node, so 5,000 nodes compile in about 50 ms. Static text is one token however
# long it is; an email template with its variables, conditions and loops uses a few hundred nodes.
MAX_TOKENS = 15_000
MAX_NODES = 5_000
# How deeply elements may nest (`a + a + …` nests one level per operator). Python's compiler refuses a few hundred
# levels only after working for seconds (300 `+`: 1.4 s of CPU, holding the GIL); a real template nests a few dozen.
MAX_DEPTH = 100


def _compile_part(env: Sandbox, part: str, source: str) -> _Part:
    try:
        _check_complexity(env, part, source)
        ast = env.parse(source)
        if sum(1 for _ in ast.find_all(nodes.Node)) > MAX_NODES:
            raise _too_complex(part, f"more than {MAX_NODES:,} elements (variables, operators, tags)")
        if _deeper_than(ast, MAX_DEPTH):
            raise _too_complex(part, "expressions nested too deeply")
        variables = frozenset(find_undeclared_variables(ast))
        ast = sandbox.guard_template(ast)
        # Jinja folds constant expressions (`'x'|center(2000000)`) while it compiles, through the same
        # guards: a small budget of their own keeps big constants out of the cached module (a refused fold
        # is computed at render time instead).
        with sandbox.allowance(None, work=sandbox.FOLD_BUDGET):
            template = env.from_string(ast)  # unknown filters fail here
    except sandbox.ReservedName as exc:
        raise _syntax_error(part, str(exc), None) from None
    except jinja2.TemplateSyntaxError as exc:
        raise _syntax_error(part, exc.message or "syntax error", exc.lineno) from None
    except (RecursionError, SyntaxError, MemoryError):  # Jinja's parser or Python's compiler gave up
        raise _too_complex(part, "expressions nested too deeply") from None
    return _Part(part, template, variables)


def _deeper_than(root: nodes.Node, limit: int) -> bool:
    """Whether any element of the tree lies more than `limit` levels below its root (walked without recursion)."""
    stack = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in node.iter_child_nodes())
    return False


def _check_complexity(env: Sandbox, part: str, source: str) -> None:
    """Refuse a source with more than MAX_TOKENS tokens before parsing it (counting stops there)."""
    if len(source) <= MAX_TOKENS:
        return  # a token is at least one character
    tokens = (kind for _line, kind, _value in env.lex(source) if kind != "whitespace")
    for count, _kind in enumerate(tokens, 1):
        if count > MAX_TOKENS:
            raise _too_complex(part, f"more than {MAX_TOKENS:,} tokens")


def _too_complex(part: str, what: str) -> TemplateSyntaxError:
    return _syntax_error(part, f"the template is too complex: {what}; simplify it or split it", None)


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    """A template compiled once and rendered for many recipients (thread-safe, immutable)."""

    subject: _Part
    html: _Part
    text: _Part | None
    preheader: _Part | None
    # The text part derived once from the HTML *source* (see _derive_text): rendering it per recipient costs
    # a Jinja render instead of parsing the rendered HTML again, which was ~40 % of a worker's CPU.
    derived_text: _Part | None = None
    inline_css: bool = False

    @property
    def variables(self) -> frozenset[str]:
        """Every top-level variable the template reads (preview reports the unknown ones)."""
        parts = (self.subject, self.html, self.text, self.preheader)
        return frozenset().union(*(p.variables for p in parts if p is not None))

    @property
    def uses_unsubscribe_url(self) -> bool:
        """Whether the HTML shows the unsubscribe link itself; if not, the compliance footer is added."""
        return "unsubscribe_url" in self.html.variables

    def render(
        self,
        context: Mapping[str, Any],
        *,
        compliance_footer: bool = True,
        postprocess: Postprocess | None = None,
        footer_html: str = "",
    ) -> RenderedContent:
        """Run the pipeline of docs/templates.md#the-pipeline for one recipient. Raises RenderError.

        `footer_html` is the deployment's own compliance footer (setting `compliance.footer_html`), used
        instead of the built-in one when set."""
        with sandbox.allowance(RENDER_TIME_LIMIT):
            return self._render(dict(context), compliance_footer, postprocess, footer_html)

    def _render(
        self,
        ctx: dict[str, Any],
        compliance_footer: bool,
        postprocess: Postprocess | None,
        footer_html: str,
    ) -> RenderedContent:
        subject = clean_subject(_render_part(self.subject, ctx))
        if not subject:
            raise RenderError("subject: renders empty", part="subject")
        preheader = " ".join(_render_part(self.preheader, ctx).split()) if self.preheader else ""
        html = _render_part(self.html, ctx)
        text = _render_part(self.text, ctx) if self.text else ""
        # The derived text renders like a hand-written one; the postprocess hook (link rewriting) then treats
        # it as text, after the HTML, so both parts carry the same links. Converting the final HTML instead
        # cost ~1.3 ms a mail, most of a worker's CPU.
        derived = self.text is None and self.derived_text is not None
        if derived:
            text = _render_part(self.derived_text, ctx)  # type: ignore[arg-type]
            # Jinja drops the source's final newline; the converter's output always ends with one.
            text = text.rstrip("\n") + "\n" if text.strip() else ""

        html = insert_preheader(html, preheader)
        if compliance_footer:
            html, text = self._add_footer(ctx, html, text, derived=derived, custom=footer_html)
        if self.inline_css:
            html = inline_styles(html)
            _check_time("html")
        if postprocess is not None:
            html = postprocess("html", html)
            text = postprocess("text", text) if text.strip() else text
        if not text.strip():
            text = html_to_text(html)
            _check_time("text")
        return RenderedContent(subject=subject, preheader=preheader, html=html, text=text)

    def _add_footer(
        self, ctx: dict[str, Any], html: str, text: str, *, derived: bool = False, custom: str = ""
    ) -> tuple[str, str]:
        url = str(ctx.get("unsubscribe_url") or "")
        org = ctx.get("org")
        postal = str((org.get("postal_address") if isinstance(org, Mapping) else None) or "")
        if not self.uses_unsubscribe_url:
            html = append_compliance_footer(html, unsubscribe_url=url, postal_address=postal, custom_html=custom)
        # A hand-written or derived text part gets its own footer; one converted from the final HTML inherits
        # the HTML footer.
        if text.strip() and derived and not self.uses_unsubscribe_url:
            # The same words the converter would have produced from the HTML footer.
            return html, text.rstrip("\n") + "\n\n" + footer_text(url, postal, custom)
        own_text_lacks_link = self.text is not None and "unsubscribe_url" not in self.text.variables
        if text.strip() and own_text_lacks_link:
            if custom:
                return html, text.rstrip() + "\n\n--\n" + footer_text(url, postal, custom)
            text = append_compliance_footer_text(text, unsubscribe_url=url, postal_address=postal)
        return html, text


def compile_template(
    *, subject: str, html: str, text: str | None = None, preheader: str | None = None, inline_css: bool = False
) -> CompiledTemplate:
    """Compile every part once. Raises edm.errors.TemplateSyntaxError naming the part and line."""
    return _compile_cached(subject, html, text or None, preheader or None, inline_css)


@functools.lru_cache(maxsize=64)
def _compile_cached(
    subject: str, html: str, text: str | None, preheader: str | None, inline_css: bool
) -> CompiledTemplate:
    # Keyed by the sources: a worker rendering one task template for thousands of recipients compiles once.
    compiled = CompiledTemplate(
        subject=_compile_part(_TEXT_ENV, "subject", subject),
        html=_compile_part(_HTML_ENV, "html", html),
        text=_compile_part(_TEXT_ENV, "text", text) if text else None,
        preheader=_compile_part(_TEXT_ENV, "preheader", preheader) if preheader else None,
        inline_css=inline_css and _STYLE_TAG.search(html) is not None,
    )
    return compiled if text else dataclasses.replace(compiled, derived_text=_derive_text(compiled, html))


def _emits_markup(html_source: str) -> bool:
    """Values marked safe (or autoescape switched off) may carry tags only visible after rendering."""
    ast = _HTML_ENV.parse(html_source)
    if any(isinstance(n, nodes.ScopedEvalContextModifier) for n in ast.find_all(nodes.ScopedEvalContextModifier)):
        return True
    return any(f.name == "safe" for f in ast.find_all(nodes.Filter))


_PROBE_CONTACT = {
    "email": "probe@example.com",
    "name": "Probe Person",
    "first_name": "Probe",
    "last_name": "Person",
    "company": "Probe Ltd",
    "attributes": {},
    "tags": [],
}


def _derive_text(compiled: CompiledTemplate, html_source: str) -> _Part | None:
    """Convert the HTML template *source* to a text template once. Jinja expressions are text to the HTML
    converter, so they survive into the text template, which then renders per recipient without parsing.

    Kept only if, for a probe recipient, it gives the same words as converting the rendered HTML; odd
    sources (Jinja inside tag names, `| safe` markup) fail that check and keep the per-recipient conversion.
    """
    if _emits_markup(html_source):
        return None
    try:
        part = _compile_part(_TEXT_ENV, "text", html_to_text(html_source))
    except TemplateSyntaxError:
        return None
    probe = build_context(
        contact=_PROBE_CONTACT,
        sender={"display_name": "Probe", "email": "news@example.com"},
        task={"name": "probe"},
        org={},
        unsubscribe_url="https://example.invalid/u/probe",
        now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )
    try:
        with sandbox.allowance(PROBE_TIME_LIMIT):  # both probes together; the renders take the earlier end
            expected = compiled.render(probe, compliance_footer=False).text
            derived = dataclasses.replace(compiled, derived_text=part).render(probe, compliance_footer=False).text
    except RenderError:
        return None
    return part if " ".join(expected.split()) == " ".join(derived.split()) else None


def _check_time(part: str) -> None:
    try:
        sandbox.checkpoint()
    except LimitExceeded:
        raise _timeout(part) from None


def _render_part(part: _Part, ctx: dict[str, Any]) -> str:
    chunks: list[str] = []
    size = 0
    # What Template.generate() does, without its error handling: Jinja rewrites a failed render's traceback
    # to show template lines, copying the template's variables into fake frames that live in reference
    # cycles until a garbage collection (long-lived servers collect rarely), up to the whole work budget
    # per failed render. Our errors name the part and the failure, not template lines.
    context = part.template.new_context(ctx)
    stream = cast(Generator[str, None, None], part.template.root_render_func(context))
    deadline = sandbox.deadline()
    try:
        for chunk in stream:
            size += len(chunk) if chunk.isascii() else len(chunk.encode("utf-8", "surrogatepass"))
            if size > MAX_OUTPUT_BYTES:
                message = f"{part.name}: output exceeds {sandbox.megabytes(MAX_OUTPUT_BYTES)}"
                raise RenderLimitExceeded(message, part=part.name, limit="size")
            if time.monotonic() > deadline:
                if sandbox.expired():
                    raise _timeout(part.name)
                deadline = sandbox.deadline()
            chunks.append(chunk)
    except RenderError:
        raise
    except LimitExceeded as exc:
        raise _limit_error(part.name, exc) from None
    except Exception as exc:  # any runtime error in a user's template, sandbox violations included
        raise RenderError(f"{part.name}: {type(exc).__name__}: {exc}", part=part.name) from exc
    finally:
        stream.close()
        context.vars.clear()  # macros refer back to the context: drop the values that cycle holds now
    return "".join(chunks)


_LINE_BREAKS = re.compile(r"[\r\n\x00]+")


def clean_subject(value: str) -> str:
    """One header-safe line: CR, LF (and NUL) become spaces, ends stripped."""
    return _LINE_BREAKS.sub(" ", value).strip()


# --------------------------------------------------------------------------------------------------------
# Context
# --------------------------------------------------------------------------------------------------------


def build_context(
    *,
    contact: Mapping[str, Any],
    sender: Mapping[str, Any],
    task: Mapping[str, Any],
    org: Mapping[str, Any],
    unsubscribe_url: str,
    now: dt.datetime,
    view_in_browser_url: str | None = None,
) -> dict[str, Any]:
    """The variables of docs/templates.md#variables. `now` must already be in the task's time zone.

    Only the documented contact fields are exposed, so internal columns never leak into a mail.
    """
    person: dict[str, Any] = {name: contact.get(name) for name in CONTACT_FIELDS}
    person["attributes"] = dict(contact.get("attributes") or {})
    person["tags"] = list(contact.get("tags") or [])
    ctx: dict[str, Any] = {
        "contact": person,
        "name": person["name"],
        "email": person["email"],
        "sender": {"display_name": sender.get("display_name"), "email": sender.get("email")},
        "task": {"name": task.get("name"), "scheduled_at": task.get("scheduled_at")},
        "org": {"name": org.get("name"), "postal_address": org.get("postal_address")},
        "unsubscribe_url": unsubscribe_url,
        "now": now,
    }
    if view_in_browser_url is not None:
        ctx["view_in_browser_url"] = view_in_browser_url
    return ctx


# --------------------------------------------------------------------------------------------------------
# HTML steps
# --------------------------------------------------------------------------------------------------------

_BODY_OPEN = re.compile(r"<body\b[^>]*>", re.IGNORECASE)
_BODY_CLOSE = re.compile(r"</body\s*>", re.IGNORECASE)
_PREHEADER_STYLE = (
    "display:none;font-size:1px;line-height:1px;max-height:0;max-width:0;opacity:0;overflow:hidden;"
    "mso-hide:all;color:transparent"
)
# Invisible filler after the preheader, so clients do not pull body text into the inbox preview.
_PREHEADER_FILLER = "&#847;&zwnj;&nbsp;" * 30


def insert_preheader(html: str, preheader: str) -> str:
    """Insert the preheader as hidden text right after <body ...>, or at the very start."""
    preheader = " ".join(preheader.split())
    if not preheader:
        return html
    block = f'<div style="{_PREHEADER_STYLE}">{escape(preheader)}{_PREHEADER_FILLER}</div>'
    match = _BODY_OPEN.search(html)
    at = match.end() if match else 0
    return html[:at] + block + html[at:]


# One inliner for the process (it holds no per-document state). Remote stylesheets are never fetched: a
# template must not make the worker reach out to the network.
_INLINER = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False, keep_link_tags=True)
_STYLE_TAG = re.compile(r"<style\b", re.IGNORECASE)


def inline_styles(html: str) -> str:
    """`<style>` rules become `style` attributes; @media and other at-rules stay in a `<style>` element,
    where clients that understand them apply them (docs/templates.md#the-pipeline). HTML without a `<style>` element is
    unchanged."""
    if not _STYLE_TAG.search(html):
        return html
    try:
        return str(_INLINER.inline(html))
    except ValueError as exc:  # unparsable CSS: the template author's error, reported like any render error
        raise RenderError(f"html: CSS could not be inlined: {exc}", part="html") from None


FOOTER_PLACEHOLDER = "{{ unsubscribe_url }}"
POSTAL_PLACEHOLDER = "{{ postal_address }}"


def append_compliance_footer(html: str, *, unsubscribe_url: str, postal_address: str, custom_html: str = "") -> str:
    """Add the visible unsubscribe link and postal address (docs/tracking.md#compliance-content) before </body>, or at
    the end.

    `custom_html` (the `compliance.footer_html` setting) replaces the built-in footer; its
    `{{ unsubscribe_url }}` and `{{ postal_address }}` placeholders are filled in (escaped)."""
    if custom_html.strip():
        postal_html = "<br>".join(escape(line.strip()) for line in postal_address.strip().splitlines())
        footer = custom_html.replace(FOOTER_PLACEHOLDER, escape(unsubscribe_url)).replace(
            POSTAL_PLACEHOLDER, postal_html
        )
        return _before_body_close(html, footer)
    lines = []
    if unsubscribe_url:
        # data-edm-notrack: our own unsubscribe link is never wrapped by click tracking (docs/tracking.md#rewriting).
        lines.append(f'<a href="{escape(unsubscribe_url)}" data-edm-notrack>Unsubscribe</a>')
    if postal_address.strip():
        lines.append("<br>".join(escape(line.strip()) for line in postal_address.strip().splitlines()))
    if not lines:
        return html
    footer = (
        '<div class="edm-footer" style="font-size:12px;line-height:18px;color:#666666;text-align:center;'
        'padding:16px 0">' + "<br>".join(lines) + "</div>"
    )
    return _before_body_close(html, footer)


def footer_text(unsubscribe_url: str, postal_address: str, custom_html: str = "") -> str:
    """`html_to_text` of the compliance footer, as a text part carries it.

    The footer differs between recipients only by the unsubscribe URL, so it is converted once per (postal
    address, custom footer) with a stand-in URL, which each recipient's URL then replaces: converting it every
    time was ~40 % of a render. A URL with characters the conversion could treat differently (entities,
    spaces, anything outside a plain URL's) is converted on its own."""
    if _PLAIN_URL.fullmatch(unsubscribe_url) and _URL_STAND_IN not in postal_address + custom_html:
        return _footer_text_with_stand_in(postal_address, custom_html).replace(_URL_STAND_IN, unsubscribe_url)
    footer = append_compliance_footer(
        "", unsubscribe_url=unsubscribe_url, postal_address=postal_address, custom_html=custom_html
    )
    return html_to_text(footer)


_PLAIN_URL = re.compile(r"https?://[A-Za-z0-9._~:/?=+%-]+")
_URL_STAND_IN = "https://edm.invalid/unsubscribe-url-stand-in"  # a plain URL itself: it converts like one


@functools.lru_cache(maxsize=64)
def _footer_text_with_stand_in(postal_address: str, custom_html: str) -> str:
    footer = append_compliance_footer(
        "", unsubscribe_url=_URL_STAND_IN, postal_address=postal_address, custom_html=custom_html
    )
    return html_to_text(footer)


def _before_body_close(html: str, footer: str) -> str:
    closes = list(_BODY_CLOSE.finditer(html))
    if not closes:
        return html + footer
    at = closes[-1].start()
    return html[:at] + footer + html[at:]


def append_compliance_footer_text(text: str, *, unsubscribe_url: str, postal_address: str) -> str:
    """The text-part twin of append_compliance_footer, for templates with their own text part."""
    lines = [f"Unsubscribe: {unsubscribe_url}"] if unsubscribe_url else []
    lines += [line.strip() for line in postal_address.strip().splitlines()]
    if not lines:
        return text
    return text.rstrip() + "\n\n--\n" + "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------
# HTML to text
# --------------------------------------------------------------------------------------------------------

_DROPPED = frozenset({"script", "style", "head", "title", "template", "noscript"})
_VOID = frozenset({"br", "img", "hr", "meta", "link", "input", "area", "base", "col", "source", "wbr"})
_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_PARAGRAPHS = frozenset({"p", "blockquote", "table", "pre", "dl"}) | _HEADINGS  # blank line around
_BLOCKS = frozenset({"div", "section", "article", "header", "footer", "main", "nav", "aside", "tr",
                     "li", "dt", "dd", "center", "address", "figure", "figcaption", "form", "tbody",
                     "thead", "tfoot", "ul", "ol"})  # fmt: skip
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


class _TextWriter(HTMLParser):
    """Readable text from mail HTML: blocks become lines, links keep their URL, hidden parts vanish."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # entities arrive decoded
        self.out: list[str] = []
        self._newlines = 0  # line breaks owed before the next text
        self._line_start = True
        self._prefix = ""  # list bullet owed before the next text
        self._skip_tag: str | None = None
        self._skip_depth = 0
        self._pre = 0
        self._lists: list[list[Any]] = []  # [kind, counter] per open list
        self._links: list[tuple[str, int]] = []  # (href, index in out where its text starts)

    # -- output primitives

    def _block(self, newlines: int) -> None:
        if self.out:
            self._newlines = max(self._newlines, newlines)

    def _emit(self, text: str) -> None:
        if self._newlines or self._line_start:
            if not self._pre:
                text = text.lstrip()
            if not text:
                return
            if self._newlines:
                self.out.append("\n" * self._newlines)
                self._newlines = 0
            if self._prefix:
                self.out.append(self._prefix)
                self._prefix = ""
        elif not self._pre and text.startswith(" ") and self.out and self.out[-1].endswith(" "):
            text = text[1:]
        if text:
            self.out.append(text)
            self._line_start = text.endswith("\n")

    # -- parser callbacks

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is not None:
            if tag == "body" and self._skip_tag == "head":  # an unclosed <head> ends here
                self._skip_tag = None
            elif tag == self._skip_tag:
                self._skip_depth += 1
                return
            else:
                return
        attr = dict(attrs)
        if tag in _DROPPED or "hidden" in attr or _HIDDEN_STYLE.search(attr.get("style") or ""):
            if tag not in _VOID:
                self._skip_tag, self._skip_depth = tag, 1
            return
        self._open(tag, attr)

    def _open(self, tag: str, attr: dict[str, str | None]) -> None:
        if tag == "br":
            self.out.append("\n")
            self._line_start = True
        elif tag == "hr":
            self._block(1)
            self._emit("-" * 40)
            self._block(1)
        elif tag in ("ul", "ol"):
            self._block(1 if self._lists else 2)
            self._lists.append([tag, 0])
        elif tag == "li":
            self._list_item()
        elif tag == "a":
            self._links.append(((attr.get("href") or "").strip(), len(self.out)))
        elif tag == "img":
            self._emit(_SPACES.sub(" ", attr.get("alt") or ""))
        elif tag in ("td", "th"):
            self._emit(" ")
        elif tag in _PARAGRAPHS:
            self._block(2)
            if tag == "pre":
                self._pre += 1
        elif tag in _BLOCKS:
            self._block(1)

    def _list_item(self) -> None:
        self._block(1)
        depth = max(len(self._lists) - 1, 0)
        bullet = "- "
        if self._lists and self._lists[-1][0] == "ol":
            self._lists[-1][1] += 1
            bullet = f"{self._lists[-1][1]}. "
        self._prefix = "  " * depth + bullet

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth -= 1
                if self._skip_depth == 0:
                    self._skip_tag = None
            return
        if tag == "a" and self._links:
            self._close_link(*self._links.pop())
        elif tag in ("ul", "ol"):
            if self._lists:
                self._lists.pop()
            self._block(1 if self._lists else 2)
        elif tag in _PARAGRAPHS:
            self._block(2)
            if tag == "pre" and self._pre:
                self._pre -= 1
        elif tag in _BLOCKS:
            self._block(1)

    def _close_link(self, href: str, start: int) -> None:
        if not href or href.startswith("#") or href.lower().startswith("javascript:"):
            return
        label = " ".join("".join(self.out[start:]).split())
        shown = href[7:] if href.lower().startswith("mailto:") else href
        if not label:
            self._emit(shown)
        elif label not in (href, shown) and label.rstrip("/") != href.split("://", 1)[-1].rstrip("/"):
            self._emit(f" ({shown})")

    def handle_data(self, data: str) -> None:
        if self._skip_tag is None:
            self._emit(data if self._pre else _SPACES.sub(" ", data))


def html_to_text(html: str) -> str:
    """Convert rendered HTML into the text part: a real conversion, not a tag strip (docs/templates.md#the-pipeline)."""
    writer = _TextWriter()
    writer.feed(html)
    writer.close()
    lines = [line.rstrip() for line in "".join(writer.out).split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text + "\n" if text else ""
