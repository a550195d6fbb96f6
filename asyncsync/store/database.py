"""PostgreSQL: the embedded default, the pool, the schema and the SQL files.

With no ``DATABASE_URL`` the project starts its own PostgreSQL (pgserver) under the data
directory, so a fresh laptop needs nothing installed. asyncpg errors are converted here
to :class:`~asyncsync.errors.DatabaseError` with their SQLSTATE.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import orjson

from ..errors import ConfigError, DatabaseError
from . import timestamps
from .resilience import CAUGHT, classify, guarded
from .sqlfiles import sql

log = logging.getLogger(__name__)

__all__ = ["connect_pool", "embedded_server", "guarded", "migrate", "redact", "resolve_dsn", "sql"]


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


async def resolve_dsn(
    database_url: str | None, data_dir: Path, environ: Mapping[str, str] | None = None
) -> str:
    """``database_url`` itself, or the embedded server's DSN when it is None (ConfigError
    inside a container, unless allowed: :func:`embedded_refusal`)."""
    if database_url:
        return database_url
    refusal = embedded_refusal(os.environ if environ is None else environ)
    if refusal is not None:
        raise ConfigError(refusal)
    return await asyncio.to_thread(start_embedded, data_dir)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.execute(sql("stage"))
    await timestamps.install(conn)


async def _init_reader(conn: asyncpg.Connection) -> None:
    """A connection that merges nothing: no staging tables (a standby refuses even
    temporary ones, and ``status`` and ``health`` can run against one)."""
    await timestamps.install(conn)


@asynccontextmanager
async def connect_pool(
    dsn: str,
    *,
    max_size: int = 4,
    application_name: str = "asyncsync",
    statement_timeout_s: float = 120.0,
    lock_timeout_s: float = 30.0,
    idle_in_transaction_s: float | None = None,
    staging: bool = True,
) -> AsyncIterator[asyncpg.Pool]:
    """A pool whose connections carry the staging tables; clear errors when unreachable.

    The server cuts a statement after ``statement_timeout_s`` and a lock wait after
    ``lock_timeout_s``; the client gives up a little later, for a server too frozen to
    cut anything. A transaction left idle for ``idle_in_transaction_s`` (default: the
    statement timeout) is ended by the server: no transaction here waits on anything but
    the database, so its process is frozen (SIGSTOP, a paused container), and the rows
    it wrote would otherwise stay locked for as long as the freeze lasts, stalling every
    other process's merges of them and its ``schema.sql``."""
    given, dsn = dsn, _without_connect_timeout(dsn)
    connect_timeout_s = _connect_timeout_s(given)
    try:
        pool = await asyncpg.create_pool(
            dsn,
            # No floor: while the server is away, nothing reconnects in the background.
            min_size=0,
            max_size=max_size,
            init=_init_connection if staging else _init_reader,
            timeout=connect_timeout_s,
            command_timeout=statement_timeout_s + 5,
            server_settings={
                # import_failures keeps its `timestamp` columns: pin what they mean.
                "timezone": "UTC",
                "application_name": application_name,
                "statement_timeout": str(int(statement_timeout_s * 1000)),
                "lock_timeout": str(int(lock_timeout_s * 1000)),
                "idle_in_transaction_session_timeout": str(
                    int((idle_in_transaction_s or statement_timeout_s) * 1000)
                ),
                # A statement is planned for its values at each execution. A plan cached
                # while ordens_servico was empty probes it by the account alone (another
                # index's first column) and reads the whole account for every id once it
                # has grown back; a batch's planning costs well under a millisecond.
                "plan_cache_mode": "force_custom_plan",
            },
        )
    except asyncpg.ClientConfigurationError as exc:  # a parameter of the DSN it refuses
        raise _unusable(dsn, exc) from None
    except CAUGHT as exc:
        error = _connect_error(dsn, exc)
        raise error from None if isinstance(error, ConfigError) else exc
    try:  # fail at the start, in one sentence, rather than at the first statement
        await pool.execute(sql("ping"))
    except asyncpg.ClientConfigurationError as exc:
        pool.terminate()
        raise _unusable(dsn, exc) from None
    except CAUGHT as exc:
        pool.terminate()
        error = _connect_error(dsn, exc)
        raise error from None if isinstance(error, ConfigError) else exc
    try:
        yield pool
    finally:
        try:
            await asyncio.wait_for(pool.close(), timeout=10)
        except asyncio.CancelledError:
            pool.terminate()
            raise
        except CAUGHT:
            pool.terminate()  # a frozen or vanished server: nothing to close politely


