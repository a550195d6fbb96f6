"""Planning a historical backfill: months × statuses, and where each partition resumes.

A backfill of the months ``first..last`` is cut into one
:class:`~asyncsync.engine.Partition` per month and status (the emission-date filters of
``GET /ordem-servico``), keyed ``backfill:YYYY-MM:S`` in ``sync_metadata``. The engine
stores ``{"offset": n, "complete": bool}`` under that key in the transaction that merges
each page, so on the next start a partition is skipped when complete and otherwise
resumed at its stored offset: nothing merged is read again, nothing unmerged is lost.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson

from ..engine.listing import Partition
from ..errors import ConfigError
from ..status import ALL_STATUSES

log = logging.getLogger(__name__)

KEY_PREFIX = "backfill:"
#: Where a backfill starts when ``--from`` is not given (the account's first year).
DEFAULT_FIRST_MONTH = dt.date(2014, 1, 1)


def next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


def last_day(month: dt.date) -> dt.date:
    """The last day of ``month``'s month."""
    return next_month(month) - dt.timedelta(days=1)


def month_range(first: dt.date, last: dt.date) -> list[dt.date]:
    """First days of the months from ``first`` to ``last``, both included."""
    months, month = [], first.replace(day=1)
    while month <= last:
        months.append(month)
        month = next_month(month)
    return months


def resolve_range(
    first: dt.date | None, last: dt.date | None, today: dt.date
) -> tuple[dt.date, dt.date]:
    """The (first, last) month of ``--from``/``--to``: by default 2014-01 to this month.

    A month after this one is refused: its partitions would be checkpointed complete
    before any of its orders exist, and later backfills would skip them.
    """
    this_month = today.replace(day=1)
    given_first, given_last = first is not None, last is not None
    first = (first or DEFAULT_FIRST_MONTH).replace(day=1)
    last = (last or this_month).replace(day=1)
    if last > this_month:
        raise ConfigError(
            f"--to (ASYNCSYNC_TO) {last:%Y-%m} is after the current month {this_month:%Y-%m}"
        )
    if first > last:
        # Each side named as it came: a default the user never gave was blamed by name
        # ("--from 9999-12 is after --to 2026-12", "--from 2014-01 is after --to 1900-01").
        if not given_last:
            raise ConfigError(f"--from (ASYNCSYNC_FROM) {first:%Y-%m} is after the current "
                              f"month {this_month:%Y-%m}")  # fmt: skip
        if not given_first:
            raise ConfigError(f"--to (ASYNCSYNC_TO) {last:%Y-%m} is before the first month "
                              f"backfilled by default, {first:%Y-%m}: give --from too")  # fmt: skip
        raise ConfigError(f"--from (ASYNCSYNC_FROM) {first:%Y-%m} is after --to (ASYNCSYNC_TO) "
                          f"{last:%Y-%m}")  # fmt: skip
    return first, last


def partition_key(month: dt.date, situacao: int) -> str:
    """``backfill:2014-01:3``: the sync_metadata key of one partition's checkpoint."""
    return f"{KEY_PREFIX}{month:%Y-%m}:{situacao}"


@dataclass(frozen=True, slots=True)
class Resume:
    """A stored checkpoint: the next offset to request, and whether paging ended."""

    offset: int
    complete: bool
    last_id: int | None = None  # the id of the order at offset - 1 when it was merged


def parse_checkpoint(key: str, value: str | None) -> Resume | None:
    """The checkpoint in ``value``, or None (start over) when it is unreadable."""
    try:
        data = orjson.loads(value or "")
        offset, complete = data["offset"], data["complete"]
        last_id = data.get("last_id")
        if isinstance(offset, int) and offset >= 0 and isinstance(complete, bool):
            return Resume(offset, complete, last_id if isinstance(last_id, int) else None)
    except (orjson.JSONDecodeError, TypeError, KeyError):
        pass
    log.warning("unreadable checkpoint %s=%r: that partition starts over", key, value)
    return None


@dataclass(frozen=True)
class Plan:
    """What a backfill run has left to do over its range."""

    first: dt.date
    last: dt.date
    todo: tuple[Partition, ...]  # incomplete partitions, at their resume offsets
    total: int  # partitions in the range
    skipped: int  # complete before this run
    resumed: int  # started at a stored offset > 0
    records_done: int  # records merged by earlier runs (the stored offsets)

    @property
    def last_day(self) -> dt.date:
        return last_day(self.last)


def plan_backfill(
    first: dt.date,
    last: dt.date,
    checkpoints: Mapping[str, str | None],
    statuses: Iterable[int] = ALL_STATUSES,
) -> Plan:
    """Partitions month by month, status by status; complete ones skipped, others resumed.

    Newest months come first: they are what reports need soonest, and they hold the most
    orders, so the long partitions start early instead of paging alone at the end.
    """
    todo: list[Partition] = []
    total = skipped = resumed = records_done = 0
    codes = [int(s) for s in statuses]
    for month in reversed(month_range(first, last)):
        for situacao in codes:
            total += 1
            key = partition_key(month, situacao)
            resume = parse_checkpoint(key, checkpoints[key]) if key in checkpoints else None
            offset = 0 if resume is None else resume.offset
            last_id = None if resume is None else resume.last_id
            records_done += offset
            if resume is not None and resume.complete:
                skipped += 1
                continue
            if offset > 0:
                resumed += 1
            todo.append(Partition(situacao, month, last_day(month), key, offset, last_id))
    return Plan(first, last, tuple(todo), total, skipped, resumed, records_done)
