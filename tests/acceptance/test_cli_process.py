"""`edm` as a real process, as an operator runs it, and the in-process runner (`tests.helpers.run_cli`) that the
other CLI tests use, held to the same answers: exit code, stdout and stderr."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.acceptance.workers import ROOT, worker_env
from tests.helpers import run_cli, run_cli_async


def edm_process(db_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edm", *args],
        cwd=ROOT,
        env=worker_env(db_url),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def cli_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert run_cli(url, "db", "upgrade").returncode == 0
    return url


def _same_text(in_process: str, process: str) -> bool:
    """A process names itself `python -m edm` in usage lines, padded to the terminal width; the runner `edm`."""
    return re.sub(r"[ \t]+", " ", process.replace("python -m edm", "edm")) == re.sub(r"[ \t]+", " ", in_process)


def test_help_from_a_real_process_lists_the_commands(cli_db: str) -> None:
    result = edm_process(cli_db, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    for command in ("db", "user", "token", "service", "task", "import", "serve", "worker", "demo"):
        assert re.search(rf"\b{command}\b", result.stdout), command


def test_bad_input_to_a_real_process_is_exit_2_and_one_line(cli_db: str) -> None:
    result = edm_process(
        cli_db,
        "user",
        "create",
        "--username",
        "x",
        "--email",
        "x@example.com",
        "--password-stdin",
        stdin="a long password\n",
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "username" in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, stdin",
    [
        (["--help"], ""),
        (["user", "create", "--username", "ann", "--email", "nope", "--password-stdin"], "a long password\n"),
        (["credit", "add", "ann", "5"], ""),  # a usage error: --reason is missing
        (["task", "pause", "12345"], ""),
        (["user", "list", "--json"], ""),
    ],
    ids=["help", "bad-email", "usage-error", "not-found", "list"],
)
def test_the_runner_answers_as_the_process_does(cli_db: str, args: list[str], stdin: str) -> None:
    assert (
        run_cli(
            cli_db,
            "user",
            "create",
            "--username",
            "bob",
            "--email",
            "bob@example.com",
            "--password-stdin",
            stdin="a long password\n",
        ).returncode
        == 0
    )
    in_process = run_cli(cli_db, *args, stdin=stdin)
    process = edm_process(cli_db, *args, stdin=stdin)
    assert in_process.returncode == process.returncode
    assert _same_text(in_process.stdout, process.stdout), (in_process.stdout, process.stdout)
    assert _same_text(in_process.stderr, process.stderr), (in_process.stderr, process.stderr)


def test_a_crash_is_a_traceback_and_exit_1_in_both(tmp_path: Path) -> None:
    never_migrated = f"sqlite:///{tmp_path / 'empty.db'}"
    in_process, process = run_cli(never_migrated, "user", "list"), edm_process(never_migrated, "user", "list")
    assert in_process.returncode == process.returncode == 1
    assert "Traceback (most recent call last)" in in_process.stderr and "no such table" in in_process.stderr
    assert "Traceback (most recent call last)" in process.stderr and "no such table" in process.stderr


def test_the_runner_reads_only_the_given_edm_variables(cli_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # An out-of-range setting in the test process's environment would make the command's Settings refuse it.
    monkeypatch.setenv("EDM_WORKER_CONCURRENCY", "0")
    assert run_cli(cli_db, "user", "list").returncode == 0
    assert os.environ["EDM_WORKER_CONCURRENCY"] == "0", "the test process's environment is left as it was"
    refused = run_cli(cli_db, "user", "list", EDM_WORKER_CONCURRENCY="0")
    assert refused.returncode == 2 and refused.stderr.startswith("error: configuration error"), refused.stderr
    assert run_cli(cli_db, "user", "list").returncode == 0, "a variable given to one call does not stay"


async def test_the_runner_works_inside_a_running_event_loop(cli_db: str) -> None:
    created = run_cli(
        cli_db,
        "user",
        "create",
        "--username",
        "ann",
        "--email",
        "ann@example.com",
        "--password-stdin",
        stdin="a long password\n",
    )
    assert created.returncode == 0, created.stderr
    listed = await run_cli_async(cli_db, "user", "list")
    assert listed.returncode == 0 and "ann" in listed.stdout, listed.stderr


def test_the_runner_shows_a_commands_warnings_on_stderr_as_a_process_does(capsys: pytest.CaptureFixture[str]) -> None:
    """A command process configures no logging, so Python prints its warnings (only) on stderr; the runner does
    the same for records logged on the command's own thread."""
    from tests.helpers import _warnings_to_stderr

    log = logging.getLogger("edm.test_runner")
    with _warnings_to_stderr():
        log.warning("a warning from the command")
        log.info("an info line stays out")
        other = threading.Thread(target=lambda: log.warning("another thread's warning"))
        other.start()
        other.join()
    log.warning("after the command")
    assert capsys.readouterr().err == "a warning from the command\n"
