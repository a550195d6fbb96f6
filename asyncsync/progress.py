"""Progress a person can read: live bars on a terminal, log lines otherwise.

The engine only bumps counters on a :class:`Progress`; a :class:`ProgressReporter` task
renders them. On a terminal (and unless the logs are JSON) rich draws one bar for the
listing and one for the details, redrawn in place at any width; elsewhere a ``progress``
log line every ten seconds carries the same figures as fields, in the logs' own shape.

Rates are measured over the last :data:`RATE_WINDOW_S` seconds, not since the start, and
the ETA is smoothed (:class:`Meter`), so a burst or a pause moves it gently.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, ProgressColumn, Task, TextColumn
from rich.progress import Progress as RichProgress
from rich.table import Column
from rich.text import Text

from . import logs

log = logging.getLogger(__name__)

#: Seconds of history behind a rate.
RATE_WINDOW_S = 20.0
#: Weight of a fresh estimate in the smoothed ETA, per second (the rest is the old ETA,
#: counted down): about ten seconds to follow a real change halfway.
ETA_ALPHA = 0.07


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

    def listing(self) -> tuple[int, int | None, str]:
        """(done, total, unit) of the listing: pages when they set the pace, else orders."""
        if self.pages_total is not None:
            return self.pages, self.pages_total, "pages"
        return self.records, self.records_total, "orders"


class Meter:
    """The current rate of a counter and a smoothed ETA to its total."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self._samples: deque[tuple[float, int]] = deque()
        self._window_s = window_s
        self.rate: float | None = None  # per second, over the window
        self.eta_s: float | None = None
        self._eta_at: float | None = None
        self._first: tuple[float, int] | None = None

    def update(
        self, now: float, done: int, total: int | None, started: float | None = None
    ) -> None:
        """``started``: when the phase began, for a phase already done at its first look."""
        if total is not None and done >= total and self.eta_s == 0.0:
            return  # finished: keep the rate shown when it finished
        if self._first is None and total is not None:
            # The phase starts when its total is known (or at ``started``, if given and
            # it is already over: a listing shorter than the reporter's first tick).
            self._first = (started, 0) if done >= total and started is not None else (now, done)
        if total is not None and done >= total:
            # Finished: the phase's average, steadier than the last window's bursts.
            t0, d0 = self._first or (now, done)
            self.rate = (done - d0) / (now - t0) if now - t0 >= 0.1 else self.rate
            self.eta_s, self._eta_at = 0.0, now
            return
        samples = self._samples
        samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] >= self._window_s:
            samples.popleft()
        t0, d0 = samples[0]
        self.rate = (done - d0) / (now - t0) if now - t0 >= 1.0 else self.rate
        if self.rate == 0 and self._first is not None and now - self._first[0] >= 1.0:
            # Nothing moved over the window (a slow quota, a pause): the phase's average
            # says more than "stopped" and keeps the ETA.
            self.rate = (done - self._first[1]) / (now - self._first[0]) or None
        if total is None or not self.rate:
            self.eta_s = self._eta_at = None
            return
        fresh = (total - done) / self.rate
        if self.eta_s is None or self._eta_at is None:
            self.eta_s = fresh
        else:
            elapsed = now - self._eta_at
            counted_down = max(self.eta_s - elapsed, 0.0)
            weight = min(1.0, ETA_ALPHA * elapsed)
            self.eta_s = counted_down + weight * (fresh - counted_down)
        self._eta_at = now


def duration(seconds: float | None) -> str:
    """``"1:02:03"``, ``"7:55"``, or ``"-:--"`` when unknown."""
    if seconds is None:
        return "-:--"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def count(n: float) -> str:
    """``"12,345"``; ``"123k"`` and ``"1.2M"`` past six digits, to keep the line short."""
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 100_000:
        return f"{n / 1000:.0f}k"
    return f"{int(n):,}"


