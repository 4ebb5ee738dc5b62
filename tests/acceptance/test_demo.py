"""`edm demo` (what `make run` runs): mail flows into the sink, the task completes, statistics verify."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from edm.devtools.smtp_sink import list_stored
from edm.security.passwords import verify_password
from tests.acceptance.workers import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_demo_runs_to_completion(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDM_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    demo = subprocess.run(
        [
            sys.executable,
            "-m",
            "edm",
            "demo",
            "--exit-when-done",
            "--recipients",
            "40",
            "--port",
            str(free_port()),
            "--smtp-port",
            str(free_port()),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "admin password (shown once)" in demo.stdout
    # The banner names the web console and a demo login that works.
    banner = re.search(r"web console: +(\S+)\n +log in as the demo user: +username demo, password (\S+)", demo.stdout)
    assert banner is not None and re.fullmatch(r"http://127\.0\.0\.1:\d+/", banner.group(1)), demo.stdout[:2000]
    with sqlite3.connect(tmp_path / "var" / "edm-demo.db") as db:
        (stored,) = db.execute("SELECT password_hash FROM users WHERE username = 'demo'").fetchone()
    assert verify_password(stored, banner.group(2))
    assert "task 1 completed: 40 sent" in demo.stdout
    # The simulated ESP posted signed delivery and bounce events back to the demo's webhook endpoint.
    final = [line for line in demo.stdout.splitlines() if line.startswith("task 1 completed")][-1]
    delivered = int(re.search(r"delivered (\d+)", final).group(1))  # type: ignore[union-attr]
    assert delivered > 0, final
    captured = list_stored(tmp_path / "var" / "demo-mailbox")
    assert captured, "mail visibly flowed into the demo mailbox"
    assert len({m["subtask_id"] for m in captured}) == len(captured), "no recipient got two mails"
    mail = email.message_from_bytes(captured[0]["path"].read_bytes(), policy=email.policy.default)
    html_part = mail.get_body(preferencelist=("html",))
    assert html_part is not None and "/t/o/" in html_part.get_content(), "tracked mail carries the open pixel"
    verify = subprocess.run(
        [sys.executable, "-m", "edm", "stats", "verify"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**env, "EDM_ENV": "demo", "EDM_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'edm-demo.db'}"},
        timeout=60,
    )
    # One line per task and per service health history, each "ok" (`edm stats verify` exits 1 on any difference).
    lines = verify.stdout.strip().splitlines()
    assert verify.returncode == 0 and lines[0] == "task 1: ok", verify.stdout + verify.stderr
    assert all(line.endswith(": ok") for line in lines) and any(line.startswith("service ") for line in lines)

    # The CLI in the demo's directory finds the demo's settings by itself: no EDM_* variable needed.
    assert "CLI in this directory:" in demo.stdout and "var/edm-demo.env" in demo.stdout
    users = edm_here(tmp_path, env, "user", "list", "--json")
    assert users.returncode == 0, users.stderr
    assert [(u["username"], u["role"]) for u in json.loads(users.stdout)] == [("admin", "admin"), ("demo", "user")]
    listed = edm_here(tmp_path, env, "task", "list")
    assert listed.returncode == 0 and listed.stdout.split() == ["1", "completed", "Demo", "campaign"], listed
    # Two recipients answered when the campaign completed: a person's reply counts, the out-of-office does not.
    assert "2 recipients answered: see Conversations" in demo.stdout
    # Read from the demo's database directly: each `edm` process costs ~2 s of this test (`edm conversations` has
    # its own tests).
    with sqlite3.connect(tmp_path / "var" / "edm-demo.db") as db:
        conversations = db.execute("SELECT count(*) FROM conversations").fetchone()[0]
        auto, human = db.execute(
            "SELECT sum(is_auto_reply), sum(1 - is_auto_reply) FROM conversation_messages WHERE direction = 'inbound'"
        ).fetchone()
        replied = db.execute("SELECT count(*) FROM subtasks WHERE task_id = 1 AND replied_at IS NOT NULL").fetchone()[0]
    assert (conversations, auto, human, replied) == (2, 1, 1, 1), "the out-of-office is kept but counts as no reply"
    shown = edm_here(tmp_path, env, "mailbox", "show", "1")
    assert shown.returncode == 0 and f"Subject: {captured[0]['subject']}" in shown.stdout, shown.stderr


def edm_here(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`edm ARGS` run in `cwd` with an environment that sets no EDM_* variable."""
    assert not any(name.startswith("EDM_") for name in env)
    return subprocess.run(
        [sys.executable, "-m", "edm", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
