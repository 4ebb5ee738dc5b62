"""Markdown templates (docs/templates.md#markdown): the template editor's Markdown mode and the `markdown` field of
`/api/v1/templates` store Markdown source and the HTML converted from it; the HTML is what every render uses.

CommonMark by markdown-it-py, with tables and strikethrough, and with **raw HTML turned off**: `<script>` or
`<b onclick=…>` typed in Markdown comes out as visible text, never as markup. Link destinations are checked by
markdown-it (no `javascript:`, `vbscript:`, `file:` or non-image `data:` URLs). Jinja is kept as written: every
`{{ … }}`, `{% … %}` and `{# … #}` is replaced by a plain placeholder before the conversion and put back after it, so
`[unsubscribe]({{ unsubscribe_url }})` links to the variable and `{{ name | default("there") }}` is not escaped.
Jinja then autoescapes every value at render time, exactly as in an HTML template.

Callers on the event loop run the conversion with `render.off_loop` and check the size first (`MAX_MARKDOWN_BYTES`).
"""

from __future__ import annotations

import re
import secrets

from markdown_it import MarkdownIt

# Markdown parsing has inputs that cost quadratic time (100,000 `![` take 3 s): the source is limited to 64 KB, about
# 1 s at worst, far above a mail's needs, and the conversion runs on the render threads (`render.off_loop`).
MAX_MARKDOWN_BYTES = 64 * 1024
# A Jinja construct: an expression, a statement or a comment (the default delimiters, as `content.render` uses).
JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)

_converter = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]
)


def markdown_to_html(source: str) -> str:
    """The HTML of Markdown `source`, its Jinja constructs untouched (raw HTML in the source is escaped)."""
    kept: list[str] = []
    nonce = secrets.token_hex(6)
    while nonce in source:  # pragma: no cover - 48 random bits
        nonce = secrets.token_hex(6)

    def hold(found: re.Match[str]) -> str:
        kept.append(found.group(0))
        return f"edmjinja{nonce}x{len(kept) - 1}x"

    html: str = _converter.render(JINJA.sub(hold, source))
    if not kept:
        return html
    return re.sub(rf"edmjinja{nonce}x(\d+)x", lambda found: kept[int(found.group(1))], html)
