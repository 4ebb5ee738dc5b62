"""The console's catalogues hold every string its templates and code show, in both languages; plus the pure
pieces of the console: language negotiation, the `next` check, the page registry, the state labels."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from babel import Locale
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from edm.app import create_app
from edm.console import i18n, labels, pages, rendering
from edm.console.auth import safe_next
from edm.vocabulary.events import EventType
from edm.vocabulary.tasks import PauseReason, TaskStatus, WaitingReason
from tests.helpers import settings_for

ROOT = Path(__file__).resolve().parents[2]
CONSOLE = ROOT / "src" / "edm" / "console"
PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _method_map() -> tuple[list[tuple[str, str]], dict[str, dict[str, str]]]:
    """babel.cfg's sections, relative to the console package (the patterns of the file, as pybabel reads them)."""
    methods: list[tuple[str, str]] = []
    options: dict[str, dict[str, str]] = {}
    section = None
    for line in (ROOT / "babel.cfg").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        header = re.fullmatch(r"\[(\w+):\s*(.+)\]", line)
        if header:
            section = header.group(2)
            methods.append((section, header.group(1)))
            options[section] = {}
        elif section is not None and "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            options[section][key] = value
    return methods, options


def _used_msgids() -> set[str]:
    methods, options = _method_map()
    found = set()
    for _filename, _line, message, _comments, _context in extract_from_dir(
        str(CONSOLE), method_map=methods, options_map=options
    ):
        found.add(message if isinstance(message, str) else message[0])
    return found


@pytest.fixture(scope="module")
def used() -> set[str]:
    found = _used_msgids()
    assert {"Dashboard", "Wrong username or password.", "Stop receiving these emails at <b>%(email)s</b>?"} <= found
    return found


@pytest.mark.parametrize("language", sorted(i18n.NAMES))
def test_every_catalogue_holds_every_msgid_and_no_stale_one(language: str, used: set[str]) -> None:
    with i18n.po_path(language).open("rb") as handle:
        catalogue = read_po(handle)
    held = {m.id if isinstance(m.id, str) else m.id[0] for m in catalogue if m.id}
    assert not sorted(used - held), f"missing from {language}: add them (docs/console.md#languages)"
    assert not sorted(held - used), f"no longer used, remove them from {language}"


def test_every_chinese_translation_is_there_and_keeps_the_placeholders(used: set[str]) -> None:
    with i18n.po_path("zh_Hans").open("rb") as handle:
        catalogue = read_po(handle)
    for message in catalogue:
        if not message.id:
            continue
        assert message.string, f"no Chinese for {message.id!r}"
        assert not message.fuzzy, f"fuzzy (unchecked) Chinese for {message.id!r}"
        assert sorted(PLACEHOLDER.findall(str(message.id))) == sorted(PLACEHOLDER.findall(str(message.string))), (
            message.id
        )


def test_a_msgid_missing_from_the_catalogue_is_marked_in_tests_only() -> None:
    strict = i18n.catalogue("zh_Hans", strict=True)
    assert strict.gettext("Dashboard") == "仪表盘"
    assert strict.gettext("Not in any catalogue") == "⟦MISSING: Not in any catalogue⟧"
    lenient = i18n.catalogue("zh_Hans", strict=False)
    assert lenient.gettext("Not in any catalogue") == "Not in any catalogue"
    english = i18n.catalogue("en", strict=True)
    assert english.gettext("Dashboard") == "Dashboard", "an empty English translation is the msgid itself"


@pytest.mark.parametrize(
    ("header", "language"),
    [
        (None, "en"),
        ("", "en"),
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh_Hans"),
        ("zh-Hant-TW", "zh_Hans"),
        ("en-GB,en;q=0.9,zh;q=0.8", "en"),
        ("fr-FR, de;q=0.9", "en"),
        ("fr, zh;q=0.5, en;q=0.4", "zh_Hans"),
        ("en;q=0.2, zh;q=0.8", "zh_Hans"),
        ("zh;q=0, en;q=0.1", "en"),
        ("*", "en"),
        ("zh;q=abc", "en"),
    ],
)
def test_the_browsers_language_is_negotiated(header: str | None, language: str) -> None:
    assert i18n.negotiate(header) == language


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/account", "/account"),
        ("/account?notice=x#tokens", "/account?notice=x#tokens"),
        (None, "/"),
        ("", "/"),
        ("account", "/"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("\\\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("/\t/evil.example", "/"),
        ("/ok\r\nSet-Cookie: x", "/"),
    ],
)
def test_next_is_a_local_path_or_the_dashboard(value: str | None, expected: str) -> None:
    assert safe_next(value) == expected


def test_the_page_registry_says_which_pages_exist(tmp_path: Path) -> None:
    app = create_app(settings_for(f"sqlite:///{tmp_path / 'unused.db'}"))
    get_paths = {route.path for route in app.routes if "GET" in getattr(route, "methods", ())}
    for key, page in pages.PAGES.items():
        assert (page.path in get_paths) == page.built, f"{key}: built={page.built} but route present={not page.built}"
    assert set(pages.MENU) | set(pages.ADMIN_MENU) <= set(pages.PAGES)
    assert not any(pages.PAGES[key].admin for key in pages.MENU) and all(
        pages.PAGES[key].admin for key in pages.ADMIN_MENU
    )


def test_every_state_has_a_label() -> None:
    assert set(labels.TASK_STATUS) == set(TaskStatus)
    assert set(labels.PAUSE_REASON) == set(PauseReason)
    assert set(labels.WAITING_REASON) == set(WaitingReason)
    assert set(labels.EVENT_TYPE) == set(EventType)


def test_the_vendored_files_are_the_recorded_ones() -> None:
    """Every vendored file is listed in its README with the checksum it has, and nothing unlisted is vendored."""
    for folder in (CONSOLE / "static" / "vendor", ROOT / "tests" / "browser" / "vendor"):
        record = (folder / "README.md").read_text()
        recorded = dict(re.findall(r"\| `([^`]+)` \|[^\n]*\| `([0-9a-f]{64})` \|", record))
        files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != "README.md"}
        licences = {name for name in files if "LICENSE" in name}
        assert set(recorded) | licences == files, folder
        for name, digest in recorded.items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


def test_the_filters_format_for_the_language_and_the_time_zone() -> None:
    at = dt.datetime(2026, 1, 5, 14, 3, tzinfo=dt.UTC)
    template = (
        "{{ at|datetime }} | {{ at|date }} | {{ n|number }} | {{ r|percent }} | {{ none|percent }} | {{ at|timeago }}"
    )
    values = {"at": at, "n": 12345, "r": 0.1234, "none": None, "now": at + dt.timedelta(minutes=14)}
    chinese = rendering.environment("zh_Hans", strict=True, auto_reload=False).from_string(template)
    shanghai = {**values, "locale": Locale.parse("zh_Hans"), "tz": ZoneInfo("Asia/Shanghai")}
    assert chinese.render(shanghai) == "2026年1月5日 22:03:00 | 2026年1月5日 | 12,345 | 12.3% | — | 14分钟前"
    english = rendering.environment("en", strict=True, auto_reload=False).from_string(template)
    new_york = {**values, "locale": Locale.parse("en"), "tz": ZoneInfo("America/New_York")}
    assert (
        english.render(new_york) == "Jan 5, 2026, 9:03:00\u202fAM | Jan 5, 2026 | 12,345 | 12.3% | — | 14 minutes ago"
    )
