"""``sync_metadata`` of one account: cursors, run markers and backfill checkpoints.

A checkpoint that must commit with its data rides along a merge instead
(:class:`~asyncsync.seams.Checkpoint`); these are for everything written on its own.
"""

from __future__ import annotations

import datetime as dt

import asyncpg

from .database import guarded, sql


class PgMetadata:
    """Key/value JSON texts of one account. Implements ``Metadata``."""

    def __init__(self, pool: asyncpg.Pool, account: str) -> None:
        self._pool = pool
        self.account = account

    async def get(self, key: str) -> str | None:
        value = await guarded(self._pool.fetchval(sql("get_metadata"), self.account, key), key)
        return None if value is None else str(value)

    async def set(self, key: str, value: str) -> None:
        await guarded(self._pool.execute(sql("set_metadata"), self.account, key, value), key)

    async def with_prefix(self, prefix: str) -> dict[str, str | None]:
        """Every entry whose key starts with ``prefix``, key -> value."""
        query = self._pool.fetch(sql("metadata_prefix"), self.account, prefix)
        rows = await guarded(query, f"reading {prefix}* entries")
        return {row["chave"]: row["valor"] for row in rows}

    async def last_synced(self) -> dt.datetime | None:
        """When the last full sync or incremental cycle finished, if ever."""
        query = self._pool.fetchval(sql("health"), self.account)
        return await guarded(query, "reading the last sync")  # type: ignore[no-any-return]
