"""Integrity verification (seed section 6): does the mirror hold what the API lists?

First a pre-check costing one ``limit=1`` request per status: ``paginacao.total`` against
the mirror's count (rows flagged possibly_deleted left out, open import failures of absent
orders added, since the retry mode owns those). All equal and not ``deep``: done.

Otherwise every status is paged (statuses in parallel, pages concurrently once the total
is known). Each page's ``(id, situacao)`` is checked against the mirror straight away, so
only the list rows that disagree are kept in memory; at the end the ``(id, situacao, hash,
observed_at)`` of every listed item is copied into a temp table and SQL computes the sets:

* listed but absent → imported (list item + detail); a failed import goes to
  ``import_failures`` with the list item and the failing answer, and is not inserted;
* status differs → corrected from the list item, with an ``'integrity'`` history row;
* in no listing → its detail is asked: alive, it is merged; else ``possibly_deleted``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from .database import guarded, sql
from .engine import Partition, page_through, status_totals
from .enrich import fetch_details
from .errors import RecordError, TinyAuthError, TinyError
from .records import FailureRecord, OrderRecord, failure_from, parse_list_item
from .report import api_stats
from .retry import (
    DEFAULT_POLICY,
    RetryPolicy,
    manual_review,
    record_failures,
    split_outcome,
)
from .runtime import Runtime
from .seams import Page
from .sink import ORDER_COLUMNS, order_row
from .status import ALL_STATUSES
from .tasks import run_all, unwrap
from .tokens import utcnow

Clock = Callable[[], dt.datetime]
#: Orders in no listing whose detail is asked before flagging them possibly_deleted.
CONFIRM_LIMIT = 500
#: Lists longer than this are cut in the JSON report (their counts are complete).
JSON_LIST_CAP = 1000
_FINDINGS = ("recovered", "failed", "awaiting_retry", "unreadable", "stale", "reappeared",
             "possibly_deleted", "found_by_detail", "manual_review")  # fmt: skip
_KNOWN = ("awaiting_retry", "manual_review")  # failures found earlier, owned by the retry mode


@dataclass
class IntegrityReport:
    """What an integrity run found and did; ``to_dict`` is what ``integrity_runs`` stores."""

    started_at: str
    deep: bool = False
    method: str = "pre-check"  # or "full comparison"
    counts_agree: bool | None = None  # the pre-check's verdict (None: not run, --deep)
    finished_at: str = ""
    duration_s: float = 0.0
    api_totals: dict[int, int | None] = field(default_factory=dict)
    db_before: dict[int, int] = field(default_factory=dict)  # possibly_deleted left out
    tracked_before: dict[int, int] = field(default_factory=dict)  # open failures, not mirrored
    db_after: dict[int, int] = field(default_factory=dict)
    tracked_after: dict[int, int] = field(default_factory=dict)
    listed: int = 0  # distinct ids listed by the full comparison
    pages: int = 0
    recovered: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)  # import attempted and failed this run
    awaiting_retry: list[int] = field(default_factory=list)  # failing already, not due
    unreadable: list[int] = field(default_factory=list)  # list items newly recorded as failures
    stale: list[dict[str, int]] = field(default_factory=list)  # {"id", "from", "to"}
    reappeared: list[int] = field(default_factory=list)  # flagged before, listed again
    possibly_deleted: list[int] = field(default_factory=list)  # newly flagged
    found_by_detail: list[int] = field(default_factory=list)  # in no listing, detail alive
    manual_review: list[int] = field(default_factory=list)
    listing_errors: dict[int, str] = field(default_factory=dict)
    interrupted: bool = False
    api: dict[str, object] = field(default_factory=dict)

    @property
    def consistent(self) -> bool:
        """Nothing new was found: the mirror agreed with the API (known failures aside)."""
        found = any(getattr(self, name) for name in _FINDINGS if name not in _KNOWN)
        return not (found or self.listing_errors or self.interrupted)

    @property
    def unfixed(self) -> int:
        """Problems this run met and could not fix."""
        return len(self.failed) + len(self.unreadable) + len(self.listing_errors)

    @property
    def exit_code(self) -> int:
        """0 when consistent or everything found was fixed, 1 when something was not."""
        return 1 if self.unfixed else 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["counts"] = {name: len(getattr(self, name)) for name in _FINDINGS}
        for name in _FINDINGS:
            data[name] = data[name][:JSON_LIST_CAP]
        data.update(consistent=self.consistent, unfixed=self.unfixed, exit_code=self.exit_code)
        return data

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_NON_STR_KEYS).decode()


async def check_integrity(
    rt: Runtime,
    *,
    deep: bool = False,
    stop: asyncio.Event,
    clock: Clock = utcnow,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> IntegrityReport:
    """Compare the mirror with the API, fix what can be fixed, store and return the report."""
    return await _Check(rt, stop, clock, policy).run(deep)


class _Check:
    """One integrity run; holds what the listing saw."""

    def __init__(self, rt: Runtime, stop: asyncio.Event, clock: Clock, policy: RetryPolicy) -> None:
        self.rt, self.stop, self.clock, self.policy = rt, stop, clock, policy
        self.account = rt.settings.account
        self.seen: dict[int, tuple[int, bytes, dt.datetime]] = {}  # id -> latest sighting
        self.candidates: dict[int, OrderRecord] = {}  # list rows that disagree with the mirror
        self.unreadable: dict[int, FailureRecord] = {}
        self.report = IntegrityReport(started_at="")

    async def run(self, deep: bool) -> IntegrityReport:
        started_at, started = self.clock(), time.monotonic()
        r = self.report
        r.started_at, r.deep = started_at.isoformat(), deep
        r.db_before, r.tracked_before = await self._counts()
        if not deep:
            r.api_totals = await self._totals()
            r.counts_agree = all(
                total is not None and total == r.db_before.get(s, 0) + r.tracked_before.get(s, 0)
                for s, total in r.api_totals.items()
            )
        if deep or not r.counts_agree:
            r.method = "full comparison"
            await self._full()
        r.interrupted = self.stop.is_set()
        r.db_after, r.tracked_after = await self._counts()
        r.manual_review = [m.id_ordem for m in await manual_review(self.rt.pool, self.account)]
        finished_at = self.clock()
        r.finished_at, r.duration_s = finished_at.isoformat(), round(time.monotonic() - started, 2)
        r.api = api_stats(self.rt.client.stats, self.rt.client.limiter.stats)
        run = (self.account, started_at, finished_at, r.consistent, r.to_json())
        await guarded(self.rt.pool.execute(sql("integrity_save_run"), *run), "saving the run")
        return r

    async def _counts(self) -> tuple[dict[int, int], dict[int, int]]:
        pool = self.rt.pool
        db = await guarded(pool.fetch(sql("counts_by_status"), self.account), "counting orders")
        tracked = await guarded(
            pool.fetch(sql("integrity_tracked_counts"), self.account), "counting failures"
        )
        return {r["situacao"]: r["n"] for r in db}, {r["situacao"]: r["n"] for r in tracked}

    async def _totals(self) -> dict[int, int | None]:
        # A total that failed is unknown: the full comparison will try (and report) it.
        return await status_totals(self.rt.client)

    # --- the full comparison ---------------------------------------------------------

    async def _full(self) -> None:
        r = self.report
        listed: dict[int, int] = {}
        await run_all(self._list_status(int(s), listed) for s in ALL_STATUSES)
        r.api_totals = {
            s: r.api_totals.get(s) if s in r.listing_errors else listed.get(s, 0)
            for s in sorted(int(x) for x in ALL_STATUSES)
        }
        r.listed = len(self.seen)
        if self.stop.is_set():
            return
        await self._note_unreadable()
        to_import, unlisted = await guarded(self._compare(), "comparing with the mirror")
        if to_import and not self.stop.is_set():
            await self._import(to_import)
        if unlisted and not self.stop.is_set():
            await self._confirm_unlisted(unlisted)

    async def _list_status(self, situacao: int, listed: dict[int, int]) -> None:
        listed[situacao] = 0

        async def inspect(page: Page) -> None:
            await self._inspect(page)
            # The API's own total when it gives one, else what the pages held.
            listed[situacao] = (
                page.total if page.total is not None else (listed[situacao] + len(page.items))
            )

        try:
            await page_through(
                self.rt.client,
                Partition(situacao),
                page_size=self.rt.settings.page_size,
                workers=self.rt.settings.max_concurrency,
                stop=self.stop,
                on_page=inspect,
            )
        except TinyAuthError:
            raise
        except TinyError as exc:
            self.report.listing_errors[situacao] = f"{type(exc).__name__}: {exc}"

    async def _inspect(self, page: Page) -> None:
        """Keep what a listed page says, and the rows that disagree with the mirror."""
        self.report.pages += 1
        records: list[OrderRecord] = []
        for raw in page.items:
            try:
                records.append(parse_list_item(raw, page.observed_at))
            except RecordError as exc:
                failure = failure_from(exc)
                self.unreadable[failure.order_id] = failure
        for rec in records:
            if rec.id not in self.seen or rec.observed_at >= self.seen[rec.id][2]:
                self.seen[rec.id] = (rec.situacao, rec.hash, rec.observed_at)
        ids, statuses = [x.id for x in records], [x.situacao for x in records]
        disagree: set[int] = set()
        if ids:
            query = self.rt.pool.fetch(sql("integrity_candidates"), self.account, ids, statuses)
            disagree = {row["id"] for row in await guarded(query, "comparing a page")}
        for rec in records:
            held = self.candidates.get(rec.id)
            if rec.id in disagree and (held is None or rec.observed_at >= held.observed_at):
                self.candidates[rec.id] = rec

    async def _note_unreadable(self) -> None:
        now = self.clock()
        for f in self.unreadable.values():
            item = orjson.loads(f.raw) if f.raw else None
            raw = orjson.dumps({"list_item": item}).decode()
            args = (self.account, f.order_id, f.error, raw, now)
            if await guarded(self.rt.pool.fetchval(sql("record_failure"), *args), "failures"):
                self.report.unreadable.append(f.order_id)
        self.report.unreadable.sort()

    async def _compare(self) -> tuple[list[int], list[int]]:
        """Stage every listed id; correct statuses; return (ids to import, ids unlisted)."""
        r, account = self.report, self.account
        rows = [(i, s, h, o) for i, (s, h, o) in self.seen.items()]
        async with self.rt.pool.acquire() as conn, conn.transaction():
            await conn.execute(sql("integrity_stage"))
            await conn.copy_records_to_table("integrity_listed", records=rows)
            missing = await conn.fetch(
                sql("integrity_missing"), account, self.clock(), *self.policy.sql_args()
            )
            # Rows the listing disagreed with are in candidates by construction (nothing else
            # writes while the account lock is held); the filter only guards against a writer.
            missing = [m for m in missing if m["id"] in self.candidates]
            stale = await conn.fetch(sql("integrity_stale"), account)
            stale = [s for s in stale if s["id"] in self.candidates]
            fixes = [order_row(self.candidates[s["id"]]) for s in stale]
            await conn.copy_records_to_table("stage_orders", records=fixes, columns=ORDER_COLUMNS)
            await conn.execute(sql("integrity_fix_history"), account)
            fixed = {row["id"] for row in await conn.fetch(sql("integrity_fix_orders"), account)}
            complete = not r.listing_errors and not self.stop.is_set()
            unlisted = await conn.fetch(sql("integrity_unlisted"), account) if complete else []
        for s in stale:
            if s["id"] not in fixed:
                continue
            if s["old"] != s["new"]:
                r.stale.append({"id": s["id"], "from": s["old"], "to": s["new"]})
            if s["possibly_deleted"]:
                r.reappeared.append(s["id"])
        r.awaiting_retry = [m["id"] for m in missing if not m["due"]]
        return [m["id"] for m in missing if m["due"]], [
            u["id"] for u in unlisted if u["id"] not in self.unreadable
        ]

    async def _import(self, ids: Sequence[int]) -> None:
        """Missing orders: detail first; only a complete order enters the mirror."""
        rt = self.rt
        out = await unwrap(fetch_details(rt.client, ids, concurrency=rt.settings.max_concurrency))
        details, failures = split_outcome(out)
        await rt.sink.merge_listed([self.candidates[d.id] for d in details])
        await rt.sink.merge_details(details)
        await record_failures(
            rt.pool, self.account, [self._with_item(f) for f in failures], self.clock()
        )
        self.report.recovered = sorted(d.id for d in details)
        self.report.failed = sorted(f.order_id for f in failures)

    def _with_item(self, failure: FailureRecord) -> FailureRecord:
        """The failure's ``dados_api`` with the list item next to the failing answer."""
        dados = orjson.loads(failure.raw) if failure.raw else {}
        dados["list_item"] = orjson.loads(self.candidates[failure.order_id].payload)
        return FailureRecord(failure.order_id, failure.error, orjson.dumps(dados).decode())

    async def _confirm_unlisted(self, ids: Sequence[int]) -> None:
        """In no listing: the detail decides (offset paging can skip an order that moved).
        Past CONFIRM_LIMIT orders the listing is taken at its word, to bound the cost."""
        rt, ask = self.rt, ids[:CONFIRM_LIMIT]
        out = await unwrap(fetch_details(rt.client, ask, concurrency=rt.settings.max_concurrency))
        await rt.sink.merge_details(out.details)
        self.report.found_by_detail = sorted(d.id for d in out.details)
        # Only a 404 says "deleted"; a detail that failed (5xx, bad JSON) proves nothing:
        # it becomes an import failure for the retry mode, and this run reports it unfixed.
        await record_failures(rt.pool, self.account, out.failures, self.clock())
        self.report.failed = sorted({*self.report.failed, *(f.order_id for f in out.failures)})
        gone = [*out.missing, *ids[CONFIRM_LIMIT:]]
        query = rt.pool.fetch(sql("integrity_flag_deleted"), self.account, gone)
        self.report.possibly_deleted = sorted(row["id"] for row in await guarded(query, "flagging"))