async def migrate(pool: asyncpg.Pool, *, always: bool = False) -> None:
    """Apply ``schema.sql`` (idempotent); serialized so parallel starts don't collide.
    Skipped (unless ``always``) when the database says this very ``schema.sql`` was
    applied last: its ``CREATE INDEX IF NOT EXISTS`` waits for every write in flight on
    the table and holds back the writes queued behind it, so a run starting next to a
    worker's merges stalled them. The work queue's tables come with the queue's first use
    (``PgWorkQueue.install``): a one-shot sync does not load the queue library."""
    text = sql("schema")
    fingerprint = hashlib.sha256(text.encode()).hexdigest()
    async with pool.acquire() as conn:
        if not always and await _applied(conn) == fingerprint:
            return
        async with conn.transaction():
            await conn.execute(sql("schema_lock"))
            # Asked again under the lock: two workers started together after an upgrade
            # both found the old fingerprint, and the second applied it again behind the
            # first one's, waiting on the merges the first had started meanwhile.
            if not always and await _applied(conn) == fingerprint:
                return
            await conn.execute(text)
            await conn.execute(sql("schema_mark"), fingerprint)


async def _applied(conn: asyncpg.Connection) -> str | None:
    """The fingerprint of the schema.sql the database had applied last, if any."""
    if not await conn.fetchval(sql("schema_fingerprinted")):
        return None  # an install older than the fingerprint
    applied: str | None = await conn.fetchval(sql("schema_applied"))
    return applied


#: Seconds to wait for a connection unless the URL says (libpq's ``connect_timeout``).
CONNECT_TIMEOUT_S = 15.0
#: Refusals at connection time that are the URL's: no such database, the credentials,
#: and a parameter of its query string the server does not know or takes no such value
#: of (asyncpg hands every parameter it does not know itself to the server as a setting).
_URL_REFUSALS = ("3D000", "42704", "22023")


def _connect_timeout_s(dsn: str) -> float:
    """libpq's ``connect_timeout`` (seconds; 0 or none: the default here), which asyncpg
    does not know: left in the URL it reaches the server as a setting, which refuses it."""
    raw = dict(parse_qsl(urlsplit(dsn).query)).get("connect_timeout")
    if raw is None:
        return CONNECT_TIMEOUT_S
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigError(
            f"the database URL (--database-url, DATABASE_URL) {redact(dsn)} has "
            f"connect_timeout={raw!r}: it must be a number of seconds"
        ) from None
    return max(seconds, 2.0) if seconds > 0 else CONNECT_TIMEOUT_S  # libpq: at least 2 s


def _without_connect_timeout(dsn: str) -> str:
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(key == "connect_timeout" for key, _ in query):
        return dsn
    kept = [(key, value) for key, value in query if key != "connect_timeout"]
    return urlunsplit(parts._replace(query=urlencode(kept)))


def _connect_error(dsn: str, exc: BaseException) -> DatabaseError | ConfigError:
    """Why connecting failed: a server that refuses these credentials or has no such
    database, or a setting the URL passes, is the URL's fault (exit 2); anything else is
    the database's (see classify)."""
    state = getattr(exc, "sqlstate", None) or ""
    if isinstance(exc, asyncpg.PostgresError) and (
        state in _URL_REFUSALS or state.startswith("28")
    ):
        return _unusable(dsn, exc)
    return classify(exc, f"cannot connect to PostgreSQL at {redact(dsn)}")


def _unusable(dsn: str, exc: Exception) -> ConfigError:
    """A DSN asyncpg refuses to use (a parameter out of its range): the operator's to fix."""
    return ConfigError(f"the database URL (--database-url, DATABASE_URL) {redact(dsn)} "
                       f"is not usable: {exc}")  # fmt: skip


def with_database(dsn: str, name: str) -> str:
    """``dsn`` pointing at database ``name`` instead (query string, e.g. a socket, kept)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


def redact(dsn: str) -> str:
    """The DSN without its password (in the user part or a ``password=`` parameter)."""
    if "://" not in dsn:
        return dsn
    scheme, rest = dsn.split("://", 1)
    if "?" in rest:
        rest, query = rest.split("?", 1)
        kept = [p for p in query.split("&") if p.split("=", 1)[0].lower() != "password"]
        rest += "?" + "&".join(kept) if kept else ""
    if "@" in rest:
        creds, host = rest.rsplit("@", 1)
        rest = creds.split(":", 1)[0] + "@" + host
    return f"{scheme}://{rest}"
