"""FakeAdapter: the simulated ESP used by demos, tests and benchmarks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from edm.providers.base import OutboundMessage, Outcome, ServiceConfig
from edm.providers.fake import FakeAdapter
from edm.providers.registry import AdapterCache, build_adapter


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    FakeAdapter.reset()
    yield
    FakeAdapter.reset()


def config(service_id: int = 1, batch_size: int = 1, **options: Any) -> ServiceConfig:
    return ServiceConfig(
        service_id=service_id, provider="fake", domain="example.com", options=options, batch_size=batch_size
    )


def message(i: int, to: str | None = None) -> OutboundMessage:
    return OutboundMessage(
        key=f"st_{i}",
        envelope_from="bounce@example.com",
        from_address="news@example.com",
        from_name="News",
        to_address=to or f"user{i}@example.org",
        to_name="",
        subject=f"Hello {i}",
        html="<p>hi</p>",
        text="hi",
    )


async def outcomes(adapter: FakeAdapter, count: int) -> list[Outcome]:
    return [(await adapter.send([message(i)]))[0].outcome for i in range(count)]


MIX = {
    "transient_pct": 10,
    "throttle_pct": 10,
    "quota_pct": 5,
    "auth_pct": 5,
    "permanent_pct": 10,
    "maybe_sent_pct": 10,
}


async def test_error_mix_is_deterministic_for_a_seed() -> None:
    first = await outcomes(FakeAdapter(config(1, seed=42, **MIX)), 400)
    again = await outcomes(FakeAdapter(config(2, seed=42, **MIX)), 400)
    other = await outcomes(FakeAdapter(config(3, seed=7, **MIX)), 400)
    assert first == again
    assert first != other
    counts = Counter(first)
    assert set(counts) == set(Outcome)  # every class of the mix shows up
    assert 0.35 <= counts[Outcome.ACCEPTED] / 400 <= 0.65  # 50 % configured


async def test_no_mix_accepts_everything_with_unique_ids() -> None:
    adapter = FakeAdapter(config())
    results = await adapter.send([message(1)]) + await adapter.send([message(2)])
    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.ACCEPTED]
    ids = [r.provider_message_id for r in results]
    assert all(i is not None and i.startswith("fake-") for i in ids) and ids[0] != ids[1]
    assert adapter.deliveries == [("st_1", "user1@example.org", "Hello 1"), ("st_2", "user2@example.org", "Hello 2")]


async def test_idempotent_resend_returns_same_id_without_second_delivery() -> None:
    adapter = FakeAdapter(config(idempotent=True))
    assert adapter.capabilities.honours_idempotency
    assert adapter.capabilities.idempotency_window_seconds == 3600
    first = (await adapter.send([message(1)]))[0]
    # A second adapter for the same service (e.g. another worker) sees the provider's memory too.
    second = (await FakeAdapter(config(idempotent=True)).send([message(1)]))[0]
    assert first.outcome is second.outcome is Outcome.ACCEPTED
    assert second.provider_message_id == first.provider_message_id
    assert FakeAdapter.delivered_keys(1) == ["st_1"]


async def test_without_idempotency_a_resend_duplicates() -> None:
    adapter = FakeAdapter(config())
    assert not adapter.capabilities.honours_idempotency
    first, second = (await adapter.send([message(1)]))[0], (await adapter.send([message(1)]))[0]
    assert first.provider_message_id != second.provider_message_id
    assert FakeAdapter.delivered_keys(1) == ["st_1", "st_1"]


async def test_maybe_sent_message_did_arrive_and_idempotent_retry_is_safe() -> None:
    adapter = FakeAdapter(config(idempotent=True, maybe_sent_pct=100))
    lost = (await adapter.send([message(1)]))[0]
    assert lost.outcome is Outcome.MAYBE_SENT and lost.provider_message_id is None
    retry = (await FakeAdapter(config(idempotent=True)).send([message(1)]))[0]
    assert retry.outcome is Outcome.ACCEPTED and retry.provider_message_id is not None
    assert FakeAdapter.delivered_keys(1) == ["st_1"]


async def test_fail_after_revokes_the_key_for_the_service() -> None:
    adapter = FakeAdapter(config(fail_after=3))
    got = await outcomes(adapter, 5)
    assert got == [Outcome.ACCEPTED] * 3 + [Outcome.AUTH_CONFIG] * 2
    # Rebuilding the adapter does not bring the key back.
    rebuilt = (await FakeAdapter(config(fail_after=3)).send([message(9)]))[0]
    assert rebuilt.outcome is Outcome.AUTH_CONFIG and rebuilt.status == 401
    assert len(FakeAdapter.delivered_keys(1)) == 3
    # Other services are unaffected.
    assert (await FakeAdapter(config(2, fail_after=3)).send([message(1)]))[0].outcome is Outcome.ACCEPTED


async def test_batch_returns_one_result_per_message_in_order() -> None:
    adapter = FakeAdapter(config(batch_size=50, seed=3, transient_pct=30))
    assert adapter.capabilities.max_batch == 50
    batch = [message(i) for i in range(50)]
    results = await adapter.send(batch)
    assert [r.key for r in results] == [m.key for m in batch]
    accepted = [r.key for r in results if r.outcome is Outcome.ACCEPTED]
    assert 0 < len(accepted) < 50
    assert FakeAdapter.delivered_keys(1) == accepted
    assert adapter.calls == 1
    assert FakeAdapter(config(batch_size=5000)).capabilities.max_batch == 1000


async def test_throttle_carries_retry_after_and_latency_is_simulated() -> None:
    adapter = FakeAdapter(config(throttle_pct=100, retry_after=7.5, latency_ms=30))
    result = (await adapter.send([message(1)]))[0]
    assert result.outcome is Outcome.THROTTLED
    assert result.retry_after == 7.5 and result.status == 429
    assert result.latency_ms >= 30
    assert FakeAdapter.delivered_keys(1) == []


async def test_invalid_tld_is_a_recipient_rejection() -> None:
    result = (await FakeAdapter(config()).send([message(1, to="nobody@nowhere.invalid")]))[0]
    assert result.outcome is Outcome.PERMANENT and result.recipient_rejected


def test_registry_refuses_fake_when_not_allowed_and_unknown_providers() -> None:
    assert isinstance(build_adapter(config(), fake_allowed=True), FakeAdapter)
    with pytest.raises(ValueError, match="not available"):
        build_adapter(config(), fake_allowed=False)
    with pytest.raises(ValueError, match="unknown provider"):
        build_adapter(ServiceConfig(1, "pigeon", "example.com"), fake_allowed=True)


async def test_adapter_cache_rebuilds_only_when_the_config_changes() -> None:
    cache = AdapterCache(fake_allowed=True)
    first = cache.get(config(latency_ms=0))
    assert cache.get(config(latency_ms=0)) is first  # equal dataclass: same adapter, same pool
    changed = cache.get(config(latency_ms=5))
    assert changed is not first and cache.get(config(latency_ms=5)) is changed
    assert cache.get(config(2)) is not changed and len(cache) == 2
    await cache.aclose()
    assert len(cache) == 0
