"""``accounts``: the Tiny accounts of this database, as every worker reads them.

A row names how to reach the account and where its secrets are (an environment variable
or a file); :meth:`~asyncsync.options.AccountConfig.credentials` reads them when a
client is built, so a rotated secret is picked up without touching the table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..accounts import AccountConfig
from .resilience import SqlRunner


def _config(row: Any) -> AccountConfig:
    def path(value: str | None) -> Path | None:
        return None if value is None else Path(value)

    return AccountConfig(
        key=row["key"],
        api_base_url=row["api_base_url"],
        token_url=row["token_url"],
        client_id=row["client_id"],
        client_secret_env=row["client_secret_env"],
        client_secret_file=path(row["client_secret_file"]),
        client_secret=row["client_secret"],
        refresh_token_env=row["refresh_token_env"],
        refresh_token_file=path(row["refresh_token_file"]),
        quota_share=round(float(row["quota_share"]), 4),  # a real: 0.8 reads 0.800000011
        enabled=row["enabled"],
    )


class PgAccounts:
    """The ``accounts`` table."""

    def __init__(self, sql: SqlRunner) -> None:
        self._sql = sql

    async def put(self, config: AccountConfig) -> tuple[bool, bool]:
        """Add ``config``, or replace the row with its key (keeping whether it is enabled);
        returns (whether it is new, whether it is enabled)."""
        c = config

        def text(value: Path | None) -> str | None:
            return None if value is None else str(value)

        row = await self._sql.fetchrow(
            f"saving account {c.key}", "account_upsert",
            c.key, c.api_base_url, c.token_url, c.client_id, c.client_secret_env,
            text(c.client_secret_file), c.client_secret, c.refresh_token_env,
            text(c.refresh_token_file), c.quota_share, c.enabled,
        )  # fmt: skip
        assert row is not None  # INSERT ... RETURNING always answers a row
        return bool(row["inserted"]), bool(row["enabled"])

    async def get(self, key: str) -> AccountConfig | None:
        row = await self._sql.fetchrow(f"reading account {key}", "account_get", key)
        return None if row is None else _config(row)

    async def none(self) -> bool:
        """Whether the table has no row at all (the single-account install)."""
        return bool(await self._sql.fetchval("reading accounts", "account_none"))

    async def all(self) -> list[AccountConfig]:
        """Every row, enabled or not, by key."""
        return [_config(r) for r in await self._sql.fetch("listing accounts", "account_list")]

    async def set_enabled(self, key: str, enabled: bool) -> bool:
        """False when there is no such account."""
        found = await self._sql.fetchval(f"updating account {key}", "account_enable", key, enabled)
        return found is not None

    async def remove(self, key: str) -> bool:
        """Remove the row (the mirror, its history and tokens stay); False when absent."""
        found = await self._sql.fetchval(f"removing account {key}", "account_remove", key)
        return found is not None

    async def plan(self, keys: Sequence[str] | None) -> list[tuple[str, dt.datetime | None]]:
        """(account, when its last finished integrity check started) for every enabled
        account, or for ``keys`` when given (the single-account install has no row)."""
        rows = await self._sql.fetch(
            "reading what to plan", "account_plan", None if keys is None else list(keys)
        )
        return [(r["key"], r["last_integrity"]) for r in rows]
