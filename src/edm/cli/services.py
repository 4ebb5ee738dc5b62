"""Sending-service commands (admin operations). Every change is audited with actor `cli`, like the same
change made through the API."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from edm import clock
from edm.cli.common import emit, run, session_scope, settings
from edm.db.engine import create_engine, make_sessionmaker
from edm.dispatch import queue
from edm.email_services import health, history, mappings, probe, webhook_secrets
from edm.email_services import service as services
from edm.errors import BadInput
from edm.security.crypto import Vault
from edm.system.service import CLI
from edm.users.service import find_user

service_app = typer.Typer(help="Sending services.", no_args_is_help=True)


def _json_option(value: str | None, name: str) -> dict[str, Any]:
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        raise BadInput.field(name, "must be a JSON object") from None
    if not isinstance(parsed, dict):
        raise BadInput.field(name, "must be a JSON object")
    return parsed


@service_app.command("create")
@run
async def service_create(
    name: Annotated[str, typer.Option()],
    provider: Annotated[str, typer.Option(help="smtp or fake (more with the ESP adapters)")],
    domain: Annotated[str, typer.Option(help="sending domain: From = local@domain")],
    host: Annotated[str | None, typer.Option(help="SMTP host")] = None,
    port: Annotated[int | None, typer.Option(help="SMTP port")] = None,
    security: Annotated[str, typer.Option(help="starttls, tls or none")] = "starttls",
    username: Annotated[str | None, typer.Option(help="SMTP username")] = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the SMTP password")] = False,
    interval: Annotated[float, typer.Option(help="sending_interval_seconds")] = 1.0,
    max_concurrency: Annotated[int, typer.Option()] = 2,
    batch_size: Annotated[int, typer.Option()] = 1,
    daily_quota: Annotated[int, typer.Option()] = 1000,
    reset_time: Annotated[str, typer.Option(help="local HH:MM of the quota reset")] = "00:00",
    timezone: Annotated[str | None, typer.Option(help="IANA zone of the reset")] = None,
    options: Annotated[str | None, typer.Option(help="extra provider options, JSON object")] = None,
    credentials_stdin: Annotated[
        bool,
        typer.Option(
            "--credentials-stdin",
            help="read the credentials as a JSON object from stdin (ESP API keys, "
            'webhook secrets: {"api_key": "...", "webhook_secrets": ["..."]})',
        ),
    ] = False,
    map_user: Annotated[list[str] | None, typer.Option("--map", help="map to this user (repeatable)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create a sending service (credentials are encrypted at rest and never shown again)."""
    import sys

    cfg = settings()
    opts = _json_option(options, "options")
    if provider == "smtp":
        opts.update({k: v for k, v in {"host": host, "port": port, "security": security}.items() if v})
    credentials = {"username": username, "password": sys.stdin.readline().rstrip("\n")} if password_stdin else {}
    if username and not password_stdin:
        credentials = {"username": username}
    if credentials_stdin:
        credentials.update(_json_option(sys.stdin.read(), "credentials"))
    values = {
        "name": name,
        "provider": provider,
        "domain": domain,
        "options": opts,
        "sending_interval_seconds": interval,
        "max_concurrency": max_concurrency,
        "batch_size": batch_size,
        "daily_quota": daily_quota,
        "quota_reset_time": reset_time,
    }
    if timezone:
        values["timezone"] = timezone
    async with session_scope(cfg) as session:
        svc = await services.create_service(
            session,
            Vault.from_settings(cfg),
            values=values,
            credentials=credentials,
            fake_allowed=cfg.fake_provider_allowed,
            actor=CLI,
            default_timezone=cfg.default_timezone,
        )
        if map_user:
            user_ids = [(await find_user(session, user)).id for user in map_user]
            await mappings.assign(session, user_ids=user_ids, service_ids=[svc.id], is_active=True, actor=CLI)
        data = {"id": svc.id, "name": svc.name, "provider": svc.provider}
    emit(data, as_json=as_json, text=f"created service {data['name']} (id {data['id']})")


