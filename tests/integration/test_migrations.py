"""The migrated schema equals the models (docs/data-model.md#conventions): autogenerate finds nothing to do, on each
database."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from edm.migrations.migrate import current_revision, head_revision, include_object
from edm.models import metadata


async def test_migrations_match_models(engine):  # type: ignore[no-untyped-def]
    def diff(connection):  # type: ignore[no-untyped-def]
        context = MigrationContext.configure(connection, opts={"compare_type": True, "include_object": include_object})
        return compare_metadata(context, metadata)

    async with engine.connect() as conn:
        differences = await conn.run_sync(diff)
    assert differences == []
    assert await current_revision(engine) == head_revision()
