"""Showing inbound HTML safely (docs/conversations.md#display-safety). Pure: no database.

Inbound HTML is written by strangers. It is stored as received and sanitized each time it is shown:

* `sanitize` keeps an allow-list of tags and attributes (nh3, the Rust `ammonia` sanitizer): no script, no event
  handler, no form or input, no iframe/object/embed, no `<style>` element, no `<base>`/`<meta>`/`<link>`; links keep
  http(s) and mailto only and open in a new tab without referrer; inline `style` keeps only properties that cannot
  load anything (no `background-image`, no `url(…)`, no `@import`).
* Remote images (`http(s)` src) are replaced by an inert placeholder (a 1×1 transparent GIF as a data URL) unless
  the caller asks to load them; the original URL stays in `data-edm-src`, so a viewer can offer "load images".
  Loading them tells the sender the mail was read, from where: the choice is the reader's.
* `cid:` images point at the message's own inline parts, served from the stored raw message (the caller passes
  the URL of each part).
* `content_security_policy` is the header to serve the result with, in a sandboxed frame: `default-src 'none'`,
  images from data URLs and our own origin (and any https/http origin only when images are loaded), inline styles,
  no script, no form, no plugin.
"""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Callable, Mapping

import nh3

PLACEHOLDER = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
REMOTE_ATTRIBUTE = "data-edm-src"

_TAGS = frozenset(
    {
        "a", "abbr", "address", "b", "bdi", "bdo", "big", "blockquote", "br", "caption", "center", "cite", "code",
        "col", "colgroup", "dd", "del", "details", "dfn", "div", "dl", "dt", "em", "figcaption", "figure", "font",
        "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s",
        "samp", "small", "span", "strike", "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th",
        "thead", "time", "tr", "tt", "u", "ul", "var", "wbr",
    }
)  # fmt: skip
_GENERIC = frozenset({"style", "title", "dir", "lang", "align", "valign", "class", "id"})
_ATTRIBUTES: dict[str, set[str]] = {
    "*": set(_GENERIC),
    "a": {"href", "name"},
    "img": {"src", "alt", "width", "height", "border", "hspace", "vspace"},
    "table": {"width", "height", "border", "cellpadding", "cellspacing", "bgcolor", "summary"},
    "td": {"width", "height", "colspan", "rowspan", "bgcolor", "nowrap"},
    "th": {"width", "height", "colspan", "rowspan", "bgcolor", "nowrap", "scope"},
    "tr": {"bgcolor", "height"},
    "col": {"span", "width"},
    "colgroup": {"span", "width"},
    "font": {"color", "face", "size"},
    "ol": {"start", "type", "reversed"},
    "ul": {"type"},
    "li": {"value"},
    "blockquote": {"cite", "type"},
    "q": {"cite"},
    "del": {"cite", "datetime"},
    "ins": {"cite", "datetime"},
    "time": {"datetime"},
    "details": {"open"},
}
# Inline style properties that cannot fetch anything: layout, text and colours. No background-image, list-style-image,
# border-image, cursor, content, behavior, or shorthand `background` (it takes url()).
_STYLE_PROPERTIES = frozenset(
    {
        "background-color", "border", "border-bottom", "border-bottom-color", "border-bottom-style",
        "border-bottom-width", "border-collapse", "border-color", "border-left", "border-left-color",
        "border-left-style", "border-left-width", "border-radius", "border-right", "border-right-color",
        "border-right-style", "border-right-width", "border-spacing", "border-style", "border-top", "border-top-color",
        "border-top-style", "border-top-width", "border-width", "clear", "color", "direction", "display", "float",
        "font", "font-family", "font-size", "font-style", "font-variant", "font-weight", "height", "letter-spacing",
        "line-height", "list-style-type", "margin", "margin-bottom", "margin-left", "margin-right", "margin-top",
        "max-height", "max-width", "min-height", "min-width", "opacity", "overflow", "padding", "padding-bottom",
        "padding-left", "padding-right", "padding-top", "table-layout", "text-align", "text-decoration",
        "text-indent", "text-transform", "vertical-align", "visibility", "white-space", "width", "word-break",
        "word-spacing", "word-wrap",
    }
)  # fmt: skip
_URL_SCHEMES = frozenset({"http", "https", "mailto", "cid", "data"})
_IMG_RE = re.compile(r"<img\b[^>]*>", re.IGNORECASE)
_SRC_RE = re.compile(r'\ssrc="([^"]*)"')
_DATA_IMAGE_RE = re.compile(r"^data:image/(?:png|gif|jpeg|jpg|webp|bmp);base64,[A-Za-z0-9+/=\s]*$", re.IGNORECASE)


