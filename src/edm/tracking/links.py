"""Click tracking's rewriting (SPEC §10.1): every http(s) link of a tracked mail becomes `/t/c/{token}`, the
token naming the SubTask and the TrackedLink; the rendered URL (entities decoded) is what a click may reach.

Pure: `LinkRewriter` collects the links it saw, the composer stores them (one upsert per claim) before the
mail is sent, so a click can never find its link missing.
"""

from __future__ import annotations

import hashlib
import html
import re
import uuid
from collections.abc import Callable

from edm.security.tokens import sign_token

_A_TAG = re.compile(r"<a\b[^>]*>", re.IGNORECASE)
_HREF = re.compile(r"""(\bhref\s*=\s*)("([^"]*)"|'([^']*)')""", re.IGNORECASE)
_TEXT_URL = re.compile(r"https?://[^\s<>\"')\]]+", re.IGNORECASE)
_NO_TRACK = re.compile(r"\bdata-edm-notrack\b", re.IGNORECASE)


def link_id(task_id: int, url: str) -> int:
    """A 63-bit id from (task, URL): the same link always gets the same id, different tasks never share one."""
    digest = hashlib.sha256(f"{task_id}\x1f{url}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1 or 1


class LinkRewriter:
    """The `postprocess` hook of one recipient's render: rewrites links, remembers (link id, URL)."""

    def __init__(self, *, task_id: int, subtask_id: uuid.UUID, key: bytes, base_url: str,
                 keep: Callable[[str], bool]) -> None:
        self.task_id, self.subtask_id, self.key, self.base_url = task_id, subtask_id, key, base_url
        self.keep = keep  # URLs never rewritten (EDM's own unsubscribe/view links)
        self.links: dict[int, str] = {}

    def __call__(self, part: str, value: str) -> str:
        return self._html(value) if part == "html" else _TEXT_URL.sub(lambda m: self._tracked(m.group(0)), value)

    def _html(self, document: str) -> str:
        def tag(match: re.Match[str]) -> str:
            text = match.group(0)
            if _NO_TRACK.search(text):
                return text
            return _HREF.sub(href, text, count=1)

        def href(match: re.Match[str]) -> str:
            raw = match.group(3) if match.group(3) is not None else match.group(4)
            url = html.unescape(raw).strip()
            tracked = self._tracked(url)
            if tracked == url:
                return match.group(0)
            return f'{match.group(1)}"{html.escape(tracked, quote=True)}"'

        return _A_TAG.sub(tag, document)

    def _tracked(self, url: str) -> str:
        if not url.lower().startswith(("http://", "https://")) or self.keep(url):
            return url
        identifier = link_id(self.task_id, url)
        self.links[identifier] = url
        token = sign_token("click", self.subtask_id, key=self.key, link_id=identifier)
        return f"{self.base_url}/t/c/{token}"
