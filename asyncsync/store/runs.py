"""``sync_runs``: the history of every run of every mode, one row per run report.

A row keeps the figures an operator filters on as columns (mode, outcome, requests, 429s,
errors) and the whole report as JSON, so ``asyncsync status`` and SQL alike can answer
"did the last sync work, and what did it do".
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from ..overview import RunSummary
from ..records import storable_json, without_nul
from ..report import FINISHED, RunReport, to_dict
from ..seams import Census
from .resilience import SqlRunner


def _json(value: object) -> str:
    """JSON text PostgreSQL stores: an error quoted in a report may carry a NUL."""
    return storable_json(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode())


def summary(row: Any) -> RunSummary:
    """A ``sync_runs`` row as the status shows it."""
    facts = orjson.loads(row["facts"]) if isinstance(row["facts"], str) else row["facts"]
    return RunSummary(
        mode=row["mode"],
        invoked_as=row["invoked_as"],
        title=row["title"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        outcome=row["outcome"],
        requests=row["requests_total"],
        rate_limited=row["rate_limited"],
        quota_per_minute=row["quota_per_minute"],
        errors=tuple(row["errors"] or ()),
        facts=facts or {},
        recorded_at=row["recorded_at"],
    )


class PgRunLog:
    """The run history of one account."""

    def __init__(self, sql: SqlRunner, account: str, keep_days: int = 0) -> None:
        self._sql = sql
        self.account = account
        # Runs of a mode older than this are pruned as a new run of the mode lands; 0: never.
        self._keep = dt.timedelta(days=keep_days) if keep_days > 0 else None

    async def record(self, report: RunReport, *, invoked_as: str) -> int:
        """Store ``report`` (run by the command ``invoked_as``); returns the row's id.
        Runs of the same mode older than the history kept go in the same statement, but
        never the mode's newest successful run nor any run after it."""
        api = report.api
        run_id = await self._sql.fetchval(
            "recording the run",
            "run_record",
            self.account,
            report.mode,
            invoked_as,
            report.title,
            report.started_at,
            report.finished_at,
            report.outcome.value,
            _json(dict(report.counts)),
            _json(dict(api.requests)),
            api.total,
            api.rate_limited,
            api.retries,
            # A run that sent no request saw no quota: its client's pace is the one it
            # would have started at (status shows the quota of the last run that asked).
            (api.quota_per_minute or None) if api.total else None,
            [without_nul(error) for error in report.errors],
            _json(to_dict(report)),
            self._keep,
        )
        return int(run_id)

    async def latest(self) -> tuple[dict[str, RunSummary], dict[str, RunSummary]]:
        """(mode → its latest run, mode → its latest run that finished ok or attention)."""
        rows = await self._sql.fetch("reading runs", "run_latest", self.account)
        last: dict[str, RunSummary] = {}
        success: dict[str, RunSummary] = {}
        for row in rows:
            run = summary(row)
            if run.outcome in FINISHED:
                success[run.mode] = run
            held = last.get(run.mode)
            if held is None or run.started_at > held.started_at:
                last[run.mode] = run
        return last, success

    async def census(self) -> Census | None:
        """The mirror as the account's latest sync counted it at its end (None: none did).
        What a worker that does not run the account shows, instead of counting the
        account's orders itself (~60 ms at 100,000) every couple of minutes."""
        row = await self._sql.fetchrow("reading the last census", "run_census", self.account)
        if row is None:
            return None
        by_status = orjson.loads(row["by_status"] or "{}")
        return Census(
            {int(code): int(c["mirror"]) for code, c in by_status.items() if c.get("mirror")},
            int(row["detail_backlog"]),
        )
