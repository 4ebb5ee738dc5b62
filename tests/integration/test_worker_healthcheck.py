"""`deploy/worker-healthcheck.py`, the container health check of an `edm worker` (docs/deploy.md): healthy while this
host's newest worker row has a heartbeat younger than 90 s, unhealthy when it is older, when there is none, or when
the database cannot be reached."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.clock import utc_now
from edm.db.session import unit_of_work
from edm.system import workers

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "worker-healthcheck.py"


def _check(database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDM_")}
    env["EDM_DATABASE_URL"] = database_url
    return subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


async def _beat(sessionmaker: async_sessionmaker[AsyncSession], worker_id: str, at: dt.datetime) -> None:
    async with unit_of_work(sessionmaker) as session:
        await workers.register(
            session, worker_id=worker_id, hostname=socket.gethostname(), pid=1, version="test", now=at
        )


async def test_the_worker_health_check_reads_this_hosts_heartbeat(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("deployments with several workers run on PostgreSQL")
    none_yet = _check(db_url)
    assert none_yet.returncode == 1 and "no heartbeat" in none_yet.stderr

    await _beat(sessionmaker, "stale", utc_now() - dt.timedelta(minutes=5))
    stale = _check(db_url)
    assert stale.returncode == 1 and "no heartbeat" in stale.stderr

    await _beat(sessionmaker, "fresh", utc_now())  # a restarted worker: a new row beside its predecessor's
    assert _check(db_url.replace("postgresql://", "postgresql+asyncpg://")).returncode == 0

    unreachable = _check("postgresql://postgres@127.0.0.1:1/edm")
    assert unreachable.returncode == 1 and unreachable.stderr.startswith("unhealthy:")
