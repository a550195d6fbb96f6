"""The embedded PostgreSQL (pgserver): started under the data directory when there is no
``DATABASE_URL``, shared by the runs going on at once, stopped by the last to exit.

As root, pgserver runs it as a system user ``pgserver``; a process killed while using it
(SIGKILL, the OOM killer) is struck off pgserver's list of its users at the next start.
The server killed under a long-running process (serve) is started again by it
(:class:`EmbeddedServer`): nobody else would. A ``postmaster.pid`` left by a reboot,
naming a pid another process holds by then, is cleared before a start (:mod:`.postmaster`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError, DatabaseError, DatabaseUnavailable
from .postmaster import clear_stale, not_its_postmaster, postgres_working_in

log = logging.getLogger(__name__)

__all__ = ["EmbeddedServer", "embedded_refusal", "embedded_server", "start_embedded"]


#: DSNs of the embedded servers this process has started (a run opens its database more
#: than once: the run itself, then its history row).
_STARTED: dict[Path, str] = {}


def start_embedded(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL under ``data_dir``; return its DSN.

    The server keeps running for later runs of the same data directory and is stopped
    when the last process using it exits.
    """
    key = data_dir.resolve()
    if key not in _STARTED:
        _STARTED[key] = _uri(_embedded_server(data_dir))
        return _STARTED[key]
    # Killed since this process started it (serve waiting at start for its database): the
    # DSN it remembers reaches nothing, and nobody else would start it. One not reaped yet
    # is left to the caller's next try (PostgreSQL would take it for alive).
    dead = _DeadServer.find(data_dir / "pgdata")
    if dead is not None and dead.startable:
        log.warning("%s: starting it again", dead)
        _STARTED[key] = dead.start_again()[1]  # DatabaseUnavailable: it could not be
    return _STARTED[key]


@contextmanager
def embedded_server(data_dir: Path) -> Iterator[str]:
    """The embedded PostgreSQL under ``data_dir`` for the duration (tests, benchmarks):
    yields its DSN and stops it on exit, before its directory can be removed."""
    server = _embedded_server(data_dir)
    try:
        yield _uri(server)
    finally:
        server.cleanup()


def _uri(server: Any) -> str:
    return str(server.get_uri())


def _embedded_server(data_dir: Path) -> Any:
    pgdata = data_dir / "pgdata"
    try:
        pgdata.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"--data-dir (ASYNCSYNC_DATA_DIR) {data_dir} cannot hold the embedded PostgreSQL: "
            f"{exc.strerror or exc}; choose a writable directory, or set DATABASE_URL"
        ) from None
    refusal = _as_root_refusal()
    if refusal is not None:
        raise ConfigError(refusal)
    log.info("starting embedded PostgreSQL in %s", pgdata)
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        try:
            return _pgserver(pgdata)
        except ImportError as exc:  # pragma: no cover - it is a hard dependency
            raise ConfigError("no DATABASE_URL and pgserver is not installed") from exc
        except Exception as exc:
            why = exc if isinstance(exc, DatabaseError) else _last_fatal(pgdata) or exc
            said = f"could not start the embedded PostgreSQL in {pgdata}: {why}"
            # Its own refusals (clear_stale) are a sentence already; pgserver's need a cause.
            raise DatabaseError(said) from (None if isinstance(exc, DatabaseError) else exc)


def _pgserver(pgdata: Path) -> Any:
    """pgserver's handle on the server under ``pgdata`` (starting it when none runs), what
    dead processes left there cleared first, under the lock pgserver starts servers under:
    its list of users, a ``postmaster.pid`` naming a pid now another process's, a first
    start killed half-way."""
    import pgserver
    from pgserver.postgres_server import PostgresServer

    with PostgresServer._lock:
        _forget_the_dead(pgdata)
        _clear_stale(pgdata)
        first = _first_start(pgdata)
    try:
        server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        _uri(server)  # pgserver asserts a started server; its handle is kept even when not
    except BaseException:
        # A failed start left its handle behind, unstarted: the run's next open (its
        # history row) got it back and died of a bare AssertionError, a traceback.
        PostgresServer._instances.pop(pgdata.resolve(), None)
        raise
    if first:
        (pgdata.parent / _FIRST_START).unlink(missing_ok=True)
    return server


