"""``--mode migrate``: apply ``schema.sql`` and install the work queue's tables
(idempotent), then exit."""

from __future__ import annotations

import asyncio

from ..options import CommonOptions, MigrateOptions
from ..runtime import database_of
from ..seams import Migration


async def run(common: CommonOptions, options: MigrateOptions, stop: asyncio.Event) -> int:
    """Create or update the schema, the work queue's tables included: applied whole even
    when the database says it has it (an index dropped by hand comes back)."""
    async with database_of(common, stop=stop, apply_schema=False) as database:
        found = await database.migrate(always=True)
        await database.queue.install()
    print(_SAID[found])
    return 0


_SAID = {
    Migration.CREATED: "schema created: the database had no asyncsync tables",
    Migration.UPDATED: "schema updated from an earlier release's",
    Migration.CURRENT: "schema is up to date (applied again: anything dropped by hand is back)",
}
