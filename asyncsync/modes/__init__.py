"""One module per ``--mode``. Each exposes ``async def run(common, options, stop)``
returning a :class:`~asyncsync.report.RunReport` (or an exit code for commands that are
not runs, such as ``health`` or ``status``); :func:`execute` runs one, presents what it
returned and records it in the run history.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from rich.console import Console, RenderableType

from .. import logs, metrics
from ..clock import utcnow
from ..errors import AsyncsyncError, ConfigError, DatabaseUnavailable, LockBusy, TinyError
from ..jobs.retry import DEFAULT_POLICY
from ..options import CommonOptions
from ..overview import observe_status
from ..report import (
    Outcome,
    RunReport,
    failed_report,
    headline,
    log_fields,
    note_failure,
    observe,
    render,
    to_json,
)
from ..runtime import database_of
from ..tasks import Stopped
from ..work.health import SERVE_HEALTH_KEY

if TYPE_CHECKING:
    from ..simulator import TinySimulator

log = logging.getLogger(__name__)

#: Seconds a failed or finished run may spend being recorded before it is given up.
RECORD_TIMEOUT_S = 30.0


#: The one-shot modes that run for every enabled account with ``--all-accounts``.
EACH_ACCOUNT = ("sync", "backfill", "integrity", "retry", "failures")

#: The modes whose result is a report (``--json``): one an error ended still leaves its
#: failed report where theirs goes, not an earlier run's in its place.
REPORTING = (*EACH_ACCOUNT, "status", "accounts")

#: The account of a failed report of ``--all-accounts`` as a whole (the accounts could not
#: be listed, or ``status`` of every account failed).
EVERY_ACCOUNT = "*"


async def each_account(mode: str, common: CommonOptions, options: Any, stop: asyncio.Event) -> int:
    """Run ``mode`` for every enabled account, one after the other. An account that fails
    does not stop the others; the first error is raised at the end (its exit code),
    else the highest exit code is returned."""
    output = common.output
    if output.json_path is not None and not output.json_to_stdout:
        write_text(output.json_path, "")  # then a line an account, each added in turn
        common = dataclasses.replace(common, output=dataclasses.replace(output, json_append=True))
    started_at = utcnow()
    try:
        async with database_of(common, stop=stop) as database:
            keys = [c.key for c in await database.registry.all() if c.enabled]
        if not keys:
            raise ConfigError("--all-accounts: the accounts table has no enabled account "
                              "(asyncsync accounts add)")  # fmt: skip
    except BaseException as exc:
        emit_failed(failed_report(mode, EVERY_ACCOUNT, started_at, exc), common)
        raise
    codes: list[int] = []
    first: AsyncsyncError | None = None
    one = dataclasses.replace(common.run, all_accounts=False)
    for key in keys:
        if stop.is_set():
            break
        if mode == "failures" and not (common.output.json_to_stdout or logs.json_mode()):
            print(f"account {key}:", flush=True)
        try:
            codes.append(await execute(mode, dataclasses.replace(common, account=key, run=one),
                                       options, stop))  # fmt: skip
        except AsyncsyncError as exc:
            log.error("%s of account %s failed: %s", mode, key, exc,
                      extra={"fields": {"account": key, "mode": mode}})  # fmt: skip
            first = first or exc
    if first is not None:
        raise first
    return max(codes, default=0)


def recorded_as(mode: str, options: Any) -> str | None:
    """The job a command runs, as the run history names it; None for commands that are
    not runs (status, health, migrate, simulate, serve as a whole: its cycles are)."""
    if mode in ("sync", "backfill", "integrity", "retry"):
        return mode
    if mode == "failures" and getattr(options, "action", None) == "retry":
        return "retry"
    return None


async def execute(mode: str, common: CommonOptions, options: Any, stop: asyncio.Event) -> int:
    """Run ``mode`` (against the bundled simulator when asked) and return the exit code.

    A run that ends with an error still leaves a ``failed`` row in the history (best
    effort: a warning says when it could not be recorded). When the database itself is
    what failed, no row is tried: the error says so, in its one sentence.
    """
    if common.run.all_accounts and mode in EACH_ACCOUNT:
        return await each_account(mode, common, options, stop)
    if common.run.all_accounts and mode != "status":
        raise ConfigError(f"{mode} works on one account at a time: give --account, "
                          "not --all-accounts")  # fmt: skip
    module = importlib.import_module(f"{__name__}.{mode}")
    if hasattr(module, "check"):  # what the options cannot say alone, before anything starts
        module.check(common)
    async with bundled(common, serve_only=mode == "simulate") as effective:
        started_at = utcnow()
        try:
            result: RunReport | int = await module.run(effective, options, stop)
        except BaseException as exc:
            job = recorded_as(mode, options)
            account = EVERY_ACCOUNT if common.run.all_accounts else effective.account
            report = failed_report(job or mode, account, started_at, exc)
            if mode in REPORTING:  # first: a second signal's cut may not wait for the rest
                emit_failed(report, effective)
            # A configuration error stops a run before it starts: no run to record. Tiny
            # refusing the app (TinyAuthMisconfigured) is one too, found by a run that began.
            # Stopped: SIGTERM before the database answered (nothing to record it in).
            unrun = isinstance(exc, ConfigError | LockBusy | Stopped) and not isinstance(
                exc, TinyError
            )
            if job is not None and not unrun:
                note_failure(effective.account, exc)
                observe(report)
                if not isinstance(exc, DatabaseUnavailable):
                    await finish(report, effective, invoked_as=mode)
            raise
    if isinstance(result, int):
        return result
    present(result, effective)
    await finish(result, effective, invoked_as=mode)
    return result.exit_code


async def finish(report: RunReport, common: CommonOptions, *, invoked_as: str) -> None:
    """Record the run in ``sync_runs``, refresh the account's gauges from the database
    (the mirror's counts from the report when the run counted them at its end), and write
    the metrics textfile when asked. Never fails the command: a run that could
    not be recorded is logged, and leaves the textfile as it was (its gauges could not
    be read: rewritten, the file lost every mode's last success, and the stale-sync
    alert its age would fire)."""
    if report.outcome is not Outcome.FAILED:
        metrics.REAUTHORIZATION_REQUIRED.labels(report.account).set(0)
    textfile = common.run.metrics_textfile
    try:
        async with (
            asyncio.timeout(RECORD_TIMEOUT_S),
            database_of(common, apply_schema=False, staging=False) as database,
        ):
            store = database.account(common.account)
            await store.runs.record(report, invoked_as=invoked_as)
            observe_status(await store.status(utcnow(), DEFAULT_POLICY, report.census))
    except (AsyncsyncError, OSError, TimeoutError) as exc:
        kept = "" if textfile is None else f" (the metrics textfile {textfile} is left as it was)"
        log.warning(
            "the %s run could not be recorded in sync_runs: %s%s", report.mode, exc, kept,
            extra={"fields": {"mode": report.mode, "outcome": report.outcome.value}},
        )  # fmt: skip
        return
    if textfile is not None:
        try:
            metrics.write_textfile(textfile)
        except OSError as exc:
            log.error("could not write the metrics textfile %s: %s", textfile, exc)


def present(report: RunReport, common: CommonOptions) -> None:
    """Show a finished run: the table on stdout (one JSON line instead with ``--json`` or
    JSON logs), the JSON file where asked, metrics, one log line."""
    observe(report)
    log.info(headline(report), extra={"fields": log_fields(report)})
    show(render(report), to_json(report), common)


#: The width of a report printed to a pipe without COLUMNS; the narrowest one printed.
PIPED_WIDTH = 120
MIN_WIDTH = 40


def show(renderable: RenderableType, data: object, common: CommonOptions) -> None:
    """Print a result: tables for a person, or one JSON line with ``--json`` or when the
    logs are JSON (so machine-read output never mixes with tables); with ``--json PATH``,
    that line is written to PATH too (status, accounts and failures as well as runs)."""
    if not emit(data if isinstance(data, str) else orjson.dumps(data).decode(), common):
        # Piped, a report is still read by a person: wide enough that tables keep whole,
        # unless COLUMNS says how wide; on a terminal, its own size. A COLUMNS of 0 or a
        # word is not a width (rich took 0 for one and printed a column a character).
        width = shutil.get_terminal_size((PIPED_WIDTH, 24)).columns
        Console(width=max(width, MIN_WIDTH)).print(renderable)


def emit(text: str, common: CommonOptions) -> bool:
    """Write a result's JSON line where it goes: to the ``--json`` file (added as a line
    with ``--all-accounts``), and to stdout with ``--json -`` or JSON logs (then True:
    no table is printed)."""
    path = common.output.json_path
    if path is not None and not common.output.json_to_stdout:
        write_text(path, text + "\n", append=common.output.json_append)
    if not (common.output.json_to_stdout or logs.json_mode()):
        return False
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return True


def emit_failed(report: RunReport, common: CommonOptions) -> None:
    """The report of a command an error ended, where its result's JSON goes (its error,
    and the exit code the command returns, in it): never an earlier run's report left in
    its place. A file that cannot be written is said, not raised: the error stays the
    command's own."""
    try:
        emit(to_json(report), common)
    except OSError as exc:
        log.error("could not write the failed report to %s: %s", common.output.json_path, exc)