#: Beside the data directory while its first start (initdb) runs, naming the process that
#: runs it. initdb writes PG_VERSION early, which pgserver takes for a cluster made: a
#: first start killed half-way (the OOM killer, a container's SIGKILL) left one that never
#: started again.
_FIRST_START = "pgdata.initializing"


def _first_start(pgdata: Path) -> bool:
    """Whether this is the first start of ``pgdata``, initdb to come: marked until it ends.
    A first start whose process died before any postmaster started there is done again,
    its directory made anew: it holds nothing (no run writes before a postmaster runs).
    Under pgserver's lock."""
    marker = pgdata.parent / _FIRST_START
    try:
        said = marker.read_text()
    except FileNotFoundError:
        said = None
    except OSError:
        said = ""
    pid = None if said is None else _marking(said)
    if pid is not None and not pid:
        # A postmaster ever started there wrote postmaster.opts (initdb's backends do not):
        # then the start ended, only its unmarking was lost, and the directory is kept.
        started = (pgdata / "postmaster.opts").exists() or postgres_working_in(pgdata)
        if not started:
            log.warning("the first start of the embedded PostgreSQL in %s was cut short "
                        "(its process killed during initdb): making it again", pgdata,
                        extra={"fields": {"event": "embedded_init_redone"}})  # fmt: skip
            shutil.rmtree(pgdata)
            pgdata.mkdir()
        marker.unlink(missing_ok=True)
        pid = None
    if pid is not None or (pgdata / "PG_VERSION").exists():
        return False  # made already, or being made by the live process the marker names
    marker.write_text(f"{os.getpid()} {_started(os.getpid())}\n")
    return True


def _marking(said: str) -> int:
    """The pid a first start's marker names while that process lives, else 0: pids are
    reused (in a container, the same few at every start), so it names the process's start
    too, and this process is never the one (its marker is of an earlier life)."""
    try:
        pid, started = said.split()
        alive = int(pid) != os.getpid() and _alive(int(pid)) and _started(int(pid)) == started
    except ValueError:  # written half-way: its process died with it
        return 0
    return int(pid) if alive else 0


