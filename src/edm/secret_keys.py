"""Strength checks and generation for the deployment's keys: `EDM_SECRET_KEY` (and its predecessor during a
rotation) and `EDM_ENCRYPTION_KEYS`.

Production refuses to start with a key an attacker could guess. A signing key must be at least `MIN_KEY_BYTES`
long *and* carry an estimated `MIN_KEY_BITS` of entropy; encryption keys must be real Fernet keys (url-safe
base64 of 32 bytes) whose text does not look hand-made. `edm keys generate` prints a good pair.

The estimate is deliberately pessimistic and made for machine-generated keys, not passphrases: it takes the
smallest of three figures over the key with known placeholder words removed —

- the empirical (Shannon) entropy of its characters times its length, which a short alphabet or a repeated
  character brings down ("aaaa…", "abab…", "0101…");
- a pattern model: every character costs the bits of the character classes the key uses, except that a
  character that continues a run (the next or previous letter or digit, a keyboard-row neighbour, the same
  character again) costs 1 bit, and a repeat of 3+ characters seen earlier costs a flat `REPEAT_BITS`
  ("abcdef…", "qwerty…", "k3y!k3y!k3y!…");
- the same model with every short word between separators (space, '-', '_', '.', ','), in lower,
  Capitalized or UPPER case, costing at most `WORD_BITS`, as if drawn from a large dictionary ("correct
  horse battery staple").

A random key of 43+ url-safe characters (`secrets.token_urlsafe(32)`) or 64 hex digits estimates well above
the bar; 32 hex digits (16 random bytes) do not, which is what we want.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import secrets
import string
from collections import Counter
from collections.abc import Iterable

from cryptography.fernet import Fernet

MIN_KEY_BYTES = 32
MIN_KEY_BITS = 128
FERNET_KEY_BYTES = 32
REPEAT_BITS = 8.0  # a back-reference: where the repeat starts and how long it is, roughly
WORD_BITS = 16.0  # one word of a 65,536-word dictionary
WORD_MAX_LETTERS = 12
ANALYSED_CHARS = 1024  # a key longer than this is judged on its first 1024 characters (already far past the bar)
GENERATE_HINT = "production needs a strong one: generate it with `edm keys generate`"

# Values people paste from examples. Removed (case-insensitively) before estimating, so "changeme" * 4 is
# worth nothing while a random key that happens to start with "prod-secret-" keeps its random part's worth.
PLACEHOLDER_WORDS = (
    "please-change-me",
    "change-me",
    "change_me",
    "changeme",
    "your-secret-key",
    "secret-key",
    "secret_key",
    "secretkey",
    "secret",
    "password",
    "placeholder",
    "example",
    "insecure",
    "development",
    "dev",
    "test",
    "demo",
    "default",
    "edm",
)

_KEYBOARD_ROWS = ("`1234567890-=", "qwertyuiop[]\\", "asdfghjkl;'", "zxcvbnm,./")


def _keyboard_neighbours() -> dict[str, frozenset[str]]:
    """Each key of a US keyboard's rows with the keys left and right of it."""
    neighbours: dict[str, set[str]] = {}
    for row in _KEYBOARD_ROWS:
        for i, ch in enumerate(row):
            neighbours.setdefault(ch, set()).update(row[max(0, i - 1) : i] + row[i + 1 : i + 2])
    return {ch: frozenset(near) for ch, near in neighbours.items()}


_NEIGHBOURS = _keyboard_neighbours()


def generate_secret_key() -> str:
    """A fresh signing key: 48 random bytes as url-safe text (64 characters, 384 bits)."""
    return secrets.token_urlsafe(48)


def generate_encryption_key() -> str:
    """A fresh Fernet key (url-safe base64 of 32 random bytes)."""
    return Fernet.generate_key().decode()


def estimated_bits(value: str) -> float:
    """A pessimistic estimate of how many bits of entropy `value` carries (see the module docstring)."""
    text = _without_placeholders(value[:ANALYSED_CHARS])
    if not text:
        return 0.0
    return min(_shannon_bits(text), _pattern_bits(text), _word_bits(text))


def secret_key_problem(value: str) -> str | None:
    """Why `value` is not acceptable as a signing key in production, or None when it is."""
    if not value:
        return "is not set"
    if len(value.encode()) < MIN_KEY_BYTES:
        return f"is shorter than {MIN_KEY_BYTES} bytes"
    bits = estimated_bits(value)
    if bits < MIN_KEY_BITS:
        return (
            f"looks guessable (about {int(bits)} bits of entropy estimated, at least {MIN_KEY_BITS} needed; "
            "repeats, a short alphabet, sequences and placeholder words count for little)"
        )
    return None


