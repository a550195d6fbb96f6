"""Progress a person can read: a live bar on a terminal, JSON lines otherwise.

The engine only bumps counters on a :class:`Progress`; a :class:`ProgressReporter`
task renders them every ``interval_s`` and once more at the end.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

import orjson


@dataclass
class Progress:
    """Counters of a long run. ``*_total`` are None while unknown."""

    label: str
    partitions_total: int | None = None
    partitions_done: int = 0
    pages: int = 0
    pages_total: int | None = None  # when requests, not records, set the pace (backfill)
    records: int = 0
    records_total: int | None = None
    details: int = 0
    details_total: int | None = None
    failures: int = 0
    started: float = field(default_factory=time.monotonic)

    def snapshot(self) -> dict[str, object]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        done, total = self._work()
        rate = done / elapsed
        eta = (total - done) / rate if total and rate > 0 and total >= done else None
        return {
            "progress": self.label,
            "partitions": f"{self.partitions_done}/{self.partitions_total or '?'}",
            "pages": self.pages,
            "records": self.records,
            "records_total": self.records_total,
            "details": self.details,
            "details_total": self.details_total,
            "failures": self.failures,
            "elapsed_s": round(elapsed, 1),
            "rate_per_s": round(rate, 1),
            "eta_s": None if eta is None else round(eta),
        }

    def _work(self) -> tuple[int, int | None]:
        if self.details_total is not None:
            return self.details, self.details_total
        if self.pages_total is not None:
            return self.pages, self.pages_total
        return self.records, self.records_total


def _bar(done: int, total: int | None, width: int = 24) -> str:
    if not total:
        return "[" + "?" * width + "]"
    filled = min(width, int(width * done / total))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def render_line(snap: dict[str, object], done: int, total: int | None) -> str:
    """One terminal line: bar, counts, rate, ETA."""
    eta = snap["eta_s"]
    eta_text = "--" if eta is None else f"{int(eta) // 60}m{int(eta) % 60:02d}s"  # type: ignore[call-overload]
    return (
        f"{snap['progress']:<10} {_bar(done, total)} partitions {snap['partitions']}  "
        f"pages {snap['pages']}  records {snap['records']}  details {snap['details']}  "
        f"failures {snap['failures']}  {snap['rate_per_s']}/s  ETA {eta_text}"
    )


class ProgressReporter:
    """Renders a Progress periodically until closed. ``async with ProgressReporter(p):``."""

    def __init__(
        self, progress: Progress, *, stream: TextIO | None = None, interval_s: float = 1.0
    ) -> None:
        self.progress = progress
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval_s = interval_s if self.tty else max(interval_s, 10.0)
        self._task: asyncio.Task[None] | None = None

    def emit(self, final: bool = False) -> None:
        snap = self.progress.snapshot()
        if self.tty:
            done, total = self.progress._work()
            end = "\n" if final else ""
            self.stream.write("\r" + render_line(snap, done, total) + end)
        else:
            self.stream.write(orjson.dumps(snap).decode() + "\n")
        self.stream.flush()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.emit()

    async def __aenter__(self) -> ProgressReporter:
        self._task = asyncio.create_task(self._loop(), name=f"progress:{self.progress.label}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.emit(final=True)
