"""Every HTML page EDM serves works offline: nothing on it loads from another host (a CDN, a font service, a
validator), and the API docs' Swagger UI files are served by EDM itself from the package."""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from edm import clock
from edm.api import docs
from edm.db.session import unit_of_work
from edm.models.tasks import SubTask
from edm.security.tokens import sign_token
from edm.tasks import generation
from tests import factories
from tests.helpers import settings_for
from tests.integration.demo_pages import HOST, DemoApp, demo_app, fill_mailbox

# Attributes whose value the browser loads (or navigates to) by itself.
URL_ATTRIBUTES = {"src", "href", "action", "formaction", "poster", "data", "background", "srcset", "xlink:href"}
CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)|@import\s+(?:url\()?\s*['"]?([^'");\s]+)""", re.IGNORECASE)
SCRIPT_URL = re.compile(r"""['"`]((?:https?:)?//[^'"`\s]+)""", re.IGNORECASE)


class PageScan(HTMLParser):
    """The URLs an HTML page would make a browser fetch: attributes, inline CSS, strings in inline scripts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self._in = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in = tag
        for name, value in attrs:
            if value is None:
                continue
            if name in URL_ATTRIBUTES:
                self.urls += (
                    [part.split()[0] for part in value.split(",") if part.strip()]
                    if name == "srcset"
                    else [value.strip()]
                )
            elif name == "style":
                self.urls += css_urls(value)
            elif name == "content" and dict(attrs).get("http-equiv", "").lower() == "refresh":
                self.urls += [m.group(1) for m in re.finditer(r"url\s*=\s*['\"]?([^'\";]+)", value, re.I)]

    def handle_endtag(self, tag: str) -> None:
        self._in = ""

    def handle_data(self, data: str) -> None:
        if self._in == "style":
            self.urls += css_urls(data)
        elif self._in == "script":
            self.urls += SCRIPT_URL.findall(data)


def css_urls(css: str) -> list[str]:
    return [a or b for a, b in CSS_URL.findall(css)]


def foreign(urls: Iterable[str], page_url: str) -> list[str]:
    """The URLs that point at another host than the page's own (absolute or protocol-relative)."""
    own = urlsplit(page_url).netloc
    out = []
    for url in urls:
        if url.startswith(("data:", "#", "mailto:", "javascript:")):
            continue
        host = urlsplit(urljoin(page_url, url)).netloc
        if host != own:
            out.append(url)
    return out


def loads_of(page: str) -> list[str]:
    scan = PageScan()
    scan.feed(page)
    scan.close()
    return scan.urls


def html_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of every route whose endpoint answers an HTML page, found by walking the app's routes."""
    found = set()
    for route in _walk(app.routes):
        endpoint = getattr(route, "endpoint", None)
        if endpoint is None:
            continue
        returns = inspect.signature(endpoint, eval_str=True).return_annotation
        if isinstance(returns, type) and issubclass(returns, HTMLResponse):
            found |= {(method, route.path) for method in getattr(route, "methods", ()) if method != "HEAD"}
    return found


def _walk(routes: Iterable[Any]) -> Iterator[Any]:
    for route in routes:
        # An included router (FastAPI keeps it whole) or a mount: its own routes; otherwise the route itself.
        children = getattr(getattr(route, "original_router", None), "routes", None) or getattr(route, "routes", None)
        if children is not None:
            yield from _walk(children)
        else:
            yield route


# ---- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture
async def demo(db_url: str, engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[DemoApp]:
    await fill_mailbox(tmp_path / "mailbox")
    async with demo_app(db_url, engine, tmp_path / "mailbox") as running:
        yield running


async def unsubscribe_token(sessionmaker: async_sessionmaker[AsyncSession], db_url: str) -> str:
    """A valid unsubscribe token of a real SubTask (a task generated, not sent)."""
    async with unit_of_work(sessionmaker) as session:
        user_id = await factories.user(session, "ann", credit=100)
        sender = await factories.sender(session, user_id)
        template = await factories.template(session, user_id)
        await factories.contacts(session, user_id, 1, prefix="rcpt")
        task_id = await factories.task(
            session, user_id, sender_id=sender, template_ids=[template], rule={"type": "all_contacts"}
        )
        await generation.generate(session, task_id, now=clock.utc_now())
    async with sessionmaker() as session:
        public_id = await session.scalar(select(SubTask.public_id))
    return sign_token("unsubscribe", public_id, key=settings_for(db_url).signing_key)


# ---- tests -------------------------------------------------------------------------------------------------


async def test_no_html_page_loads_anything_from_another_host(
    demo: DemoApp, sessionmaker: async_sessionmaker[AsyncSession], db_url: str
) -> None:
    token = await unsubscribe_token(sessionmaker, db_url)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    pages = {  # (method, route) -> the requests that show its pages (every variant the route renders)
        ("GET", docs.DOCS_PATH): [("GET", docs.DOCS_PATH)],
        ("GET", "/demo/mailbox"): [("GET", "/demo/mailbox")],
        ("GET", "/demo/mailbox/{number}"): [("GET", "/demo/mailbox/1"), ("GET", "/demo/mailbox/2")],
        ("GET", "/u/{token}"): [("GET", f"/u/{token}"), ("GET", "/u/test"), ("GET", "/u/not-a-token")],
        ("POST", "/u/{token}"): [("POST", f"/u/{token}"), ("POST", "/u/test"), ("POST", "/u/not-a-token")],
        ("GET", "/t/c/{token}"): [("GET", "/t/c/not-a-token")],  # the "link not valid" page
    }
    discovered = html_routes(demo.app)
    assert {("GET", docs.DOCS_PATH), ("POST", "/u/{token}"), ("GET", "/demo/mailbox")} <= discovered, discovered
    uncovered = discovered - set(pages)
    assert not uncovered, f"HTML routes this test does not fetch yet: add them to `pages`: {sorted(uncovered)}"

    checked = 0
    for requests in pages.values():
        for method, path in requests:
            answer = await demo.client.request(
                method,
                path,
                content=b"List-Unsubscribe=One-Click" * (method == "POST"),
                headers=form if method == "POST" else None,
            )
            assert answer.headers["content-type"].startswith("text/html"), (path, answer.status_code)
            page_url = f"http://{HOST}{path}"
            urls = loads_of(answer.text)
            assert not foreign(urls, page_url), f"{method} {path} loads from another host: {foreign(urls, page_url)}"
            checked += 1
    assert checked == 11


async def test_the_docs_page_loads_swagger_ui_from_edm(demo: DemoApp) -> None:
    page = await demo.client.get("/api/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "cdn." not in page.text and "SwaggerUIBundle(" in page.text
    assert '"validatorUrl": null' in page.text, "Swagger UI must not send the API document to a remote validator"
    scan = loads_of(page.text)
    assets = [url for url in scan if url.startswith(docs.STATIC_PATH)]
    expected_types = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
    assert {Path(url).suffix for url in assets} == set(expected_types), scan
    for url in assets:
        answer = await demo.client.get(url)
        assert answer.status_code == 200, url
        assert answer.headers["content-type"].startswith(expected_types[Path(url).suffix]), url
        assert "immutable" in answer.headers["cache-control"] and "max-age=31536000" in answer.headers["cache-control"]
        assert answer.content == (docs.STATIC_DIR / Path(url).name).read_bytes()
        if url.endswith(".css"):
            assert not foreign(css_urls(answer.text), f"http://{HOST}{url}"), "the stylesheet loads nothing remote"
    openapi = await demo.client.get(re.search(r"url: '([^']+)'", page.text).group(1))  # type: ignore[union-attr]
    assert openapi.status_code == 200 and openapi.json()["info"]["title"] == "EDM"


async def test_only_the_vendored_files_are_served(demo: DemoApp) -> None:
    for name in ("VENDORED.md", "LICENSE", "..%2F..%2Fdocs.py", "nope.js"):
        answer = await demo.client.get(f"{docs.STATIC_PATH}/{name}")
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found", name
    other_version = await demo.client.get("/api/docs/static/0.0.1/swagger-ui.css")
    assert other_version.status_code == 404


def test_the_vendored_files_are_the_recorded_ones() -> None:
    """VENDORED.md records each vendored file's checksum: the record and the files must agree."""
    record = (docs.STATIC_DIR / "VENDORED.md").read_text()
    recorded = dict(re.findall(r"\| `([^`]+)` \| `([0-9a-f]{64})` \|", record))
    assert set(recorded) == {*docs.ASSETS, "LICENSE", "NOTICE"}
    for name, digest in recorded.items():
        assert hashlib.sha256((docs.STATIC_DIR / name).read_bytes()).hexdigest() == digest, name
    assert f"swagger-ui-dist@{docs.SWAGGER_UI_VERSION}" in record
