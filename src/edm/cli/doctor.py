"""`edm doctor`: check the deployment and say what to fix (docs/operations.md#edm-doctor).

Exit codes: 0 when nothing needs fixing (warnings and checks that could not be made allowed), 1 when something does,
2 on bad usage.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from edm.cli.common import fail, settings_file
from edm.clock import utc_now
from edm.db.engine import create_engine
from edm.operations import doctor
from edm.security import passwords
from edm.settings import Settings

STYLES = {
    doctor.Status.OK: "green",
    doctor.Status.FIX: "bold red",
    doctor.Status.WARN: "yellow",
    doctor.Status.NOT_CHECKED: "dim",
}


def _nameservers(values: list[str]) -> tuple[list[str], int]:
    """`--dns-server` values (HOST or HOST:PORT, one port for all) as (hosts, port)."""
    hosts, ports = [], set()
    for value in values:
        host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
        if not port.isdigit() and port:
            fail(f"--dns-server {value!r}: the port must be a number", code=2)
        hosts.append(host)
        ports.add(int(port) if port else 53)
    if len(ports) > 1:
        fail("--dns-server: give every server the same port", code=2)
    return hosts, ports.pop() if ports else 53


def _print(checks: list[doctor.Check]) -> None:
    console = Console(soft_wrap=False)
    table = Table(title="edm doctor", show_lines=False)
    for column in ("area", "check", "status", "what was found / what to do"):
        table.add_column(column, overflow="fold")
    for c in checks:
        table.add_row(c.area, c.name, f"[{STYLES[c.status]}]{c.status.value}[/]", c.detail)
    console.print(table)
    fixes = [c for c in checks if c.status is doctor.Status.FIX]
    counts = {s: sum(1 for c in checks if c.status is s) for s in doctor.Status}
    console.print(
        f"{counts[doctor.Status.FIX]} to fix, {counts[doctor.Status.WARN]} warnings, "
        f"{counts[doctor.Status.NOT_CHECKED]} not checked, {counts[doctor.Status.OK]} ok"
    )
    for c in fixes:
        console.print(f"[bold red]fix[/] {c.area} / {c.name}: {c.detail}", highlight=False)


def doctor_command(
    offline: Annotated[
        bool, typer.Option("--offline", help="make no network call: credentials and DNS are not checked")
    ] = False,
    dns_server: Annotated[
        list[str] | None, typer.Option("--dns-server", help="ask this nameserver (HOST or HOST:PORT; repeatable)")
    ] = None,
    dns_timeout: Annotated[
        float, typer.Option("--dns-timeout", help="seconds before a DNS lookup gives up", min=0.1, max=60)
    ] = doctor.DNS_TIMEOUT,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check the configuration, the database and its schema, the workers, each sending service's credentials (without
    sending) and webhook secrets, and the DNS records of the sending domains; print what to fix. Exit 1 when
    something needs fixing."""
    hosts, port = _nameservers(dns_server or [])
    try:
        cfg = Settings(_env_file=settings_file())  # type: ignore[call-arg]  # pydantic-settings init option
    except ValidationError as exc:
        message = str(exc.errors()[0].get("msg", exc)).removeprefix("Value error, ")
        checks = [doctor.Check("configuration", "settings", doctor.Status.FIX, message)]
    else:
        passwords.configure(cfg)
        checks = asyncio.run(_checks(cfg, offline=offline, hosts=hosts, port=port, dns_timeout=dns_timeout))
    if as_json:
        typer.echo(
            json.dumps({"ok": not doctor.needs_fixing(checks), "checks": [c.as_dict() for c in checks]}, indent=2)
        )
    else:
        _print(checks)
    if doctor.needs_fixing(checks):
        raise typer.Exit(1)


async def _checks(
    cfg: Settings, *, offline: bool, hosts: list[str], port: int, dns_timeout: float
) -> list[doctor.Check]:
    engine = create_engine(cfg, pool_size=2)
    try:
        resolver = None if offline else doctor.make_resolver(hosts, port, timeout=dns_timeout)
        return await doctor.run(cfg, engine, now=utc_now(), offline=offline, resolver=resolver)
    finally:
        await engine.dispose()
