"""Where a benchmark's time goes: Python's CPU, PostgreSQL's CPU, and a profile.

Helpers for ``bench/`` (not a benchmark itself). :class:`BackendCpu` reads the CPU seconds
of a pool's PostgreSQL backends from ``/proc`` when the server runs on this machine, so a
run can say how much of its wall clock was Python working and how much was waiting on
the database. :func:`profiled` runs a block under pyinstrument (the ``bench`` extra) or,
without it, the standard library's cProfile, and prints the profile;
:func:`server_profile` samples the backends with Linux ``perf`` and prints theirs.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

_TICKS = os.sysconf("SC_CLK_TCK")
BACKENDS = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid``, None when it cannot be read."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


class BackendCpu:
    """CPU seconds spent by the PostgreSQL backends serving one database."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def sample(self) -> dict[int, float] | None:
        """CPU seconds per backend now; None when the server is not on this machine."""
        rows = await self._pool.fetch(BACKENDS)
        seen = {r["pid"]: process_cpu_s(r["pid"]) for r in rows}
        if not seen or any(v is None for v in seen.values()):
            return None
        return {pid: v for pid, v in seen.items() if v is not None}

    async def since(self, before: dict[int, float] | None) -> float | None:
        """CPU seconds the backends spent since ``before`` (new backends count whole)."""
        after = await self.sample()
        if before is None or after is None:
            return None
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


@dataclass
class ProfileReport:
    """Lines printed after the profile (figures measured around the profiled block)."""

    notes: list[str] = field(default_factory=list)

    def note(self, line: str) -> None:
        self.notes.append(line)


@contextmanager
def profiled(title: str, top: int = 30) -> Iterator[ProfileReport]:
    """Profile the block; print the profile (pyinstrument if installed, else cProfile)."""
    report = ProfileReport()
    try:
        from pyinstrument import Profiler
    except ImportError:
        Profiler = None
    if Profiler is not None:
        profiler = Profiler(async_mode="enabled")
        profiler.start()
        try:
            yield report
        finally:
            profiler.stop()
        text = profiler.output_text(unicode=True, color=False, show_all=False)
        tool = "pyinstrument (wall clock; awaits shown as [await])"
    else:
        cprof = cProfile.Profile()
        cprof.enable()
        try:
            yield report
        finally:
            cprof.disable()
        buf = io.StringIO()
        pstats.Stats(cprof, stream=buf).sort_stats("tottime").print_stats(top)
        text = buf.getvalue()
        tool = "cProfile (CPU of this process, by own time)"
    print(f"\nprofile: {title} — {tool}\n{text}")
    for line in report.notes:
        print(line)
    print(flush=True)


@dataclass
class StatementCost:
    """Seconds spent in one kind of statement: wall, this process's CPU, its backend's CPU."""

    calls: int = 0
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0


def _label(args: tuple[object, ...]) -> str:
    first = args[0] if args else ""
    if not isinstance(first, str):
        return str(first)
    for line in first.splitlines():  # a .sql file: its first comment line names it
        text = line.strip().lstrip("-").strip()
        if text:
            return text[:60]
    return first[:60]


@contextmanager
def statement_costs() -> Iterator[dict[str, StatementCost]]:
    """Time every asyncpg statement of the block (COPY, fetch, fetchrow, execute) by kind;
    the backend's CPU is read from ``/proc`` around each call (0 when it cannot be)."""
    costs: dict[str, StatementCost] = {}
    cls = asyncpg.connection.Connection
    names = ("copy_records_to_table", "fetch", "fetchrow", "fetchval", "execute")
    saved = {name: getattr(cls, name) for name in names}

    def wrap(name: str) -> object:
        inner = saved[name]

        async def timed_call(self: asyncpg.Connection, *args: object, **kw: object) -> object:
            pid = self.get_server_pid()
            wall, cpu, server = time.perf_counter(), time.process_time(), process_cpu_s(pid)
            try:
                return await inner(self, *args, **kw)
            finally:
                cost = costs.setdefault(f"{name}: {_label(args)}", StatementCost())
                cost.calls += 1
                cost.wall_s += time.perf_counter() - wall
                cost.client_cpu_s += time.process_time() - cpu
                after = process_cpu_s(pid)
                if server is not None and after is not None:
                    cost.server_cpu_s += after - server

        return timed_call

    for name in names:
        setattr(cls, name, wrap(name))
    try:
        yield costs
    finally:
        for name, method in saved.items():
            setattr(cls, name, method)


@contextmanager
def server_profile(pids: list[int], title: str, top: int = 25) -> Iterator[ProfileReport]:
    """Sample the PostgreSQL backends ``pids`` with Linux ``perf`` over the block and
    print their hottest functions: where the server's CPU goes, which the Python
    profile cannot show. Says why and skips (the block still runs) without ``perf``, a
    local server or the permission to trace it."""
    report = ProfileReport()
    perf = shutil.which("perf")
    if perf is None or not pids:
        yield report
        why = "perf is not installed" if perf is None else "the server is not on this machine"
        print(f"\nserver profile: {title} — skipped: {why}\n", flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        recorder = subprocess.Popen(
            [perf, "record", "-q", "-F", "999", "-o", data, "-p", ",".join(map(str, pids))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.5)  # perf attaches before the block starts
        try:
            yield report
        finally:
            recorder.send_signal(signal.SIGINT)
            _, err = recorder.communicate(timeout=60)
        shown = subprocess.run(
            [perf, "report", "-i", data, "--stdio", "--sort", "symbol", "--percent-limit", "0.5"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    rows = [line.split(None, 2) for line in shown.stdout.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]  # fmt: skip
    rows = [r for r in rows if len(r) == 3 and r[0].endswith("%")][:top]
    if not rows:
        reason = (err.decode(errors="replace") or shown.stderr).strip().splitlines()
        print(f"\nserver profile: {title} — perf recorded nothing: {reason[-1:] or '?'}\n")
        return
    print(f"\nserver profile: {title} — perf, the backends' samples by function "
          "([k] the kernel on their behalf)")  # fmt: skip
    for share, space, symbol in rows:
        print(f"  {share:>7} {space} {symbol.split()[0]}")
    for line in report.notes:
        print(line)
    print(flush=True)