def _started(pid: int) -> str:
    """When ``pid`` started, in clock ticks since boot (Linux; elsewhere "-")."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return "-"


def _clear_stale(pgdata: Path) -> None:
    said = clear_stale(pgdata)  # DatabaseError: PostgreSQL processes still work there
    if said is not None:
        log.warning("%s", said, extra={"fields": {"event": "embedded_stale_lock_removed"}})


@dataclass(frozen=True)
class _DeadServer:
    """The embedded server under ``pgdata`` found dead: the one place that finds it,
    starts it again and words both, for a one-shot run's next open (:func:`start_embedded`)
    and for serve (:meth:`EmbeddedServer.revive`), which differ only in what they do
    around it (serve pauses between failed starts, and checks the address)."""

    pgdata: Path
    how: str  # how it died (:func:`_death`)
    startable: bool  # False: its postmaster is not reaped yet (PostgreSQL takes it for alive)

    @classmethod
    def find(cls, pgdata: Path) -> _DeadServer | None:
        """The server under ``pgdata`` if it died; None while its postmaster lives."""
        death = _death(pgdata)
        return None if death is None else cls(pgdata, *death)

    def __str__(self) -> str:
        return f"the embedded PostgreSQL in {self.pgdata} died ({self.how})"

    def start_again(self) -> tuple[int, str]:
        """Start it again (blocking: pg_ctl waits up to 10 s); its postmaster's pid and its
        DSN. DatabaseUnavailable when it could not be, saying so, caused by the reason."""
        try:
            return _start_again(self.pgdata)
        except DatabaseError as exc:
            raise DatabaseUnavailable(f"{self} and could not be started again: {exc}") from exc


#: Pauses before starting a dead server again after a start that failed, seconds (the
#: last one repeats): the dead postmaster's children may hold its shared memory for a
#: moment, and a broken install fails every time.
RESTART_PAUSES_S = (1.0, 2.0, 5.0, 10.0, 30.0)
#: Seconds a database check waits for a start in flight (pg_ctl gives up after 10 s);
#: past that it fails, saying the server is being started, and the start goes on.
START_WAIT_S = 15.0


class EmbeddedServer:
    """The embedded PostgreSQL under ``data_dir`` that this process reaches at ``dsn``,
    started again when its postmaster died (SIGKILL, the OOM killer) under a process
    that outlives it (serve): the server is its own, and nobody else would.

    Only a dead postmaster is started again (its postmaster.pid names no live process,
    or one provably not its postmaster: :mod:`.postmaster`): one that is slow or frozen
    (SIGSTOP) lives, and is waited for like any database."""

    def __init__(self, data_dir: Path, dsn: str) -> None:
        self.pgdata = data_dir / "pgdata"
        self._dsn = dsn
        self._turn = asyncio.Lock()  # one look at a time (the worker's checks overlap)
        # The server being started again, and its start (in a thread: pg_ctl blocks).
        self._starting: tuple[_DeadServer, asyncio.Task[tuple[int, str]]] | None = None
        self._failures = 0
        self._retry_at = 0.0  # monotonic time of the next start after a failed one
        self._why: str | None = None  # why the last start failed, said until the next
        self._moved: str | None = None  # started again at another address: for good

    async def revive(self) -> str | None:
        """Start the server again if its postmaster died: what was done, in a sentence;
        None while it lives. DatabaseUnavailable when it is dead and not started (yet),
        saying why and when the next start comes (none before then)."""
        async with self._turn:
            if self._moved is not None:
                raise DatabaseUnavailable(self._moved)
            if self._starting is None:
                dead = _DeadServer.find(self.pgdata)
                if dead is None:
                    self._failures, self._why = 0, None
                    return None
                if not dead.startable:  # PostgreSQL takes the unreaped process for a live one
                    raise DatabaseUnavailable(f"{dead}: started again once its parent reaps it")
                wait_s = self._retry_at - time.monotonic()
                if self._why is not None and wait_s > 0:
                    raise DatabaseUnavailable(f"{self._why}; starting it again in {wait_s:.0f} s")
                start = asyncio.to_thread(dead.start_again)
                self._starting = dead, asyncio.create_task(start, name="embedded-restart")
            dead, starting = self._starting
            done, _ = await asyncio.wait({starting}, timeout=START_WAIT_S)
            if not done:
                raise DatabaseUnavailable(f"{dead} and is being started again")
            self._starting = None
            try:
                pid, dsn = starting.result()
            except DatabaseUnavailable as exc:
                pause_s = RESTART_PAUSES_S[min(self._failures, len(RESTART_PAUSES_S) - 1)]
                self._failures += 1
                self._retry_at = time.monotonic() + pause_s
                self._why = str(exc)
                log.error("%s; trying again in %.0f s", self._why, pause_s,
                          extra={"fields": {"event": "embedded_restart_failed"}})  # fmt: skip
                raise DatabaseUnavailable(  # caused by the reason, as start_again's own
                    f"{self._why}; starting it again in {pause_s:.0f} s"
                ) from exc.__cause__
            self._failures, self._why = 0, None
            if dsn != self._dsn:  # pgserver derives the socket from the data directory
                self._moved = (f"the embedded PostgreSQL in {self.pgdata} was started again "
                               f"at {dsn}, not at {self._dsn} where this process connects: "
                               "restart it")  # fmt: skip
                log.error("%s", self._moved)
                raise DatabaseUnavailable(self._moved)
            said = f"{dead}: started it again, pid {pid}, at the same address"
            log.warning("%s", said, extra={"fields": {"event": "embedded_restarted"}})
            return said


def _death(pgdata: Path) -> tuple[str, bool] | None:
    """How the server under ``pgdata`` died, and whether it can be started again now;
    None while its postmaster lives."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except FileNotFoundError:
        return "no postmaster runs there", True
    except (OSError, ValueError, IndexError):
        return None  # being written by a start, or not ours to read: not judged dead
    if pid < 0:  # a standalone backend's lock (initdb's): the start clears it, or says why
        return f"a standalone backend, pid {-pid}, locked it", True
    if not _alive(pid):
        return f"its postmaster, pid {pid}, is gone", True
    if _zombie(pid):
        if _reaped(pid):
            return f"its postmaster, pid {pid}, is gone", True
        return f"its postmaster, pid {pid}, exited and is not reaped yet", False
    other = not_its_postmaster(pgdata, pid)
    if other is not None:  # left by a reboot or a restart: the pid was reused since
        return f"its postmaster, pid {pid}, is gone (that pid is now {other})", True
    return None


