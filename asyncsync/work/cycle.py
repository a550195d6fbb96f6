"""The cycle unit: an account's incremental sync and the import-failure retries that are
due (the daily sweep of closed statuses rides inside the sync, when ``plan_cycle`` says
it is due), recorded in the run history; then when the next cycle is due.

Failures fall due on their own schedule (30 s, 2 min, 8 min, 32 min after an attempt):
when one falls due before the next sync, the unit comes back then and retries only
(the sync's start is kept in the account's metadata, so any worker can tell).

An outage fails a cycle, never the worker: the failed run is recorded, ``--mode health``
says why, and the next cycle comes after Tiny's cool-down (its circuit is open) or
sooner, with backoff, after a database failure. Cycles are due every ``--interval`` from
the start of the last one (one that overran its interval is followed at once).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from dataclasses import dataclass

import orjson

from .. import metrics
from ..clock import utcnow
from ..errors import (
    AsyncsyncError,
    DatabaseError,
    DatabaseUnavailable,
    LeaseLost,
    ReauthorizationRequired,
    TinyAuthError,
    TinyError,
    TinyUnavailable,
)
from ..jobs.retry import DEFAULT_POLICY, retry_due
from ..jobs.sync import sync_once
from ..options import ServeOptions
from ..overview import reauthorization_problem
from ..readiness import Readiness
from ..report import RunReport, failed_report, headline, log_fields, note_failure, observe
from ..seams import ApiStats, Metadata
from .health import say_health, say_unsaid
from .ports import AccountRuntime, RunLog

log = logging.getLogger(__name__)

#: After a database failure the next cycle comes sooner: 5 s, 10 s, … up to the interval.
DB_RETRY_FIRST_S = 5.0
#: The retry schedule the cycles keep (``jobs.retry``'s).
RETRY_POLICY = DEFAULT_POLICY
#: Where the start of the account's last sync by a cycle is kept.
SYNC_STARTED_KEY = "cycle_sync_started"
#: A unit woken this close to the next sync's time syncs (clocks of workers differ).
SYNC_SLACK_S = 2.0


@dataclass(frozen=True)
class CycleResult:
    """What a cycle unit did, and in how many seconds the account's next cycle is due."""

    reports: list[RunReport]
    next_in_s: float
    database_failed: bool = False


