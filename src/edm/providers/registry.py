"""Provider name → adapter class, and a per-process cache of built adapters (one per service).

Adding a provider: import its adapter class here and add it to `ADAPTERS`; name its webhook handler in
`_WEBHOOK_HANDLERS` (looked up and built on first use). That defers building a handler, not loading its code:
the handler classes live in the adapter modules imported below (the DSN and fake handlers come in through
`smtp` and `fake`), so importing this registry, as the send path does, loads every webhook parser too.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from typing import Any

from edm.providers.base import Adapter, Capabilities, ServiceConfig
from edm.providers.brevo import BrevoAdapter
from edm.providers.engagelab import EngageLabAdapter
from edm.providers.fake import FakeAdapter
from edm.providers.inbound_webhook import InboundHandler
from edm.providers.mailgun import MailgunAdapter
from edm.providers.postmark import PostmarkAdapter
from edm.providers.resend import ResendAdapter
from edm.providers.sendgrid import SendGridAdapter
from edm.providers.ses import SesAdapter
from edm.providers.smtp import SmtpAdapter
from edm.providers.sparkpost import SparkPostAdapter
from edm.providers.webhook import WebhookHandler

AdapterFactory = Callable[[ServiceConfig], Adapter]

_ADAPTER_CLASSES: tuple[Any, ...] = (
    SmtpAdapter,
    EngageLabAdapter,
    SendGridAdapter,
    MailgunAdapter,
    SesAdapter,
    PostmarkAdapter,
    BrevoAdapter,
    SparkPostAdapter,
    ResendAdapter,
    FakeAdapter,
)
ADAPTERS: dict[str, AdapterFactory] = {adapter.provider: adapter for adapter in _ADAPTER_CLASSES}

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


# Provider name -> (module, class) of its webhook handler. Imported on first use.
_WEBHOOK_HANDLERS: dict[str, tuple[str, str]] = {
    "engagelab": ("edm.providers.engagelab", "EngageLabWebhook"),
    "sendgrid": ("edm.providers.sendgrid", "SendGridWebhook"),
    "mailgun": ("edm.providers.mailgun", "MailgunWebhook"),
    "ses": ("edm.providers.ses", "SesWebhook"),
    "postmark": ("edm.providers.postmark", "PostmarkWebhook"),
    "brevo": ("edm.providers.brevo", "BrevoWebhook"),
    "sparkpost": ("edm.providers.sparkpost", "SparkPostWebhook"),
    "resend": ("edm.providers.resend", "ResendWebhook"),
    "fake": ("edm.providers.fake_events", "FakeWebhook"),
    "smtp": ("edm.providers.dsn", "DsnWebhook"),  # the DSN endpoint
}
_webhook_instances: dict[str, WebhookHandler] = {}


def webhook_handler(provider: str) -> WebhookHandler | None:
    """The webhook handler of `provider`, or None when the provider takes no webhooks."""
    handler = _webhook_instances.get(provider)
    if handler is None and provider in _WEBHOOK_HANDLERS:
        module_name, class_name = _WEBHOOK_HANDLERS[provider]
        handler = getattr(importlib.import_module(module_name), class_name)()
        _webhook_instances[provider] = handler
    return handler


# Provider name -> (module, class) of its inbound-mail handler (`POST /webhooks/{provider}/inbound`). EngageLab's
# inbound mail comes as `route` events on its event URL; SMTP services deliver through the report endpoint or a
# polled mailbox.
_INBOUND_HANDLERS: dict[str, tuple[str, str]] = {
    "sendgrid": ("edm.providers.sendgrid_inbound", "SendGridInbound"),
    "mailgun": ("edm.providers.mailgun_inbound", "MailgunInbound"),
    "postmark": ("edm.providers.postmark_inbound", "PostmarkInbound"),
    "brevo": ("edm.providers.brevo_inbound", "BrevoInbound"),
    "ses": ("edm.providers.ses_inbound", "SesInbound"),
}
INBOUND_PROVIDERS = tuple(_INBOUND_HANDLERS)
_inbound_instances: dict[str, InboundHandler] = {}


def inbound_handler(provider: str) -> InboundHandler | None:
    """The inbound-mail handler of `provider`, or None when the provider posts no inbound mail to EDM."""
    handler = _inbound_instances.get(provider)
    if handler is None and provider in _INBOUND_HANDLERS:
        module_name, class_name = _INBOUND_HANDLERS[provider]
        handler = getattr(importlib.import_module(module_name), class_name)()
        _inbound_instances[provider] = handler
    return handler
