"""The embedded PostgreSQL: a process killed while using it does not keep it running, and
serve starts it again when it was killed under it (only a dead one: not a frozen one,
nor DATABASE_URL's)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from asyncsync.errors import DatabaseError, DatabaseUnavailable
from asyncsync.modes import serve
from asyncsync.options import ServeOptions
from asyncsync.status import Situacao
from asyncsync.store import embedded, open_database
from asyncsync.store.embedded import embedded_server

from .helpers import common_for, cycle, metrics_port

#: What a run does with no DATABASE_URL: start (or reuse) the server under a data directory.
START = (
    "import sys; from pathlib import Path; from asyncsync.store.embedded import start_embedded; "
    "start_embedded(Path(sys.argv[1]))"
)
KILLED = START + "; import os, signal; os.kill(os.getpid(), signal.SIGKILL)"


def postmaster(pgdata: Path) -> int | None:
    """The server's pid while it runs, else None."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def gone(pgdata: Path, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while postmaster(pgdata) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def run(code: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, str(data_dir)], capture_output=True, text=True, timeout=180
    )


def test_a_run_killed_mid_way_does_not_keep_the_embedded_server_up_for_good(
    tmp_path: Path,
) -> None:
    pgdata = tmp_path / "pgdata"
    killed = run(KILLED, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    server = postmaster(pgdata)
    assert server is not None  # nobody could stop it: the process that used it is gone
    try:
        # The next run reuses it, and being the last one to use it, stops it at exit
        # (pgserver's list of users had kept the dead one, so no exit was ever the last).
        later = run(START, tmp_path)
        assert later.returncode == 0, later.stderr
        assert gone(pgdata, within_s=15), "the embedded server outlived its last user"
    finally:
        if postmaster(pgdata) is not None:
            os.kill(server, signal.SIGINT)  # a fast shutdown, for the next test's sake
            gone(pgdata, within_s=15)


def test_as_root_without_useradd_the_embedded_server_is_a_configuration_sentence(
    tmp_path, monkeypatch
) -> None:
    """As root, pgserver runs PostgreSQL as a system user ``pgserver`` it creates with
    ``useradd`` (in /usr/sbin, off many PATHs: ``env -i PATH=/usr/local/bin:/usr/bin:/bin``,
    cron). The Quickstart then failed, exit 1, with "No such file or directory: 'useradd'"."""
    import pwd

    from asyncsync.errors import ConfigError

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("PATH", str(tmp_path))  # no useradd on it
    real = pwd.getpwnam

    def no_pgserver(name: str):
        if name == "pgserver":
            raise KeyError(name)
        return real(name)

    monkeypatch.setattr(pwd, "getpwnam", no_pgserver)
    with pytest.raises(ConfigError) as said:
        embedded._embedded_server(tmp_path / "data")
    assert "DATABASE_URL" in str(said.value) and "root" in str(said.value)


async def test_serve_starts_its_embedded_server_again_when_it_was_killed(
    tmp_path: Path, simulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Serve on the embedded PostgreSQL (no DATABASE_URL) owns the server: killed under it
    (SIGKILL, the OOM killer), nobody else would start it, and serve saw an outage for
    ever. It notices the postmaster is gone, starts it again in the same data directory,
    at the same address, and goes on: /readyz names the database meanwhile, then is ready,
    and a change made in Tiny afterwards reaches the mirror."""
    sim = await simulator(orders=60, seed=31)
    common = common_for(sim, "")
    common = dataclasses.replace(
        common,
        database=dataclasses.replace(
            common.database, database_url=None, data_dir=tmp_path, reconnect_s=1.0
        ),
    )
    options = ServeOptions(interval_s=1.0, heartbeat_s=2, metrics_port=0, cycle=cycle())
    pgdata = tmp_path / "pgdata"
    stop = asyncio.Event()
    # The server is this test's (stopped at the end, before tmp_path goes); serve reuses it.
    with embedded_server(tmp_path) as dsn, caplog.at_level(logging.INFO):
        serving = asyncio.create_task(serve.run(common, options, stop))
        conn = await asyncpg.connect(dsn)
        try:
            async with aiohttp.ClientSession() as http:
                readyz = f"http://127.0.0.1:{await metrics_port(caplog)}/readyz"
                await _row(conn, "SELECT count(*) FROM ordens_servico", 60)  # a first cycle
                await _readiness(http, readyz, ready=True, within_s=30)
                killed = postmaster(pgdata)
                assert killed is not None
                os.kill(killed, signal.SIGKILL)
                reasons = await _readiness(http, readyz, ready=False, within_s=15)
                assert "database" in reasons, reasons
                await _readiness(http, readyz, ready=True, within_s=30)
            started = postmaster(pgdata)
            assert started not in (None, killed)
            moved = min(i for i, o in sim.orders.items() if o.situacao != Situacao.CANCELADA)
            sim.set_status(moved, Situacao.CANCELADA)
            await conn.close()  # it died with the postmaster
            conn = await asyncpg.connect(dsn)  # the address it had: the same socket
            query = "SELECT situacao FROM ordens_servico WHERE id = $1"
            await _row(conn, query, int(Situacao.CANCELADA), moved)
        finally:
            stop.set()
            await conn.close()
            code = await asyncio.wait_for(serving, 30)
    assert code == 0
    said = [r.getMessage() for r in caplog.records if "started it again" in r.getMessage()]
    assert len(said) == 1 and f"pid {killed}" in said[0], said
    assert gone(pgdata, within_s=15), "the server started again outlived its last user"


@pytest.mark.parametrize("reused", [False, True], ids=["gone", "pid reused"])
async def test_a_server_killed_between_two_opens_is_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reused: bool
) -> None:
    """Killed after this process started it and before it opened it again (serve waiting
    at start for its database; a run opening its history row): the DSN it remembered
    reached nothing, and serve's start-up tried it for ever. Also when its pid is another
    process's by then (a container's restart): pgserver's handle took it for the server."""
    monkeypatch.setattr(embedded, "_STARTED", {})
    pgdata = tmp_path / "pgdata"
    with embedded_server(tmp_path):  # stops what runs there at the end
        dsn = embedded.start_embedded(tmp_path)
        killed = postmaster(pgdata)
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while (death := embedded._death(pgdata)) is None or not death[1]:  # reaped, at last
            assert time.monotonic() < deadline, death
            await asyncio.sleep(0.1)
        stranger = _process(tmp_path, uid=pgdata.stat().st_uid) if reused else None
        try:
            if stranger is not None:
                _reuse_pid(pgdata, stranger.pid)
            assert await asyncio.to_thread(embedded.start_embedded, tmp_path) == dsn
            conn = await asyncpg.connect(dsn)
            try:
                assert await conn.fetchval("SELECT 1") == 1
            finally:
                await conn.close()
            assert postmaster(pgdata) not in (None, killed, stranger and stranger.pid)
        finally:
            if stranger is not None:
                stranger.kill()
                stranger.wait()
    assert gone(pgdata, within_s=15)


async def _row(conn: asyncpg.Connection, query: str, expected: object, *args: object) -> None:
    """Wait up to 30 s for ``query`` to answer ``expected``."""
    got: object = None
    for _ in range(300):
        with contextlib.suppress(asyncpg.UndefinedTableError):  # serve applies the schema
            got = await conn.fetchval(query, *args)
        if got == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{query} answers {got!r}, not {expected!r}")


async def _readiness(
    http: aiohttp.ClientSession, url: str, *, ready: bool, within_s: float
) -> dict[str, str]:
    """Poll /readyz until it says ``ready`` (or not); the reasons it gives then."""
    deadline = time.monotonic() + within_s
    while True:
        async with http.get(url) as answer:
            body = await answer.json()
        if (answer.status == 200) == ready:
            return dict(body.get("reasons", {}))
        assert time.monotonic() < deadline, f"/readyz still says {body} after {within_s} s"
        await asyncio.sleep(0.1)


def _dead_pid() -> int:
    """The pid of a process that exited and was reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _postmaster_file(data_dir: Path, pid: int) -> None:
    (data_dir / "pgdata").mkdir(parents=True)
    (data_dir / "pgdata" / "postmaster.pid").write_text(f"{pid}\n{data_dir / 'pgdata'}\n")


def _no_start(pgdata: Path) -> tuple[int, str]:
    raise AssertionError(f"started {pgdata} again")


async def test_a_dead_server_that_will_not_start_is_tried_again_after_a_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start that fails (the dead postmaster's children still holding its shared memory,
    a broken install) is said, with why, and tried again after 1 s, 2 s, 5 s, …: not at
    every check of the worker."""
    _postmaster_file(tmp_path, _dead_pid())
    starts: list[Path] = []

    def refused(pgdata: Path) -> tuple[int, str]:
        starts.append(pgdata)
        raise DatabaseError("FATAL:  pre-existing shared memory block is still in use")

    monkeypatch.setattr(embedded, "_start_again", refused)
    server = embedded.EmbeddedServer(tmp_path, "postgresql://postgres:@/postgres?host=/x")
    why = "could not be started again: FATAL:  pre-existing shared memory block"
    with pytest.raises(DatabaseUnavailable, match=f"{why}.*; starting it again in 1 s"):
        await server.revive()
    with pytest.raises(DatabaseUnavailable, match=f"{why}.*; starting it again in 1 s"):
        await server.revive()  # within the pause: said again, not tried
    assert len(starts) == 1
    await asyncio.sleep(1.05)
    with pytest.raises(DatabaseUnavailable, match="starting it again in 2 s"):
        await server.revive()
    assert len(starts) == 2


async def test_a_frozen_server_is_not_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A postmaster that lives, however slow or frozen (SIGSTOP), is waited for: a second
    one started beside it would find the data directory taken, or worse."""
    (tmp_path / "pgdata").mkdir()
    # What /proc shows of a postmaster: the program postgres, working in its data directory.
    frozen = _process(tmp_path, "postgres", cwd=tmp_path / "pgdata")
    try:
        os.kill(frozen.pid, signal.SIGSTOP)
        (tmp_path / "pgdata" / "postmaster.pid").write_text(f"{frozen.pid}\n")
        monkeypatch.setattr(embedded, "_start_again", _no_start)
        server = embedded.EmbeddedServer(tmp_path, "postgresql://postgres:@/postgres?host=/x")
        assert await server.revive() is None
    finally:
        frozen.kill()
        frozen.wait()


def _process(
    tmp_path: Path, program: str = "sleep", *, cwd: Path | None = None, uid: int | None = None
) -> subprocess.Popen[bytes]:
    """A live process sleeping a minute: ``program`` is its name (sleep under another
    name), working in ``cwd`` (else /), as user ``uid`` (else this process's)."""
    exe = Path(shutil.which("sleep") or "/bin/sleep")
    if program != exe.name:
        (tmp_path / "bin").mkdir(exist_ok=True)
        exe = Path(shutil.copy(exe, tmp_path / "bin" / program))
    return subprocess.Popen([exe, "60"], cwd=cwd or "/", user=uid)


#: What a pid in postmaster.pid can be after a reboot: another process, provably not the
#: postmaster by its user (PostgreSQL runs as its data directory's owner), its program, or
#: the directory it works in (a postmaster works in its data directory).
STRANGERS = {
    "another user": {"uid": 65534},
    "another program": {},
    "a postgres elsewhere": {"program": "postgres"},
}


@pytest.mark.parametrize("who", list(STRANGERS))
async def test_a_pid_now_another_process_is_a_dead_postmaster_to_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, who: str
) -> None:
    """Killed with the machine (or its container), the postmaster leaves postmaster.pid
    naming a pid that another process may hold by then: serve took that process for its
    live server and never started it again, /readyz naming the database for ever."""
    if who == "another user" and os.geteuid() != 0:
        pytest.skip("another user's process needs root")
    stranger = _process(tmp_path, **STRANGERS[who])  # type: ignore[arg-type]
    try:
        _postmaster_file(tmp_path, stranger.pid)
        started: list[Path] = []

        def start_again(pgdata: Path) -> tuple[int, str]:
            started.append(pgdata)
            return 1, "postgresql://postgres:@/postgres?host=/x"

        monkeypatch.setattr(embedded, "_start_again", start_again)
        server = embedded.EmbeddedServer(tmp_path, "postgresql://postgres:@/postgres?host=/x")
        said = await server.revive()
        assert said is not None and f"pid {stranger.pid}, is gone (that pid is now" in said
        assert started == [tmp_path / "pgdata"]
    finally:
        stranger.kill()
        stranger.wait()


def _reuse_pid(pgdata: Path, pid: int) -> None:
    """Make the lock files of the server under ``pgdata`` name ``pid``: postmaster.pid and
    its socket's, as a reboot leaves them once their pid is another process's."""
    lines = (pgdata / "postmaster.pid").read_text().splitlines()
    socket_lock = Path(lines[4]) / f".s.PGSQL.{lines[3]}.lock"
    for lock in (pgdata / "postmaster.pid", socket_lock):
        rest = lock.read_text().split("\n", 1)[1]
        lock.write_text(f"{pid}\n{rest}")


def test_a_postmaster_pid_a_reboot_left_naming_another_process_is_stale(
    tmp_path: Path,
) -> None:
    """The machine rebooted (or the container restarted, the data directory on a volume)
    while the embedded server ran: postmaster.pid, and the socket's lock file, name a pid
    that another process of the same user now holds. pgserver took it for the server: a
    one-shot sync failed, exit 6, "Connection refused", then spent a minute at exit in
    ``pg_ctl stop`` and killed that unrelated process; PostgreSQL itself refuses to start
    beside such a file ("Is another postmaster running"). Now the run sees the pid is no
    postmaster of its data directory, removes both lock files, starts the server and
    syncs; the other process lives on."""
    pgdata = tmp_path / "pgdata"
    killed = run(KILLED, tmp_path)  # a server left up, as at the moment of the reboot
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    was = postmaster(pgdata)
    assert was is not None
    os.kill(was, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while (death := embedded._death(pgdata)) is None or not death[1]:  # reaped
        assert time.monotonic() < deadline, death
        time.sleep(0.1)
    owner = pgdata.stat().st_uid  # pgserver's user as root: PostgreSQL runs as it
    stranger = _process(tmp_path, "postgres", cwd=tmp_path, uid=owner)
    try:
        _reuse_pid(pgdata, stranger.pid)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TINY_", "ASYNCSYNC_"))}
        env.pop("DATABASE_URL", None)
        synced = subprocess.run(
            [sys.executable, "-m", "asyncsync", "--mode", "sync", "--simulator", "50",
             "--data-dir", str(tmp_path), "--log-format", "json"],
            capture_output=True, text=True, env=env, timeout=150,
        )  # fmt: skip
        assert synced.returncode == 0, synced.stderr[-2000:]
        assert f"postmaster.pid named pid {stranger.pid}, now a PostgreSQL of another" in (
            synced.stderr
        )
        assert stranger.poll() is None, "the unrelated process was killed"
        assert gone(pgdata, within_s=15), "the server outlived its last user"
    finally:
        stranger.kill()
        stranger.wait()
        if (left := postmaster(pgdata)) is not None and left != stranger.pid:
            os.kill(left, signal.SIGINT)
            gone(pgdata, within_s=15)


def test_a_live_postmaster_of_the_data_directory_is_never_taken_for_stale(
    tmp_path: Path,
) -> None:
    """The lock file of the postmaster running on the data directory is kept, and the
    server reused. One naming another process while PostgreSQL processes still work in
    the directory (a killed postmaster's backends; here the live server under a rewritten
    file) is not removed either: the start stops with a sentence saying so, rather than
    start a second server on the same data."""
    pgdata = tmp_path / "pgdata"
    with embedded_server(tmp_path):
        live = postmaster(pgdata)
        assert live is not None and embedded._death(pgdata) is None
        reused = run(START, tmp_path)
        assert reused.returncode == 0, reused.stderr
        assert postmaster(pgdata) == live
        stranger = _process(tmp_path)
        try:
            _reuse_pid(pgdata, stranger.pid)
            refused = run(START, tmp_path)
            assert refused.returncode == 1, refused.stderr
            said = refused.stderr.strip().splitlines()[-1]
            assert said.startswith("asyncsync.errors.DatabaseError: could not start"), said
            assert "but PostgreSQL processes still work in its directory (pid " in said, said
            assert str(live) in said.rpartition("(pid ")[2], said
            assert postmaster(pgdata) == stranger.pid  # the file stays as it was
            assert stranger.poll() is None
        finally:
            _reuse_pid(pgdata, live)  # for the server to be stopped at the end
            stranger.kill()
            stranger.wait()
    assert gone(pgdata, within_s=15)


async def test_a_database_url_server_is_never_started(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With DATABASE_URL the server is someone else's: whatever the data directory holds,
    nothing is started."""
    _postmaster_file(tmp_path, _dead_pid())
    monkeypatch.setattr(embedded, "_start_again", _no_start)
    async with open_database(database_url, tmp_path, apply_schema=False) as database:
        assert await database.revive() is None


async def test_a_postmaster_not_reaped_yet_is_started_once_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed postmaster stays a zombie until its parent (init, another process)
    reaps it, and PostgreSQL takes it for a live one: no start is tried meanwhile, and
    /readyz says what it waits for."""
    parent, exited = _unreaped_elsewhere()
    try:
        _postmaster_file(tmp_path, exited)
        monkeypatch.setattr(embedded, "_start_again", _no_start)
        server = embedded.EmbeddedServer(tmp_path, "postgresql://postgres:@/postgres?host=/x")
        with pytest.raises(DatabaseUnavailable, match=r"not reaped yet.*once its parent reaps"):
            await server.revive()
    finally:
        parent.kill()
        parent.wait()


def test_a_postmaster_left_to_this_process_is_reaped_and_started_again(
    tmp_path: Path,
) -> None:
    """pg_ctl leaves the postmaster to the first process of its PID namespace: in the
    image, asyncsync itself. Killed there (the OOM killer), it stayed this process's zombie,
    which nothing reaped: serve said 'started again once its parent reaps it' for ever."""
    exited = _unreaped()
    try:
        _postmaster_file(tmp_path, exited.pid)
        said = f"its postmaster, pid {exited.pid}, is gone"
        assert embedded._death(tmp_path / "pgdata") == (said, True)
        assert not Path(f"/proc/{exited.pid}").exists()  # reaped
    finally:
        exited.wait()


def _unreaped() -> subprocess.Popen[bytes]:
    """A child of this process that exited and that nobody reaped yet (a zombie)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    _wait_zombie(proc.pid)
    return proc


def _unreaped_elsewhere() -> tuple[subprocess.Popen[bytes], int]:
    """A process, and its child that exited and that it leaves unreaped (a zombie)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", "import os, time\n"
         "pid = os.fork()\nif pid == 0: os._exit(0)\nprint(pid, flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert parent.stdout is not None
    exited = int(parent.stdout.readline())
    _wait_zombie(exited)
    return parent, exited


def _wait_zombie(pid: int) -> None:
    stat = Path(f"/proc/{pid}/stat")
    deadline = time.monotonic() + 10
    while stat.read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)


def test_a_first_start_killed_during_initdb_is_made_again(tmp_path: Path) -> None:
    """The first start of the embedded server, SIGKILLed with its process group while
    initdb ran (the OOM killer, a container's SIGKILL in its first seconds): initdb had
    written PG_VERSION, which pgserver takes for a cluster made, and the lock file of its
    standalone backend (a negative pid, seven lines), which pgserver cannot read. Every
    later command failed, for good: `status` with a bare AssertionError, `sync` with a
    traceback (sweep J). Now the directory, which holds nothing yet, is made again."""
    pgdata = tmp_path / "pgdata"
    first = subprocess.Popen(
        [sys.executable, "-c", START, str(tmp_path)], start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (pgdata / "PG_VERSION").exists():  # initdb has begun
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.002)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert (tmp_path / "pgdata.initializing").exists()  # cut short: the start never ended
    later = run(START, tmp_path)
    assert later.returncode == 0, later.stderr
    assert "was cut short" in later.stderr, later.stderr
    assert not (tmp_path / "pgdata.initializing").exists()
    assert gone(pgdata, within_s=15), "the server outlived its last user"
    # Once a postmaster started there, the directory is never made again: a marker that
    # a process killed just after the start left is only cleared.
    (tmp_path / "pgdata.initializing").write_text(f"{_dead_pid()} 1\n")
    kept = run(START + "; import os, signal; os.kill(os.getpid(), signal.SIGKILL)", tmp_path)
    assert kept.returncode == -signal.SIGKILL and "cut short" not in kept.stderr, kept.stderr
    server = postmaster(pgdata)
    assert server is not None and not (tmp_path / "pgdata.initializing").exists()
    os.kill(server, signal.SIGINT)
    assert gone(pgdata, within_s=15)


def test_the_lock_of_a_standalone_backend_gone_is_cleared(tmp_path: Path) -> None:
    """A directory made whole and stopped, then left with the seven-line lock file of a
    standalone backend (initdb's, or single-user mode's: its pid negated) that is gone:
    pgserver could not read it (a bare AssertionError); it is removed, and the server
    starts. One whose backend still works there is never removed."""
    pgdata = tmp_path / "pgdata"
    made = run(START, tmp_path)
    assert made.returncode == 0 and gone(pgdata, within_s=15), made.stderr
    lock = "\n".join([f"-{_dead_pid()}", str(pgdata), "1796688521", "5432", "", "", "0 0"])
    (pgdata / "postmaster.pid").write_text(lock + "\n")
    later = run(START, tmp_path)
    assert later.returncode == 0, later.stderr
    assert "was left by a standalone backend" in later.stderr, later.stderr
    assert gone(pgdata, within_s=15)
