"""Real `edm worker` processes for acceptance tests (SIGTERM for a graceful stop, SIGKILL for a crash)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import cli_env

ROOT = Path(__file__).resolve().parents[2]


def worker_env(db_url: str, **extra: str) -> dict[str, str]:
    """The environment of an `edm` process under test: this one's, with only the test's EDM_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDM_")}
    env.update(cli_env(db_url), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def start_worker(db_url: str, *, concurrency: int = 4, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "edm", "worker", "--concurrency", str(concurrency)],
        cwd=ROOT,
        env=worker_env(db_url, **extra),
        stdout=handle,
        stderr=subprocess.STDOUT,
    )


@contextmanager
def workers(db_url: str, count: int, *, log_dir: Path, **kwargs: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [start_worker(db_url, log=log_dir / f"worker-{i}.log", **kwargs) for i in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