def sanitize(
    html: str,
    *,
    load_remote_images: bool = False,
    cid_url: Callable[[str], str | None] | Mapping[str, str] | None = None,
) -> str:
    """Inbound HTML made safe to show (module docstring). `cid_url` maps a Content-ID (without brackets) to the URL
    its part is served at; an unknown cid becomes the placeholder."""
    lookup = _cid_lookup(cid_url)
    cleaned = nh3.clean(
        html,
        tags=set(_TAGS),
        attributes={tag: set(names) for tag, names in _ATTRIBUTES.items()},
        attribute_filter=_attribute_filter,
        url_schemes=set(_URL_SCHEMES),
        link_rel="noopener noreferrer nofollow",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        filter_style_properties=set(_STYLE_PROPERTIES),
        strip_comments=True,
        clean_content_tags={"script", "style", "title", "head", "template", "noscript", "textarea", "select"},
    )
    return _IMG_RE.sub(lambda found: _image(found.group(0), load_remote_images, lookup), cleaned)


def text_as_html(text: str) -> str:
    """A text/plain body shown in the same frame: escaped, lines kept."""
    return f'<pre style="white-space: pre-wrap; word-wrap: break-word">{html_lib.escape(text)}</pre>'


def content_security_policy(*, own_origin: str, remote_images: bool = False) -> str:
    """The CSP to serve sanitized HTML with (a sandboxed document: no script, no form, no plugin, no navigation of
    the parent). `own_origin` serves `cid:` parts; remote images only when the reader asked to load them."""
    images = f"data: {own_origin}".strip() + (" https: http:" if remote_images else "")
    return (
        f"default-src 'none'; img-src {images}; style-src 'unsafe-inline'; font-src 'none'; form-action 'none'; "
        "frame-ancestors 'self'; base-uri 'none'; sandbox allow-popups allow-popups-to-escape-sandbox"
    )


def page(body: str, *, title: str = "") -> str:
    """A whole document around sanitized HTML (what the frame shows)."""
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><meta name="referrer" content="no-referrer">'
        f"<title>{html_lib.escape(title)}</title></head><body>{body}</body></html>"
    )


# -- helpers ------------------------------------------------------------------------------------------------


def _attribute_filter(tag: str, attribute: str, value: str) -> str | None:
    if attribute == "src" and tag == "img":
        lowered = value.strip().lower()
        if lowered.startswith(("http://", "https://", "cid:")):
            return value
        if lowered.startswith("data:") and _DATA_IMAGE_RE.match(value.strip()):
            return value
        return None
    if attribute == "href":
        lowered = value.strip().lower()
        return value if lowered.startswith(("http://", "https://", "mailto:", "#")) else None
    if attribute in ("class", "id"):  # kept harmless: no collision with the viewer's own names
        return "edm-m-" + re.sub(r"[^A-Za-z0-9_-]", "", value)[:64] if value.strip() else None
    return value


def _image(tag: str, load_remote: bool, cid_url: Callable[[str], str | None]) -> str:
    found = _SRC_RE.search(tag)
    if found is None:
        return tag
    src = html_lib.unescape(found.group(1))
    lowered = src.strip().lower()
    if lowered.startswith("cid:"):
        url = cid_url(src.strip()[4:].strip("<>"))
        replacement = f' src="{html_lib.escape(url or PLACEHOLDER)}"'
    elif lowered.startswith(("http://", "https://")) and not load_remote:
        replacement = f' src="{PLACEHOLDER}" {REMOTE_ATTRIBUTE}="{html_lib.escape(src)}"'
    else:
        return tag
    return tag[: found.start()] + replacement + tag[found.end() :]


def _cid_lookup(cid_url: Callable[[str], str | None] | Mapping[str, str] | None) -> Callable[[str], str | None]:
    if cid_url is None:
        return lambda _cid: None
    if callable(cid_url):
        return cid_url
    mapping = {key.lower(): value for key, value in cid_url.items()}
    return lambda cid: mapping.get(cid.lower())
