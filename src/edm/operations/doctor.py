"""`edm doctor` (docs/operations.md#edm-doctor): what is wrong with this deployment, and what to do about it.

The checks, in order: the configuration (settings, keys), the database (reachable, schema at head), the workers
(a live heartbeat), sending paused, then per sending service its credentials (SMTP: connect, EHLO, STARTTLS, AUTH
and QUIT; an HTTP provider: its cheapest authenticated call that sends nothing, where it has one), its webhook
secrets and its state, and per sending domain the DNS records mail from it needs (SPF, DKIM, DMARC).

Each check ends `ok`, `fix` (something must be done: the line says what), `warn` (worth a look) or `not checked`
(it could not be made: offline, DNS unreachable, a provider without a call to check with). Nothing is sent and
nothing is written. Network calls are made with no transaction open, concurrently, each with a short timeout.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from edm import secret_keys as keys
from edm.dispatch.compose import config_of
from edm.email_services.webhook_secrets import active_secrets
from edm.migrations.migrate import current_revision, head_revision
from edm.models.email_services import EmailService, EmailServiceState
from edm.models.system import Worker
from edm.observability import mask_addresses
from edm.providers.base import CredentialCheck
from edm.providers.registry import SIMULATED_PROVIDERS, build_adapter, webhook_handler
from edm.security.crypto import Vault
from edm.settings import Settings
from edm.system import runtime_settings
from edm.system.workers import HEARTBEAT_STALE

DATABASE_TIMEOUT = 10.0  # seconds
CREDENTIALS_TIMEOUT = 15.0  # seconds, at most, per service (its own request timeout when shorter)
DNS_TIMEOUT = 3.0  # seconds per lookup
PARALLEL = 4  # services checked at once
# DKIM selectors a provider publishes its keys under when the admin set none (the service option `dkim_selector`).
KNOWN_DKIM_SELECTORS: dict[str, tuple[str, ...]] = {
    "sendgrid": ("s1", "s2"),
    "mailgun": ("smtp", "mx", "k1"),
    "brevo": ("mail",),
    "resend": ("resend",),
}


class Status(enum.StrEnum):
    OK = "ok"
    FIX = "fix"
    WARN = "warn"
    NOT_CHECKED = "not checked"


@dataclass(frozen=True)
class Check:
    area: str  # "configuration", "database", "workers", "sending", "service relay", "dns example.com"
    name: str  # what was checked
    status: Status
    detail: str  # what was found, and for `fix` what to do

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}


def needs_fixing(checks: Sequence[Check]) -> bool:
    return any(c.status is Status.FIX for c in checks)


# ---- configuration ------------------------------------------------------------------------------------------------


def configuration(settings: Settings) -> list[Check]:
    """The settings that validate but could still be wrong (production refuses weak keys at start-up already)."""
    area = "configuration"
    checks = [Check(area, "settings", Status.OK, f"valid (EDM_ENV={settings.env})")]
    if settings.is_production:
        checks.append(Check(area, "EDM_SECRET_KEY", Status.OK, "set and strong"))
        checks.append(Check(area, "EDM_ENCRYPTION_KEYS", Status.OK, "set, real Fernet keys"))
        if not settings.public_url.startswith("https://"):
            checks.append(
                Check(area, "EDM_PUBLIC_URL", Status.FIX, f"{settings.public_url} is not https: set the https address")
            )
        if settings.tracking_url and not settings.tracking_url.startswith("https://"):
            checks.append(
                Check(area, "EDM_TRACKING_URL", Status.FIX, f"{settings.tracking_url} is not https: set an https one")
            )
        return checks
    if not settings.secret_key:
        checks.append(
            Check(
                area,
                "EDM_SECRET_KEY",
                Status.WARN,
                "not set: a key derived from the database URL signs links (fine for a demo, refused in production; "
                "`edm keys generate` makes one)",
            )
        )
    elif (problem := keys.secret_key_problem(settings.secret_key)) is not None:
        checks.append(Check(area, "EDM_SECRET_KEY", Status.WARN, f"{problem} (refused in production)"))
    else:
        checks.append(Check(area, "EDM_SECRET_KEY", Status.OK, "set"))
    if not keys.split_keys(settings.encryption_keys):
        checks.append(
            Check(
                area,
                "EDM_ENCRYPTION_KEYS",
                Status.WARN,
                "not set: credentials are encrypted with a key derived from the signing key (refused in production)",
            )
        )
    if settings.allow_unsigned_webhooks:
        checks.append(
            Check(area, "EDM_ALLOW_UNSIGNED_WEBHOOKS", Status.WARN, "on: webhooks without a valid signature are taken")
        )
    return checks


# ---- the database and the workers ---------------------------------------------------------------------------------


def database_name(settings: Settings) -> str:
    """The database URL without its password."""
    return make_url(settings.database_url).render_as_string(hide_password=True)


async def database(engine: AsyncEngine, settings: Settings) -> list[Check]:
    area = "database"
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            current = await current_revision(engine)
    except Exception as exc:  # unreachable, refused, bad credentials, timed out: all need a person
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return [
            Check(
                area,
                "reachable",
                Status.FIX,
                f"{database_name(settings)}: {type(exc).__name__} {reason}".rstrip()
                + ": check EDM_DATABASE_URL and that the database server runs",
            )
        ]
    checks = [Check(area, "reachable", Status.OK, database_name(settings))]
    head = head_revision()
    if current == head:
        checks.append(Check(area, "schema", Status.OK, f"at revision {head}"))
    else:
        checks.append(
            Check(area, "schema", Status.FIX, f"at revision {current}, code wants {head}: run `edm db upgrade`")
        )
    return checks


async def workers(session: AsyncSession, now: dt.datetime) -> list[Check]:
    rows = list(await session.scalars(select(Worker).order_by(Worker.last_heartbeat_at.desc())))
    alive = [w for w in rows if now - w.last_heartbeat_at <= HEARTBEAT_STALE]
    if alive:
        names = ", ".join(f"{w.hostname}:{w.pid}" for w in alive[:5])
        return [Check("workers", "heartbeat", Status.OK, f"{len(alive)} live ({names})")]
    if rows:
        age = int((now - rows[0].last_heartbeat_at).total_seconds())
        detail = f"no live worker (the last beat {age} s ago): start `edm worker`; nothing is sent without one"
    else:
        detail = "no worker has ever run: start `edm worker`; nothing is sent without one"
    return [Check("workers", "heartbeat", Status.FIX, detail)]


async def sending(session: AsyncSession) -> list[Check]:
    runtime = await runtime_settings.load(session)
    if runtime.sending_paused:
        return [Check("sending", "paused", Status.WARN, "all sending is paused: `edm queue resume-all` resumes it")]
    return [Check("sending", "paused", Status.OK, "sending is on")]


# ---- services -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Service:
    id: int
    name: str
    provider: str
    domain: str
    enabled: bool
    frozen_reason: str | None
    config: Any  # ServiceConfig, or None when the credentials cannot be decrypted
    options: dict[str, Any]


async def load_services(session: AsyncSession, vault: Vault) -> list[_Service]:
    """Every live service with its decrypted configuration (kept in memory only, for the checks)."""
    rows = await session.execute(
        select(EmailService, EmailServiceState.frozen, EmailServiceState.frozen_reason)
        .outerjoin(EmailServiceState, EmailServiceState.service_id == EmailService.id)
        .where(EmailService.archived_at.is_(None))
        .order_by(EmailService.id)
    )
    found = []
    for service, frozen, reason in rows:
        try:
            config = config_of(service, vault)
        except ValueError:
            config = None
        found.append(
            _Service(
                service.id,
                service.name,
                service.provider,
                service.domain,
                bool(service.is_enabled),
                (reason or "manual") if frozen else None,
                config,
                dict(service.options or {}),
            )
        )
    return found


def service_state(service: _Service, now: dt.datetime) -> list[Check]:
    area = f"service {service.name}"
    checks = []
    if service.config is None:
        checks.append(
            Check(
                area,
                "credentials",
                Status.FIX,
                "cannot be decrypted with EDM_ENCRYPTION_KEYS: add the key they were saved with, or set them again",
            )
        )
    if not service.enabled:
        checks.append(Check(area, "state", Status.WARN, "disabled: sends nothing"))
    elif service.frozen_reason is not None:
        checks.append(Check(area, "state", Status.WARN, f"frozen ({service.frozen_reason}): see `edm service health`"))
    return checks


def webhook_secrets(service: _Service, now: dt.datetime) -> list[Check]:
    """Providers whose event webhooks are verified with a secret need one that has not expired; SES needs the topics
    it accepts; the SMTP report endpoint is optional (a polled mailbox may be used instead)."""
    area = f"service {service.name}"
    if service.provider in SIMULATED_PROVIDERS or service.config is None:
        return []
    if service.provider == "ses":
        if service.options.get("sns_topic_arns"):
            return [Check(area, "webhooks", Status.OK, "SNS topics set")]
        return [
            Check(area, "webhooks", Status.FIX, "no sns_topic_arns option: every SES event would be refused; set it")
        ]
    handler = webhook_handler(service.provider)
    if handler is None or not handler.needs_secret:
        return []
    secrets = active_secrets(service.config.credentials, now)
    if secrets:
        return [Check(area, "webhook secret", Status.OK, f"{len(secrets)} active")]
    if service.provider == "smtp":
        return [
            Check(
                area,
                "webhook secret",
                Status.OK,
                "none: the report endpoint is off (bounces come from a polled mailbox, if one is set)",
            )
        ]
    return [
        Check(
            area,
            "webhook secret",
            Status.FIX,
            f"none active: {service.provider} events (deliveries, bounces, complaints) are refused; add the secret "
            f"the provider signs with: `edm service secrets {service.name} add --value-stdin`",
        )
    ]


async def credentials(service: _Service, *, fake_allowed: bool) -> Check:
    """The service's credentials, checked without sending."""
    area = f"service {service.name}"
    if service.config is None:
        return Check(area, "login", Status.NOT_CHECKED, "credentials unreadable")
    if not service.enabled:
        return Check(area, "login", Status.NOT_CHECKED, "disabled")
    if service.provider in SIMULATED_PROVIDERS:
        return Check(area, "login", Status.NOT_CHECKED, "simulated provider")
    try:
        adapter = build_adapter(service.config, fake_allowed=fake_allowed)
    except ValueError as exc:
        return Check(area, "login", Status.FIX, f"configuration refused: {exc}")
    check: Callable[[], Awaitable[CredentialCheck]] | None = getattr(adapter, "check_credentials", None)
    try:
        if check is None:
            result = CredentialCheck(None, f"{service.provider} has no call that checks credentials without sending")
        else:
            timeout = min(CREDENTIALS_TIMEOUT, service.config.request_timeout_seconds + 1)
            async with asyncio.timeout(timeout):
                result = await check()
    except TimeoutError:
        result = CredentialCheck(False, "no answer in time")
    finally:
        await adapter.aclose()
    if result.ok is None:
        return Check(area, "login", Status.NOT_CHECKED, result.detail)
    if result.ok:
        return Check(area, "login", Status.OK, result.detail)
    return Check(
        area, "login", Status.FIX, mask_addresses(result.detail) + ": correct the service's credentials or host"
    )


