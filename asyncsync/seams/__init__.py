"""The small Protocols the engine and the jobs see, and the frozen values that cross them.

The Tiny client implements :class:`OrderSource`; the ``store`` wing implements every other
Protocol here (and :class:`WorkQueue`, in :mod:`.queue`). Neither imports the other: modes
wire them together, and each job receives only the Protocols it uses, so it can be tested
or reused with another implementation.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import enum
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from ..records import DetailRecord, FailureRecord, OrderRecord
from .queue import PickedWork, QueueCount, Tick, WorkHandler, WorkItem, WorkQueue

# --- what the Tiny side hands over ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListQuery:
    """One page request of ``GET /ordem-servico``."""

    situacao: int
    offset: int = 0
    limit: int = 100
    date_from: dt.date | None = None  # dataInicialEmissao, inclusive
    date_to: dt.date | None = None  # dataFinalEmissao, inclusive


@dataclass(frozen=True, slots=True)
class Page:
    """One answered page: raw items (parsed later, one by one) and what paging said."""

    query: ListQuery
    items: tuple[Any, ...]
    total: int | None  # paginacao.total, when the API sent it
    observed_at: dt.datetime  # when the request was sent

    @property
    def is_last(self) -> bool:
        """Nothing comes after this page.

        With ``paginacao.total``, a page that reaches it, unless it is full (as many
        items as ``limit`` asked): a total that lies low would hide every order past it,
        so a full page at the total is followed by one more request, starting on its last
        order (that order alone when the total was true). A listing also takes a page as
        long as its first for a full one, where a server caps ``limit`` below ours
        (:func:`asyncsync.engine.listing.ends`). Without a total, a short page proves
        nothing: Tiny documents no maximum ``limit`` and a server may answer fewer items
        than asked on every page, so only an empty page is the last.
        """
        if not self.items:
            return True
        if self.total is not None:
            reached = self.query.offset + len(self.items) >= self.total
            return reached and len(self.items) < self.query.limit
        return False


@dataclass(frozen=True, slots=True)
class Detail:
    """The raw answer of ``GET /ordem-servico/{id}``."""

    order_id: int
    body: Any
    observed_at: dt.datetime


@dataclass(frozen=True)
class TokenSet:
    """OAuth tokens of one account. The repr never shows a token."""

    refresh_token: str = field(repr=False)
    access_token: str | None = field(default=None, repr=False)
    access_expires_at: dt.datetime | None = None
    access_issued_at: dt.datetime | None = None  # when the grant was asked for
    refresh_expires_at: dt.datetime | None = None  # as Tiny announced (refresh_expires_in)


#: Upper edges of the latency buckets, in milliseconds: 1 ms to ~110 s in steps of 25%,
#: fine enough for a p95 within a quarter, and counts (unlike samples) can be subtracted.
LATENCY_EDGES_MS: tuple[float, ...] = tuple(1.25**k for k in range(53))


@dataclass(frozen=True, slots=True)
class ApiStats:
    """Cumulative figures of a Tiny client; ``later.since(earlier)`` is one run's share."""

    requests: Mapping[str, int] = field(default_factory=dict)  # sent, by endpoint
    retries: int = 0
    rate_limited: int = 0  # 429 answers
    paused_s: float = 0.0  # time the account was held back (429 or a spent window)
    token_refreshes: int = 0
    latency_sum_s: float = 0.0
    latency_buckets: tuple[int, ...] = ()  # counts per LATENCY_EDGES_MS bucket
    quota_per_minute: int = 0  # the pace the client keeps now (not a total)
    mended: int = 0  # answers read only once their text was mended (not UTF-8)

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def since(self, earlier: ApiStats) -> ApiStats:
        """What happened between ``earlier`` and this snapshot."""
        buckets = self.latency_buckets
        if earlier.latency_buckets:
            buckets = tuple(a - b for a, b in zip(buckets, earlier.latency_buckets, strict=True))
        return ApiStats(
            requests={
                k: n - earlier.requests.get(k, 0)
                for k, n in self.requests.items()
                if n - earlier.requests.get(k, 0)
            },
            retries=self.retries - earlier.retries,
            rate_limited=self.rate_limited - earlier.rate_limited,
            paused_s=self.paused_s - earlier.paused_s,
            token_refreshes=self.token_refreshes - earlier.token_refreshes,
            latency_sum_s=self.latency_sum_s - earlier.latency_sum_s,
            latency_buckets=buckets,
            quota_per_minute=self.quota_per_minute,
            mended=self.mended - earlier.mended,
        )

    @property
    def mean_ms(self) -> float:
        n = sum(self.latency_buckets)
        return 1000 * self.latency_sum_s / n if n else 0.0

    @property
    def p95_ms(self) -> float:
        """The upper edge of the bucket holding the 95th percentile (0 with no requests)."""
        n = sum(self.latency_buckets)
        if not n:
            return 0.0
        seen = 0
        for edge, count in zip(LATENCY_EDGES_MS, self.latency_buckets, strict=False):
            seen += count
            if seen >= 0.95 * n:
                return edge
        return LATENCY_EDGES_MS[-1]

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": dict(self.requests),
            "requests_total": self.total,
            "retries": self.retries,
            "rate_limited_429": self.rate_limited,
            "paused_s": round(self.paused_s, 1),
            "token_refreshes": self.token_refreshes,
            "latency_mean_ms": round(self.mean_ms, 1),
            "latency_p95_ms": round(self.p95_ms, 1),
            "quota_per_minute": self.quota_per_minute,
            "mended_answers": self.mended,
        }


