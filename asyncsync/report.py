"""The one run report: a value every job returns, rendered in one place.

A :class:`RunReport` says what a run of a mode did (counts, the API and mirror figures by
status, the ids found, the API statistics, errors) and how it ended (:class:`Outcome`).
:func:`render` draws it for a terminal (rich; :func:`render_text` as plain text),
:func:`to_json` for machines and files,
:func:`observe` turns it into metrics, and :func:`log_fields` into structured log fields.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from . import logs, metrics
from .clock import iso, utcnow
from .errors import (
    AsyncsyncError,
    ConfigError,
    DatabaseUnavailable,
    LockBusy,
    ReauthorizationRequired,
    TinyUnavailable,
)
from .seams import ApiStats, Census
from .status import Situacao
from .tables import cell, table
from .tasks import Stopped

#: Id lists longer than this are cut in JSON (their totals stay complete).
JSON_LIST_CAP = 1000


class Outcome(enum.StrEnum):
    """How a run ended."""

    OK = "ok"  # finished; nothing is left for a person
    ATTENTION = "attention"  # finished, but something needs a person (see the findings)
    INTERRUPTED = "interrupted"  # stopped before the end (SIGTERM); resumes next run
    FAILED = "failed"  # an error ended it (the errors say which)

    @property
    def exit_code(self) -> int:
        return {"ok": 0, "attention": 1, "interrupted": 130, "failed": 1}[self.value]


#: The exit code of a command an exception ended: the first class it is an instance of
#: (the README's table of exit codes; the CLI's sentences and the failed reports' figure).
EXIT_CODE_OF: tuple[tuple[type[BaseException], int], ...] = (
    (ConfigError, 2),  # TinyAuthMisconfigured too: the app itself was refused
    (LockBusy, 3),
    (ReauthorizationRequired, 4),
    (TinyUnavailable, 5),
    (DatabaseUnavailable, 6),
    (AsyncsyncError, 1),
    (OSError, 1),  # a port taken, a directory not writable...
    (KeyboardInterrupt, 130),
    (asyncio.CancelledError, 130),  # a second signal cut the drain
    (Stopped, 130),  # a signal before the database answered
)


def exit_code_of(exc: BaseException) -> int | None:
    """The exit code of a command ``exc`` ended; None for an error no command expects
    (a bug: its traceback is shown, and Python exits 1)."""
    return next((code for kind, code in EXIT_CODE_OF if isinstance(exc, kind)), None)


#: Human names of the counts, in the order a report shows them.
COUNT_LABELS: dict[str, str] = {
    "partitions_total": "partitions in the range",
    "partitions_skipped": "partitions complete before this run",
    "partitions_resumed": "partitions resumed at a stored offset",
    "partitions_done": "partitions completed by this run",
    "partitions_left": "partitions left",
    "pages": "pages listed",
    "listed": "distinct ids listed",
    "orders_listed": "orders listed",
    "inserted": "new orders",
    "changed": "changed orders",
    "unchanged": "unchanged orders",
    "first_sightings": "history: first sightings",
    "status_changes": "history: status changes",
    "vanished": "open orders gone from the open listings",
    "relisted": "partitions listed again (short of the API total)",
    "details_fetched": "details fetched",
    "details_gone": "details answering 404",
    "details_unavailable": "details Tiny could not serve (left for later)",
    "detail_backlog": "details still waiting",
    # Rows written, new or failed again: counted per sighting, a relisted status said 45
    # where the table had 19, and a cycle that found nothing new 2,064 (sweep L).
    "import_failures": "import failures written (new, or failed again)",
    "due": "failures due for a retry",
    "pending": "failures waiting for a later retry",
    "still_due": "failures due, not tried yet (next run)",
    "not_open": "ids named that are no open failure (left as they were)",
    "requests_listing": "requests while listing",
    "listing_s": "listing time, seconds",
    "requests_per_minute": "requests per minute while listing",
    "quota_per_minute": "quota per minute",
}

#: Human names of the findings (id lists), in the order a report shows them.
FINDING_LABELS: dict[str, str] = {
    "recovered": "missing, recovered",
    "failed": "missing, import failed",
    "unavailable": "detail unavailable (Tiny down: 5xx, timeouts, a page), asked again later",
    "awaiting_retry": "missing, awaiting retry",
    "unreadable": "unreadable list items",
    "stale": "status corrected",
    "reappeared": "listed again (unflagged)",
    "possibly_deleted": "possibly deleted (flagged)",
    "found_by_detail": "unlisted, alive by detail",
    "unconfirmed": "unlisted, detail not asked yet (past the limit a run asks)",
    "not_corrected": "status differs, not corrected: the row's observation is newer",
    "not_imported": "missing, not imported before the stop (the next run does)",
    "resolved": "resolved",
    "failed_again": "failed again, rescheduled",
    "exhausted": "failed for the last time",
    "gone": "deleted in Tiny (detail 404): resolved; flagged possibly deleted if mirrored",
    "manual_review": "failures for manual review",
}

#: Column names of the by-status table.
COLUMN_LABELS: dict[str, str] = {
    "api": "API",
    "mirror": "database",
    "mirror_before": "database before",
    "mirror_after": "database after",
    "failing": "failing",
}


@dataclass(frozen=True)
class RunReport:
    """What one run of a mode did. Built by the jobs, rendered here."""

    mode: str
    account: str
    started_at: dt.datetime
    finished_at: dt.datetime
    outcome: Outcome
    title: str = ""  # what kind of run, e.g. "full sync" or "incremental cycle"
    counts: Mapping[str, int | float] = field(default_factory=dict)
    by_status: Mapping[int, Mapping[str, int | None]] = field(default_factory=dict)
    findings: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    facts: Mapping[str, str | bool | None] = field(default_factory=dict)  # what kind of run
    api: ApiStats = field(default_factory=ApiStats)
    notes: Sequence[str] = ()
    errors: Sequence[str] = ()
    census: Census | None = None  # the whole mirror, when the run counted it at its end
    code: int | None = None  # the exit code an error ended it with; else the outcome's

    @property
    def duration_s(self) -> float:
        return round((self.finished_at - self.started_at).total_seconds(), 2)

    @property
    def exit_code(self) -> int:
        return self.outcome.exit_code if self.code is None else self.code

    def count(self, name: str) -> int:
        """A count as an int (0 when absent)."""
        return int(self.counts.get(name, 0))


def to_dict(report: RunReport) -> dict[str, Any]:
    """The report as JSON-ready data (what run history and ``--json`` store)."""
    return {
        "mode": report.mode,
        "account": report.account,
        "title": report.title,
        "outcome": report.outcome.value,
        "exit_code": report.exit_code,
        "started_at": iso(report.started_at),
        "finished_at": iso(report.finished_at),
        "duration_s": report.duration_s,
        "counts": dict(report.counts),
        "by_status": {str(code): dict(row) for code, row in sorted(report.by_status.items())},
        "findings": {k: list(v)[:JSON_LIST_CAP] for k, v in report.findings.items()},
        "findings_total": {k: len(v) for k, v in report.findings.items()},
        "facts": dict(report.facts),
        "api": report.api.as_dict(),
        "notes": list(report.notes),
        "errors": list(report.errors),
    }


def to_json(report: RunReport) -> str:
    return orjson.dumps(to_dict(report), option=orjson.OPT_NON_STR_KEYS).decode()


def log_fields(report: RunReport) -> dict[str, object]:
    """Flat fields for one structured log line about the run."""
    fields: dict[str, object] = {
        "mode": report.mode,
        "account": report.account,
        "outcome": report.outcome.value,
        "duration_s": report.duration_s,
        "requests": report.api.total,
        "rate_limited": report.api.rate_limited,
    }
    fields.update(report.counts)
    fields.update({k: len(v) for k, v in report.findings.items() if v})
    if report.errors:
        fields["error"] = report.errors[0]
    return fields


def observe(report: RunReport) -> None:
    """Record the run in the Prometheus metrics."""
    labels = (report.account, report.mode)
    for outcome in Outcome:  # at 0 before their first: increase() misses a series born at 1
        metrics.RUNS.labels(*labels, outcome.value)
    metrics.RUNS.labels(*labels, report.outcome.value).inc()
    if report.outcome in (Outcome.OK, Outcome.ATTENTION):
        metrics.RUN_SECONDS.labels(*labels).observe(report.duration_s)
        metrics.LAST_SUCCESS.labels(*labels).set(report.finished_at.timestamp())


#: The attribute of an error that ended a one-shot run holding the requests the run made:
#: its client is closed by the time the error reaches the command that records the run.
_SPENT = "_asyncsync_api_spent"


def carry_spent(exc: BaseException, api: ApiStats) -> None:
    """Let ``exc`` carry the requests a run made before it (the innermost run's: an
    error already carrying some keeps them)."""
    if not hasattr(exc, _SPENT):
        setattr(exc, _SPENT, api)


def failed_report(
    mode: str,
    account: str,
    started_at: dt.datetime,
    exc: BaseException,
    api: ApiStats | None = None,
) -> RunReport:
    """The report of a run an error ended (or a signal cut), with the exit code the
    command returns for it (:func:`exit_code_of`: 5 when Tiny is unavailable, 130 when
    interrupted...); ``api``: the requests it made before the error (its 429s, when they
    are what ended it), else those the error carries (:func:`carry_spent`)."""
    if api is None:
        carried = getattr(exc, _SPENT, None)
        api = carried if isinstance(carried, ApiStats) else None
    code = exit_code_of(exc) or 1
    outcome = Outcome.INTERRUPTED if code == Outcome.INTERRUPTED.exit_code else Outcome.FAILED
    if isinstance(exc, Stopped):  # "Stopped: ", said as the CLI says it
        error = "interrupted before the database answered: nothing ran"
    elif isinstance(exc, Exception):  # masked as the CLI's sentence is: it is printed too
        error = logs.redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    else:
        error = "cancelled before the run could drain"
    return RunReport(
        mode=mode,
        account=account,
        started_at=started_at,
        finished_at=utcnow(),
        outcome=outcome,
        errors=[error],
        api=api or ApiStats(),
        code=code,
    )


def note_failure(account: str, exc: BaseException) -> None:
    """Say when only a person can help (the token refusals themselves are counted where
    the client meets them)."""
    if isinstance(exc, ReauthorizationRequired):
        metrics.REAUTHORIZATION_REQUIRED.labels(account).set(1)


# --- the terminal rendering (rich) -----------------------------------------------------

#: Outcomes of runs that ran to their end.
FINISHED = frozenset({Outcome.OK.value, Outcome.ATTENTION.value})

_OUTCOME_TEXT = {
    Outcome.OK: ("finished ok", "green"),
    Outcome.ATTENTION: ("finished, needs attention", "yellow"),
    Outcome.INTERRUPTED: ("interrupted: resumes next run", "yellow"),
    Outcome.FAILED: ("FAILED", "bold red"),
}


def headline(report: RunReport) -> str:
    """``"sync: full sync — finished ok — 12.3 s"``: what ran and how it ended."""
    head = f"{report.mode}: {report.title}" if report.title else report.mode
    head += f" — {_OUTCOME_TEXT[report.outcome][0]} — {report.duration_s:,.1f} s"
    if report.account != "default":
        head += f" — account {report.account}"
    return head


def render(report: RunReport) -> RenderableType:
    """The report as a person reads it on a terminal: a headline, tables, then lines."""
    parts: list[RenderableType] = [
        Text(headline(report), style=f"bold {_OUTCOME_TEXT[report.outcome][1]}")
    ]
    if report.by_status:
        parts.append(_by_status_table(report.by_status, report.facts.get("by_status")))
    counts = [[COUNT_LABELS.get(k, k), v] for k, v in report.counts.items()]
    if counts:
        parts.append(table(["figure", "value"], counts))
    if report.findings:
        rows = [[FINDING_LABELS.get(k, k), len(v), ids_text(v)] for k, v in report.findings.items()]
        parts.append(table(["finding", "orders", "ids"], rows))
    lines = [
        f"{k.replace('_', ' ')}: {cell(v)}" for k, v in report.facts.items() if k != "by_status"
    ]
    lines += [*report.notes, api_line(report.api)]
    parts += [Text(line) for line in lines]
    parts += [Text(f"error: {e}", style="red") for e in report.errors]
    return Group(*parts)


def render_text(report: RunReport, width: int = 120) -> str:
    """The terminal rendering as plain text (no colours): logs, files, tests."""
    return plain(render(report), width)


def plain(renderable: RenderableType, width: int = 120) -> str:
    """Any rich renderable as plain text ``width`` columns wide."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    console.print(renderable)
    return buffer.getvalue().rstrip("\n")