# ---- DNS ----------------------------------------------------------------------------------------------------------


class _Offline(Exception):
    """The resolver could not ask anyone."""


async def _txt(resolver: dns.asyncresolver.Resolver, name: str) -> list[str]:
    """The TXT strings at `name` (empty when there are none); _Offline when DNS cannot be asked."""
    try:
        answer = await resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.resolver.NoNameservers, dns.exception.Timeout, dns.resolver.NoResolverConfiguration, OSError) as exc:
        raise _Offline(type(exc).__name__) from None
    return [b"".join(record.strings).decode("utf-8", "replace") for record in answer]


def dkim_selectors(services: Sequence[_Service]) -> tuple[list[str], bool]:
    """(selectors, given): those the services of one domain name in their `dkim_selector` option (a string or a
    list), or else the ones their providers are known to use."""
    given: list[str] = []
    for service in services:
        value = service.options.get("dkim_selector")
        given += [value] if isinstance(value, str) else [str(v) for v in value or []]
    if given:
        return sorted(set(given)), True
    known = {s for service in services for s in KNOWN_DKIM_SELECTORS.get(service.provider, ())}
    return sorted(known), False


async def domain_records(
    resolver: dns.asyncresolver.Resolver, domain: str, services: Sequence[_Service]
) -> list[Check]:
    area = f"dns {domain}"
    try:
        spf = [t for t in await _txt(resolver, domain) if t.lower().startswith("v=spf1")]
        dmarc = [t for t in await _txt(resolver, f"_dmarc.{domain}") if t.lower().startswith("v=dmarc1")]
        selectors, given = dkim_selectors(services)
        dkim = {s: await _txt(resolver, f"{s}._domainkey.{domain}") for s in selectors}
    except _Offline as offline:
        return [
            Check(area, name, Status.NOT_CHECKED, f"DNS unreachable ({offline})") for name in ("SPF", "DKIM", "DMARC")
        ]
    checks = []
    if len(spf) == 1:
        checks.append(Check(area, "SPF", Status.OK, spf[0][:120]))
    elif spf:
        checks.append(
            Check(area, "SPF", Status.FIX, f"{len(spf)} SPF records: receivers ignore all of them; merge them")
        )
    else:
        checks.append(
            Check(area, "SPF", Status.FIX, f"no SPF record: publish a TXT record `v=spf1 … -all` at {domain}")
        )
    keyed = [s for s, texts in dkim.items() if any("p=" in t.replace(" ", "") for t in texts)]
    if keyed:
        checks.append(Check(area, "DKIM", Status.OK, "key at " + ", ".join(f"{s}._domainkey" for s in keyed)))
    elif not selectors:
        checks.append(
            Check(
                area, "DKIM", Status.NOT_CHECKED, "selector unknown: set the service option dkim_selector to check it"
            )
        )
    else:
        where = ", ".join(f"{s}._domainkey.{domain}" for s in selectors)
        detail = f"no DKIM key at {where}: publish the key your provider gives you"
        checks.append(Check(area, "DKIM", Status.FIX if given else Status.WARN, detail))
    if dmarc:
        checks.append(Check(area, "DMARC", Status.OK, dmarc[0][:120]))
    else:
        checks.append(
            Check(
                area,
                "DMARC",
                Status.FIX,
                f"no DMARC record: publish a TXT record `v=DMARC1; p=none; rua=mailto:…` at _dmarc.{domain}",
            )
        )
    return checks


