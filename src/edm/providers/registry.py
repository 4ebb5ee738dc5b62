"""Provider name → adapter class, and a per-process cache of built adapters (one per service).

Adding a provider: import its class here and add it to `ADAPTERS`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from edm.providers.base import Adapter, Capabilities, ServiceConfig
from edm.providers.fake import FakeAdapter
from edm.providers.smtp import SmtpAdapter

AdapterFactory = Callable[[ServiceConfig], Adapter]

ADAPTERS: dict[str, AdapterFactory] = {
    SmtpAdapter.provider: SmtpAdapter,
    FakeAdapter.provider: FakeAdapter,
}

# Providers that only simulate sending: refused unless the settings allow them (never in production).
SIMULATED_PROVIDERS = frozenset({FakeAdapter.provider})


def build_adapter(config: ServiceConfig, *, fake_allowed: bool) -> Adapter:
    """A new adapter for `config`. ValueError for an unknown provider, or a fake one where not allowed."""
    factory = ADAPTERS.get(config.provider)
    if factory is None:
        raise ValueError(f"unknown provider {config.provider!r} (known: {', '.join(sorted(ADAPTERS))})")
    if config.provider in SIMULATED_PROVIDERS and not fake_allowed:
        raise ValueError(f"provider {config.provider!r} is not available in production")
    return factory(config)


class AdapterCache:
    """One adapter per service id, rebuilt when the service's configuration changes.

    Adapters hold connection pools, so they live as long as their configuration does. A replaced adapter
    may still be serving a send in another task: it is closed in the background (its in-flight
    connections close when their sends finish) and awaited by `aclose()`.
    """

    def __init__(self, *, fake_allowed: bool) -> None:
        self.fake_allowed = fake_allowed
        self._adapters: dict[int, tuple[ServiceConfig, Adapter]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._retired: list[Adapter] = []  # replaced outside a running loop: closed by aclose()

    def get(self, config: ServiceConfig) -> Adapter:
        cached = self._adapters.get(config.service_id)
        if cached is not None and cached[0] == config:
            return cached[1]
        adapter = build_adapter(config, fake_allowed=self.fake_allowed)  # raises before we drop the old one
        self._adapters[config.service_id] = (config, adapter)
        if cached is not None:
            self._retire(cached[1])
        return adapter

    def discard(self, service_id: int) -> None:
        """Forget a service's adapter (service deleted or disabled); it is closed in the background."""
        cached = self._adapters.pop(service_id, None)
        if cached is not None:
            self._retire(cached[1])

    async def aclose(self) -> None:
        adapters = [adapter for _, adapter in self._adapters.values()] + self._retired
        self._adapters.clear()
        self._retired = []
        await asyncio.gather(*(adapter.aclose() for adapter in adapters), return_exceptions=True)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._adapters)

    def _retire(self, adapter: Adapter) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._retired.append(adapter)
            return
        task = loop.create_task(adapter.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


# Provider names a service may be configured with.
PROVIDERS = frozenset(ADAPTERS)


def capabilities_for(config: ServiceConfig) -> Capabilities:
    """What an adapter for `config` can do (batching, idempotency), without opening any connection."""
    factory = ADAPTERS.get(config.provider)
    if factory is None:
        return Capabilities(needs_mime=False)
    capabilities = getattr(factory, "capabilities", None)
    if isinstance(capabilities, Capabilities):
        return capabilities
    return factory(config).capabilities  # capabilities that depend on options (the fake)