async def cycle(
    rt: AccountRuntime, options: ServeOptions, stop: asyncio.Event
) -> tuple[list[RunReport], dt.datetime | None]:
    """A sync when one is due, then the retries that are due (the caller holds the
    account's lease, which is its run lock); and when the last sync started."""
    ctx = rt.context(stop)
    store = rt.store
    synced = await _sync_started(store.metadata)
    reports: list[RunReport] = []

    # Detail requests the cycle may spend: at the pace the account's quota allows, asked
    # when its details pass starts (a worker's first cycle of the account learns the quota
    # from the listing's answers: before them it was the 120 a minute assumed).
    def budget_now() -> int:
        return options.detail_budget(rt.client.api_stats().quota_per_minute)

    started_at = utcnow()
    if synced is None or _seconds_to(synced, options.interval_s, started_at) <= SYNC_SLACK_S:
        sync_options = dataclasses.replace(options.cycle, detail_budget=budget_now)
        reports.append(await sync_once(rt.client, store.orders, store.metadata, sync_options, ctx))
        if not stop.is_set():  # a sync cut short is due again at once
            synced = started_at
            stamp = {"started_at": started_at.isoformat()}
            await store.metadata.set(SYNC_STARTED_KEY, orjson.dumps(stamp).decode())
    if not stop.is_set():
        # The retries share the cycle's detail budget (a tenth of it at least, so they
        # never starve behind a long backlog): thousands due at once must not hold the
        # account for hours; the rest stay due for the next cycle. A budget of 0 asks no
        # detail, retries included.
        spent = reports[0].api.requests.get("detail", 0) if reports else 0
        budget = budget_now()
        retry_budget = max(budget - spent, budget // 10, min(budget, 1))
        retried = retry_due(
            rt.client, store.orders, store.failures, ctx, budget=retry_budget, policy=RETRY_POLICY
        )
        reports.append(await retried)
    return reports, synced


async def _sync_started(metadata: Metadata) -> dt.datetime | None:
    raw = await metadata.get(SYNC_STARTED_KEY)
    try:
        return None if raw is None else dt.datetime.fromisoformat(orjson.loads(raw)["started_at"])
    except (ValueError, TypeError, KeyError):  # not ours: a sync is due
        return None


def _seconds_to(synced: dt.datetime, interval_s: float, now: dt.datetime) -> float:
    """Seconds from ``now`` until the sync after the one started at ``synced`` is due."""
    return interval_s - (now - synced).total_seconds()


def next_in_s(reports: list[RunReport], interval_s: float, synced: dt.datetime | None) -> float:
    """When the account's cycle unit is due again: at the next sync, or sooner when an
    import failure falls due before it, as the cycle's retry found (not one due already:
    the budget or Tiny left it, and the next sync's retries take it)."""
    now = utcnow()
    wait = 0.0 if synced is None else max(_seconds_to(synced, interval_s, now), 0.0)
    due = next((r.facts.get("next_due_at") for r in reports if r.mode == "retry"), None)
    if isinstance(due, str):
        wait = min(wait, max((dt.datetime.fromisoformat(due) - now).total_seconds(), 1.0))
    return wait


async def record(runs: RunLog, report: RunReport, facts: dict[str, str]) -> RunReport:
    """Metrics, one log line and a ``sync_runs`` row (in ``runs``, the account's run
    history) for a report of a unit (best effort); ``facts`` say which worker ran which
    unit."""
    report = dataclasses.replace(report, facts={**report.facts, **facts})
    observe(report)
    level = logging.INFO if report.outcome.value in ("ok", "interrupted") else logging.WARNING
    log.log(level, headline(report), extra={"fields": {**log_fields(report), **facts}})
    try:
        await runs.record(report, invoked_as="serve")
    except DatabaseError as exc:
        log.warning(
            "the %s could not be recorded in sync_runs: %s", report.title or report.mode, exc
        )
    return report


def failed_unit(
    rt: AccountRuntime, mode: str, started_at: dt.datetime, api_before: ApiStats, exc: Exception
) -> RunReport:
    """The report of a unit an error ended, with the requests (and the 429s, when they
    are what ended it) it made since ``api_before``."""
    spent = rt.client.api_stats().since(api_before)
    return failed_report(mode, rt.account, started_at, exc, spent)


async def run_cycle(
    rt: AccountRuntime,
    options: ServeOptions,
    stop: asyncio.Event,
    *,
    facts: dict[str, str],
    db_failures: int = 0,
    readiness: Readiness | None = None,
) -> CycleResult:
    """One cycle of ``rt``'s account. Raises ReauthorizationRequired (after recording
    it): only a person can fix that."""
    started_at = utcnow()
    api_before = rt.client.api_stats()
    await say_unsaid(rt)  # a failure the database was too far away to hear of
    try:
        await rt.client.keep_alive()
        reports, synced = await cycle(rt, options, stop)
    except LeaseLost:
        raise  # not this cycle's failure: the account goes on at the worker holding it
    except (TinyError, DatabaseError) as exc:
        note_failure(rt.account, exc)
        if isinstance(exc, TinyAuthError) and readiness is not None:
            said = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, ReauthorizationRequired):  # as health.judge says it
                said = reauthorization_problem(rt.account)
            readiness.set("authorization", said)
        failed = await record(
            rt.store.runs, failed_unit(rt, "sync", started_at, api_before, exc), facts
        )
        if isinstance(exc, ReauthorizationRequired):
            await say_health(rt, reauthorization_problem(rt.account))
            raise
        await say_health(rt, f"last cycle failed: {exc}")
        wait_s, what = next_attempt(rt, options, exc, db_failures)
        log.error("the cycle of account %s failed (%s); next attempt in %.0f s: %s",
                  rt.account, what, wait_s, exc,
                  extra={"fields": {"account": rt.account, "event": "cycle_failed"}})  # fmt: skip
        return CycleResult([failed], wait_s, isinstance(exc, DatabaseUnavailable))
    reports = [await record(rt.store.runs, r, facts) for r in reports]
    if readiness is not None:
        readiness.clear("authorization")
    metrics.REAUTHORIZATION_REQUIRED.labels(rt.account).set(0)
    await say_health(rt, None)
    return CycleResult(reports, next_in_s(reports, options.interval_s, synced))


def next_attempt(
    rt: AccountRuntime, options: ServeOptions, exc: AsyncsyncError, db_failures: int
) -> tuple[float, str]:
    """When to try again after a failed cycle, and what failed."""
    if isinstance(exc, TinyUnavailable):
        # Tiny away: again after a cool-down, not a whole interval later (an outage of
        # two minutes kept the mirror 15 behind). While the circuit is open, asking would
        # only be refused: at its end (the worker keeps the account's circuit for its next
        # unit), one probe request decides.
        breaker = rt.client.breaker
        if breaker.retry_at:
            return max(breaker.retry_at - time.monotonic(), 0.0), "Tiny"
        return min(options.interval_s, breaker.cooldown_s), "Tiny"
    if isinstance(exc, DatabaseUnavailable):
        # The database is back soon, usually: come back sooner than a whole interval.
        return min(options.interval_s, DB_RETRY_FIRST_S * 2**db_failures), "the database"
    return options.interval_s, "Tiny" if isinstance(exc, TinyError) else "the database"
