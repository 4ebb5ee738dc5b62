"""Reading a /metrics answer in the tests: every sample by (name, labels), and the difference of two scrapes."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, tuple[tuple[str, str], ...]]
Samples = dict[Key, float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def scrape(client: httpx.AsyncClient, **headers: str) -> Samples:
    answer = await client.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(answer.text)


def key(name: str, **labels: object) -> Key:
    return (name, tuple(sorted((k, str(v)) for k, v in labels.items())))


def of(samples: Mapping[Key, float], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of one series name, by their labels."""
    return {labels: value for (n, labels), value in samples.items() if n == name}


def grown(after: Samples, before: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """How much each sample of `name` grew between two scrapes (this process counts for every test it runs)."""
    deltas = {labels: value - before.get((name, labels), 0.0) for labels, value in of(after, name).items()}
    return {labels: delta for labels, delta in deltas.items() if delta}


def labels(**values: object) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in values.items()))
