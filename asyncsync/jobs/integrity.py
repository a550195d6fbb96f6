"""Integrity verification: does the mirror hold what the API lists?

First a pre-check costing one ``limit=1`` request per status: ``paginacao.total`` against
the mirror's count (rows flagged possibly_deleted left out, open import failures of absent
orders added, since the retry mode owns those). All equal and not ``deep``: done.

Otherwise every status is paged (statuses in parallel, pages concurrently once the total
is known). Each page's ``(id, situacao)`` is checked against the mirror straight away, so
only the list rows that disagree are kept in memory; at the end every listed
``(id, situacao, hash, observed_at)`` is compared with the mirror as sets:

* listed but absent → imported (list item + detail), its history continued where a row
  deleted by hand left one (not a second first sighting); a failed import goes to
  ``import_failures`` with the list item and the failing answer, and is not inserted.
  One whose failure waits for its next retry is left to the retry mode; one at manual
  review is a person's (section 6: no attempt after the last), reported, not asked: the
  listing that reads it whole (a sync's) or ``failures retry`` ends it;
* status differs → corrected from the list item, with an ``'integrity'`` history row;
* in no listing → its detail is asked: alive, it is merged; else ``possibly_deleted``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from typing import Any

import orjson

from ..engine.details import DetailOutcome, fetch_details
from ..engine.listing import Partition, listed_failure, page_through, status_totals
from ..errors import RecordError, RequestWithheld, TinyAuthError, TinyError, TinyOutage
from ..progress import Progress, ProgressReporter
from ..records import FailureRecord, OrderRecord, parse_list_item
from ..report import Outcome, RunReport, to_json
from ..seams import FailureLog, IntegrityStore, OrderSink, OrderSource, Page, RetryPolicy, Sighting
from ..status import ALL_STATUSES
from ..tasks import run_all, unwrap
from . import RunContext
from .retry import DEFAULT_POLICY, split_outcome

#: Orders in no listing whose detail is asked before flagging them possibly_deleted.
CONFIRM_LIMIT = 500
#: Missing orders imported per round: fetched, then merged before the next round's
#: requests, so a stop (or a kill) loses at most one round of requests.
IMPORT_CHUNK = 200
#: Findings that were already known (owned by the retry mode): not new inconsistencies.
_KNOWN = ("awaiting_retry", "manual_review")
#: Findings this run met and could not fix.
_UNFIXED = ("failed", "unreadable", "unavailable", "unconfirmed", "not_corrected",
            "not_imported")  # fmt: skip


async def check_integrity(
    source: OrderSource,
    sink: OrderSink,
    store: IntegrityStore,
    failures: FailureLog,
    ctx: RunContext,
    *,
    deep: bool = False,
    page_size: int = 100,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> RunReport:
    """Compare the mirror with the API, fix what can be fixed, store and return the report."""
    return await _Check(source, sink, store, failures, ctx, page_size, policy).run(deep)


def _known(found: dict[str, list[Any]]) -> str:
    """What a consistent verdict leaves to the retry mode and to a person, if anything."""
    parts = [
        f"{len(found[k])} {what}"
        for k, what in (("awaiting_retry", "awaiting retry"), ("manual_review", "at manual review"))
        if found[k]
    ]
    return f" but for known failures ({', '.join(parts)})" if parts else ""


def deep_day(account: str, day: dt.date) -> bool:
    """Whether ``day`` is ``account``'s weekly full comparison in ``serve``: totals that
    agree cannot see two orders that swapped statuses (nor one missing while another of its
    status was deleted in Tiny), and the planning document's check
    compares every id of every status. Once a week, the accounts of a database spread over
    the days so their full listings do not all land on the same one."""
    spread = int.from_bytes(hashlib.blake2b(account.encode(), digest_size=2).digest(), "big")
    return day.toordinal() % 7 == spread % 7


class _Check:
    """One integrity run; holds what the listing saw."""

    def __init__(
        self,
        source: OrderSource,
        sink: OrderSink,
        store: IntegrityStore,
        failures: FailureLog,
        ctx: RunContext,
        page_size: int,
        policy: RetryPolicy,
    ) -> None:
        self.source, self.sink, self.store, self.failures = source, sink, store, failures
        self.ctx, self.page_size, self.policy = ctx, page_size, policy
        self.seen: dict[int, Sighting] = {}  # id -> latest sighting
        self.candidates: dict[int, OrderRecord] = {}  # list rows that disagree with the mirror
        self.unreadable: dict[int, FailureRecord] = {}
        self.found: dict[str, list[Any]] = {
            name: []
            for name in ("recovered", "failed", "unavailable", "awaiting_retry", "unreadable",
                         "stale", "reappeared", "possibly_deleted", "found_by_detail",
                         "unconfirmed", "not_corrected", "manual_review", "not_imported")
        }  # fmt: skip
        self.api_totals: dict[int, int | None] = {}
        self.listing_errors: dict[int, str] = {}
        self.pages = 0
        self.progress = Progress("integrity")
        self.totals: dict[int, int] = {}  # paginacao.total of each status listed so far

    async def run(self, deep: bool) -> RunReport:
        ctx = self.ctx
        async with ProgressReporter(self.progress, stream=ctx.progress, account=ctx.account):
            return await self._run(deep)

    async def _run(self, deep: bool) -> RunReport:
        ctx = self.ctx
        started_at, api_before = ctx.clock(), self.source.api_stats()
        db_before, tracked_before = await self.store.counts()
        counts_agree: bool | None = None
        if not deep:
            # A total that failed is unknown: the full comparison will try (and report) it.
            self.api_totals = await status_totals(self.source, stop=ctx.stop)
            counts_agree = all(
                total is not None and total == db_before.get(s, 0) + tracked_before.get(s, 0)
                for s, total in self.api_totals.items()
            )
        method = "pre-check"
        if deep or not counts_agree:
            method = "full comparison"
            await self._full()
        else:  # the totals agree counting them: said, not left out of the verdict (sweep K)
            self.found["awaiting_retry"] = await self.store.tracked()
        db_after, tracked_after = await self.store.counts()
        review = await self.failures.manual_review(self.policy)
        self.found["manual_review"] = [m.id_ordem for m in review]
        # A missing order past its last attempt waits for a person, not for a retry.
        at_review = set(self.found["manual_review"])
        self.found["awaiting_retry"] = [
            i for i in self.found["awaiting_retry"] if i not in at_review
        ]
        found_new = any(v for k, v in self.found.items() if k not in _KNOWN)
        unfixed = sum(len(self.found[k]) for k in _UNFIXED) + len(self.listing_errors)
        found = (
            f"{unfixed} problem(s) NOT fixed" if unfixed
            else "inconsistencies found and fixed" if found_new
            else ""
        )  # fmt: skip
        # Stopped: what it found so far is known, the rest is not. With nothing found,
        # no verdict (None: integrity_runs.consistent NULL), neither way.
        consistent: bool | None
        if ctx.stop.is_set():
            outcome = Outcome.INTERRUPTED
            consistent = False if found_new else None
            verdict = f"interrupted, {found or 'nothing found'} before the stop"
        else:
            outcome = Outcome.ATTENTION if unfixed else Outcome.OK
            # A status it could not list leaves the verdict unknown (NULL), not false: a
            # dashboard on integrity_runs.consistent showed the mirror inconsistent (sweep K).
            consistent = False if found_new else None if self.listing_errors else True
            verdict = "consistent" + _known(self.found) if consistent else found
        codes = sorted(set(self.api_totals) | set(db_before) | set(db_after))
        report = RunReport(
            mode="integrity",
            account=ctx.account,
            started_at=started_at,
            finished_at=ctx.clock(),
            outcome=outcome,
            title=f"integrity check ({method}{', deep' if deep else ''}) — {verdict}",
            counts={"pages": self.pages, "listed": len(self.seen)},
            facts={"method": method, "counts_agree": counts_agree, "consistent": consistent},
            by_status={
                c: {
                    "api": self.api_totals.get(c),
                    "mirror_before": db_before.get(c, 0),
                    "mirror_after": db_after.get(c, 0),
                    "failing": tracked_after.get(c, 0),
                }
                for c in codes
            },
            findings=self.found,
            api=self.source.api_stats().since(api_before),
            errors=[f"listing of status {s} failed: {e}" for s, e in self.listing_errors.items()],
        )
        await self.store.save_run(started_at, report.finished_at, consistent, to_json(report))
        return report

    # --- the full comparison ---------------------------------------------------------

    async def _full(self) -> None:
        listed: dict[int, int] = {}
        self.progress.partitions_total = len(ALL_STATUSES)
        await run_all(self._list_status(int(s), listed) for s in ALL_STATUSES)
        # A status whose listing failed, or that a stop kept from its first page, keeps the
        # pre-check's total (None: unknown), never 0: no page of it counted anything.
        self.api_totals = {
            s: listed[s] if s in listed and s not in self.listing_errors
            else self.api_totals.get(s)
            for s in sorted(int(x) for x in ALL_STATUSES)
        }  # fmt: skip
        if self.ctx.stop.is_set():
            return
        await self._note_unreadable()
        to_import, unlisted = await self._compare()
        self.progress.details_total = len(to_import) + min(len(unlisted), CONFIRM_LIMIT)
        if to_import:  # stopped already: each said not imported
            await self._import(to_import)
        if unlisted and not self.ctx.stop.is_set():
            await self._confirm_unlisted(unlisted)
        elif unlisted:  # stopped first: in no listing, their detail not asked
            self.found["unconfirmed"] = sorted(unlisted)

    async def _list_status(self, situacao: int, listed: dict[int, int]) -> None:
        async def inspect(page: Page) -> None:
            await self._inspect(page)
            # The API's own total when it gives one, else what the pages held.
            listed[situacao] = (
                page.total
                if page.total is not None
                else (listed.get(situacao, 0) + len(page.items))
            )
            if page.total is not None:
                self.totals[situacao] = page.total
                if len(self.totals) == len(ALL_STATUSES):
                    self.progress.records_total = sum(self.totals.values())

        try:
            await page_through(
                self.source,
                Partition(situacao),
                page_size=self.page_size,
                workers=self.ctx.concurrency,
                stop=self.ctx.stop,
                on_page=inspect,
            )
        except (TinyAuthError, TinyOutage):
            raise  # not about this status: the run fails
        except TinyError as exc:
            self.listing_errors[situacao] = f"{type(exc).__name__}: {exc}"
        except RequestWithheld:
            pass  # stopped before its next page was sent: the run ends interrupted
        finally:
            self.progress.partitions_done += 1

    async def _inspect(self, page: Page) -> None:
        """Keep what a listed page says, and the rows that disagree with the mirror."""
        self.pages += 1
        self.progress.pages += 1
        self.progress.records += len(page.items)
        records: list[OrderRecord] = []
        for raw in page.items:
            try:
                records.append(parse_list_item(raw, page.observed_at))
            except RecordError as exc:
                # As the listing records it: an item whose own situacao is not the status
                # it was listed under carries that status ('listed_as'), or the count of
                # what the mirror knows leaves it out and its status looks short for ever.
                failure = listed_failure(exc, raw, page.query.situacao, wrapped=True)
                self.unreadable[failure.order_id] = failure
        for rec in records:
            held = self.seen.get(rec.id)
            if held is None or rec.observed_at >= held.observed_at:
                self.seen[rec.id] = Sighting(rec.id, rec.situacao, rec.hash, rec.observed_at)
        disagree = await self.store.disagreeing(records)
        for rec in records:
            held_rec = self.candidates.get(rec.id)
            if rec.id in disagree and (held_rec is None or rec.observed_at >= held_rec.observed_at):
                self.candidates[rec.id] = rec

    async def _note_unreadable(self) -> None:
        written = await self.failures.record(
            list(self.unreadable.values()), now=self.ctx.clock(), counts_as_attempt=False,
            listed=True,
        )  # fmt: skip
        self.found["unreadable"] = sorted(written)
        # Met again, its failure open already: the retry mode's (or a person's), like a
        # missing order whose failure is not due.
        self.found["awaiting_retry"] += sorted(set(self.unreadable) - set(written))

    async def _compare(self) -> tuple[list[int], list[int]]:
        """Compare every listed id; correct statuses; return (ids to import, ids unlisted)."""
        complete = not self.listing_errors and not self.ctx.stop.is_set()
        comparison = await self.store.compare(
            list(self.seen.values()), now=self.ctx.clock(), policy=self.policy, complete=complete
        )
        # Rows the listing disagreed with are candidates by construction (nothing else
        # writes while the account lock is held); the filter only guards against a writer.
        missing = [(i, due) for i, due in comparison.missing if i in self.candidates]
        stale = [s for s in comparison.stale if s.id in self.candidates]
        fixed = await self.store.correct([self.candidates[s.id] for s in stale])
        for s in stale:
            if s.id not in fixed:  # the row holds an observation newer than this listing's
                self.found["not_corrected"].append(s.id)
                continue
            if s.old != s.new:
                self.found["stale"].append({"id": s.id, "from": s.old, "to": s.new})
            if s.flagged:
                self.found["reappeared"].append(s.id)
        # Not due: its next retry is the retry mode's, or its attempts are used up and it
        # waits for a person (section 6), reported as such by the run (manual_review).
        self.found["awaiting_retry"] += [i for i, due in missing if not due]
        unlisted = [i for i in comparison.unlisted if i not in self.unreadable]
        return [i for i, due in missing if due], unlisted

    async def _import(self, ids: Sequence[int]) -> None:
        """Missing orders: detail first; only a complete order enters the mirror. In rounds
        of IMPORT_CHUNK, each merged before the next is asked: a stop ends the requests and
        keeps what arrived."""
        for start in range(0, len(ids), IMPORT_CHUNK):
            if self.ctx.stop.is_set():
                break
            await self._import_chunk(ids[start : start + IMPORT_CHUNK])
        for key in ("recovered", "failed", "unavailable"):
            self.found[key] = sorted(self.found[key])
        # Stopped: what was found missing and not asked is said, not left out (the report
        # listed the 96 imported of 1,500 found missing, "found and fixed": sweep K).
        asked = {*self.found["recovered"], *self.found["failed"], *self.found["unavailable"]}
        self.found["not_imported"] = sorted(set(ids) - asked)

    async def _details(self, ids: Sequence[int]) -> DetailOutcome:
        """The details of ``ids``, each answer counted in the progress."""
        ctx = self.ctx
        return await unwrap(
            fetch_details(self.source, ids, concurrency=ctx.concurrency, stop=ctx.stop,
                          answered=self._answered)
        )  # fmt: skip

    async def _import_chunk(self, ids: Sequence[int]) -> None:
        out = await self._details(ids)
        details, failed = split_outcome(out)
        merged = await self.sink.merge_listed(
            [self.candidates[d.id] for d in details], attempt=True
        )
        merged = merged + await self.sink.merge_details(details, attempt=True)
        # Listed by this run: a failure a retry resolved (its detail's 404 taken for a
        # deletion) that comes back with the same error counts one more attempt, not a
        # fresh start, or an order Tiny lists but will not show never reached a person.
        await self.failures.record(
            [self._with_item(f) for f in failed], now=self.ctx.clock(), counts_as_attempt=True,
            listed=True,
        )  # fmt: skip
        refused = {f.order_id for f in merged.refused}  # a failed attempt, counted by the merge
        failed = [*failed, *merged.refused]
        recovered = [d.id for d in details if d.id not in refused]
        # A row deleted by hand left its history: the import continues it.
        await self.store.chain_history(recovered)
        self.found["recovered"] += recovered
        self.found["failed"] += [f.order_id for f in failed]
        self.found["unavailable"] += list(out.unavailable)
        out.raise_outage()

    def _answered(self) -> None:
        self.progress.details += 1

    def _with_item(self, failure: FailureRecord) -> FailureRecord:
        """The failure's ``dados_api`` with the list item next to the failing answer."""
        dados = orjson.loads(failure.raw) if failure.raw else {}
        dados["list_item"] = orjson.loads(self.candidates[failure.order_id].payload)
        return FailureRecord(failure.order_id, failure.error, _json(dados))

    async def _confirm_unlisted(self, ids: Sequence[int]) -> None:
        """In no listing: the detail decides (offset paging can skip an order that moved).
        Past CONFIRM_LIMIT orders, the rest wait for a later run: only a 404 flags one."""
        out = await self._details(ids[:CONFIRM_LIMIT])
        await self.sink.merge_details(out.details)
        self.found["found_by_detail"] = sorted(d.id for d in out.details)
        # Only a 404 says "deleted"; a detail that failed proves nothing: a bad answer
        # becomes an import failure for the retry mode, an unavailable one is asked again
        # next run, and this run reports both unfixed.
        await self.failures.record(out.failures, now=self.ctx.clock(), counts_as_attempt=True)
        self.found["failed"] = sorted({*self.found["failed"], *(f.order_id for f in out.failures)})
        self.found["unavailable"] = sorted({*self.found["unavailable"], *out.unavailable})
        self.found["possibly_deleted"] = await self.store.flag_deleted(
            list(out.missing), now=self.ctx.clock()
        )
        self.found["unconfirmed"] = list(ids[CONFIRM_LIMIT:])
        out.raise_outage()


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


__all__ = ["CONFIRM_LIMIT", "check_integrity", "deep_day"]
