"""The /metrics answer, the same for `edm serve` and `edm worker` (docs/operations.md#metrics): who may scrape, and
the text: this process's metrics (`edm.telemetry`) followed by the deployment's state read from the database
(`edm.metrics.database`).

Access: with `EDM_METRICS_ALLOW` set, only those networks; with `EDM_METRICS_TOKEN` set, only requests carrying
`Authorization: Bearer <token>`; both may be set (both must hold); with neither, loopback addresses only. A refused
address gets 403, a missing or wrong token 401.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import time
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm import clock
from edm.metrics.database import database_families
from edm.settings import Settings

log = logging.getLogger("edm.metrics")

PATH = "/metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # the text format every Prometheus reads
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def refusal(settings: Settings, client_host: str | None, authorization: str | None) -> Answer | None:
    """403 for an address outside the allowed networks, 401 without the token; None when the scrape may go on."""
    networks = settings.metrics_networks
    if networks and not _allowed(client_host, networks):
        return Answer(403, b"forbidden: this address may not read /metrics\n", (("Content-Type", "text/plain"),))
    token = settings.metrics_token
    if token:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            headers = (("Content-Type", "text/plain"), ("WWW-Authenticate", 'Bearer realm="metrics"'))
            return Answer(401, b"unauthorized: /metrics needs its bearer token\n", headers)
    return None


def _allowed(host: str | None, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address((host or "").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


@dataclass
class Exposition:
    """One per app or worker: renders a scrape, one at a time (concurrent scrapes wait rather than each querying
    the database at once)."""

    settings: Settings
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def answer(
        self,
        sessionmaker: async_sessionmaker[AsyncSession] | None,
        *,
        client_host: str | None,
        authorization: str | None,
    ) -> Answer:
        refused = refusal(self.settings, client_host, authorization)
        if refused is not None:
            return refused
        async with self._lock:
            body = generate_latest(_process_registry()) + await _database_text(sessionmaker)
        return Answer(200, body, (("Content-Type", CONTENT_TYPE),))


def _process_registry() -> CollectorRegistry:
    """This process's metrics; under prometheus-client's multiprocess mode, every process's of this server, read back
    from the shared directory (a fresh registry per scrape, as the library asks)."""
    if not os.environ.get(MULTIPROCESS_DIR):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


async def _database_text(sessionmaker: async_sessionmaker[AsyncSession] | None) -> bytes:
    started = time.perf_counter()
    families: list[Metric] = []
    up = 0
    if sessionmaker is not None:
        try:
            async with sessionmaker() as session:
                families = await database_families(session, now=clock.utc_now())
            up = 1
        except Exception as exc:  # the process's own metrics are still worth answering
            log.warning("metrics.database_failed", extra={"error": type(exc).__name__})
            families = []
    families.append(
        GaugeMetricFamily(
            "edm_metrics_database_up", "1 when this scrape could read the deployment's state from the database.", up
        )
    )
    families.append(
        GaugeMetricFamily(
            "edm_metrics_database_seconds",
            "Time this scrape spent reading the database.",
            time.perf_counter() - started,
        )
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families
