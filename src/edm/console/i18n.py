"""The console's languages (docs/console.md#languages).

Each language has a catalogue, `locale/<lang>/LC_MESSAGES/messages.po`, read and compiled to a gettext catalogue
in memory when first needed (read_po → write_mo into a buffer → babel's Translations): no binary `.mo` file is
kept and there is no build step. Every catalogue holds every msgid; the English one may leave a translation
empty, which reads as the msgid itself.

In a test environment (`EDM_ENV=test`) a msgid that the active catalogue does not hold renders as
`⟦MISSING: …⟧`, so a browser test sees at once a string someone forgot to add; elsewhere it falls back to the
English text. Python code marks its msgids with `N_()` (extracted, translated later with the request's
catalogue); templates use `_()`/`{% trans %}`.
"""

from __future__ import annotations

import functools
import io
import re
from dataclasses import dataclass
from pathlib import Path

from babel import Locale
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

from edm.users.service import LOCALES

LOCALE_DIR = Path(__file__).parent / "locale"
DEFAULT = "en"
# How each language names itself in the language switch, and its BCP 47 tag for <html lang>.
NAMES = {"en": "English", "zh_Hans": "简体中文"}
HTML_LANG = {"en": "en", "zh_Hans": "zh-Hans"}
MISSING = "⟦MISSING: {}⟧"

assert set(NAMES) == set(LOCALES), "every language the accounts may choose has a catalogue"


def N_(message: str) -> str:  # noqa: N802 (the conventional name, which the extractor looks for)
    """Marks a msgid in Python code for extraction; the text is translated where it is shown."""
    return message


@dataclass(frozen=True)
class Catalogue:
    language: str
    translations: Translations
    msgids: frozenset[str]
    strict: bool  # test environments: a msgid not in the catalogue is shown as ⟦MISSING: …⟧

    @property
    def locale(self) -> Locale:
        return Locale.parse(self.language)

    def gettext(self, message: str) -> str:
        if message not in self.msgids:
            return MISSING.format(message) if self.strict else message
        return self.translations.gettext(message)

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        if singular not in self.msgids:
            return MISSING.format(singular) if self.strict else (singular if n == 1 else plural)
        return self.translations.ngettext(singular, plural, n)


def po_path(language: str) -> Path:
    return LOCALE_DIR / language / "LC_MESSAGES" / "messages.po"


@functools.cache
def catalogue(language: str, *, strict: bool) -> Catalogue:
    """The compiled catalogue of `language` (read once per process)."""
    with po_path(language).open("rb") as handle:
        po = read_po(handle, locale=language)
    buffer = io.BytesIO()
    write_mo(buffer, po)
    buffer.seek(0)
    msgids = frozenset(m.id if isinstance(m.id, str) else m.id[0] for m in po if m.id)
    return Catalogue(language, Translations(fp=buffer), msgids, strict)


_RANGE = re.compile(r"^\s*([A-Za-z]{1,8})(?:-[A-Za-z0-9]{1,8})*\s*(?:;\s*q\s*=\s*([0-9.]+))?\s*$")


def negotiate(accept_language: str | None) -> str:
    """The language for an Accept-Language header: the most preferred of English and Chinese (any Chinese: the
    console's is Simplified), else English."""
    choices: list[tuple[float, int, str]] = []
    for position, part in enumerate((accept_language or "").split(",")[:20]):
        found = _RANGE.match(part)
        if not found:
            continue
        try:
            quality = float(found.group(2)) if found.group(2) else 1.0
        except ValueError:
            continue
        primary = found.group(1).lower()
        language = {"en": "en", "zh": "zh_Hans"}.get(primary)
        if language is not None and quality > 0:
            choices.append((-quality, position, language))
    return min(choices)[2] if choices else DEFAULT