@service_app.command("list")
@run
async def service_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every service with its state right now: usable, used today / quota, next reset."""
    async with session_scope() as session:
        snaps = await queue.snapshot_services(session, now=clock.utc_now())
    rows = [
        {
            "id": s.service.id,
            "name": s.service.name,
            "provider": s.service.provider,
            "state": "available" if s.availability.eligible else (s.availability.reason or "unavailable"),
            "until": s.availability.until,
            "used_today": s.used_today,
            "daily_quota": s.service.daily_quota,
            "in_flight": s.in_flight,
            "next_reset": s.next_reset,
            "last_error": s.state.last_error,
        }
        for s in snaps
    ]
    emit(
        rows,
        as_json=as_json,
        text="\n".join(
            f"{r['id']:>4} {r['name']:<18} {r['provider']:<6} {r['state']:<11}"
            f" used {r['used_today']}/{r['daily_quota']}"
            f" next reset {r['next_reset']:%Y-%m-%d %H:%M}Z"
            + (f"  last error: {r['last_error']}" if r["last_error"] else "")
            for r in rows
        )
        or "no services",
    )


@service_app.command("unfreeze")
@run
async def service_unfreeze(service: Annotated[str, typer.Argument(help="name or id")]) -> None:
    async with session_scope() as session:
        svc = await services.find_service(session, service)
        await services.unfreeze(session, svc.id, actor=CLI)
    typer.echo(f"{svc.name} unfrozen")


@service_app.command("freeze")
@run
async def service_freeze(service: Annotated[str, typer.Argument()], reason: Annotated[str, typer.Option()]) -> None:
    async with session_scope() as session:
        svc = await services.find_service(session, service)
        await services.freeze(session, svc.id, reason=reason, actor=CLI)
    typer.echo(f"{svc.name} frozen")


@service_app.command("map")
@run
async def service_map(service: Annotated[str, typer.Argument()], user: Annotated[str, typer.Argument()]) -> None:
    """Allow a user's tasks to be sent through a service."""
    async with session_scope() as session:
        svc = await services.find_service(session, service)
        row = await find_user(session, user)
        await mappings.assign(session, user_ids=[row.id], service_ids=[svc.id], is_active=True, actor=CLI)
    typer.echo(f"{row.username} may send through {svc.name}")


@service_app.command("credentials")
@run
async def service_credentials(service: Annotated[str, typer.Argument(help="name or id")]) -> None:
    """Replace some credentials (a JSON object read from stdin; keys not given are kept). Use it to rotate
    API keys and webhook secrets: {"webhook_secrets": ["new", {"value": "old", "expires_at": "2026-12-01T00:00Z"}]}."""
    import sys

    cfg = settings()
    credentials = _json_option(sys.stdin.read(), "credentials")
    if not credentials:
        raise BadInput.field("credentials", "give a JSON object on stdin")
    async with session_scope(cfg) as session:
        svc = await services.find_service(session, service)
        await services.update_service(
            session,
            Vault.from_settings(cfg),
            svc.id,
            values={},
            credentials=credentials,
            fake_allowed=cfg.fake_provider_allowed,
            actor=CLI,
        )
    typer.echo(f"{svc.name}: credentials updated ({', '.join(sorted(credentials))})")


