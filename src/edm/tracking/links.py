"""Click tracking's rewriting (docs/tracking.md#clicks): every http(s) link of a tracked mail becomes `/t/c/{token}`,
the token naming the SubTask and the TrackedLink; the rendered URL (entities decoded) is what a click may reach.

Pure: `LinkRewriter` collects the links it saw, the composer stores them (one upsert per claim) before the
mail is sent, so a click can never find its link missing.
"""

from __future__ import annotations

import functools
import hashlib
import html
import re
import uuid
from collections.abc import Callable

from edm.security.tokens import sign_token

_A_TAG = re.compile(r"<a\b[^>]*>", re.IGNORECASE)
_HREF = re.compile(r"""(\bhref\s*=\s*)("([^"]*)"|'([^']*)')""", re.IGNORECASE)
_TEXT_URL = re.compile(r"https?://[^\s<>\"')\]]+", re.IGNORECASE)
# Sentence punctuation after a URL in running text is not part of it (what every linkifier assumes).
_TRAILING_PUNCTUATION = ".,;:!?"
_NO_TRACK = re.compile(r"\bdata-edm-notrack\b", re.IGNORECASE)


@functools.lru_cache(maxsize=4096)  # the same links recur for every recipient of a task
def link_id(task_id: int, url: str) -> int:
    """A 63-bit id from (task, URL): the same link always gets the same id, different tasks never share one."""
    digest = hashlib.sha256(f"{task_id}\x1f{url}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1 or 1


def _parsed_tag(text: str) -> tuple[str, str, str, bool] | None:
    """An `<a …>` tag as (text before the href value, the URL, text after it, whether it may be tracked), or
    None without an href. The same tags recur in every recipient's HTML: parsed once (`_TAGS`)."""
    known = _TAGS.get(text, _UNSEEN)
    if known is not _UNSEEN:
        return known  # type: ignore[return-value]
    found = _HREF.search(text)
    parsed = None
    if found is not None:
        raw = found.group(3) if found.group(3) is not None else found.group(4)
        url = html.unescape(raw).strip()
        parsed = (text[: found.start()] + found.group(1), url, text[found.end() :], not _NO_TRACK.search(text))
    if len(_TAGS) >= _TAGS_LIMIT:
        _TAGS.clear()
    _TAGS[text] = parsed
    return parsed


_TAGS: dict[str, tuple[str, str, str, bool] | None] = {}  # shared by the render threads: single dict operations
_TAGS_LIMIT = 10_000
_UNSEEN = object()


class LinkRewriter:
    """The `postprocess` hook of one recipient's render: rewrites links, remembers (link id, URL)."""

    def __init__(
        self, *, task_id: int, subtask_id: uuid.UUID, key: bytes, base_url: str, keep: Callable[[str], bool]
    ) -> None:
        self.task_id, self.subtask_id, self.key, self.base_url = task_id, subtask_id, key, base_url
        self.keep = keep  # URLs never rewritten (EDM's own unsubscribe/view links)
        self.links: dict[int, str] = {}
        # URLs of links the author marked `data-edm-notrack` in the HTML: the text part (rewritten after the
        # HTML) leaves them alone too.
        self.untracked: set[str] = set()
        self._rewritten: dict[str, str] = {}  # URL -> its tracked URL: the text part reuses the HTML's tokens
        self._escaped: dict[str, str] = {}  # tracked URL -> as an attribute value

    def __call__(self, part: str, value: str) -> str:
        return self._html(value) if part == "html" else _TEXT_URL.sub(self._text_url, value)

    def _text_url(self, match: re.Match[str]) -> str:
        found = match.group(0)
        url = found.rstrip(_TRAILING_PUNCTUATION)
        if url in self.untracked:
            return found
        return self._tracked(url) + found[len(url) :]

    def _html(self, document: str) -> str:
        def tag(match: re.Match[str]) -> str:
            text = match.group(0)
            parsed = _parsed_tag(text)
            if parsed is None:
                return text
            before, url, after, tracked_by_author = parsed
            if not tracked_by_author:
                self.untracked.add(url)
                return text
            tracked = self._tracked(url)
            if tracked == url:
                return text
            escaped = self._escaped.get(tracked)
            if escaped is None:
                escaped = self._escaped[tracked] = html.escape(tracked, quote=True)
            return f'{before}"{escaped}"{after}'

        return _A_TAG.sub(tag, document)

    def _tracked(self, url: str) -> str:
        known = self._rewritten.get(url)
        if known is not None:
            return known
        if not url.lower().startswith(("http://", "https://")) or self.keep(url):
            tracked = url
        else:
            identifier = link_id(self.task_id, url)
            self.links[identifier] = url
            tracked = f"{self.base_url}/t/c/{sign_token('click', self.subtask_id, key=self.key, link_id=identifier)}"
        self._rewritten[url] = tracked
        return tracked
