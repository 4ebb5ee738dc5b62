"""Real `edm worker` and `edm serve` processes for acceptance tests (SIGTERM for a graceful stop, SIGKILL for a
crash)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

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


def start_server(db_url: str, *, port: int, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    """`edm serve` on 127.0.0.1:`port`; wait for it with `until_serving`."""
    handle = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "edm", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=worker_env(db_url, **extra),
        stdout=handle,
        stderr=subprocess.STDOUT,
    )


async def until_serving(url: str, process: subprocess.Popen[bytes], log: Path, *, timeout: float = 60) -> None:
    """Until `url`/healthz answers; fails with the process's log if it exits or does not answer in time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient(timeout=1) as client:
        while loop.time() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"edm serve exited:\n{log.read_text()[-3000:]}")
            try:
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"edm serve did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def stop(processes: list[subprocess.Popen[bytes]], *, timeout: float = 45) -> None:
    """SIGTERM to each, then wait (SIGKILL past `timeout`)."""
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in processes:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