class _Figures(ProgressColumn):
    """``1,234/3,000 orders  41/s  ETA 0:43`` from the task's fields."""

    def __init__(self) -> None:
        super().__init__(table_column=Column(no_wrap=True, overflow="ellipsis", justify="right"))

    def render(self, task: Task) -> Text:
        f: dict[str, Any] = task.fields
        total = "?" if task.total is None else count(task.total)
        rate = "" if f.get("rate") is None else f"{f['rate']:,.0f}/s" if f["rate"] >= 10 \
            else f"{f['rate']:.1f}/s"  # fmt: skip
        return Text(
            f"{count(task.completed)}/{total} {f.get('unit', '')}  {rate:>6}  "
            f"ETA {duration(f.get('eta'))}"
        )


class ProgressReporter:
    """Renders a Progress until closed. ``async with ProgressReporter(p):``."""

    def __init__(
        self,
        progress: Progress,
        *,
        stream: TextIO | None = None,
        interval_s: float = 1.0,
        live: bool | None = None,
        account: str | None = None,
    ) -> None:
        self.progress = progress
        # Named on each log line: a worker's units of many accounts report at once.
        self.account = account
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() and not logs.json_mode() if live is None else live
        self.interval_s = interval_s if self.live else max(interval_s, 10.0)
        self.meters = {"listing": Meter(), "details": Meter()}
        self._task: asyncio.Task[None] | None = None
        self.bars: RichProgress | None = None
        self._ids: dict[str, Any] = {}

    def make_bars(self, console: Console) -> RichProgress:
        """The two bars (listing and details) drawn on ``console``."""
        bars = RichProgress(
            TextColumn("{task.description}", table_column=Column(width=8, no_wrap=True)),
            BarColumn(bar_width=None),
            _Figures(),
            console=console,
            refresh_per_second=4,
            expand=True,
        )
        self._ids = {
            "listing": bars.add_task("listing", total=None, unit="", rate=None, eta=None),
            "details": bars.add_task(
                "details", total=None, unit="", rate=None, eta=None, visible=False
            ),
        }
        return bars

    def snapshot(self) -> dict[str, object]:
        """The figures, as log fields and as the bars' state."""
        p = self.progress
        now = time.monotonic()
        done, total, unit = p.listing()
        self.meters["listing"].update(now, done, total, started=p.started)
        self.meters["details"].update(now, p.details, p.details_total)
        listing, details = self.meters["listing"], self.meters["details"]

        def rounded(x: float | None) -> float | None:
            return None if x is None else round(x, 1)

        return {
            "progress": p.label,
            "phase": "details" if p.details_total is not None else "listing",
            "elapsed_s": round(now - p.started, 1),
            "listing": {"done": done, "total": total, "unit": unit,
                        "rate_per_s": rounded(listing.rate), "eta_s": rounded(listing.eta_s)},
            "details": {"done": p.details, "total": p.details_total,
                        "rate_per_s": rounded(details.rate), "eta_s": rounded(details.eta_s)},
            "partitions": {"done": p.partitions_done, "total": p.partitions_total},
            "pages": p.pages,
            "failures": p.failures,
        }  # fmt: skip

    def emit(self, final: bool = False) -> None:
        snap = self.snapshot()
        if self.bars is None:
            fields = snap if self.account is None else {"account": self.account, **snap}
            log.info("%s progress", self.progress.label, extra={"fields": fields})
            return
        listing: Any = snap["listing"]
        details: Any = snap["details"]
        self.bars.update(
            self._ids["listing"], completed=listing["done"], total=listing["total"],
            unit=listing["unit"], rate=listing["rate_per_s"], eta=listing["eta_s"],
        )  # fmt: skip
        self.bars.update(
            self._ids["details"], completed=details["done"], total=details["total"],
            unit="orders", rate=details["rate_per_s"], eta=details["eta_s"],
            visible=details["total"] is not None,
        )  # fmt: skip
        if final:
            self.bars.refresh()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.emit()

    async def __aenter__(self) -> ProgressReporter:
        if self.live:
            console = (
                Console(stderr=True) if self.stream is sys.stderr else Console(file=self.stream)
            )
            self.bars = self.make_bars(console)
            self.bars.start()
        self._task = asyncio.create_task(self._loop(), name=f"progress:{self.progress.label}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.emit(final=True)
        if self.bars is not None:
            self.bars.stop()
