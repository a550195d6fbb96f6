"""Whether the ``postmaster.pid`` of the embedded PostgreSQL names its postmaster, and
clearing one that provably does not.

A reboot, or a container restarted with the data directory on a volume, while the server
ran leaves its ``postmaster.pid`` naming a pid that may by then belong to another, live
process (pids are reused; in a container the same few on every start). pgserver takes
any live pid for its server: the run failed ("Connection refused") and, at its exit,
pgserver stopped "the server" by signalling that pid, killing the unrelated process.
PostgreSQL itself will not start beside a lock file naming a live process of its user
("lock file "postmaster.pid" already exists"), and pgserver says nothing of that.

The proof, from ``/proc`` (Linux; elsewhere nothing is proved and the file stays):
PostgreSQL runs only as the owner of its data directory, its postmaster is the program
``postgres``, and it works in its data directory (it changes into it before it writes
the file). A process of another user, another program, or a ``postgres`` working in
another directory is not this directory's postmaster. The start time the file records
against the process's would prove it too, but for a clock stepped after the start (NTP
on a laptop's boot), which makes a live postmaster look younger than its file: not used.

The file is removed only when no PostgreSQL process works in the data directory any more
(the killed postmaster's backends, which PostgreSQL's own check on the shared memory the
file names would have found): that check goes with the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatabaseError

__all__ = ["clear_stale", "not_its_postmaster", "postgres_working_in"]

#: The program of the postmaster and of every process it forks (its comm on Linux).
_POSTGRES = "postgres"


@dataclass(frozen=True)
class _Process:
    """What ``/proc`` says of a process: its effective uid, its program, and the directory
    it works in (device and inode; None when it cannot be read: not ours, or a zombie)."""

    uid: int
    comm: str
    cwd: tuple[int, int] | None

    @classmethod
    def read(cls, pid: int) -> _Process | None:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return None  # gone, or no /proc
        uids = [line.split() for line in status.splitlines() if line.startswith("Uid:")]
        if not uids or len(uids[0]) < 3:
            return None
        try:
            there = os.stat(f"/proc/{pid}/cwd")
        except OSError:
            return cls(int(uids[0][2]), comm, None)
        return cls(int(uids[0][2]), comm, (there.st_dev, there.st_ino))


def not_its_postmaster(pgdata: Path, pid: int) -> str | None:
    """What the live process ``pid`` is, when that proves it is not the postmaster of
    ``pgdata`` (another user's, another program, a ``postgres`` elsewhere); None when it
    may be, or when this cannot be told."""
    try:
        here = pgdata.stat()
    except OSError:
        return None
    process = _Process.read(pid)
    if process is None:
        return None
    if process.uid != here.st_uid:
        return f"a process of another user ({process.comm})"
    if process.comm != _POSTGRES:
        return f"another program ({process.comm})"
    if process.cwd is not None and process.cwd != (here.st_dev, here.st_ino):
        return "a PostgreSQL of another data directory"
    return None


def clear_stale(pgdata: Path) -> str | None:
    """Remove ``pgdata``'s ``postmaster.pid``, and the lock file of its socket, when it
    names a live process that is provably not its postmaster (:func:`not_its_postmaster`);
    what was done, in a sentence, or None when nothing was. Call it under pgserver's lock,
    so no start is under way. DatabaseError, saying which, when PostgreSQL processes
    still work in the data directory: nothing is removed then."""
    path = pgdata / "postmaster.pid"
    try:
        lines = path.read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None  # none, or not one to judge: PostgreSQL's and pgserver's business
    if pid < 0:
        return _clear_standalone(pgdata, -pid)
    other = not_its_postmaster(pgdata, pid)
    if other is None:
        return None
    working = postgres_working_in(pgdata)
    if working:
        raise DatabaseError(
            f"its postmaster.pid names pid {pid}, now {other}, but PostgreSQL processes "
            f"still work in its directory (pid {', '.join(map(str, working))}): stop them"
        )
    if len(lines) >= 5 and lines[3].strip() and lines[4].strip():
        _remove_if_names(Path(lines[4].strip()) / f".s.PGSQL.{lines[3].strip()}.lock", pid)
    path.unlink(missing_ok=True)
    return (
        f"{path} named pid {pid}, now {other}, not its postmaster (a reboot or a restart "
        "left it there): removed it, so the server starts"
    )


def _clear_standalone(pgdata: Path, pid: int) -> str | None:
    """The lock of a standalone backend (initdb's, or single-user mode's: its pid negated,
    seven lines), which pgserver cannot read: its start failed with a bare AssertionError,
    for good, after a first start killed during initdb. Removed once that backend is gone
    and no PostgreSQL works in the directory (PostgreSQL would take it for stale too)."""
    working = postgres_working_in(pgdata)
    if working:
        raise DatabaseError(
            f"a standalone PostgreSQL backend (initdb, or single-user mode), pid {pid}, "
            f"locked its directory and PostgreSQL processes still work there (pid "
            f"{', '.join(map(str, working))}): let them finish, or stop them"
        )
    (pgdata / "postmaster.pid").unlink(missing_ok=True)
    return (
        f"{pgdata / 'postmaster.pid'} was left by a standalone backend (initdb, or "
        f"single-user mode), pid {pid}, now gone: removed it, so the server starts"
    )


def _remove_if_names(lock: Path, pid: int) -> None:
    """Remove a socket's lock file written by the same postmaster: PostgreSQL refuses it
    too while the pid it names lives."""
    try:
        if int(lock.read_text().split()[0]) == pid:
            lock.unlink(missing_ok=True)
    except (OSError, ValueError, IndexError):
        pass  # gone with the reboot (a runtime directory), or not one PostgreSQL wrote


def postgres_working_in(pgdata: Path) -> list[int]:
    """The PostgreSQL processes (other than this one) working in ``pgdata``."""
    here = pgdata.stat()
    ours = (here.st_dev, here.st_ino)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "comm").read_text().strip() != _POSTGRES:
                continue
        except OSError:
            continue
        process = _Process.read(int(entry.name))
        # A cwd unreadable as its user or root: a zombie, which holds nothing any more.
        if process is not None and (process.uid, process.cwd) == (here.st_uid, ours):
            found.append(int(entry.name))
    return sorted(found)
