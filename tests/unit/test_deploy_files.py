"""The deployment files of `deploy/` (docs/deploy.md) say what EDM does. Images and units cannot be run here (no
container engine, no systemd), so what can be checked without them is: the compose file parses and orders the
processes (PostgreSQL healthy → one migration → serve and workers, each with a health check), every `edm` command
the files run exists, every EDM_* variable they set is a setting, workers get the time a graceful stop needs, and
the image runs as a non-root user with `edm` as its entrypoint."""

from __future__ import annotations

import configparser
import functools
import re
import shlex
from pathlib import Path

import yaml

from edm.cli.main import app as cli
from edm.settings import Settings
from edm.worker.dispatcher import JOB_STOP_GRACE_SECONDS, SHUTDOWN_GRACE_SECONDS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
GRACEFUL_STOP = SHUTDOWN_GRACE_SECONDS + JOB_STOP_GRACE_SECONDS  # a worker's longest clean stop


@functools.cache
def _commands() -> frozenset[tuple[str, ...]]:
    """Every `edm` command path: ("serve",), ("db", "upgrade"), …"""
    import typer.main

    group = typer.main.get_command(cli)
    found: set[tuple[str, ...]] = set()

    def walk(command: object, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        if path:
            found.add(path)
        for name, sub in (subcommands or {}).items():
            walk(sub, (*path, name))

    walk(group, ())
    return frozenset(found)


def _is_edm_command(argv: list[str]) -> bool:
    words = [w for w in argv if not w.startswith("-")]
    commands = _commands()
    return any(tuple(words[:n]) in commands for n in (1, 2))


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)?", value.strip())
    assert match, value
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def _variables(text: str) -> set[str]:
    return set(re.findall(r"\bEDM_[A-Z0-9_]+", text))


def _settings_variables() -> set[str]:
    return {f"EDM_{name.upper()}" for name in Settings.model_fields} | {"EDM_ENV_FILE"}


def test_compose_orders_postgres_then_one_migration_then_serve_and_workers() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "migrate", "serve", "worker"}
    assert "healthcheck" in services["postgres"]
    migrate = services["migrate"]
    assert migrate["command"] == ["db", "upgrade"] and migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert migrate["build"]["dockerfile"] == "deploy/Containerfile"
    for name in ("serve", "worker"):
        service = services[name]
        assert service["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
        assert "healthcheck" in service and service["image"] == migrate["image"]
        assert _is_edm_command(service["command"]), service["command"]
    assert "/readyz" in " ".join(services["serve"]["healthcheck"]["test"])
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "edm-worker-healthcheck"]
    assert _seconds(services["worker"]["stop_grace_period"]) >= GRACEFUL_STOP
    assert services["worker"]["deploy"]["replicas"] >= 2


def test_systemd_units_run_edm_as_its_user_after_the_migration() -> None:
    units = {}
    for path in sorted((DEPLOY / "systemd").glob("*.service")):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(path.read_text())
        units[path.name] = parser
    assert set(units) == {"edm-migrate.service", "edm-serve.service", "edm-worker@.service"}
    for name, unit in units.items():
        assert {"Unit", "Service", "Install"} <= set(unit.sections()), name
        service = unit["Service"]
        assert service["User"] == "edm" and service["EnvironmentFile"] == "/etc/edm/edm.env", name
        argv = shlex.split(service["ExecStart"])
        assert argv[0].endswith("/bin/edm") and _is_edm_command(argv[1:]), name
    migrate = units["edm-migrate.service"]["Service"]
    assert migrate["Type"] == "oneshot" and shlex.split(migrate["ExecStart"])[1:] == ["db", "upgrade"]
    for name in ("edm-serve.service", "edm-worker@.service"):
        unit = units[name]["Unit"]
        assert "edm-migrate.service" in unit["Requires"] and "edm-migrate.service" in unit["After"], name
        assert units[name]["Service"]["Restart"] == "on-failure"
    worker = units["edm-worker@.service"]["Service"]
    assert worker["KillSignal"] == "SIGTERM" and _seconds(worker["TimeoutStopSec"]) >= GRACEFUL_STOP


def test_every_variable_the_files_set_is_a_setting() -> None:
    known = _settings_variables()
    for name in ("edm.env.example", "compose.yaml", "Containerfile", "systemd/edm-serve.service"):
        unknown = _variables((DEPLOY / name).read_text()) - known
        assert not unknown, f"{name} sets variables EDM does not read: {sorted(unknown)}"
    example = (DEPLOY / "edm.env.example").read_text()
    assert re.search(r"^EDM_ENV=production$", example, re.MULTILINE), "the example is a production configuration"
    assert re.search(r"^EDM_SECRET_KEY=$", example, re.MULTILINE), "no key is shipped"


def test_the_image_runs_edm_as_a_user_that_is_not_root() -> None:
    containerfile = (DEPLOY / "Containerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", containerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["edm"\]$', containerfile, re.MULTILINE)
    assert re.search(r"^FROM python:3\.\d+-slim", containerfile, re.MULTILINE)
    for source in re.findall(r"^COPY (deploy/\S+)", containerfile, re.MULTILINE):
        assert (DEPLOY.parent / source).exists(), source