def _zombie(pid: int) -> bool:
    """Whether ``pid`` exited and its parent has not reaped it yet (Linux; elsewhere no).
    PostgreSQL, like ``kill(pid, 0)``, takes it for a live postmaster and will not start."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _reaped(pid: int) -> bool:
    """Reap ``pid`` when this process is its parent. pg_ctl leaves the postmaster to the
    first process of its PID namespace, which in the image is asyncsync itself (no init):
    a postmaster killed there (the OOM killer) stayed a zombie, and serve waited on it for
    ever. Only a child of this process is waited for; any other is its parent's."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False  # not this process's child
    return not _zombie(pid)


def _start_again(pgdata: Path) -> tuple[int, str]:
    """Start the dead server under ``pgdata`` through this process's pgserver handle (whose
    exit then stops the new postmaster, not the dead one); its pid and DSN."""
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        try:
            from pgserver.postgres_server import PostgresServer

            server = _pgserver(pgdata)
            with PostgresServer._lock:  # another process's start may have come first
                # pgserver's get_server hands this process's handle back as it is; this
                # reads postmaster.pid again and starts a postmaster when none lives.
                _clear_stale(pgdata)
                server.ensure_postgres_running()
        except DatabaseError:
            raise  # said already (clear_stale): the log's last FATAL may be an old one
        except Exception as exc:
            raise DatabaseError(_last_fatal(pgdata) or str(exc)) from exc
    death, pid = _death(pgdata), server.get_pid()
    if death is not None or pid is None:
        raise DatabaseError(death[0] if death else "pgserver names no postmaster")
    return int(pid), str(server.get_uri())


def _last_fatal(pgdata: Path) -> str | None:
    """The server log's last FATAL line (why a start failed), or its line from before the
    logging began (``postgres: could not access the server configuration file``), if any."""
    try:
        with (pgdata / "log").open("rb") as file:
            file.seek(max(file.seek(0, os.SEEK_END) - 4096, 0))
            tail = file.read().decode(errors="replace")
    except OSError:
        return None
    fatal = [line.strip() for line in tail.splitlines()
             if "FATAL:" in line or line.startswith("postgres: ")]  # fmt: skip
    return fatal[-1] if fatal else None


def _as_root_refusal() -> str | None:
    """Why pgserver cannot start as root here, or None: as root it runs PostgreSQL as a
    system user ``pgserver``, which it creates with ``useradd`` when missing."""
    import pwd
    import shutil

    if os.name != "posix" or os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("pgserver")
        return None
    except KeyError:
        pass
    if shutil.which("useradd") is not None:
        return None
    return (
        "no DATABASE_URL: as root the embedded PostgreSQL runs as a system user 'pgserver', "
        "created with useradd, which is not on PATH; run asyncsync as an ordinary user, put "
        "/usr/sbin on PATH, or set DATABASE_URL"
    )


#: pgserver's list of the processes using a server: the last to exit stops it.
_USERS_FILE = ".handle_pids.json"


def _forget_the_dead(pgdata: Path) -> None:
    """Strike the processes that died without leaving (SIGKILL, the OOM killer) off
    pgserver's list of the server's users: while one is on it, no exit is the last, and
    the server ran on for good after every later run."""
    path = pgdata / _USERS_FILE
    try:
        users = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return  # no list yet (a first start), or not one we can read: pgserver's business
    if not isinstance(users, list):
        return
    alive = [pid for pid in users if not isinstance(pid, int) or _alive(pid)]
    if len(alive) < len(users):
        log.info(
            "embedded PostgreSQL in %s: %d process(es) that used it died without stopping it",
            pgdata, len(users) - len(alive),
        )  # fmt: skip
        path.write_bytes(orjson.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def embedded_refusal(environ: Mapping[str, str]) -> str | None:
    """Why the embedded PostgreSQL must not start here, or None.

    The image sets ``ASYNCSYNC_IN_CONTAINER=1``: a database inside a container that is
    removed at every restart would lose the mirror and the rotated refresh token with it.
    ``ASYNCSYNC_ALLOW_EMBEDDED=1`` overrides (a volume on the data directory, say).
    """
    inside = environ.get("ASYNCSYNC_IN_CONTAINER", "").strip().lower() in _YES
    allowed = environ.get("ASYNCSYNC_ALLOW_EMBEDDED", "").strip().lower() in _YES
    if inside and not allowed:
        return (
            "no DATABASE_URL: inside a container the embedded PostgreSQL would vanish with "
            "it, so set DATABASE_URL (or ASYNCSYNC_ALLOW_EMBEDDED=1 with a volume on "
            "ASYNCSYNC_DATA_DIR)"
        )
    return None


_YES = ("1", "true", "yes", "on")
