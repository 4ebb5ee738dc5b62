"""Every provider's webhook parser, fed each sample with one value at a time replaced by a value of another
type (and a few structural breakages), either parses or raises MalformedPayload: never another exception,
which the endpoint would turn into a 500 (bad input gets a 4xx and loses nothing)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from edm.providers import registry
from edm.providers.webhook import MalformedPayload, ParsedPayload
from edm.vocabulary.events import BadElement, NormalizedEvent
from tests.unit.providers.support import SAMPLES, webhook_request

REPLACEMENTS: tuple[Any, ...] = (None, 0, -1, 1e308, "", "x", [], {}, True, "9" * 40)
FOLDERS = {
    "engagelab": "engagelab",
    "sendgrid": "sendgrid",
    "mailgun": "mailgun",
    "ses": "amazon_ses",
    "postmark": "postmark",
    "brevo": "brevo",
    "sparkpost": "sparkpost",
    "resend": "resend",
}


def _webhook_samples() -> Iterator[tuple[str, str, Any]]:
    for provider, folder in FOLDERS.items():
        for path in sorted((SAMPLES / folder).glob("*.json")):
            if path.name.startswith("api_") or path.name.endswith(".message.json") or "form_fields" in path.name:
                continue
            yield provider, path.name, json.loads(path.read_text())


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:3]):
            yield from _paths(item, (*prefix, index))


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replaced(value[path[0]], path[1:], new)
    return copy


def _variants(sample: Any) -> Iterator[Any]:
    for path in _paths(sample):
        for new in REPLACEMENTS:
            yield _replaced(sample, path, new)
    if isinstance(sample, dict) and isinstance(sample.get("Message"), str):  # SNS: break the inner JSON too
        try:
            inner = json.loads(sample["Message"])
        except ValueError:
            return
        for path in _paths(inner):
            for new in (None, 0, "", [], {}):
                yield {**sample, "Message": json.dumps(_replaced(inner, path, new))}


@pytest.mark.parametrize(
    ("provider", "name", "sample"), list(_webhook_samples()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_a_mutated_sample_parses_or_is_refused_as_malformed(provider: str, name: str, sample: Any) -> None:
    handler = registry.webhook_handler(provider)
    assert handler is not None
    content_type = "text/plain" if provider == "ses" else "application/json"
    checked = 0
    for variant in _variants(sample):
        body = json.dumps(variant).encode()
        try:
            parsed = handler.parse(webhook_request(body, content_type=content_type, headers={"svix-id": "msg_1"}))
        except MalformedPayload:
            continue
        assert isinstance(parsed, ParsedPayload)
        assert all(isinstance(item, NormalizedEvent | BadElement) for item in parsed.items)
        checked += 1
    assert checked > 0, "no variant parsed at all: the mutation did not exercise the parser"
