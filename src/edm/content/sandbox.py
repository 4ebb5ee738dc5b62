"""The guarded Jinja environment templates render in: no template can stall a thread or exhaust memory.

Any user may preview a template, and workers render every task template per recipient, so rendering must
stay cheap whatever the source says. Python cannot interrupt a C call (`''.join`, `sorted`, `str * n`), so
instead of stopping a call that runs too long, no step is allowed to become long or large:

- *Before* every operation whose cost can be large, its result is estimated from its inputs (the size of
  a join, the lines of an indent, the items of a split, the fields of a format) and refused past a limit:
  one value is at most `MAX_VALUE` characters, one operation makes or consumes at most `MAX_ITEMS` items,
  one sort takes at most `MAX_SORT_ITEMS`, filters that walk words in Python take at most `MAX_WORDS`.
  Values are measured without being converted: `text_size` walks containers, so `[a] * 300` is known to
  print as 300 copies of `a` before anything prints it.
- The deadline of the render is checked on every guarded step: every filter, every sandboxed call
  (methods, macros, `caller()`, `loop()`), every loop iteration and every output chunk. It is a wall-clock
  deadline, cheap to check; once it has passed, the rendering thread's own CPU time decides (`expired`): a
  render that did not get the CPU (a busy host, other threads holding the GIL) is given its time back instead
  of failing, since a task whose template hits the time limit is paused.
- Every value a guarded step produces is charged to a per-render `WORK_BUDGET` (bytes of text, a fixed
  cost per container item), so many individually allowed steps cannot together exhaust memory, even when
  each of them is freed right after (that is CPU spent).
- Template-level calls nest at most `MAX_CALL_DEPTH` deep.

A violation raises `LimitExceeded` naming the limit ("time", "size", "work" or "depth"); `render.py`
turns it into a `RenderLimitExceeded` that names the template part. Outside a render (while a template
compiles, Jinja folds constant expressions through the same guards) limits still apply, with a budget of
their own, and a refused fold is simply evaluated at render time instead.

The environment also decides two template-facing behaviours: `None` renders as "" (a contact without a
name must not say "None"), and the `default` filter treats empty and blank text like a missing value.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
import threading
import time
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, Sized, ValuesView
from dataclasses import dataclass
from string import Formatter
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.filters import make_attrgetter
from jinja2.runtime import ChainableUndefined, LoopContext, Macro, Undefined, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, generate_lorem_ipsum, pass_eval_context
from jinja2.visitor import NodeTransformer

MAX_VALUE = 2 * 1024 * 1024  # characters of any one value a template builds (output parts: bytes)
MAX_ITEMS = 100_000  # items one operation may produce or consume (Jinja's own cap on `range`)
MAX_SORT_ITEMS = 20_000  # items of one sort: n log n comparisons in one C call that holds the GIL
MAX_WORDS = 20_000  # words (or fields) of the steps that work word by word in pure Python
MAX_INT_BITS = 65_536  # integers a template computes (bounds the time of *, ** and str())
MAX_JSON_INDENT = 16
WORK_BUDGET = 16 * 1024 * 1024  # bytes all guarded steps of one render may produce together
MAX_CALL_DEPTH = 50  # nesting of macro calls, caller() and recursive loops
ITEM_COST = 64  # bytes charged per item a produced container holds (a small object and its pointer)
# Constant expressions Jinja may fold while compiling: they are stored in the compiled (and cached) template,
# so larger ones are left to be computed at render time, within the render's own limits.
FOLD_BUDGET = 64 * 1024

RESERVED_PREFIX = "__edm_"  # names the compiler injects; templates may not use them
GUARD_ITER_NAME = RESERVED_PREFIX + "guard_iter"
CONCAT_NAME = RESERVED_PREFIX + "concat"
SLICE_NAME = RESERVED_PREFIX + "slice"


def megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):g} MB"


class LimitExceeded(Exception):
    """A render limit stopped the template. `limit` is "time", "size", "work" or "depth"."""

    def __init__(self, limit: str, detail: str) -> None:
        super().__init__(detail)
        self.limit = limit
        self.detail = detail


def _too_large(what: str) -> LimitExceeded:
    return LimitExceeded("size", f"{what} would exceed {megabytes(MAX_VALUE)}")


def _too_many(what: str, limit: int = MAX_ITEMS) -> LimitExceeded:
    return LimitExceeded("size", f"{what} would exceed {limit:,} items")


# --------------------------------------------------------------------------------------------------------
# The allowance of one render: deadline, work budget, call depth
# --------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Allowance:
    deadline: float  # time.monotonic() past which `expired` must be asked
    work_left: int
    depth: int = 0
    seconds: float = float("inf")  # the time this scope may take
    wall_end: float = float("inf")  # time.monotonic() when `seconds` of wall-clock time have passed
    cpu_start: float = 0.0  # time.thread_time() when it began
    thread: int = 0
    wall_clock: bool = False  # judged by wall-clock time only (a person waits for the answer)
    outer: _Allowance | None = None


_ALLOWANCE: contextvars.ContextVar[_Allowance | None] = contextvars.ContextVar("edm_render_allowance", default=None)


@contextlib.contextmanager
def allowance(seconds: float | None, *, work: int = WORK_BUDGET, wall_clock: bool = False) -> Iterator[None]:
    """The scope of one render (or compilation): `seconds` from now, never longer than the enclosing scope
    allows, and a fresh work budget. The time is the rendering thread's CPU time (see `expired`), or with
    `wall_clock` the time on the clock."""
    limit = float("inf") if seconds is None else seconds
    wall_end = time.monotonic() + limit
    outer = _ALLOWANCE.get()
    deadline = wall_end if outer is None else min(wall_end, outer.deadline)
    state = _Allowance(deadline, work, 0, limit, wall_end, time.thread_time(), threading.get_ident(), wall_clock, outer)
    token = _ALLOWANCE.set(state)
    try:
        yield
    finally:
        _ALLOWANCE.reset(token)


def deadline() -> float:
    """When the current render must next ask `expired` (infinitely far outside one)."""
    state = _ALLOWANCE.get()
    return state.deadline if state is not None else float("inf")


def expired() -> bool:
    """Asked once the wall-clock deadline has passed: True when this scope, or one enclosing it, has really
    spent its time. A scope's time is the CPU time of the thread rendering, so a render that was starved (the
    host busy, other threads holding the GIL) gets a new deadline for what it has left instead of failing; a
    scope opened `wall_clock` (a preview someone waits for), or begun on another thread (whose CPU clock is not
    this one's), ends on the clock."""
    state = _ALLOWANCE.get()
    if state is None:
        return False
    now, now_cpu, thread = time.monotonic(), time.thread_time(), threading.get_ident()
    next_check = float("inf")
    scope: _Allowance | None = state
    while scope is not None:
        if scope.seconds != float("inf"):
            if scope.wall_clock or scope.thread != thread:
                if now >= scope.wall_end:
                    return True
                next_check = min(next_check, scope.wall_end)
            else:
                left = scope.seconds - (now_cpu - scope.cpu_start)
                if left <= 0:
                    return True
                next_check = min(next_check, now + left)
        scope = scope.outer
    state.deadline = next_check
    return False


def checkpoint() -> _Allowance | None:
    """Raise when the render's time is up; returns the render's allowance (None outside one).
    (The guards below run for every filter and call of every recipient: they are written for speed.)"""
    state = _ALLOWANCE.get()
    if state is not None and time.monotonic() > state.deadline and expired():
        raise LimitExceeded("time", "rendering took too long")
    return state


def _over_budget() -> LimitExceeded:
    return LimitExceeded("work", f"template work exceeds the {megabytes(WORK_BUDGET)} budget")


def charge(cost: int) -> None:
    """Count `cost` bytes against the render's work budget."""
    state = _ALLOWANCE.get()
    if state is not None:
        state.work_left -= cost
        if state.work_left < 0:
            raise _over_budget()


_TEXTS = (str, bytes)
_COLLECTIONS = (list, tuple, dict, set, frozenset)


def charge_result(value: Any, what: str, state: _Allowance | None = None) -> Any:
    """Check a produced value against the size limits and charge it (to `state`, else the current
    render's allowance); returns it."""
    if isinstance(value, _TEXTS):
        cost = len(value)
        if cost > MAX_VALUE:
            raise _too_large(what)
    elif isinstance(value, _COLLECTIONS):
        if len(value) > MAX_ITEMS:
            raise _too_many(what)
        cost = ITEM_COST * len(value)
    else:
        return value
    state = state or _ALLOWANCE.get()
    if state is not None:
        state.work_left -= cost
        if state.work_left < 0:
            raise _over_budget()
    return value


# --------------------------------------------------------------------------------------------------------
# Measuring values without converting them
# --------------------------------------------------------------------------------------------------------

_SMALL = 64  # the printed size assumed for other objects (numbers, dates, macros, generators...)


def text_size(value: Any, limit: int = MAX_VALUE) -> int:
    """An upper estimate of `len(str(value))`, found without building the string; any answer above
    `limit` means "too large" (the walk stops there, and after MAX_ITEMS objects)."""
    if isinstance(value, str):
        return len(value)
    if value is None or isinstance(value, float) or isinstance(value, int) and value.bit_length() < 64:
        return 24
    total = 0
    steps = 0
    pending = [value]
    while pending:
        item = pending.pop()
        steps += 1
        if isinstance(item, str):
            # Inside a container a string prints as its repr: quotes, plus escapes for odd characters
            # (checked only when the plain length still fits: isprintable() reads the whole string).
            total += len(item) + 2
            if total <= limit and not item.isprintable():
                total += 9 * len(item)
        elif isinstance(item, bytes):
            total += 4 * len(item) + 3
        elif isinstance(item, int) and not isinstance(item, bool):
            total += item.bit_length() // 3 + 2
        elif isinstance(item, list | tuple | set | frozenset | KeysView | ValuesView | ItemsView):
            total += 16 + 2 * len(item)  # brackets (or a type name) and separators
            if len(item) > MAX_ITEMS:
                return limit + 1
            pending.extend(item)
        elif isinstance(item, dict | Namespace):
            mapping: Mapping[Any, Any] = item if isinstance(item, dict) else _namespace_items(item)
            total += 16 + 4 * len(mapping)
            if len(mapping) > MAX_ITEMS:
                return limit + 1
            pending.extend(mapping.keys())
            pending.extend(mapping.values())
        elif not isinstance(item, Undefined):
            total += _SMALL
        if total > limit or steps > MAX_ITEMS:
            return limit + 1
    return total


def _namespace_items(ns: Namespace) -> dict[str, Any]:
    return dict(object.__getattribute__(ns, "_Namespace__attrs"))


def check_text(value: Any, what: str) -> int:
    """Refuse a value whose printed form would exceed MAX_VALUE; returns its estimated size."""
    size = text_size(value)
    if size > MAX_VALUE:
        raise _too_large(what)
    return size


def bounded_items(values: Any, what: str, limit: int = MAX_ITEMS) -> Any:
    """`values` itself when it is a sized collection of at most `limit` items; an iterator (a generator
    from `map`, `select`, `batch`...) is drawn into a list here, item by item, so its work is timed and
    counted instead of running inside one C call."""
    if isinstance(values, Sized):
        if len(values) > limit:
            raise _too_many(what, limit)
        return values
    if isinstance(values, Undefined) or not isinstance(values, Iterable):
        return values
    out = []
    for count, item in enumerate(values, 1):
        if count > limit:
            raise _too_many(what, limit)
        if not count & 1023:
            checkpoint()
        out.append(item)
    charge(ITEM_COST * len(out))
    return out


# The characters str.split() and str.splitlines() break on; deleting them counts them in one C pass.
WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"  # noqa: E501
LINE_BREAKS = "\n\x0b\x0c\r\x1c\x1d\x1e\x85\u2028\u2029"
_WHITESPACE = dict.fromkeys(map(ord, WHITESPACE))
_LINE_BREAKS = dict.fromkeys(map(ord, LINE_BREAKS))


def _count_deleted(text: str, table: Mapping[int, None]) -> int:
    return len(text) - len(text.translate(table))


def _words(text: str) -> int:
    """An upper bound of the whitespace-separated words of `text`."""
    return _count_deleted(text, _WHITESPACE) + 1


def _lines(text: str) -> int:
    return _count_deleted(text, _LINE_BREAKS) + 1


# --------------------------------------------------------------------------------------------------------
# Operators and formatting
# --------------------------------------------------------------------------------------------------------

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([a-zA-Z%])")
_DIGITS = re.compile(r"\d+")


def _int_arg(value: Any, what: str, limit: int = MAX_VALUE) -> None:
    """A width (characters, against MAX_VALUE) or a count (items, against a smaller limit)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > limit:
        raise _too_large(what) if limit == MAX_VALUE else _too_many(what, limit)


def _largest_text(values: Iterable[Any]) -> int:
    return max((text_size(v) for v in values), default=0)


def _number(text: str | None) -> int:
    return int(text) if text and text != "*" else 0


@functools.lru_cache(maxsize=256)  # the same short formats recur for every recipient
def _percent_shape(fmt: str) -> tuple[int, int, bool]:
    """(conversions, digits of the largest width or precision, whether a width comes from the arguments)."""
    return fmt.count("%"), max(map(len, _DIGITS.findall(fmt)), default=0), "*" in fmt


def check_percent_format(fmt: str, args: Any) -> None:
    """`'%s%s…' % (a, a, …)` and `'%999999999s' % x`: every conversion can print its largest argument,
    padded to its width or precision."""
    # Like `%` itself: a tuple holds the arguments, a mapping names them, anything else is the one argument.
    values = list(args.values()) if isinstance(args, Mapping) else list(args) if isinstance(args, tuple) else [args]
    conversions, digits, star = _percent_shape(fmt) if len(fmt) <= 256 else _percent_shape.__wrapped__(fmt)
    if conversions > MAX_WORDS:  # counted in C, before the Python work below
        raise _too_many("format conversions", MAX_WORDS)
    widest = 0
    for value in values:
        widest = max(widest, len(value) if type(value) is str else text_size(value))
    if not star and len(fmt) + conversions * max(4 * widest, 10**digits) <= MAX_VALUE:
        return  # the common case: a short format and small values, bounded without parsing it
    argument_width = _largest_int(values) if "*" in fmt else 0  # '%*s' % (width, value)
    _int_arg(argument_width, "format width")
    estimate = len(fmt)
    for match in _PERCENT_SPEC.finditer(fmt):
        width, precision, conversion = match.groups()
        padding = max(_number(width), _number(precision), argument_width if "*" in (width, precision) else 0)
        _int_arg(padding, "format width")
        if conversion != "%":
            estimate += max(widest * (4 if conversion in "ra" else 1), padding)
        if estimate > MAX_VALUE:
            raise _too_large("formatting")


def check_brace_format(fmt: str, args: Iterable[Any]) -> None:
    """The same for str.format: `'{0}{0}{0}…'.format(a)`, `'{:>999999999}'` or a nested width `'{:{}}'`."""
    if fmt.count("{") > MAX_WORDS:  # counted in C, before the Python work below
        raise _too_many("format fields", MAX_WORDS)
    values = list(args)
    widest = _largest_text(values)
    argument_width = _largest_int(values)  # a nested width `{:{}}` comes from the arguments
    estimate = len(fmt)
    try:
        for _literal, field, spec, _conversion in Formatter().parse(fmt):
            if field is None:
                continue
            padding = max(map(int, _DIGITS.findall(spec or "")), default=0)
            if spec and "{" in spec:
                padding = max(padding, argument_width)
            _int_arg(padding, "format width")
            estimate += max(widest, padding)
            if estimate > MAX_VALUE:
                raise _too_large("formatting")
    except ValueError:
        return  # a malformed format: the call itself reports it


def _largest_int(values: Iterable[Any]) -> int:
    return max((abs(v) for v in values if isinstance(v, int) and not isinstance(v, bool)), default=0)


def guard_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        if isinstance(left, int) and not isinstance(left, bool) and isinstance(right, str | bytes | list | tuple):
            left, right = right, left
        if isinstance(left, str | bytes) and isinstance(right, int):
            if len(left) * right > MAX_VALUE:
                raise _too_large("repetition")
        elif isinstance(left, list | tuple) and isinstance(right, int):
            if len(left) * right > MAX_ITEMS:
                raise _too_many("repetition")
        elif isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise LimitExceeded("size", "product too large")
    elif operator == "+":
        if isinstance(left, str | bytes) and isinstance(right, str | bytes) and len(left) + len(right) > MAX_VALUE:
            raise _too_large("concatenation")
        if isinstance(left, list | tuple) and isinstance(right, list | tuple) and len(left) + len(right) > MAX_ITEMS:
            raise _too_many("concatenation")
    elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
        if left.bit_length() * right > MAX_INT_BITS:  # bounds both CPU time and the size of the number
            raise LimitExceeded("size", "power too large")
    elif operator == "%" and isinstance(left, str):
        check_percent_format(left, right)


@pass_eval_context
def guarded_concat(eval_ctx: Any, *values: Any) -> str:
    """The `~` operator: the compiler routes every `a ~ b ~ …` here instead of joining unchecked."""
    state = checkpoint()
    total = 0
    for value in values:
        total += len(value) if type(value) is str else text_size(value)
    if total > MAX_VALUE:
        raise _too_large("concatenation")
    joined: str = markup_join(values) if eval_ctx.autoescape else str_join(values)
    charge_result(joined, "concatenation", state)
    return joined


def guarded_join(pieces: Iterable[str]) -> str:
    """`Environment.concat`: joins the output of macro bodies, `caller()`, `{% set %}` and `{% filter %}`
    blocks and `self.block()`. Their pieces are checked and charged here, before the join allocates."""
    checkpoint()
    if not isinstance(pieces, list):
        pieces = list(bounded_items(pieces, "template block output"))
    total = sum(map(len, pieces))
    if total > MAX_VALUE:
        raise _too_large("template block output")
    charge(total)
    return "".join(pieces)


def guarded_slice(value: Any, start: Any, stop: Any, step: Any) -> Any:
    """`a[i:j]`: the compiler routes every slice here, to charge the copy it makes (`a[i:]` a thousand
    times is a thousand copies)."""
    checkpoint()
    return charge_result(value[start:stop:step], "a slice")


def guard_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    """Every `{% for %}` iterates through this (the compiler wraps each loop's iterable)."""
    end = deadline()
    for item in iterable:
        if time.monotonic() > end:
            if expired():
                raise LimitExceeded("time", "rendering took too long")
            end = deadline()
        yield item


# --------------------------------------------------------------------------------------------------------
# Methods called from templates: str and bytes methods are estimated before they run
# --------------------------------------------------------------------------------------------------------

_CODECS = frozenset({"utf-8", "utf8", "ascii", "latin-1", "latin1", "iso-8859-1", "utf-16", "utf-32"})


def _guard_text_method(target: str | bytes, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Refuse a str or bytes method call whose result (or internal work) would pass a limit."""
    what = f"{type(target).__name__}.{name}"
    if name == "join" and args:
        items = args[0]  # drawn by _materialize_args when it was an iterator
        if isinstance(items, Sized) and len(items) > MAX_ITEMS:
            raise _too_many(what)
        if isinstance(items, Iterable) and not isinstance(items, str | bytes):
            total = sum(len(i) if isinstance(i, str | bytes) else _SMALL for i in items)
            if total + max(len(items) - 1, 0) * len(target) > MAX_VALUE:  # type: ignore[arg-type]
                raise _too_large(what)
    elif name in {"ljust", "rjust", "center", "zfill"} and args:
        _int_arg(args[0], what)
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        tabs = target.count("\t") if isinstance(target, str) else target.count(b"\t")
        if isinstance(tabsize, int) and len(target) + tabs * tabsize > MAX_VALUE:
            raise _too_large(what)
    elif name == "replace" and len(args) >= 2:
        refuse_replace(target, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count", -1), what)
    elif name in {"split", "rsplit"}:
        sep = args[0] if args else kwargs.get("sep")
        _guard_split(target, sep, args[1] if len(args) > 1 else kwargs.get("maxsplit", -1), what)
    elif name == "splitlines" and isinstance(target, str):
        if _lines(target) > MAX_ITEMS:
            raise _too_many(what)
    elif name == "translate" and args and isinstance(args[0], Mapping):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str | bytes)), default=1)
        if len(target) * max(longest, 1) > MAX_VALUE:
            raise _too_large(what)
    elif name in {"encode", "decode"}:
        codec = args[0] if args else kwargs.get("encoding", "utf-8")
        if not isinstance(codec, str) or codec.lower().replace("_", "-") not in _CODECS:
            raise SecurityError(f"{what}: only UTF-8, UTF-16, UTF-32, ASCII and Latin-1 are available in templates")
        if 4 * len(target) > 2 * MAX_VALUE:
            raise _too_large(what)


def _guard_split(target: str | bytes, sep: Any, maxsplit: Any, what: str) -> None:
    if isinstance(maxsplit, int) and 0 <= maxsplit < MAX_ITEMS:
        return
    if isinstance(sep, str | bytes) and sep:
        parts = target.count(sep) + 1  # type: ignore[arg-type]
    elif isinstance(target, str):
        parts = _words(target)
    else:
        parts = len(target) // 2 + 1
    if parts > MAX_ITEMS:
        raise _too_many(what)


def refuse_replace(target: Any, old: Any, new: Any, count: Any, what: str) -> None:
    if not (isinstance(target, str | bytes) and isinstance(old, str | bytes) and isinstance(new, str | bytes)):
        return
    hits = target.count(old) if old else len(target) + 1  # type: ignore[arg-type]
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    if len(target) + hits * max(0, len(new) - len(old)) > MAX_VALUE:
        raise _too_large(what)


def _materialize_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Iterators passed to a builtin (`''.join(gen)`, `dict(gen)`) are drawn here, counted and timed."""
    if not any(isinstance(a, Iterator) for a in args):
        return args
    return tuple(bounded_items(a, "arguments") if isinstance(a, Iterator) else a for a in args)


class _BoundedNamespace(Namespace):
    """`namespace()` is the one mutable store of a template: its values are held to the same limits."""

    def __setitem__(self, name: str, value: Any) -> None:
        checkpoint()
        if isinstance(value, str | bytes) and len(value) > MAX_VALUE:
            raise _too_large("namespace value")
        if isinstance(value, list | tuple | dict) and len(value) > MAX_ITEMS:
            raise _too_many("namespace value")
        super().__setitem__(name, value)


def lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002 (Jinja's names)
    """Jinja's `lipsum` with its size bounded: at most MAX_WORDS words."""
    if not all(isinstance(v, int) for v in (n, min, max)) or n * max > MAX_WORDS or min > max:
        raise LimitExceeded("size", f"lipsum would exceed {MAX_WORDS:,} words")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


# --------------------------------------------------------------------------------------------------------
# Filters: one guard around every filter, plus estimates for the ones that expand or walk their input
# --------------------------------------------------------------------------------------------------------


def _pre_center(value: Any, width: Any = 80) -> Any:
    check_text(value, "the input of filter center")
    _int_arg(width, "filter center")
    return value


def _pre_indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> Any:
    size = check_text(s, "the input of filter indent")
    lines = _lines(s) if isinstance(s, str) else size // 2 + 1
    if lines > MAX_ITEMS:
        raise _too_many("filter indent")
    step = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    if size + lines * step > MAX_VALUE:
        raise _too_large("filter indent")
    return s


def _pre_wordwrap(
    s: Any, width: Any = 79, break_long_words: bool = True, wrapstring: Any = None, break_on_hyphens: bool = True
) -> Any:
    size = check_text(s, "the input of filter wordwrap")
    words = _words(s) if isinstance(s, str) else size // 2 + 1
    if words > MAX_WORDS:  # textwrap works word by word in Python
        raise _too_many("filter wordwrap", MAX_WORDS)
    breaks = size // width + words + 1 if isinstance(width, int) and width > 0 else words + 1
    if size + breaks * len(wrapstring if isinstance(wrapstring, str) else "\n") > MAX_VALUE:
        raise _too_large("filter wordwrap")
    return s


def _pre_replace(s: Any, old: Any, new: Any, count: Any = None) -> Any:
    check_text(s, "the input of filter replace")
    refuse_replace(s, old, new, count if count is not None else -1, "filter replace")
    return s


def _pre_format(value: Any, *args: Any, **kwargs: Any) -> Any:
    check_text(value, "the input of filter format")
    check_percent_format(value if isinstance(value, str) else "", kwargs or args)
    return value


def _pre_by_words(name: str, limit: int) -> Callable[..., Any]:
    """Filters whose work grows with the words (and tags, entities) of their input."""

    what = f"the input of filter {name}"

    def check(value: Any, *args: Any, **kwargs: Any) -> Any:
        size = check_text(value, what)
        tokens = _words(value) + value.count("<") + value.count("&") if isinstance(value, str) else size // 2 + 1
        if tokens > limit:
            raise _too_many(what, limit)
        return value

    return check


def _pre_pprint(value: Any) -> Any:
    check_text(value, "the input of filter pprint")
    if text_size(value, MAX_WORDS * 4) > MAX_WORDS * 4:  # pprint formats item by item in Python
        raise _too_many("the input of filter pprint", MAX_WORDS)
    return value


def _pre_tojson(value: Any, indent: Any = None) -> Any:
    check_text(value, "the input of filter tojson")
    step = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
    if step > MAX_JSON_INDENT:
        raise _too_large("filter tojson (indent)")
    return value


def _consumes(name: str, limit: int = MAX_ITEMS, *, text: bool = False) -> Callable[..., Any]:
    """Filters that read their whole input at once (in C): bounded items, drawn here when an iterator;
    `text` when they also lower-case every item (case-insensitive comparisons)."""

    what = f"the input of filter {name}"

    def check(value: Any, *args: Any, **kwargs: Any) -> Any:
        value = bounded_items(value, what, limit)
        if text:
            check_text(value, what)
        return value

    return check


def _lazy(name: str) -> Callable[..., Any]:
    """Filters that yield items one by one (consumers are guarded): a collection too large to be
    consumed is refused at once, before any of its items is produced."""

    what = f"the input of filter {name}"

    def check(value: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, Sized) and len(value) > MAX_ITEMS:
            raise _too_many(what)
        return value

    return check


def _pre_batch(value: Any, linecount: Any, fill_with: Any = None) -> Any:
    _lazy("batch")(value)
    if fill_with is not None:
        _int_arg(linecount, "filter batch", MAX_ITEMS)
    return value


def _pre_slice(value: Any, slices: Any, fill_with: Any = None) -> Any:
    _int_arg(slices, "filter slice", MAX_ITEMS)
    return bounded_items(value, "the input of filter slice")


def _pre_sum(iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    """Adding lists copies the running total each time: quadratic in the number of items. Count that
    copying (and charge it) before the C loop runs."""
    items = bounded_items(iterable, "the input of filter sum")
    if attribute is None and (isinstance(start, list | tuple) or any(isinstance(i, list | tuple) for i in items)):
        running = len(start) if isinstance(start, Sized) else 0
        copied = 0
        for item in items:
            running += len(item) if isinstance(item, Sized) else 1
            copied += running
            if running > MAX_ITEMS:
                raise _too_many("filter sum")
            if ITEM_COST * copied > WORK_BUDGET:
                raise _over_budget()
        charge(ITEM_COST * copied)
    return items


def _join(func: Callable[..., Any]) -> Callable[..., Any]:
    """`join`: the items (mapped to `attribute` first, when given) are measured before they are joined."""

    @functools.wraps(func)  # keeps jinja's pass_eval_context marker
    def join(eval_ctx: Any, value: Any, d: Any = "", attribute: Any = None) -> Any:
        checkpoint()
        items = bounded_items(value, "the input of filter join")
        if attribute is not None:
            getter = make_attrgetter(eval_ctx.environment, attribute)
            items = [getter(item) for item in items]
        total = check_text(items, "filter join") if isinstance(items, str) else sum(text_size(i) for i in items)
        if total + max(len(items) - 1, 0) * text_size(d) > MAX_VALUE:
            raise _too_large("filter join")
        return charge_result(func(eval_ctx, items, d), "the result of filter join")

    return join


def _wordcount(s: Any) -> int:
    """Jinja's `wordcount` without the list of every word, counted with the deadline checked."""
    count = 0
    for count, _match in enumerate(_WORD.finditer(str(s)), 1):
        if not count & 4095:
            checkpoint()
    return count


_WORD = re.compile(r"\w+")

# Filters that print their input and make a result about as large (at most a few times: escaping, case).
_TEXT_INPUT = frozenset(
    {
        "capitalize",
        "lower",
        "upper",
        "title",
        "trim",
        "escape",
        "e",
        "forceescape",
        "string",
        "safe",
        "urlencode",
        "xmlattr",
        "truncate",
        "filesizeformat",
    }
)

_PRECHECKS: dict[str, Callable[..., Any]] = {
    "wordcount": _pre_by_words("wordcount", MAX_ITEMS),
    "center": _pre_center,
    "indent": _pre_indent,
    "wordwrap": _pre_wordwrap,
    "replace": _pre_replace,
    "format": _pre_format,
    "urlize": _pre_by_words("urlize", MAX_WORDS),
    "striptags": _pre_by_words("striptags", MAX_WORDS),
    "pprint": _pre_pprint,
    "tojson": _pre_tojson,
    "list": _consumes("list"),
    "last": _consumes("last"),
    "reverse": _consumes("reverse"),
    "sort": _consumes("sort", MAX_SORT_ITEMS, text=True),
    "dictsort": _consumes("dictsort", MAX_SORT_ITEMS, text=True),
    "groupby": _consumes("groupby", MAX_SORT_ITEMS, text=True),
    "min": _consumes("min", text=True),
    "max": _consumes("max", text=True),
    **{name: _lazy(name) for name in ("map", "select", "reject", "selectattr", "rejectattr", "unique", "items")},
    "batch": _pre_batch,
    "slice": _pre_slice,
    "sum": _pre_sum,
}  # fmt: skip


def guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Every filter runs through this: deadline first, its estimate (if it has one) before the call,
    then its result checked and charged."""
    precheck = _PRECHECKS.get(name)
    first = 1 if hasattr(func, "jinja_pass_arg") else 0  # index of the filtered value in *args
    what = f"the result of filter {name}"

    if precheck is None and name not in _TEXT_INPUT:

        @functools.wraps(func)  # keeps jinja's pass_context / pass_eval_context marker
        def plain(*args: Any, **kwargs: Any) -> Any:
            state = checkpoint()
            return charge_result(func(*args, **kwargs), what, state)

        return plain

    if name in _TEXT_INPUT:
        input_what = f"the input of filter {name}"

        @functools.wraps(func)
        def text(*args: Any, **kwargs: Any) -> Any:
            state = checkpoint()
            value = args[first] if len(args) > first else None
            if type(value) is not str or len(value) > MAX_VALUE:  # the common case needs no estimate
                check_text(value, input_what)
            return charge_result(func(*args, **kwargs), what, state)

        return text

    assert precheck is not None

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        state = checkpoint()
        value = precheck(*args[first:], **kwargs)
        if len(args) > first and value is not args[first]:
            args = (*args[:first], value, *args[first + 1 :])
        return charge_result(func(*args, **kwargs), what, state)

    return guarded


def default(value: Any, default_value: Any = "", boolean: bool = False) -> Any:
    """`default`/`d`: the fallback replaces a missing value, None, and empty or blank text (what a
    marketer means by "no first name"); `boolean=true` also replaces every other false value (0, [])."""
    if isinstance(value, Undefined) or value is None or (isinstance(value, str) and not value.strip()):
        return default_value
    if boolean and not value:
        return default_value
    return value


# --------------------------------------------------------------------------------------------------------
# The environment
# --------------------------------------------------------------------------------------------------------


class _EmptyUndefined(ChainableUndefined):
    """Undefined names and missing attributes render as "", however deep the chain."""

    __slots__ = ()


def _finalize(value: Any) -> Any:
    """Every `{{ … }}` passes here before it is printed: the printed form must fit, and is charged (the
    output of macros and blocks accumulates in lists before it is joined)."""
    if value is None:
        return ""  # a contact without a name must not say "None"
    state = _ALLOWANCE.get()
    if state is not None:
        state.work_left -= len(value) if type(value) is str else check_text(value, "an output value")
        if state.work_left < 0:
            raise _over_budget()
    elif type(value) is not str:
        check_text(value, "an output value")
    return value


class Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+"})
    concat = staticmethod(guarded_join)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Data keys win over dict methods: `contact.attributes.items` is the attribute called "items".
        if type(obj) is dict and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        # The stock sandbox returns an Undefined that raises only when used; ours would render "" and hide
        # the attempt. Raise at once so `''.__class__.__mro__` is a render error, never silent.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt: str = value.__self__
        is_format_map = value.__name__ == "format_map"

        def checked(*args: Any, **kwargs: Any) -> str:
            if is_format_map and args and isinstance(args[0], Mapping):
                check_brace_format(fmt, args[0].values())
            else:
                check_brace_format(fmt, (*args, *kwargs.values()))
            return wrapped(*args, **kwargs)

        return checked

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        state = checkpoint()
        guard_binop(operator, left, right)
        return charge_result(super().call_binop(context, operator, left, right), _OPERATOR, state)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        state = checkpoint()
        if not isinstance(obj, _TEMPLATE_CALLABLES):
            args = _materialize_args(args)
        target = getattr(obj, "__self__", None)
        if isinstance(target, _TEXTS) and isinstance(getattr(obj, "__name__", None), str):
            _guard_text_method(target, obj.__name__, args, kwargs)
        if state is None:
            return charge_result(super().call(context, obj, *args, **kwargs), "a call")
        state.depth += 1
        try:
            if state.depth > MAX_CALL_DEPTH:
                raise LimitExceeded("depth", f"template calls nest deeper than {MAX_CALL_DEPTH} levels")
            return charge_result(super().call(context, obj, *args, **kwargs), "a call", state)
        finally:
            state.depth -= 1


_OPERATOR = "an operator"
# Macros, `caller` and recursive loops are template code: they take iterators as they are.
_TEMPLATE_CALLABLES = (Macro, LoopContext)


class _GuardCompiledCode(NodeTransformer):
    """Rewrites a parsed template so every loop iterates through `guard_iter`, every `~` goes through
    `guarded_concat` and every slice through `guarded_slice` (in the tree, so the compiler can neither
    fold them unchecked at compile time nor emit them as plain Python)."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        node = self.generic_visit(node)  # type: ignore[assignment]
        node.iter = _filter(GUARD_ITER_NAME, node.iter, [], node.lineno)  # type: ignore[arg-type]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        node = self.generic_visit(node)  # type: ignore[assignment]
        first, *rest = node.nodes
        return _filter(CONCAT_NAME, first, rest, node.lineno)

    def visit_Getitem(self, node: nodes.Getitem) -> nodes.Node:
        node = self.generic_visit(node)  # type: ignore[assignment]
        if not isinstance(node.arg, nodes.Slice):
            return node
        bounds = [
            part if part is not None else nodes.Const(None, lineno=node.lineno)
            for part in (node.arg.start, node.arg.stop, node.arg.step)
        ]
        return _filter(SLICE_NAME, node.node, bounds, node.lineno)


def _filter(name: str, value: nodes.Expr, args: list[nodes.Expr], lineno: int) -> nodes.Filter:
    # As a filter (not a global function) the guard is called directly by the compiled code, and a fold at
    # compile time goes through it too (charged to the compile budget).
    return nodes.Filter(value, name, args, [], None, None, lineno=lineno)


def guard_template(ast: nodes.Template) -> nodes.Template:
    """Refuse the reserved names, then rewrite loops, `~` and slices (see _GuardCompiledCode)."""
    for node in ast.find_all((nodes.Name, nodes.Filter, nodes.Test)):
        name: str = node.name  # type: ignore[attr-defined]  # every one of these three has a name
        if name.startswith(RESERVED_PREFIX):
            raise ReservedName(name)
    return _GuardCompiledCode().visit(ast)  # type: ignore[no-any-return]


class ReservedName(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"the name {name} is reserved")


def make_env(*, autoescape: bool) -> Sandbox:
    env = Sandbox(autoescape=autoescape, undefined=_EmptyUndefined, finalize=_finalize)
    env.filters.update(default=default, d=default, wordcount=_wordcount)
    for name, func in list(env.filters.items()):
        env.filters[name] = _join(func) if name == "join" else guard_filter(name, func)
    env.globals.update({"namespace": _BoundedNamespace, "lipsum": lipsum})
    env.filters.update({GUARD_ITER_NAME: guard_iter, CONCAT_NAME: guarded_concat, SLICE_NAME: guarded_slice})
    return env
