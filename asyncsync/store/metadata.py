"""``sync_metadata`` of one account: cursors, run markers and backfill checkpoints.

A checkpoint that must commit with its data rides along a merge instead
(:class:`~asyncsync.seams.Checkpoint`); these are for everything written on its own.
"""

from __future__ import annotations

import datetime as dt

from ..clock import utcnow
from .resilience import SqlRunner


class PgMetadata:
    """Key/value JSON texts of one account. Implements ``Metadata``."""

    def __init__(self, sql: SqlRunner, account: str) -> None:
        self._sql = sql
        self.account = account

    async def get(self, key: str) -> str | None:
        value = await self._sql.fetchval(f"reading {key}", "get_metadata", self.account, key)
        return None if value is None else str(value)

    async def set(self, key: str, value: str) -> None:
        await self._sql.execute(f"writing {key}", "set_metadata", self.account, key, value)

    async def delete(self, key: str) -> None:
        await self._sql.execute(f"removing {key}", "delete_metadata", self.account, key)

    async def with_prefix(self, prefix: str) -> dict[str, str | None]:
        """Every entry whose key starts with ``prefix``, key -> value."""
        rows = await self._sql.fetch(f"reading {prefix}*", "metadata_prefix", self.account, prefix)
        return {row["chave"]: row["valor"] for row in rows}

    async def last_synced(self) -> dt.datetime | None:
        """When the last full sync or incremental cycle finished, if ever, on this host's
        clock: the database stamped it, and says how long ago. Compared with the host's
        now as it was, a host 3 h ahead of the database was never fresh, and one 3 h
        behind said stale 3 h late."""
        age: dt.timedelta | None = await self._sql.fetchval(
            "reading the last sync", "health", self.account
        )
        return None if age is None else utcnow() - age
