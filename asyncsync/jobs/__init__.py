"""The jobs: a full or incremental sync, a historical backfill, an integrity check and
the retry of failed imports. Each receives the seams Protocols it needs and a
:class:`RunContext`, drives the engine, and returns one :class:`~asyncsync.report.RunReport`.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from typing import TextIO

from ..clock import Clock, utcnow
from ..seams import MergeStats


@dataclass(frozen=True)
class RunContext:
    """What every job is run with besides its Protocols and options."""

    account: str = "default"
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # set: drain and return
    clock: Clock = utcnow
    progress: TextIO = field(default_factory=lambda: sys.stderr)  # where progress is shown
    concurrency: int = 16  # requests a job keeps waiting at the account's limiter


def merge_counts(listed: MergeStats, details: MergeStats) -> dict[str, int | float]:
    """The report counts of a listing and its details pass."""
    return {
        "orders_listed": listed.received,
        "inserted": listed.inserted,
        "changed": listed.changed,
        "unchanged": listed.unchanged,
        "first_sightings": listed.first_sightings,
        "status_changes": listed.status_changes + details.status_changes,
        "details_fetched": details.details,
        "details_gone": details.missing,
        "details_unavailable": details.unavailable,
        "import_failures": listed.failures + details.failures,
    }


__all__ = ["RunContext", "merge_counts"]