def latency_bucket(seconds: float) -> int:
    """Index of the LATENCY_EDGES_MS bucket a latency falls in."""
    return min(bisect.bisect_left(LATENCY_EDGES_MS, seconds * 1000), len(LATENCY_EDGES_MS) - 1)


# --- what the store hands over -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A progress marker stored in ``sync_metadata`` in the same transaction as its data."""

    key: str
    value: str  # JSON text


@dataclass(frozen=True, slots=True)
class Census:
    """The whole mirror of an account as a run counted it at its end: orders per status
    (possibly-deleted left out) and the detail backlog. What the gauges show after the run,
    so they need not count the mirror again."""

    orders_by_status: Mapping[int, int]
    detail_backlog: int


@dataclass(frozen=True, slots=True)
class MergeStats:
    """What one merge did; ``a + b`` adds two up over a run."""

    received: int = 0
    inserted: int = 0
    changed: int = 0
    unchanged: int = 0
    first_sightings: int = 0  # history rows of orders seen for the first time
    status_changes: int = 0  # history rows of known orders that changed status
    failures: int = 0
    details: int = 0
    missing: int = 0
    unavailable: int = 0  # details Tiny could not serve (5xx, timeouts): left for later
    #: records PostgreSQL refused, set aside in import_failures (counted in ``failures``)
    refused: tuple[FailureRecord, ...] = ()

    def __add__(self, other: MergeStats) -> MergeStats:
        return MergeStats(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )


class Migration(enum.StrEnum):
    """What applying ``schema.sql`` found: no asyncsync schema, another release's, this one's."""

    CREATED = "created"
    UPDATED = "updated"
    CURRENT = "current"


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


@dataclass(frozen=True, slots=True)
class DueFailure:
    """An open import failure whose next attempt is due."""

    id_ordem: int
    tentativas: int
    in_mirror: bool  # the order already has a row (only its detail failed)
    #: Its failure is a detail's 404 and its row is not flagged possibly_deleted: Tiny
    #: listed it when its detail answered 404, and no listing has missed it since.
    listed_not_found: bool