def write_text(path: Path, text: str, *, append: bool = False) -> None:
    with path.open("a" if append else "w", encoding="utf-8") as out:
        out.write(text)


@asynccontextmanager
async def bundled(
    common: CommonOptions, *, serve_only: bool = False
) -> AsyncIterator[CommonOptions]:
    """With ``--simulator N``: start a simulator and yield options pointed at it.

    The simulator's quota is the configured rate limit, so the demo shows real pacing.
    """
    if serve_only or not common.simulator.orders:
        yield common
        return
    from ..simulator import SimConfig, TinySimulator

    config = SimConfig(
        orders=common.simulator.orders,
        seed=common.simulator.seed,
        rate_limit_per_minute=common.simulator.quota(common.tiny),
        latency_s=common.simulator.latency_ms / 1000,
    )
    async with TinySimulator(config) as sim:
        log.info("bundled Tiny simulator with %d orders at %s", config.orders, sim.base_url)
        yield pointed_at(common, sim)


def pointed_at(common: CommonOptions, sim: TinySimulator, **tiny: Any) -> CommonOptions:
    """``common`` talking to a running simulator: its URLs and credentials."""
    pointing: dict[str, Any] = {
        "api_base_url": sim.base_url,
        "token_url": sim.token_url,
        "client_id": sim.config.client_id,
        "client_secret": sim.config.client_secret,
        "refresh_token": sim.valid_refresh_token(),
        "token_file": None,
    }
    return dataclasses.replace(
        common, tiny=dataclasses.replace(common.tiny, **{**pointing, **tiny})
    )


__all__ = ["SERVE_HEALTH_KEY", "execute", "failed_report", "note_failure", "pointed_at"]