def encryption_key_problem(value: str) -> str | None:
    """Why `value` is not a usable Fernet key in production, or None when it is. Passphrases are refused here:
    outside production they are stretched into keys, which is fine for demos and weak for real data."""
    try:
        raw = base64.b64decode(value.encode(), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return "is not url-safe base64 (a Fernet key is 44 characters ending in '=')"
    if len(raw) != FERNET_KEY_BYTES:
        return f"decodes to {len(raw)} bytes; a Fernet key is url-safe base64 of exactly {FERNET_KEY_BYTES} bytes"
    if estimated_bits(value) < MIN_KEY_BITS:
        return "does not look random (its bytes repeat or follow a pattern)"
    return None


def split_keys(value: str) -> list[str]:
    """The comma-separated entries of `EDM_ENCRYPTION_KEYS`, blanks dropped."""
    return [k.strip() for k in value.split(",") if k.strip()]


# --------------------------------------------------------------------------------------------------------
# The estimate
# --------------------------------------------------------------------------------------------------------


def _without_placeholders(value: str) -> str:
    lowered = value.lower()
    keep = [True] * len(value)
    for word in PLACEHOLDER_WORDS:
        start = lowered.find(word)
        while start != -1:
            for i in range(start, start + len(word)):
                keep[i] = False
            start = lowered.find(word, start + 1)
    return "".join(ch for ch, kept in zip(value, keep, strict=True) if kept)


def _shannon_bits(text: str) -> float:
    counts = Counter(text)
    total = len(text)
    per_char = -sum(n / total * math.log2(n / total) for n in counts.values())
    return per_char * total


_CHARACTER_CLASSES = (
    (string.ascii_lowercase, 26),
    (string.ascii_uppercase, 26),
    (string.digits, 10),
    (string.punctuation + " ", 33),
)
_OTHER_CLASS_SIZE = 100  # anything beyond printable ASCII: generous, the Shannon figure still bounds it


def _alphabet_size(text: Iterable[str]) -> int:
    """How many characters the classes `text` draws from hold (lower, upper, digits, punctuation, other)."""
    used: set[int] = set()
    for ch in text:
        used.add(
            next((i for i, (members, _) in enumerate(_CHARACTER_CLASSES) if ch in members), len(_CHARACTER_CLASSES))
        )
    sizes = [size for _, size in _CHARACTER_CLASSES] + [_OTHER_CLASS_SIZE]
    return max(2, sum(sizes[i] for i in used))


def _continues_run(previous: str, current: str) -> bool:
    if current == previous:
        return True
    if current.isalnum() and previous.isalnum() and abs(ord(current.lower()) - ord(previous.lower())) == 1:
        return True
    return current.lower() in _NEIGHBOURS.get(previous.lower(), ())


def _pattern_bits(text: str) -> float:
    """Greedy left-to-right parse: repeats of 3+ characters seen earlier cost REPEAT_BITS, characters that
    continue a run cost 1 bit, every other character the bits of the key's alphabet."""
    per_char = math.log2(_alphabet_size(text))
    seen: dict[str, list[int]] = {}  # trigram → start positions, for finding earlier repeats
    bits, i = 0.0, 0
    while i < len(text):
        length = _longest_earlier_match(text, i, seen)
        if length >= 3:
            bits += REPEAT_BITS
            step = length
        else:
            bits += 1.0 if i > 0 and _continues_run(text[i - 1], text[i]) else per_char
            step = 1
        for j in range(i, i + step):
            if j + 3 <= len(text):
                seen.setdefault(text[j : j + 3], []).append(j)
        i += step
    return bits


_WORDS = re.compile(r"([ ._,-]+)")


def _word_bits(text: str) -> float:
    """The pattern model per segment between separators, a short alphabetic segment costing at most one
    dictionary word; each run of separators costs 1 bit."""
    bits = 0.0
    for part in _WORDS.split(text):
        if not part:
            continue
        if _WORDS.fullmatch(part):
            bits += 1.0
        elif _looks_like_a_word(part):
            bits += min(WORD_BITS, _pattern_bits(part))
        else:
            bits += _pattern_bits(part)
    return bits


def _looks_like_a_word(part: str) -> bool:
    """Letters only, at most WORD_MAX_LETTERS, written as words are (lower, Capitalized or UPPER case): a
    random segment in mixed case is not mistaken for one."""
    return (
        part.isalpha()
        and len(part) <= WORD_MAX_LETTERS
        and (part.islower() or part.isupper() or (part[0].isupper() and part[1:].islower()))
    )


def _longest_earlier_match(text: str, i: int, seen: dict[str, list[int]]) -> int:
    best = 0
    for start in seen.get(text[i : i + 3], ()):
        length = 0
        while i + length < len(text) and text[start + length] == text[i + length]:
            length += 1
        best = max(best, length)
    return best