def _by_status_table(
    by_status: Mapping[int, Mapping[str, int | None]], caption: object = None
) -> Table:
    columns = list(next(iter(by_status.values())).keys())
    rows: list[list[object]] = [
        [status_name(code), *(row.get(c) for c in columns)]
        for code, row in sorted(by_status.items())
    ]
    totals: list[object] = ["total"]
    for c in columns:
        values = [row.get(c) for row in by_status.values()]
        totals.append(None if None in values else sum(v or 0 for v in values))
    out = table(["status", *(COLUMN_LABELS.get(c, c) for c in columns)], rows)
    out.add_section()
    out.add_row(*(cell(v) for v in totals), style="bold")
    if caption:
        out.caption = str(caption)
    return out


def status_name(code: int) -> str:
    """``"3 Finalizada"``."""
    try:
        return f"{code} {Situacao(code).label}"
    except ValueError:
        return str(code)


def api_line(api: ApiStats) -> str:
    """One line of API statistics for the end of a report."""
    by_endpoint = ", ".join(f"{k} {n:,}" for k, n in sorted(api.requests.items()))
    return (
        f"API requests {api.total:,}" + (f" ({by_endpoint})" if by_endpoint else "")
        + f", 429s {api.rate_limited}, retries {api.retries}, paused {api.paused_s:.0f} s, "
        f"token refreshes {api.token_refreshes}, latency mean {api.mean_ms:.1f} ms, "
        f"p95 ≤ {api.p95_ms:.0f} ms"
        + (f", {api.mended:,} answers not in UTF-8 (read mended)" if api.mended else "")
    )  # fmt: skip


def ids_text(ids: Sequence[object], limit: int = 10) -> str:
    """``"1, 2, 3 … (+7)"``: a sample of ids for a table cell."""
    head = ", ".join(_finding(i) for i in ids[:limit])
    return head + (f" … (+{len(ids) - limit})" if len(ids) > limit else "")


def _finding(item: object) -> str:
    if isinstance(item, Mapping) and {"id", "from", "to"} <= item.keys():
        return f"{item['id']} ({item['from']}→{item['to']})"
    return str(item)
