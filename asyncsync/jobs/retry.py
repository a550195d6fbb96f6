"""Retrying failed imports (seed section 6.2): exponential backoff, then manual review.

An ``import_failures`` row is due again ``base_s × factor^(tentativas−1)`` after its last
attempt (30 s, 2 min, 8 min, 32 min), for at most ``max_attempts`` attempts in total.
After that it stays, open, and is reported for a person to look at ("manual review" is
derived, ``tentativas >= max_attempts AND NOT resolvido``, so no schema change is needed);
so is a record that came without an id, which no request can fetch.

Every timestamp comes from the caller (``now``), never from the database clock, so the
schedule can be tested without waiting and a serve loop can run :func:`retry_due` alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import asyncpg
import orjson

from .database import guarded, sql
from .enrich import DetailOutcome, fetch_details
from .errors import RecordError
from .records import DetailRecord, FailureRecord, OrderRecord, failure_from, order_from_detail
from .report import api_line, api_stats, ids_text, table
from .runtime import Runtime
from .tasks import unwrap
from .tokens import utcnow

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed import is tried again, and how often at most."""

    base_s: float = 30.0
    factor: float = 4.0
    max_attempts: int = 5  # attempts in total, the first (failed) import included

    def delay_s(self, tentativas: int) -> float:
        """Seconds to wait after attempt number ``tentativas`` before the next one."""
        return self.base_s * self.factor ** (max(tentativas, 1) - 1)

    def due_at(self, ultima_tentativa: dt.datetime, tentativas: int) -> dt.datetime | None:
        """When the next attempt is due; None when the attempts are used up."""
        if tentativas >= self.max_attempts:
            return None
        return ultima_tentativa + dt.timedelta(seconds=self.delay_s(tentativas))

    def sql_args(self) -> tuple[int, float, float]:
        """``(max_attempts, base_s, factor)``, the parameters of the schedule queries."""
        return self.max_attempts, self.base_s, self.factor


DEFAULT_POLICY = RetryPolicy()


@dataclass(frozen=True, slots=True)
class ManualReview:
    """An open failure no retry will fix."""

    id_ordem: int
    tentativas: int
    erro: str | None
    ultima_tentativa: dt.datetime | None


@dataclass
class RetryReport:
    """What one retry pass did."""

    now: str
    due: int = 0
    resolved: list[int] = field(default_factory=list)
    failed_again: list[int] = field(default_factory=list)  # still on schedule
    exhausted: list[int] = field(default_factory=list)  # this attempt was the last one
    pending: int = 0  # open, on schedule, not yet due
    next_due_at: str | None = None
    manual_review: list[ManualReview] = field(default_factory=list)
    interrupted: bool = False
    duration_s: float = 0.0
    api: dict[str, object] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """1 when a person must look at something (manual review), else 0."""
        return 1 if self.manual_review else 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for row in data["manual_review"]:
            stamp = row["ultima_tentativa"]
            row["ultima_tentativa"] = stamp.isoformat() if stamp is not None else None
        return data

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict()).decode()

    def render(self) -> str:
        review = [f"{m.id_ordem} ({m.tentativas}×: {m.erro or '-'})" for m in self.manual_review]
        rows = [
            ["resolved", len(self.resolved), ids_text(self.resolved)],
            ["failed again, rescheduled", len(self.failed_again), ids_text(self.failed_again)],
            ["failed for the last time", len(self.exhausted), ids_text(self.exhausted)],
            ["not due yet", self.pending, f"next at {self.next_due_at or '-'}"],
            ["manual review", len(self.manual_review), ids_text(review, limit=5)],
        ]
        title = f"retry of import failures at {self.now} — {self.due} due, {self.duration_s:.1f} s"
        if self.interrupted:
            title += " (interrupted)"
        lines = [table(["outcome", "orders", "ids"], rows, title), "", api_line(self.api)]
        return "\n".join(lines)


async def record_failures(
    pool: asyncpg.Pool | asyncpg.Connection,
    account: str,
    failures: Sequence[FailureRecord],
    now: dt.datetime,
) -> None:
    """Count one failed attempt at ``now`` for each failure (``import_failures`` upsert)."""
    if failures:
        rows = [(account, f.order_id, now, f.error, f.raw) for f in failures]
        await guarded(pool.executemany(sql("retry_record_failure"), rows), "recording failures")


