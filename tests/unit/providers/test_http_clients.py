"""The HTTP clients of the ESP adapters: one verifying TLS context for all of them (edm.providers.http)."""

from __future__ import annotations

import ssl

import httpx

from edm.providers.base import ServiceConfig
from edm.providers.registry import build_adapter


def _tls_contexts(adapter: object) -> list[ssl.SSLContext]:
    # httpx keeps the context on its connection pool; there is no public accessor.
    clients: list[httpx.AsyncClient] = adapter._clients  # type: ignore[attr-defined]
    return [client._transport._pool._ssl_context for client in clients]  # type: ignore[attr-defined]


def _config(service_id: int, provider: str, max_concurrency: int) -> ServiceConfig:
    return ServiceConfig(
        service_id=service_id,
        provider=provider,
        domain="mail.example.com",
        credentials={"api_key": "k", "domain": "mail.example.com"},
        max_concurrency=max_concurrency,
    )


def test_every_client_of_every_adapter_shares_one_verifying_tls_context() -> None:
    """Building a context loads the CA bundle (~40 ms of CPU); a service of max_concurrency 100 has 13 clients."""
    wide = build_adapter(_config(1, "sendgrid", 100), fake_allowed=False)
    other = build_adapter(_config(2, "mailgun", 4), fake_allowed=False)
    contexts = _tls_contexts(wide) + _tls_contexts(other)
    assert len(contexts) == 14
    assert len({id(context) for context in contexts}) == 1
    shared = contexts[0]
    assert shared.verify_mode == ssl.CERT_REQUIRED and shared.check_hostname
