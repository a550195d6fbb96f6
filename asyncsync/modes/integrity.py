"""``--mode integrity``: compare the mirror with the API, fix it, report (seed section 6)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TextIO

from .. import metrics
from ..config import Settings
from ..integrity import IntegrityReport, check_integrity
from ..locks import account_lock
from ..report import api_line, ids_text, status_name, table
from ..runtime import open_runtime


def render(r: IntegrityReport) -> str:
    """The report as a person reads it on a terminal."""
    codes = sorted(set(r.api_totals) | set(r.db_before) | set(r.db_after))
    rows: list[list[object]] = [
        [status_name(c), r.api_totals.get(c), r.db_before.get(c, 0), r.db_after.get(c, 0),
         r.tracked_after.get(c, 0)]
        for c in codes
    ]  # fmt: skip
    totals = [v for v in r.api_totals.values() if v is not None]
    rows.append(
        [
            "total",
            sum(totals) if len(totals) == len(r.api_totals) else None,
            sum(r.db_before.values()),
            sum(r.db_after.values()),
            sum(r.tracked_after.values()),
        ]
    )
    if r.consistent:
        verdict = "consistent"
    elif r.unfixed:
        verdict = f"{r.unfixed} problem(s) NOT fixed"
    else:
        verdict = "inconsistencies found and fixed"
    title = (
        f"integrity check ({r.method}{', deep' if r.deep else ''}) — {verdict} — "
        f"{r.duration_s:.1f} s" + (" (interrupted)" if r.interrupted else "")
    )
    stale = [f"{s['id']} ({s['from']}→{s['to']})" for s in r.stale]
    found = [
        ["missing, recovered", len(r.recovered), ids_text(r.recovered)],
        ["missing, import failed", len(r.failed), ids_text(r.failed)],
        ["missing, awaiting retry", len(r.awaiting_retry), ids_text(r.awaiting_retry)],
        ["unreadable list items", len(r.unreadable), ids_text(r.unreadable)],
        ["status corrected", len(r.stale), ids_text(stale, limit=5)],
        ["listed again (unflagged)", len(r.reappeared), ids_text(r.reappeared)],
        ["possibly deleted (flagged)", len(r.possibly_deleted), ids_text(r.possibly_deleted)],
        ["unlisted, alive by detail", len(r.found_by_detail), ids_text(r.found_by_detail)],
        ["failures for manual review", len(r.manual_review), ids_text(r.manual_review)],
    ]
    lines = [
        table(["status", "API", "database before", "database after", "failing"], rows, title),
        "",
        table(["finding", "orders", "ids"], found),
        "",
    ]
    if r.method == "full comparison":
        lines.append(f"listed {r.listed:,} distinct ids in {r.pages:,} pages")
    lines += [f"listing of {status_name(s)} failed: {e}" for s, e in r.listing_errors.items()]
    lines.append(api_line(r.api))
    return "\n".join(lines)


def write_json(path: str, text: str) -> None:
    Path(path).write_text(text + "\n", encoding="utf-8")


async def run(
    settings: Settings, *, args: object = None, stop: asyncio.Event, stream: TextIO = sys.stdout
) -> int:
    """Entry point of ``--mode integrity``; the exit code is the report's."""
    deep = bool(getattr(args, "deep", False))
    async with open_runtime(settings) as rt, account_lock(rt.pool, settings.account, "integrity"):
        report = await check_integrity(rt, deep=deep, stop=stop)
    stream.write(render(report) + "\n")
    json_path = getattr(args, "json_path", None)
    if json_path:
        await asyncio.to_thread(write_json, json_path, report.to_json())
    metrics.RUN_SECONDS.labels("integrity").observe(report.duration_s)
    if report.exit_code == 0 and not report.interrupted:
        metrics.LAST_SUCCESS.labels("integrity").set_to_current_time()
    return report.exit_code
