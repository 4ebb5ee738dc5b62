"""A full disk under PostgreSQL (docs/deploy.md#when-the-database-has-a-bad-day): EDM reports it and writes nothing
partial.

The test's own cluster keeps the `contacts` table in a tablespace on a small tmpfs; a file then fills that tmpfs.
Creating a contact must extend the table, which PostgreSQL refuses (`53100 disk_full`): the API answers 503
`unavailable` with Retry-After, logs the SQLSTATE, and leaves no trace of the contact (its tags, its audit row, its
counters are in the same transaction); reads and `/readyz` keep working. Once space is freed, the same request
succeeds, with no restart. Mounting a tmpfs needs root: skipped otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import func, select

from edm.app import create_app
from edm.db.engine import make_engine, make_sessionmaker
from edm.models.contacts import Contact
from tests.acceptance.postgres_tools import cluster
from tests.helpers import expect_error, make_account, run_cli_async, settings_for


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.slow
async def test_a_full_disk_is_reported_and_nothing_is_written_half(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: a cluster of the test's own")
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    caplog.set_level(logging.ERROR, logger="edm.http")
    with cluster() as pg, small_tmpfs(pg.folder / "small", "4m") as small:
        entry = pwd.getpwnam("postgres")
        os.chown(small, entry.pw_uid, entry.pw_gid)
        url = pg.create_database("edm")
        migrated = await run_cli_async(url, "db", "upgrade")
        assert migrated.returncode == 0, migrated.stderr
        engine = make_engine(url, pool_size=2)
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"CREATE TABLESPACE small LOCATION '{small}'")
                conn.execute("ALTER TABLE contacts SET TABLESPACE small")
            alice = await make_account(make_sessionmaker(engine), "alice")
            app = create_app(settings_for(url), engine=engine)
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
                async with httpx.AsyncClient(transport=transport, base_url="http://edm.test") as client:
                    filler = small / "filler"
                    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False)
                    body = {"email": "ann@example.org", "first_name": "Ann"}

                    refused = await client.post("/api/v1/contacts", json=body, headers=alice.headers)
                    expect_error(refused, 503, "unavailable")
                    assert refused.headers["Retry-After"] == "5"
                    assert (await client.get("/readyz")).status_code == 200, "reads keep working"
                    listed = await client.get("/api/v1/contacts", headers=alice.headers)
                    assert listed.status_code == 200 and listed.json()["items"] == []
                    async with engine.connect() as conn:
                        assert await conn.scalar(select(func.count()).select_from(Contact)) == 0, "nothing half"

                    filler.unlink()
                    accepted = await client.post("/api/v1/contacts", json=body, headers=alice.headers)
                    assert accepted.status_code == 201, accepted.text
        finally:
            await engine.dispose()
    logged = [r for r in caplog.records if r.getMessage() == "http.database_unavailable"]
    assert logged and getattr(logged[0], "sqlstate", None) == "53100"
