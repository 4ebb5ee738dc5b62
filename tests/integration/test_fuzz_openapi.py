"""Property-based fuzzing of every operation in the OpenAPI document with schemathesis (docs/api.md#errors: no input
may produce a 500): valid and invalid inputs, as an admin and as a user, against the in-process ASGI app on
SQLite (and PostgreSQL with `EDM_FUZZ_PG=1`). Every answer must be below 500.

Run time is bounded by `EDM_FUZZ_EXAMPLES` examples per operation and role (default 6, ~2-3 min for the
module); a longer run: `EDM_FUZZ_EXAMPLES=200 pytest tests/integration/test_fuzz_openapi.py`. The operations
come from the document, so a new endpoint is fuzzed without editing this file."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from schemathesis import GenerationMode

from edm.app import create_app
from edm.db.engine import make_engine, make_sessionmaker
from edm.models.users import Role
from tests.conftest import PG_URL, PgDatabase
from tests.helpers import Account, make_account, openapi_document, settings_for
from tests.integration.test_openapi_isolation import _objects_of

EXAMPLES = int(os.environ.get("EDM_FUZZ_EXAMPLES", "6"))
# The default run replays the same examples every time (stable CI); a longer run explores new ones.
DERANDOMIZE = "EDM_FUZZ_EXAMPLES" not in os.environ
# PostgreSQL too (it refuses some values SQLite stores): EDM_FUZZ_PG=1 with EDM_TEST_DATABASE_URL set.
FUZZ_BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL and os.environ.get("EDM_FUZZ_PG") else [])
OPENAPI = "/api/v1/openapi.json"
ROLES = ("admin", "user")


def _operations() -> list[tuple[str, str]]:
    spec = openapi_document()
    return [
        (m.upper(), path)
        for path, ops in spec["paths"].items()
        for m in ops
        if m in ("get", "post", "put", "patch", "delete")
    ]


OPERATIONS = _operations()


@dataclass
class Target:
    schema: Any
    accounts: dict[str, Account]


async def _seed(db_url: str) -> dict[str, Account]:
    engine = make_engine(db_url, pool_size=2)
    sessionmaker = make_sessionmaker(engine)
    settings = settings_for(db_url)
    try:
        accounts = {
            "admin": await make_account(sessionmaker, "root", role=Role.ADMIN, credit=1000),
            "user": await make_account(sessionmaker, "fuzzy", credit=1000),
        }
        for account in accounts.values():
            await _objects_of(sessionmaker, settings, account, account.username)
        return accounts
    finally:
        await engine.dispose()


@pytest.fixture(scope="module", params=FUZZ_BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    if request.param == "sqlite":
        db_file = Path(tmp_path_factory.mktemp("fuzz")) / f"edm-{uuid.uuid4().hex[:8]}.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), db_file)
        db_url = f"sqlite:///{db_file}"
    else:
        database: PgDatabase = request.getfixturevalue("pg_database")
        database.reset()
        db_url = database.url
    accounts = asyncio.run(_seed(db_url))
    # The app builds its own engine in its lifespan, inside schemathesis's event-loop thread.
    app = create_app(settings_for(db_url, api_rate_limit=1_000_000))
    schema = schemathesis.openapi.from_asgi(OPENAPI, app)
    yield Target(schema, accounts)
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_input_gives_a_server_error(target: Target, method: str, path: str, role: str) -> None:
    operation = target.schema[path][method]
    strategy = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )
    headers = target.accounts[role].headers

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=DERANDOMIZE,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate, hypothesis.Phase.shrink],
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        response = case.call(headers=headers)
        assert response.status_code < 500, (
            f"{method} {path} as {role} → {response.status_code}: {response.text[:500]}\n"
            f"reproduce: {case.as_curl_command()}"
        )

    run()