@dataclass(frozen=True, slots=True)
class ManualReview:
    """An open failure no retry will fix."""

    id_ordem: int
    tentativas: int
    erro: str | None
    ultima_tentativa: dt.datetime | None


@dataclass(frozen=True, slots=True)
class Sighting:
    """The latest listing of one id during an integrity run."""

    id: int
    situacao: int
    hash: bytes
    observed_at: dt.datetime


@dataclass(frozen=True, slots=True)
class StaleRow:
    """A mirror row the listing disagrees with."""

    id: int
    old: int  # status in the mirror
    new: int  # status in the listing
    flagged: bool  # it was flagged possibly_deleted


@dataclass(frozen=True, slots=True)
class Comparison:
    """What an integrity run's listing says about the mirror."""

    missing: tuple[tuple[int, bool], ...]  # (id, due): listed, absent from the mirror
    stale: tuple[StaleRow, ...]
    unlisted: tuple[int, ...]  # mirror rows in no listing (only when the listing was complete)


# --- the Protocols -----------------------------------------------------------------------


class OrderSource(Protocol):
    """Where orders come from (the Tiny API client).

    ``stop``: the run's stop event. Once it is set, a request not sent yet (waiting for
    its turn at the account's pace, or for its retry) is not sent at all:
    :class:`~asyncsync.errors.RequestWithheld` instead. One already sent is answered."""

    async def list_orders(self, query: ListQuery, *, stop: asyncio.Event | None = None) -> Page: ...

    async def get_order(
        self,
        order_id: int,
        *,
        retry: bool = True,
        repeat: bool = False,
        stop: asyncio.Event | None = None,
    ) -> Detail:
        """The order's detail; without ``retry``, a transient failure is raised at once.
        ``repeat``: this request repeats one that failed so (it counts as a retry)."""
        ...

    def api_stats(self) -> ApiStats: ...


class OrderSink(Protocol):
    """Where orders go (the PostgreSQL mirror of one account).

    ``attempt``: the merge is an attempt to import orders that failed before (a retry, an
    integrity import): a record PostgreSQL refuses counts as a failed attempt, and a
    failure is resolved only once the order's detail has landed (``merge_details``)."""

    async def merge_listed(
        self,
        records: Sequence[OrderRecord],
        failures: Sequence[FailureRecord] = (),
        checkpoints: Sequence[Checkpoint] = (),
        *,
        attempt: bool = False,
    ) -> MergeStats: ...

    async def merge_details(
        self,
        details: Sequence[DetailRecord],
        failures: Sequence[FailureRecord] = (),
        missing: Collection[int] = (),
        *,
        attempt: bool = False,
        unresolved: Collection[int] = (),
        listed: Collection[int] = (),
    ) -> MergeStats:
        """Details land; ``missing`` (a 404) are flagged possibly deleted, but for the
        ``listed`` ones, which a listing of this run showed: each an import failure."""
        ...

    async def detail_backlog(self, limit: int, exclude: Collection[int] = ()) -> list[int]: ...

    async def detail_backlog_size(self) -> int: ...

    async def ids_in_statuses(self, statuses: Sequence[int]) -> set[int]: ...

    async def counts_by_status(self) -> dict[int, int]: ...

    async def known_by_status(self) -> dict[int, int]:
        """Orders the mirror knows per status: its rows, plus the open import failures of
        orders it lacks (the API lists and counts those too)."""
        ...

    async def counts_in_range(self, first_day: dt.date, last_day: dt.date) -> dict[int, int]: ...


class Metadata(Protocol):
    """Cursors and checkpoints of one account (``sync_metadata``)."""

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def with_prefix(self, prefix: str) -> dict[str, str | None]: ...


