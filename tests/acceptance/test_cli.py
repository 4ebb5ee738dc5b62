"""The `edm` command: a whole setup through the CLI, and bad input as exit code 2 with one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_cli as edm


@pytest.fixture
def cli_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert edm(url, "db", "upgrade").returncode == 0
    return url


def test_setup_through_the_cli(cli_db: str, tmp_path: Path) -> None:
    ok = edm(
        cli_db,
        "user",
        "create",
        "--admin",
        "--username",
        "root",
        "--email",
        "root@example.com",
        "--password-stdin",
        stdin="a long password\n",
    )
    assert ok.returncode == 0, ok.stderr
    assert (
        edm(
            cli_db,
            "user",
            "create",
            "--username",
            "ann",
            "--email",
            "ann@example.com",
            "--credit",
            "50",
            "--password-stdin",
            stdin="another password\n",
        ).returncode
        == 0
    )
    token = edm(cli_db, "token", "create", "ann", "--name", "laptop")
    assert token.returncode == 0 and token.stdout.startswith("edm_") and len(token.stdout.strip()) == 44
    service = edm(
        cli_db,
        "service",
        "create",
        "--name",
        "relay",
        "--provider",
        "smtp",
        "--domain",
        "mail.example.com",
        "--host",
        "127.0.0.1",
        "--port",
        "2525",
        "--security",
        "none",
        "--interval",
        "0.5",
        "--daily-quota",
        "300",
        "--reset-time",
        "06:00",
        "--timezone",
        "Asia/Shanghai",
        "--map",
        "ann",
    )
    assert service.returncode == 0, service.stderr
    listed = edm(cli_db, "service", "list", "--json")
    assert '"name": "relay"' in listed.stdout and '"daily_quota": 300' in listed.stdout
    html = tmp_path / "t.html"
    html.write_text("<p>Hi {{ name }}</p>")
    assert edm(cli_db, "sender", "create", "--user", "ann", "--local-part", "news").returncode == 0
    assert (
        edm(
            cli_db, "template", "create", "--user", "ann", "--name", "t", "--subject", "Hi", "--html-file", str(html)
        ).returncode
        == 0
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["user", "create", "--username", "x", "--email", "x@example.com", "--password-stdin"], "username"),
        (["user", "create", "--username", "bobby", "--email", "nope", "--password-stdin"], "email"),
        (
            ["service", "create", "--name", "s", "--provider", "smtp", "--domain", "example.com", "--interval", "-1"],
            "sending_interval_seconds",
        ),
        (["task", "pause", "12345"], "task not found"),
        (["service", "unfreeze", "ghost"], "not found"),
        (["credit", "adjust", "nobody", "add", "5", "--reason", "x"], "not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli_db: str, args: list[str], message: str) -> None:
    result = edm(cli_db, *args, stdin="a long password\n")
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_contacts_import_and_a_task_through_the_cli(cli_db: str, tmp_path: Path) -> None:
    edm(
        cli_db,
        "user",
        "create",
        "--username",
        "ann",
        "--email",
        "ann@example.com",
        "--credit",
        "50",
        "--password-stdin",
        stdin="another password\n",
    )
    csv = tmp_path / "people.csv"
    csv.write_text("email,first name,tags\nA@Example.com,Ann,vip\nnot-an-address,Bad,\nb@example.com,Bob,vip\n")
    imported = edm(cli_db, "import", str(csv), "--user", "ann", "--tag", "newsletter")
    assert imported.returncode == 0, imported.stderr
    assert "2 created" in imported.stdout and "row 3, email" in imported.stdout
    added = edm(cli_db, "contact", "add", "--user", "ann", "c@example.com", "--tag", "newsletter")
    assert added.returncode == 0 and "added 1" in added.stdout
    duplicate = edm(cli_db, "contact", "add", "--user", "ann", "a@example.com")
    assert duplicate.returncode == 2 and "exists" in duplicate.stderr
    html = tmp_path / "t.html"
    html.write_text("<p>Hi {{ contact.first_name }}</p>")
    assert edm(cli_db, "sender", "create", "--user", "ann", "--local-part", "news").returncode == 0
    assert (
        edm(
            cli_db, "template", "create", "--user", "ann", "--name", "t", "--subject", "Hi", "--html-file", str(html)
        ).returncode
        == 0
    )
    created = edm(
        cli_db,
        "task",
        "create",
        "--user",
        "ann",
        "--name",
        "launch",
        "--sender",
        "news",
        "--template",
        "t",
        "--tag",
        "newsletter",
        "--now",
    )
    assert created.returncode == 0, created.stderr
    assert "scheduled, 3 sendable recipients" in created.stdout
    status = edm(cli_db, "task", "status", "1")
    assert status.returncode == 0 and status.stdout.startswith("task 1 scheduled")
    paused = edm(cli_db, "task", "pause", "1")
    assert paused.returncode == 0 and "paused" in paused.stdout
    broken = tmp_path / "broken.html"
    broken.write_text("<p>{% if %}</p>")
    bad_template = edm(
        cli_db, "template", "create", "--user", "ann", "--name", "b", "--subject", "x", "--html-file", str(broken)
    )
    assert bad_template.returncode == 2 and "line 1" in bad_template.stderr


def test_esp_service_test_send_and_events_through_the_cli(cli_db: str) -> None:
    """An ESP service created with JSON credentials on stdin, a test send through it, credential rotation,
    and the event commands (nothing stored yet: `apply` reports zero, `list` says so)."""
    created = edm(
        cli_db,
        "service",
        "create",
        "--name",
        "esp",
        "--provider",
        "fake",
        "--domain",
        "esp.example.com",
        "--credentials-stdin",
        stdin='{"webhook_secrets": ["first"]}',
    )
    assert created.returncode == 0, created.stderr
    sent = edm(cli_db, "service", "test-send", "esp", "--to", "ops@example.org", "--json")
    assert sent.returncode == 0, sent.stderr
    assert '"classification": "accepted"' in sent.stdout and '"latency_ms"' in sent.stdout
    listed = edm(cli_db, "service", "list", "--json")
    assert '"used_today": 1' in listed.stdout, "a test send counts toward today's usage"
    rotated = edm(cli_db, "service", "credentials", "esp", stdin='{"webhook_secrets": ["second", "first"]}')
    assert rotated.returncode == 0 and "webhook_secrets" in rotated.stdout
    bad = edm(cli_db, "service", "test-send", "esp", "--to", "not-an-address")
    assert bad.returncode == 2 and "to:" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    applied = edm(cli_db, "events", "apply")
    assert applied.returncode == 0 and applied.stdout.startswith("applied 0 events")
    assert edm(cli_db, "events", "list", "--unmatched").stdout.strip() == "no events"