@service_app.command("test-send")
@run
async def service_test_send(
    service: Annotated[str, typer.Argument(help="name or id")],
    to: Annotated[str, typer.Option(help="the address to send the test to")],
    subject: Annotated[str | None, typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Send one [TEST] message through a service now and show how the provider answered."""

    cfg = settings()
    async with session_scope(cfg) as session:
        service_id = (await services.find_service(session, service)).id
    engine = create_engine(cfg)
    try:
        result = await probe.test_saved_service(
            make_sessionmaker(engine),
            Vault.from_settings(cfg),
            service_id,
            to=to,
            subject=subject,
            fake_allowed=cfg.fake_provider_allowed,
            unsubscribe_base=cfg.effective_tracking_url,
            actor=CLI,
        )
    finally:
        await engine.dispose()
    data = result.as_dict()
    emit(
        data,
        as_json=as_json,
        text=(
            f"{result.classification}: status {result.status}, code {result.provider_code or '-'}, "
            f"{result.latency_ms} ms, provider id {result.provider_message_id or '-'}"
            + (f" — {result.message}" if result.message else "")
        ),
    )


@service_app.command("health")
@run
async def service_health(
    service: Annotated[str, typer.Argument(help="name or id")],
    timezone: Annotated[str | None, typer.Option(help="your IANA zone for the next reset (default: EDM's)")] = None,
    window: Annotated[
        str | None, typer.Option(help="24h or 7d: the attempts over that window instead (hourly or six-hourly)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """State, usage, next reset, in-flight, the last hour's error rate and latency, webhook URLs, status log; with
    --window, the health history: attempts, accept rate, average latency and errors by class per point."""

    cfg = settings()
    zone = timezone or cfg.default_timezone
    services.validate_config({"timezone": zone}, fake_allowed=True)
    if window is not None and window not in history.WINDOWS:
        raise BadInput.field("window", "must be 24h or 7d")
    async with session_scope(cfg) as session:
        svc = await services.find_service(session, service)
        if window is not None:
            past = await history.health_history(session, svc.id, window=window, now=clock.utc_now())
            emit(past.model_dump(), as_json=as_json, text=_history_text(svc.name, past.model_dump()))
            return
        report = await health.service_health(
            session, Vault.from_settings(cfg), svc.id, now=clock.utc_now(), admin_timezone=zone, base_url=cfg.public_url
        )
    data = report.model_dump()
    emit(data, as_json=as_json, text=_health_text(data))


def _health_text(d: dict[str, Any]) -> str:
    recent, reset = d["recent"], d["next_reset"]
    rate = "-" if recent["error_rate"] is None else f"{recent['error_rate'] * 100:.1f}%"
    lines = [
        f"{d['name']} ({d['provider']}, id {d['id']}): {d['state']}"
        + (f" until {d['state_until']:%Y-%m-%d %H:%M}Z" if d["state_until"] else "")
        + (f" [{d['frozen_reason']}]" if d["frozen_reason"] else ""),
        f"used today {d['used_today']}/{d['effective_quota']}, in flight {d['in_flight']}, "
        f"interval {d['sending_interval_seconds']}s, concurrency {d['max_concurrency']}",
        f"next reset {reset['utc']:%Y-%m-%d %H:%M}Z = {reset['admin_local']:%Y-%m-%d %H:%M} {reset['admin_timezone']}",
        f"last hour: {recent['attempts']} attempts, error rate {rate}, latency p50 {recent['latency_ms_p50']} ms "
        f"p95 {recent['latency_ms_p95']} ms" + ("" if recent["window_complete"] else " (partial window)"),
        f"last success {d['last_success_at'] or '-'}, last failure {d['last_failure_at'] or '-'}"
        + (f": {d['last_error']}" if d["last_error"] else ""),
        "webhook URLs: " + ", ".join(u["url"] for u in d["webhook_urls"]) + f" ({d['webhook_secrets']} secret(s))",
    ]
    lines += [
        f"  {r['at']:%Y-%m-%d %H:%M:%S}Z {r['change']} {r['new_value'] or ''} {r['reason'] or ''}".rstrip()
        for r in d["status_log"]
    ]
    return "\n".join(lines)


def _history_text(name: str, d: dict[str, Any]) -> str:
    lines = [f"{name}: {d['window']} from {d['start']:%Y-%m-%d %H:%M}Z, {d['step_hours']} h per line"]
    for p in [*d["points"], {**d["totals"], "start": None}]:
        rate = "-" if p["accept_rate"] is None else f"{p['accept_rate'] * 100:.1f}%"
        latency = "-" if p["latency_ms_avg"] is None else f"{p['latency_ms_avg']:.0f} ms"
        errors = " ".join(f"{k}={v}" for k, v in p["errors"].items() if v)
        when = "total" if p["start"] is None else f"{p['start']:%Y-%m-%d %H:%M}Z"
        line = f"  {when:>17} {p['attempts']:>7} attempts, accepted {rate:>6}, avg {latency:>9} {errors}"
        lines.append(line.rstrip())
    return "\n".join(lines)


@service_app.command("secrets")
@run
async def service_secrets(
    service: Annotated[str, typer.Argument(help="name or id")],
    action: Annotated[str, typer.Argument(help="list (default), add or remove")] = "list",
    secret_id: Annotated[str | None, typer.Option("--id", help="remove: the secret's id (see the list)")] = None,
    value_stdin: Annotated[
        bool,
        typer.Option(
            "--value-stdin", help="add: read the secret from stdin (otherwise one is generated and shown once)"
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Webhook secrets of a service, masked. `add` stores one more (every stored secret verifies, so rotate by
    adding the new one, switching the provider to it, then removing the old one); `remove --id` forgets one."""
    import sys

    if action not in ("list", "add", "remove"):
        raise BadInput.field("action", "must be list, add or remove")
    if action == "remove" and not secret_id:
        raise BadInput.field("id", "remove needs --id (see `edm service secrets NAME`)")
    cfg = settings()
    vault = Vault.from_settings(cfg)
    value = sys.stdin.readline().strip() if value_stdin and action == "add" else None
    if value_stdin and action == "add" and not value:
        raise BadInput.field("value", "no secret on stdin")
    async with session_scope(cfg) as session:
        svc = await services.find_service(session, service)
        if action == "list":
            rows = [view.model_dump() for view in await webhook_secrets.list_webhook_secrets(session, vault, svc.id)]
            emit(
                rows,
                as_json=as_json,
                text="\n".join(
                    f"{r['id']:<14} {r['hint']:<8} added {r['added_at'] or '-'}"
                    + (f" expires {r['expires_at']}" if r["expires_at"] else "")
                    + (" (expired)" if r["expired"] else "")
                    for r in rows
                )
                or "no webhook secrets",
            )
            return
        if action == "add":
            view, secret = await webhook_secrets.add_webhook_secret(session, vault, svc.id, value=value, actor=CLI)
            data: dict[str, Any] = {**view.model_dump(), "value": secret if value is None else None}
            text = f"{svc.name}: webhook secret {view.id} added ({view.hint})"
            if value is None:
                text += f"\nsecret (shown once, paste it into the provider): {secret}"
        else:
            assert secret_id is not None
            removed = await webhook_secrets.remove_webhook_secret(session, vault, svc.id, secret_id, actor=CLI)
            data = removed.model_dump()
            text = f"{svc.name}: webhook secret {secret_id} removed, {removed.remaining} left"
    emit(data, as_json=as_json, text=text)
