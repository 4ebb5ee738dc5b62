"""The docs name only what exists. Every URL path named in `README.md` and `docs/*.md` — in backticks
(`/healthz`, `GET /api/v1/tasks/{id}`, `/t/o/{token}.gif`) or in a URL on EDM's own example hosts — must be
in the OpenAPI document or served by the app outside it (tracking, unsubscribe, webhooks' GET checks, the demo
mailbox, the API docs, health checks), unless its line marks it as planned. The CLI's help names the web
console, which `edm serve` and `edm demo` serve, and calls it planned nowhere."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from fastapi import FastAPI
from starlette.routing import Match

from edm.app import create_app
from edm.cli.main import app as cli
from tests.helpers import settings_for

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
API_BASE = "/api/v1"
METHODS = "GET|POST|PUT|PATCH|DELETE|HEAD"
# A backticked path, alone or after its methods (`GET,PATCH /x`, `GET/PATCH /x`, `GET|HEAD /x`).
SPAN = re.compile(rf"^(?:((?:{METHODS})(?:[,/|](?:{METHODS}))*)\s+)?(/\S*)$")
# A URL on one of the hosts the docs use for EDM itself (the real server, its placeholders, the demo).
OWN_URL = re.compile(
    r"https?://(?:edm\.example\.com|t\.example\.com|127\.0\.0\.1:8000|localhost:8000"
    r"|<EDM_[A-Z_]+(?: or EDM_[A-Z_]+)?>)(/(?:<[^<>\s]+>|[^\s`'\"<>)])*)"
)
# Files on a host (docs/deploy.md names where things go), not URL paths.
FILE_SYSTEM = ("/etc/", "/opt/", "/var/", "/usr/", "/lib/", "/tmp/", "/backup/")
# Named in the docs on purpose though no EDM route has them; keep this short.
NOT_OURS = {
    "/email/batch": "Postmark's batch endpoint, in the provider table",
    API_BASE: "the API's base path, named as such",
    "/": "the cookie path `Path=/`",
}


@dataclass(frozen=True)
class Named:
    where: str
    methods: tuple[str, ...]
    path: str
    planned: bool


def named_paths() -> Iterator[Named]:
    for doc in DOCS:
        fenced = False
        for number, line in enumerate(doc.read_text().splitlines(), start=1):
            where, planned = f"{doc.relative_to(ROOT)}:{number}", "planned" in line.lower()
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            for match in OWN_URL.finditer(line):
                if match.group(1):
                    yield Named(where, (), match.group(1), planned)
            if fenced:
                continue
            for span in re.findall(r"`([^`]+)`", line):
                found = SPAN.match(span.strip())
                if found and not OWN_URL.search(span) and not found.group(2).startswith(FILE_SYSTEM):
                    methods = tuple(re.split(r"[,/|]", found.group(1))) if found.group(1) else ()
                    yield Named(where, methods, found.group(2), planned)


def variants(path: str) -> list[tuple[list[str], bool]]:
    """(segments, is_prefix) for each reading of a doc path: query cut, `[/{x}]` optional parts both ways,
    placeholders (`{id}`, `<token>`, `ID`, `42`, `5c1e…a9`, `*`) as `{}`, a trailing `…`/`...` a prefix."""
    path = re.split(r"[?#]", path)[0]
    path = path if path.endswith("...") else path.rstrip(".,;:")
    optional = re.search(r"\[([^\]]+)\]", path)
    if optional:
        return variants(path.replace(optional.group(0), optional.group(1))) + variants(
            path.replace(optional.group(0), "")
        )
    segments = path.strip("/").split("/") if path.strip("/") else []
    prefix = bool(segments) and segments[-1] in ("…", "...")
    if prefix:
        segments = segments[:-1]
    return [([_normal(s) for s in segments], prefix)]


def _normal(segment: str) -> str:
    if re.fullmatch(r"\{[^}]*\}|<[^>]*>|ID|N|\d+|\*|[^/]*…[^/]*", segment):
        return "{}"
    return re.sub(r"^(?:\{[^}]*\}|<[^>]*>|\*)(\.\w+)$", r"{}\1", segment)  # `{token}.gif`, `*.gif`


def _route_segments(path: str) -> list[str]:
    return [_normal(s) for s in path.strip("/").split("/")]


def _matches(doc: list[str], route: list[str]) -> bool:
    """Segment by segment: equal, or a concrete value where the route has a placeholder (`/uncertain/abandon`
    for `/uncertain/{action}`); at least one segment equal, so that `/metrics` is not any route's `/{id}`."""
    pairs = list(zip(doc, route, strict=False))
    return (
        len(doc) == len(route)
        and any(d == r for d, r in pairs)
        and all(d == r or (r == "{}" and not d.startswith("{}")) for d, r in pairs)
    )