async def manual_review(
    pool: asyncpg.Pool, account: str, policy: RetryPolicy = DEFAULT_POLICY
) -> list[ManualReview]:
    """Open failures that need a person: attempts used up, or no id to fetch."""
    rows = await guarded(
        pool.fetch(sql("retry_manual_review"), account, policy.max_attempts),
        "reading failures for manual review",
    )
    return [
        ManualReview(r["id_ordem"], r["tentativas"], r["erro"], r["ultima_tentativa"]) for r in rows
    ]


def detail_failure(order_id: int, error: str, raw: str | None) -> FailureRecord:
    """A failure whose ``dados_api`` is ``{"detail": <the failing answer>}``; when the error
    kept no body (5xx, timeouts), the message stands in for it."""
    detail = orjson.loads(raw) if raw else {"status": None, "error": error}
    return FailureRecord(order_id, error, orjson.dumps({"detail": detail}).decode())


def split_outcome(out: DetailOutcome) -> tuple[list[DetailRecord], list[FailureRecord]]:
    """The parsed details, and every way a fetch failed (404 included) as failures whose
    ``dados_api`` is ``{"detail": <the failing answer>}``."""
    failures = [detail_failure(f.order_id, f.error, f.raw) for f in out.failures]
    failures += [
        detail_failure(i, "TinyNotFound: the order's detail answered 404", '{"status": 404}')
        for i in out.missing
    ]
    return out.details, failures


def orders_from_details(
    out: DetailOutcome, details: Sequence[DetailRecord], mirrored: Collection[int]
) -> tuple[list[OrderRecord], list[DetailRecord], list[FailureRecord]]:
    """Order rows built from the details of orders the mirror lacks (known only by id);
    the details that can be merged; the failures of those that cannot."""
    records: list[OrderRecord] = []
    good: list[DetailRecord] = []
    failures: list[FailureRecord] = []
    for d in details:
        if d.id in mirrored:  # the row exists: the detail alone completes it
            good.append(d)
            continue
        try:
            records.append(order_from_detail(out.raw[d.id], d.id, d.observed_at))
            good.append(d)
        except RecordError as exc:
            f = failure_from(exc)
            failures.append(detail_failure(f.order_id, f.error, f.raw))
    return records, good, failures


async def retry_due(
    rt: Runtime,
    *,
    now: dt.datetime | None = None,
    stop: asyncio.Event,
    policy: RetryPolicy = DEFAULT_POLICY,
    chunk: int = 200,
) -> RetryReport:
    """Try again every failure due at ``now`` (default: the wall clock, UTC); resolve what
    imports, reschedule the rest. The caller holds the account's run lock.
    """
    now = now or utcnow()
    started = asyncio.get_running_loop().time()
    account = rt.settings.account
    report = RetryReport(now=now.isoformat())
    tried: set[int] = set()
    while not stop.is_set():
        rows = await guarded(
            rt.pool.fetch(sql("retry_due"), account, now, *policy.sql_args(), chunk + len(tried)),
            "reading due failures",
        )
        rows = [r for r in rows if r["id_ordem"] not in tried]
        if not rows:
            break
        ids = [r["id_ordem"] for r in rows]
        tried.update(ids)
        report.due += len(ids)
        out = await unwrap(fetch_details(rt.client, ids, concurrency=rt.settings.max_concurrency))
        parsed, failures = split_outcome(out)
        mirrored = {r["id_ordem"] for r in rows if r["in_mirror"]}
        records, details, unbuilt = orders_from_details(out, parsed, mirrored)
        failures += unbuilt
        await rt.sink.merge_listed(records)
        await rt.sink.merge_details(details)
        await record_failures(rt.pool, account, failures, now)
        report.resolved += sorted(d.id for d in details)
        attempts = {r["id_ordem"]: r["tentativas"] + 1 for r in rows}
        for f in sorted(failures, key=lambda f: f.order_id):
            done = attempts[f.order_id] >= policy.max_attempts
            (report.exhausted if done else report.failed_again).append(f.order_id)
    report.interrupted = stop.is_set()
    pending = await guarded(
        rt.pool.fetchrow(sql("retry_pending"), account, now, *policy.sql_args()),
        "reading pending failures",
    )
    report.pending = int(pending["n"])
    due_at = pending["next_due_at"]
    report.next_due_at = due_at.isoformat() if due_at is not None else None
    report.manual_review = await manual_review(rt.pool, account, policy)
    report.duration_s = round(asyncio.get_running_loop().time() - started, 2)
    report.api = api_stats(rt.client.stats, rt.client.limiter.stats)
    return report
