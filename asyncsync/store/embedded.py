"""The embedded PostgreSQL (pgserver): started under the data directory when there is no
``DATABASE_URL``, shared by the runs going on at once, stopped by the last to exit.

As root, pgserver runs it as a system user ``pgserver``; a process killed while using it
(SIGKILL, the OOM killer) is struck off pgserver's list of its users at the next start.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError, DatabaseError

log = logging.getLogger(__name__)

__all__ = ["embedded_refusal", "embedded_server", "start_embedded"]


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
        _STARTED[key] = str(_embedded_server(data_dir).get_uri())
    return _STARTED[key]


@contextmanager
def embedded_server(data_dir: Path) -> Iterator[str]:
    """The embedded PostgreSQL under ``data_dir`` for the duration (tests, benchmarks):
    yields its DSN and stops it on exit, before its directory can be removed."""
    server = _embedded_server(data_dir)
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


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
            import pgserver
            from pgserver.postgres_server import PostgresServer

            with PostgresServer._lock:  # the lock pgserver keeps its list under
                _forget_the_dead(pgdata)
            return pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        except ImportError as exc:  # pragma: no cover - it is a hard dependency
            raise ConfigError("no DATABASE_URL and pgserver is not installed") from exc
        except Exception as exc:
            raise DatabaseError(
                f"could not start the embedded PostgreSQL in {pgdata}: {exc}"
            ) from exc


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
