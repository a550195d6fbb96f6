"""Retrying failed imports: exponential backoff, then manual review.

An ``import_failures`` row is due again ``base_s × factor^(tentativas−1)`` after its last
attempt (30 s, 2 min, 8 min, 32 min), for at most ``max_attempts`` attempts in total.
After that it stays, open, and is reported for a person to look at ("manual review" is
derived, ``tentativas >= max_attempts AND NOT resolvido``, so no schema change is needed);
so is a record that came without an id, which no request can fetch. An order whose detail
answers 404 was deleted in Tiny (Tiny's 404, JSON or empty; a web server's 404 page, as a
wrong base URL answers, is an outage to the client, never a deletion): nothing is left to
import, so its failure is resolved and its mirror row, if any, flagged ``possibly_deleted``
(as a sync or an integrity check flags a 404), not counted as an attempt towards manual
review. Not so one whose failure is that 404 already, recorded because a listing showed
the order as its detail answered 404, and whose row no listing has missed since (not
flagged): Tiny lists it, so its 404 again is one more failed attempt, on the schedule,
then manual review.

Every timestamp comes from the caller's clock, never from the database's, so the schedule
can be tested without waiting.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence

import orjson

from ..engine.details import DetailOutcome, fetch_details
from ..errors import RecordError, TinyError, TinyUnavailable
from ..records import (
    DetailRecord,
    FailureRecord,
    OrderRecord,
    detail_not_found,
    failure_from,
    order_from_detail,
)
from ..report import Outcome, RunReport
from ..seams import FailureLog, OrderSink, OrderSource, RetryPolicy
from ..tasks import unwrap
from . import RunContext

DEFAULT_POLICY = RetryPolicy()


def detail_failure(order_id: int, error: str, raw: str | None) -> FailureRecord:
    """A failure whose ``dados_api`` is ``{"detail": <the failing answer>}``; when the error
    kept no body (5xx, timeouts), the message stands in for it."""
    detail = orjson.loads(raw) if raw else {"status": None, "error": error}
    return FailureRecord(order_id, error, orjson.dumps({"detail": detail}).decode())


def split_outcome(out: DetailOutcome) -> tuple[list[DetailRecord], list[FailureRecord]]:
    """The parsed details, and every way a fetch failed (404 included) as failures whose
    ``dados_api`` is ``{"detail": <the failing answer>}``."""
    failures = [detail_failure(f.order_id, f.error, f.raw) for f in out.failures]
    failures += [detail_not_found(i) for i in out.missing]
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
    source: OrderSource,
    sink: OrderSink,
    failures: FailureLog,
    ctx: RunContext,
    *,
    now: dt.datetime | None = None,
    policy: RetryPolicy = DEFAULT_POLICY,
    chunk: int = 200,
    ids: Collection[int] | None = None,
    budget: int | None = None,
    outage_if_unanswered: bool = False,
) -> RunReport:
    """Try again every failure due at ``now`` (default: the context's clock), or only
    those of ``ids``; resolve what imports, reschedule the rest. At most ``budget``
    failures are tried (None: every one due): the rest stay due, for the next run, and the
    report counts them (``still_due``). The caller holds the account's run lock.

    A detail Tiny could not serve (5xx, timeouts, refused connections) stays due,
    ``unavailable``. With ``outage_if_unanswered`` (a one-shot run), a run that tried
    some and had not one of them answered raises :class:`TinyUnavailable` (exit 5): too
    few requests to open the circuit (a wrong address, a short outage) must not end as
    done. A long-running cycle leaves them due: one order whose detail Tiny always
    fails to serve must not fail every cycle."""
    started_at, api_before = ctx.clock(), source.api_stats()
    now = now or started_at
    resolved: list[int] = []
    unavailable: list[int] = []
    failed_again: list[int] = []
    exhausted: list[int] = []
    gone: list[int] = []
    tried: set[int] = set()
    because: TinyError | None = None  # why the last unavailable detail was
    while not ctx.stop.is_set():
        room = chunk if budget is None else min(chunk, budget - len(tried))
        if room <= 0:
            break
        due = await failures.due(now, policy, room + len(tried), ids)
        rows = [r for r in due if r.id_ordem not in tried][:room]
        if not rows:
            break
        asked = [r.id_ordem for r in rows]  # not ``ids``: that is the caller's filter
        tried.update(asked)
        out = await unwrap(fetch_details(source, asked, concurrency=ctx.concurrency, stop=ctx.stop))
        parsed, failed = split_outcome(out)
        # 404: deleted in Tiny. Not a failed attempt: nothing is left to import. Unless
        # Tiny lists the order still (a listing showed it when its detail first answered
        # 404, and none has missed it since): that is how its detail answers, one more
        # failed attempt, or it would be flagged deleted while every listing shows it.
        shown = {r.id_ordem for r in rows if r.listed_not_found}
        deleted = set(out.missing) - shown
        failed = [f for f in failed if f.order_id not in deleted]
        mirrored = {r.id_ordem for r in rows if r.in_mirror}
        records, details, unbuilt = orders_from_details(out, parsed, mirrored)
        failed += unbuilt
        merged = await sink.merge_listed(records, attempt=True)
        # The deleted: flagged, their failures resolved, in the details' merge.
        merged = merged + await sink.merge_details(details, missing=deleted, attempt=True)
        await failures.record(failed, now=now, counts_as_attempt=True)
        gone += sorted(deleted)
        # What PostgreSQL still refuses failed this attempt too (the merge counted it).
        failed += merged.refused
        refused = {f.order_id for f in merged.refused}
        resolved += sorted(d.id for d in details if d.id not in refused)
        unavailable += sorted(out.unavailable)  # an outage is not an attempt: still due
        because = out.unavailable_because or because
        out.raise_outage()
        attempts = {r.id_ordem: r.tentativas + 1 for r in rows}
        for order_id in sorted({f.order_id for f in failed}):
            done = attempts[order_id] >= policy.max_attempts
            (exhausted if done else failed_again).append(order_id)
    answered = resolved or failed_again or exhausted or gone
    if outage_if_unanswered and unavailable and not answered and not ctx.stop.is_set():
        raise TinyUnavailable(
            f"Tiny is unavailable: none of the {len(unavailable)} due detail(s) was answered "
            f"({because}); they stay due for the next run"
        ) from because
    pending, next_due, still_due = await failures.pending(now, policy)
    review = await failures.manual_review(policy)
    notes = [f"manual review: {m.id_ordem} ({m.tentativas}×: {m.erro or '-'})" for m in review[:5]]
    if len(review) > 5:
        notes.append(
            f"manual review: {len(review) - 5} more (`asyncsync failures list --state review`)"
        )
    if ctx.stop.is_set():
        outcome = Outcome.INTERRUPTED
    else:
        outcome = Outcome.ATTENTION if review else Outcome.OK
    return RunReport(
        mode="retry",
        account=ctx.account,
        started_at=started_at,
        finished_at=ctx.clock(),
        outcome=outcome,
        title="retry of failed imports",
        counts={"due": len(tried), "pending": pending, "still_due": still_due},
        facts={
            "as_of": now.isoformat(),
            "next_due_at": None if next_due is None else next_due.isoformat(),
        },
        findings={
            "resolved": resolved,
            "unavailable": unavailable,
            "failed_again": failed_again,
            "exhausted": exhausted,
            "gone": gone,
            "manual_review": [m.id_ordem for m in review],
        },
        api=source.api_stats().since(api_before),
        notes=notes,
    )
