"""``--mode migrate``: apply ``schema.sql`` (idempotent) and exit."""

from __future__ import annotations

import asyncio

from ..options import CommonOptions, MigrateOptions
from ..runtime import database_of


async def run(common: CommonOptions, options: MigrateOptions, stop: asyncio.Event) -> int:
    """Create or update the schema."""
    async with database_of(common):
        pass
    print("schema is up to date")
    return 0
