"""The embedded PostgreSQL: a process killed while using it does not keep it running, and
a dead server is started again (only a dead one: not a frozen one, nor DATABASE_URL's)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asyncsync.errors import DatabaseError, DatabaseUnavailable
from asyncsync.store import embedded, open_database

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
    frozen = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        os.kill(frozen.pid, signal.SIGSTOP)
        _postmaster_file(tmp_path, frozen.pid)
        monkeypatch.setattr(embedded, "_start_again", _no_start)
        server = embedded.EmbeddedServer(tmp_path, "postgresql://postgres:@/postgres?host=/x")
        assert await server.revive() is None
    finally:
        frozen.kill()
        await frozen.wait()


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
    """A killed postmaster stays a zombie until its parent (init, here the container's
    first process) reaps it, and PostgreSQL takes it for a live one: no start is tried
    meanwhile, and /readyz says what it waits for."""
    exited = _unreaped()
    try:
        _postmaster_file(tmp_path, exited.pid)
        monkeypatch.setattr(embedded, "_start_again", _no_start)
        server = embedded.EmbeddedServer(tmp_path, "postgresql://postgres:@/postgres?host=/x")
        with pytest.raises(DatabaseUnavailable, match=r"not reaped yet.*once its parent reaps"):
            await server.revive()
    finally:
        exited.wait()


def _unreaped() -> subprocess.Popen[bytes]:
    """A child that exited and that nobody reaped yet (a zombie)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    stat = Path(f"/proc/{proc.pid}/stat")
    deadline = time.monotonic() + 10
    while stat.read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    return proc
