"""``worker_settings``: what each serve worker runs with, of the settings every worker of
the database must share (:mod:`asyncsync.agreement`)."""

from __future__ import annotations

from ..agreement import FORGET_AFTER_S, WorkerSettings
from .resilience import SqlRunner


class PgWorkerSettings:
    """The settings of the workers sharing this database."""

    def __init__(self, sql: SqlRunner) -> None:
        self._sql = sql

    async def say(self, own: WorkerSettings) -> None:
        """Record ``own`` as seen now (and forget workers silent for a day)."""
        await self._sql.execute(
            "recording this worker's settings", "worker_settings_say", own.worker,
            own.interval_s, own.integrity_interval_s, own.background_slots, own.heartbeat_s,
            FORGET_AFTER_S,
        )  # fmt: skip

    async def seen(self, within_s: float) -> list[WorkerSettings]:
        """The settings of every worker seen within ``within_s`` seconds."""
        rows = await self._sql.fetch("reading the workers' settings", "worker_settings_seen",
                                     within_s)  # fmt: skip
        return [WorkerSettings(**dict(row)) for row in rows]

    async def forget(self, worker: str) -> None:
        """Take ``worker`` (stopping) out of the comparison."""
        await self._sql.execute("forgetting this worker's settings", "worker_settings_forget",
                                worker)  # fmt: skip
