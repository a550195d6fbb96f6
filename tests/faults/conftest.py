"""Fault-test fixtures: a PostgreSQL of the test's own (stopped, restarted, frozen at
will) and subprocess helpers. The server is the embedded one the product starts by
default (pgserver), in a temporary directory, on its own socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest


class OwnPostgres:
    """A PostgreSQL that a test may stop, start, freeze and thaw."""

    def __init__(self, pgdata: Path) -> None:
        import pgserver

        self.pgdata = pgdata
        self._server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        self.dsn = str(self._server.get_uri())

    def _pg_ctl(self, *args: str) -> None:
        from pgserver._commands import pg_ctl  # type: ignore[import-untyped]

        pg_ctl(["-w", *args], pgdata=self.pgdata, user=self._server.system_user, timeout=30)

    def stop(self) -> None:
        """Stop at once, as a crash would (no checkpoint, connections cut)."""
        self._pg_ctl("-m", "immediate", "stop")

    def start(self) -> None:
        self._server.ensure_postgres_running()
        assert str(self._server.get_uri()) == self.dsn, "the socket moved"

    def _processes(self) -> list[psutil.Process]:
        pid = self._server.get_pid()
        assert pid is not None
        main = psutil.Process(pid)
        return [main, *main.children(recursive=True)]

    def freeze(self) -> None:
        """SIGSTOP every process of the server: it accepts nothing and answers nothing."""
        for p in self._processes():
            p.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        for p in self._processes():
            p.send_signal(signal.SIGCONT)

    def close(self) -> None:
        with contextlib.suppress(psutil.Error, AssertionError):  # already stopped
            self.thaw()
        self._server.cleanup()


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    with tempfile.TemporaryDirectory(prefix="asyncsync-fault-pg-") as tmp:
        server = OwnPostgres(Path(tmp) / "pgdata")
        try:
            yield server
        finally:
            server.close()


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINY_", "ASYNCSYNC_"))}
    env.pop("DATABASE_URL", None)
    return {**env, **extra}


async def asyncsync(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncsync", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


#: Runs the CLI like ``python -m asyncsync`` and, at exit, prints the process's own peak
#: RSS as the last stderr line: ``VmHWM``, the high-water mark of the memory this program
#: mapped since its exec. Not ``ru_maxrss``: a child started by vfork + exec (as asyncio's
#: subprocesses are) inherits its parent's peak there, and a test process grown to 200 MiB
#: by the tests before it made every child "peak" at 200 MiB.
MEASURED = (
    "import atexit, runpy, sys\n"
    "def peak():\n"
    "    with open('/proc/self/status') as f:\n"
    "        kib = next(x.split()[1] for x in f if x.startswith('VmHWM:'))\n"
    "    print(f'PEAK_RSS_KIB={kib}', file=sys.stderr)\n"
    "atexit.register(peak)\n"
    "sys.argv = ['asyncsync', *sys.argv[1:]]\n"
    "runpy.run_module('asyncsync', run_name='__main__')\n"
)


async def asyncsync_measured(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    """``asyncsync(...)`` whose stderr ends with ``PEAK_RSS_KIB=<its own peak>``."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", MEASURED, *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


def peak_rss_mib(stderr: str) -> float:
    line = next(x for x in reversed(stderr.splitlines()) if x.startswith("PEAK_RSS_KIB="))
    return int(line.split("=", 1)[1]) / 1024
