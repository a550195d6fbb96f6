"""What a unit of work is: an account, a kind and its parameters, and how it rides the
queue (priority, dedupe key, delay).

Priorities keep small accounts' cycles ahead of everybody's backfill: a worker always
claims the most urgent unit first, and the background kinds (backfill, integrity) are
also limited to a few running at once across every worker (``--background-slots``), so
the other slots stay free for cycles.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

import orjson

from ..seams import WorkItem


class Kind(enum.StrEnum):
    """The kinds of unit, each a queue entrypoint with its handler."""

    CYCLE = "asyncsync.cycle"  # periodic: an incremental sync and the retries due
    KEEPALIVE = "asyncsync.keepalive"  # periodic: renew the refresh token when past half-life
    INTEGRITY = "asyncsync.integrity"  # periodic: the integrity check (--integrity-interval)
    BACKFILL = "asyncsync.backfill"  # one month of history (all statuses), checkpointed

    @property
    def short(self) -> str:
        return self.value.removeprefix("asyncsync.")


#: Higher first. Token keep-alive is tiny and must not lapse; cycles keep the mirror fresh.
PRIORITY = {Kind.KEEPALIVE: 300, Kind.CYCLE: 200, Kind.INTEGRITY: 50, Kind.BACKFILL: 10}
#: The mode each kind's runs are recorded as in the run history (a keep-alive is none).
RECORDED_AS = {Kind.CYCLE: "sync", Kind.INTEGRITY: "integrity", Kind.BACKFILL: "backfill"}
#: Kinds limited to ``--background-slots`` running at once across every worker.
BACKGROUND = (Kind.INTEGRITY, Kind.BACKFILL)
#: The planner's periodic task (a queue schedule, not a unit).
PLAN = "asyncsync.plan"


@dataclass(frozen=True, slots=True)
class Unit:
    """One unit of work of one account."""

    kind: Kind
    account: str
    month: dt.date | None = None  # BACKFILL: the first day of its month

    @property
    def dedupe_key(self) -> str:
        """One queued or running unit per account and kind (and month)."""
        key = f"{self.kind.short}:{self.account}"
        return f"{key}:{self.month:%Y-%m}" if self.month else key

    def encode(self) -> bytes:
        data: dict[str, str] = {"kind": self.kind.short, "account": self.account}
        if self.month is not None:
            data["month"] = f"{self.month:%Y-%m}"
        return orjson.dumps(data)

    @classmethod
    def decode(cls, kind: str, payload: bytes) -> Unit:
        data = orjson.loads(payload)
        month = data.get("month")
        return cls(
            kind=Kind(kind),
            account=str(data["account"]),
            month=dt.date.fromisoformat(f"{month}-01") if month else None,
        )

    def item(self, delay_s: float = 0.0) -> WorkItem:
        """This unit as the queue carries it, due in ``delay_s`` seconds."""
        return WorkItem(
            kind=self.kind.value,
            payload=self.encode(),
            priority=PRIORITY[self.kind],
            delay_s=max(delay_s, 0.0),
            dedupe_key=self.dedupe_key,
        )

    def __str__(self) -> str:
        return self.dedupe_key
