"""Progress: a rate over the last seconds, an ETA that moves gently, bars that fit any
width, and log lines (with ts and level) off a terminal."""

from __future__ import annotations

import io
import itertools
import json
import logging
import re

import pytest
from rich.console import Console

from asyncsync import logs
from asyncsync.progress import Meter, Progress, ProgressReporter, duration

from .helpers import full_sync, incremental_sync, integrity


def test_the_rate_is_current_and_the_eta_does_not_jump() -> None:
    meter = Meter(window_s=20)
    done, etas = 0, []
    for second in range(120):
        # 10/s for a minute, then 100/s: the rate follows within the window, not since the start.
        done += 10 if second < 60 else 100
        meter.update(float(second), done, 20_000)
        etas.append(meter.eta_s)
    assert meter.rate == pytest.approx(100, rel=0.01)
    steady = [e for e in etas[5:] if e is not None]
    # From one second to the next the ETA moves by little more than the second that passed,
    # even when the pace changes tenfold.
    steps = [abs(b - a) for a, b in itertools.pairwise(steady)]
    assert max(steps) < 0.1 * max(steady)
    assert etas[59] > 1000 and etas[-1] < etas[59] / 2  # yet it follows the new pace
    meter.update(121.0, 20_000, 20_000)
    finished = meter.rate
    meter.update(150.0, 20_000, 20_000)
    assert meter.eta_s == 0 and meter.rate == finished  # a finished bar keeps its rate


def test_duration_text() -> None:
    assert [duration(None), duration(43), duration(475), duration(3723)] == [
        "-:--", "0:43", "7:55", "1:02:03",
    ]  # fmt: skip


@pytest.mark.parametrize("width", [40, 60, 80, 120, 200])
def test_two_bars_fit_any_width(width: int) -> None:
    progress = Progress("backfill", partitions_total=960, pages=12_345, pages_total=30_000)
    progress.records, progress.records_total = 1_234_567, 3_000_000
    progress.details, progress.details_total = 12_000, 250_000
    reporter = ProgressReporter(progress, live=False)
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=True, color_system=None)
    bars = reporter.make_bars(console)
    reporter.bars = bars
    reporter.emit()
    console.print(bars.make_tasks_table(bars.tasks))
    lines = out.getvalue().rstrip("\n").split("\n")
    assert len(lines) == 2, lines  # listing and details, one line each: \r can redraw them
    assert lines[0].startswith("list") and lines[1].startswith("deta")
    assert all(len(line) <= width for line in lines), lines
    if width >= 80:
        assert "12,345/30,000 pages" in lines[0] and "ETA" in lines[0]
        assert "12,000/250k orders" in lines[1]


async def test_off_a_terminal_progress_is_log_lines(capsys) -> None:
    logs.configure("INFO", "json")
    try:
        progress = Progress("sync")
        async with ProgressReporter(progress, stream=io.StringIO()):
            progress.records, progress.records_total = 10, 20
        err = capsys.readouterr().err
    finally:
        logging.getLogger().handlers.clear()
    [line] = [json.loads(x) for x in err.splitlines() if '"sync progress"' in x]
    assert line["level"] == "info"
    # RFC 3339, UTC, with milliseconds: 2026-11-29T20:03:02.123Z
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"]), line["ts"]
    assert line["listing"] == {
        "done": 10, "total": 20, "unit": "orders", "rate_per_s": None, "eta_s": None,
    }  # fmt: skip


def test_a_counter_moving_in_lumps_keeps_a_rate_and_an_eta() -> None:
    # 256 at a time every 25 s (a chunk at 10/s), longer than the 20 s window.
    meter = Meter(window_s=20)
    meter.update(0.0, 0, 3000)
    shown = []
    for second in range(1, 120):
        meter.update(float(second), 256 * (second // 25), 3000)
        shown.append((meter.rate, meter.eta_s))
    assert all(rate and rate > 0 for rate, _ in shown[25:]), shown
    assert all(eta is not None for _, eta in shown[25:])


async def test_a_runs_progress_lines_name_its_account(capsys, simulator, runtime_for) -> None:
    """A worker runs many accounts' units at once, their progress lines interleaved: each
    line names its account (a line saying 55 of 60 details said nothing of whose)."""
    sim = await simulator(orders=30, seed=3)
    logs.configure("INFO", "json")
    try:
        async with runtime_for(sim) as rt:
            await full_sync(rt)
            await incremental_sync(rt)
            await integrity(rt)  # serve runs integrity units beside the cycles too
        err = capsys.readouterr().err
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    progress = [line for line in lines if "progress" in line]
    assert {line["progress"] for line in progress} == {"sync", "cycle", "integrity"}
    assert all(line.get("account") == "default" for line in progress), progress