def make_resolver(
    nameservers: Sequence[str] = (), port: int = 53, *, timeout: float = DNS_TIMEOUT
) -> dns.asyncresolver.Resolver:
    """The system's resolver, or one asking `nameservers` (on `port`); a lookup gives up after `timeout` seconds."""
    if nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = list(nameservers)
        resolver.port = port
    else:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            resolver = dns.asyncresolver.Resolver(configure=False)  # no nameserver: every lookup is "unreachable"
    resolver.lifetime = timeout
    resolver.timeout = timeout
    return resolver


# ---- everything ---------------------------------------------------------------------------------------------------


async def run(
    settings: Settings,
    engine: AsyncEngine,
    *,
    now: dt.datetime,
    offline: bool = False,
    resolver: dns.asyncresolver.Resolver | None = None,
) -> list[Check]:
    """Every check, in order. `offline` marks the credential and DNS checks `not checked` instead of making them."""
    checks = configuration(settings)
    reached = await database(engine, settings)
    checks += reached
    if any(c.status is Status.FIX for c in reached):
        return checks + [Check("services", "all", Status.NOT_CHECKED, "the database cannot be read")]
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    vault = Vault.from_settings(settings)
    async with sessionmaker() as session:  # read only, and closed before any network call
        checks += await workers(session, now)
        checks += await sending(session)
        services = await load_services(session, vault)
    if not services:
        checks.append(Check("services", "sending services", Status.FIX, "none: add one (`edm service create`)"))
        return checks

    slots = asyncio.Semaphore(PARALLEL)

    async def login(service: _Service) -> Check:
        if offline:
            return Check(f"service {service.name}", "login", Status.NOT_CHECKED, "offline")
        async with slots:
            return await credentials(service, fake_allowed=settings.fake_provider_allowed)

    logins = await asyncio.gather(*(login(s) for s in services))
    for service, checked in zip(services, logins, strict=True):
        checks += [checked, *webhook_secrets(service, now), *service_state(service, now)]

    domains: dict[str, list[_Service]] = {}
    for service in services:
        if service.provider not in SIMULATED_PROVIDERS:
            domains.setdefault(service.domain.lower(), []).append(service)
    unreachable: str | None = "offline" if offline else None
    for domain, of_domain in sorted(domains.items()):
        if unreachable is not None:  # one domain found DNS unreachable: the others are not asked in vain
            checks += [Check(f"dns {domain}", n, Status.NOT_CHECKED, unreachable) for n in ("SPF", "DKIM", "DMARC")]
            continue
        found = await domain_records(resolver or make_resolver(), domain, of_domain)
        if found and found[0].status is Status.NOT_CHECKED:
            unreachable = found[0].detail
        checks += found
    return checks
