"""One typed configuration object, read once from `EDM_*` environment variables and passed in."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edm import secret_keys as keys


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDM_", extra="ignore")

    env: Literal["production", "development", "demo", "test"] = "production"
    database_url: str = "sqlite:///./var/edm.db"
    secret_key: str = ""
    secret_key_previous: str = ""
    encryption_keys: str = ""
    public_url: str = "http://localhost:8000"
    tracking_url: str = ""
    # Whether a pixel or click hit's commit waits for its flush to disk (docs/tracking.md#capacity). Off: it does
    # not; PostgreSQL's WAL writer flushes it within 3 × wal_writer_delay (600 ms by default); a
    # crash of PostgreSQL or of its machine in that window loses those hits (never a send, never an unsubscribe),
    # an EDM crash loses none of them. On: every batch waits for its flush. No effect on SQLite.
    tracking_synchronous_commit: bool = False
    # Whether the open pixel's GIF is sent before its hit is committed (the request still ends only once it is):
    # a crash of EDM loses the hits answered and not yet committed, at most 500 (docs/tracking.md#capacity).
    tracking_answer_before_commit: bool = True
    host: str = "127.0.0.1"
    port: int = 8000
    default_timezone: str = "UTC"
    worker_concurrency: int = Field(default=8, ge=1, le=256)
    # Largest claim one dispatch loop takes (at most 200, docs/sending.md#the-claim). Smaller claims let several loops
    # overlap claim, send and record on one service; see bench/RESULTS.md for the measured effect.
    claim_max: int = Field(default=200, ge=1, le=200)
    # Database connections per process (docs/deploy.md#connections): the pool keeps up to `db_pool_size` open and
    # opens up to `db_max_overflow` more under load (unset: as many as the pool size); a unit of work that finds
    # none free within `db_pool_timeout` seconds fails as an outage (HTTP 503; the worker retries).
    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_max_overflow: int | None = Field(default=None, ge=0, le=200)
    db_pool_timeout: float = Field(default=30.0, gt=0, le=600)
    # Behind PgBouncer in transaction mode (docs/deploy.md#pgbouncer): no prepared statement outlives its
    # transaction, and no session setting is sent at connect (PgBouncer refuses unknown start-up parameters).
    db_pgbouncer: bool = False
    # Seconds a statement may wait for a lock, and may run, before PostgreSQL cancels it (0: no limit). A cancelled
    # statement is reported like an outage (HTTP 503 with Retry-After; the worker logs a warning and retries), so a
    # long lock slows EDM down instead of piling up waiting requests. Not applied to `edm db upgrade`.
    db_lock_timeout: float = Field(default=10.0, ge=0, le=86400)
    db_statement_timeout: float = Field(default=0.0, ge=0, le=86400)
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    allow_unsigned_webhooks: bool = False
    demo_admin_password: str = ""
    import_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    webhook_max_bytes: int = Field(default=5 * 1024 * 1024, ge=1)
    # Inbound mail posted by providers (docs/providers.md#inbound-mail-replies-through-a-provider): the request body
    # (SendGrid and Mailgun post attachments in it) and each message, raw or rebuilt.
    inbound_max_bytes: int = Field(default=30 * 1024 * 1024, ge=1)
    inbound_message_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    # Requests a minute per API token or console session, per API process (docs/api.md#rate-limits).
    api_rate_limit: int = Field(default=600, ge=1)
    # Testing switch: scales every worker poll/sleep interval (0.05 makes maintenance jobs run 20x as often) and the
    # console's live-view poll interval (never under 1 s).
    time_scale: float = Field(default=1.0, gt=0, le=1.0)
    # /metrics (docs/operations.md#metrics): a bearer token and/or the networks allowed to scrape. With neither set,
    # only loopback addresses may scrape.
    metrics_token: str = ""
    metrics_allow: str = ""  # comma-separated addresses or CIDR networks, e.g. "10.0.0.0/8, 192.0.2.7"
    # `edm worker` answers /metrics on this port when set (0: any free port); nothing is opened by default.
    worker_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    worker_metrics_host: str = "127.0.0.1"

    @field_validator("metrics_allow")
    @classmethod
    def _valid_networks(cls, value: str) -> str:
        for entry in split_networks(value):
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"EDM_METRICS_ALLOW: {entry!r} is not an IP address or CIDR network") from None
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.env != "production":
            return self
        problem = production_key_problem(self)
        if problem is not None:
            raise ValueError(problem)
        if self.allow_unsigned_webhooks:
            raise ValueError("EDM_ALLOW_UNSIGNED_WEBHOOKS is refused in production")
        return self

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def fake_provider_allowed(self) -> bool:
        return not self.is_production

    @cached_property
    def async_database_url(self) -> str:
        return to_async_url(self.database_url)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def effective_tracking_url(self) -> str:
        return (self.tracking_url or self.public_url).rstrip("/")

    @cached_property
    def metrics_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The networks allowed to scrape /metrics: EDM_METRICS_ALLOW, or loopback only when neither it nor
        EDM_METRICS_TOKEN is set; empty means any address (a token is set)."""
        if self.metrics_allow.strip():
            return tuple(ipaddress.ip_network(entry, strict=False) for entry in split_networks(self.metrics_allow))
        if self.metrics_token:
            return ()
        return (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

    @property
    def signing_key(self) -> bytes:
        # Outside production a missing key is derived from the database URL so demos work out of the box;
        # production refuses to start without one (see the validator above).
        return (self.secret_key or f"edm-dev-key:{self.database_url}").encode()


def production_key_problem(settings: Settings) -> str | None:
    """One line naming the first weak or missing key and how to make a good one, or None. Production signs
    sessions and tracking links with EDM_SECRET_KEY (and still accepts EDM_SECRET_KEY_PREVIOUS during a
    rotation, so it must be as strong) and encrypts credentials with EDM_ENCRYPTION_KEYS, which must be real
    Fernet keys: the passphrase stretching used outside production is one unsalted hash away from a guess."""
    hint = keys.GENERATE_HINT
    problem = keys.secret_key_problem(settings.secret_key)
    if problem is not None:
        return f"EDM_SECRET_KEY {problem}; {hint}"
    if settings.secret_key_previous:
        problem = keys.secret_key_problem(settings.secret_key_previous)
        if problem is not None:
            return f"EDM_SECRET_KEY_PREVIOUS {problem}; {hint} (or unset it once the rotation is over)"
    entries = keys.split_keys(settings.encryption_keys)
    if not entries:
        return f"EDM_ENCRYPTION_KEYS is not set; {hint}"
    for position, entry in enumerate(entries, start=1):
        problem = keys.encryption_key_problem(entry)
        if problem is not None:
            where = "EDM_ENCRYPTION_KEYS" if len(entries) == 1 else f"EDM_ENCRYPTION_KEYS entry {position}"
            return f"{where} {problem}; {hint}"
    return None


def split_networks(value: str) -> list[str]:
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def to_async_url(url: str) -> str:
    """Map a plain database URL to its asyncio driver (aiosqlite / asyncpg)."""
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url[len("sqlite:") :]
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url