class Routes:
    def __init__(self, app: FastAPI) -> None:
        self.app = app
        openapi = app.openapi()["paths"]
        self.api = {tuple(_route_segments(p)): {m.upper() for m in ops} for p, ops in openapi.items()}

    def in_openapi(self, segments: list[str], methods: tuple[str, ...], *, prefix: bool, suffix: bool) -> bool:
        """A path of the OpenAPI document has these segments (as a prefix, or as its last segments) and methods."""
        for route, route_methods in self.api.items():
            if prefix:
                hit = _matches(segments, list(route[: len(segments)]))
            elif suffix:
                hit = len(route) >= len(segments) and _matches(segments, list(route[len(route) - len(segments) :]))
            else:
                hit = _matches(segments, list(route))
            if hit and set(methods) <= route_methods | {"HEAD"}:
                return True
        return False

    def served(self, segments: list[str], methods: tuple[str, ...]) -> bool:
        """The app's router answers this path (placeholders filled in) for each method."""
        path = "/" + "/".join("1" + s[2:] if s.startswith("{}") else s for s in segments)
        for method in methods or ("GET",):
            scope = {
                "type": "http",
                "path": path,
                "method": method,
                "root_path": "",
                "headers": [],
                "query_string": b"",
            }
            if not any(route.matches(scope)[0] == Match.FULL for route in self.app.router.routes):
                return False
        return True

    def exists(self, named: Named) -> bool:
        for segments, prefix in variants(named.path):
            for base in ([], API_BASE.strip("/").split("/")):
                full = [*base, *segments]
                if prefix and self.in_openapi(full, named.methods, prefix=True, suffix=False):
                    return True
                if not prefix and (
                    self.in_openapi(full, named.methods, prefix=False, suffix=False) or self.served(full, named.methods)
                ):
                    return True
            # A sibling named after the full path on the same line (`…/schedule`, `/unschedule`, `/pause`):
            # the last segments of an API route.
            if not prefix and segments and self.in_openapi(segments, named.methods, prefix=False, suffix=True):
                return True
        return False


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> Routes:
    # The demo's settings: the demo mailbox is part of what the docs may name. No database is touched.
    db = tmp_path_factory.mktemp("docs") / "unused.db"
    return Routes(create_app(settings_for(f"sqlite:///{db}", env="demo")))


def test_every_path_the_docs_name_exists_or_is_marked_planned(routes: Routes) -> None:
    named = list(named_paths())
    assert len(named) > 100, "the extraction found the docs' paths"
    missing = [
        f"{n.where}: {' '.join(n.methods)} {n.path}".replace(":  ", ": ")
        for n in named
        if not n.planned and n.path not in NOT_OURS and not routes.exists(n)
    ]
    assert not missing, (
        "paths the docs name that EDM does not serve (fix the doc, or say `planned` on the "
        "line):\n" + "\n".join(missing)
    )


def test_the_check_tells_real_paths_from_made_up_ones(routes: Routes) -> None:
    def exists(text: str) -> bool:
        found = SPAN.match(text)
        assert found is not None
        methods = tuple(re.split(r"[,/|]", found.group(1))) if found.group(1) else ()
        return routes.exists(Named("-", methods, found.group(2), planned=False))

    for real in (
        "/healthz",
        "GET /metrics",
        "GET /api/v1/tasks/{id}",
        "POST /tasks/42/pause",
        "/t/o/{token}.gif",
        "GET|HEAD /t/o/*.gif",
        "POST /webhooks/{provider}[/{service_id}]",
        "/admin/…",
        "/demo/mailbox",
        "GET /api/docs",
        "/u/<token>",
        "DELETE /{id}?reason=",
    ):
        assert exists(real), real
    for made_up in (
        "/statistics",
        "/console",
        "GET /api/v1/nothing",
        "DELETE /api/v1/me",
        "/t/x/{token}",
        "/nothing/…",
        "POST /healthz",
    ):
        assert not exists(made_up), made_up


def _help_texts(command: Any, name: str = "edm") -> Iterator[tuple[str, str]]:
    """(command line, help text) of a command and, for a group, of each of its commands."""
    yield name, command.help or ""
    for sub_name, sub in getattr(command, "commands", {}).items():
        yield from _help_texts(sub, f"{name} {sub_name}")


def test_the_cli_help_names_the_console_that_is_there() -> None:
    helps = dict(_help_texts(typer.main.get_command(cli)))
    assert "edm serve" in helps and "edm mailbox show" in helps, "every command's help was read"
    assert "web console" in helps["edm serve"] and "web console" in helps["edm demo"]
    stale = [f"{name}: {text}" for name, text in helps.items() if re.search(r"console[^.]*planned", text, re.I)]
    assert not stale, stale