class FailureLog(Protocol):
    """``import_failures`` of one account: records that could not be imported."""

    async def record(
        self,
        failures: Sequence[FailureRecord],
        *,
        now: dt.datetime,
        counts_as_attempt: bool,
        listed: bool = False,
    ) -> list[int]:
        """Write failures at ``now``; returns the ids whose row was written.

        With ``counts_as_attempt`` an open row counts one more attempt (a retry or an
        import that failed again); without it an open row stays as it is (a listing shows
        the same broken record at every run, which is not a new attempt). A resolved row
        is reopened at attempt 1 either way, unless ``listed`` (list items a listing read)
        brings the same error back: one more attempt then (failure_upsert.sql).
        """
        ...

    async def due(
        self,
        now: dt.datetime,
        policy: RetryPolicy,
        limit: int,
        ids: Collection[int] | None = None,
    ) -> list[DueFailure]:
        """Open failures due at ``now``, oldest attempt first; only ``ids`` when given."""
        ...

    async def pending(
        self, now: dt.datetime, policy: RetryPolicy
    ) -> tuple[int, dt.datetime | None, int]:
        """(open failures not due yet, when the next falls due, open failures due now)."""
        ...

    async def manual_review(self, policy: RetryPolicy) -> list[ManualReview]: ...


class IntegrityStore(Protocol):
    """What an integrity run asks of the mirror."""

    async def counts(self) -> tuple[dict[int, int], dict[int, int]]:
        """(mirror rows by status, open failures of absent orders by listed status)."""
        ...

    async def tracked(self) -> list[int]:
        """Ids of the orders absent from the mirror whose import failure is open."""
        ...

    async def disagreeing(self, records: Sequence[OrderRecord]) -> set[int]: ...

    async def compare(
        self,
        seen: Sequence[Sighting],
        *,
        now: dt.datetime,
        policy: RetryPolicy,
        complete: bool,
    ) -> Comparison: ...

    async def correct(self, records: Sequence[OrderRecord]) -> set[int]:
        """Apply list rows that disagree with the mirror (status included, with an
        ``'integrity'`` history row); returns the ids corrected."""
        ...

    async def chain_history(self, ids: Sequence[int]) -> None:
        """Continue the history ``ids`` had before their rows were deleted by hand: the
        first sighting their import recorded becomes a move from the status last
        observed, or goes when that is the status listed now."""
        ...

    async def flag_deleted(self, ids: Sequence[int], *, now: dt.datetime) -> list[int]:
        """Flag ``ids`` possibly_deleted and resolve their open failures (a detail's 404:
        gone from Tiny); returns the ids newly flagged."""
        ...

    async def save_run(
        self,
        started_at: dt.datetime,
        finished_at: dt.datetime,
        consistent: bool | None,
        report: str,
    ) -> None: ...


class TokenStore(Protocol):
    """Where the newest tokens of an account live, shared by every process."""

    async def load(self) -> TokenSet | None: ...

    async def save(self, tokens: TokenSet) -> None: ...

    def exclusive(self) -> AbstractAsyncContextManager[None]:
        """Held while refreshing, so two processes never spend the same refresh token."""
        ...


class Authorizer(Protocol):
    """The first authorization of an account's app, by a person at a browser."""

    redirect_uri: str
    caught_locally: bool  # the redirect is caught on this machine (else it is pasted)

    def url(self, state: str) -> str: ...

    async def code(self, state: str, timeout_s: float) -> str: ...

    async def exchange(self, code: str) -> TokenSet: ...


__all__ = [
    "LATENCY_EDGES_MS",
    "ApiStats",
    "Authorizer",
    "Checkpoint",
    "Comparison",
    "Detail",
    "DueFailure",
    "FailureLog",
    "IntegrityStore",
    "ListQuery",
    "ManualReview",
    "MergeStats",
    "Metadata",
    "OrderSink",
    "OrderSource",
    "Page",
    "PickedWork",
    "QueueCount",
    "RetryPolicy",
    "Sighting",
    "StaleRow",
    "Tick",
    "TokenSet",
    "TokenStore",
    "WorkHandler",
    "WorkItem",
    "WorkQueue",
    "latency_bucket",
]
