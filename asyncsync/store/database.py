"""PostgreSQL: the DSN, the pool, the schema and the SQL files.

With no ``DATABASE_URL`` the project starts its own PostgreSQL (pgserver) under the data
directory (:mod:`.embedded`), so a fresh laptop needs nothing installed. asyncpg errors
are converted here to :class:`~asyncsync.errors.DatabaseError` with their SQLSTATE.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from ..errors import ConfigError, DatabaseError
from ..seams import Migration
from . import timestamps
from .embedded import embedded_refusal, start_embedded
from .resilience import CAUGHT, classify, guarded
from .sqlfiles import sql

log = logging.getLogger(__name__)

__all__ = ["connect_pool", "foreign_tables", "guarded", "migrate", "redact", "resolve_dsn", "sql"]


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


async def migrate(pool: asyncpg.Pool, *, always: bool = False) -> Migration:
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
            return Migration.CURRENT
        async with schema_locked(conn):
            # Asked again under the lock: two workers started together after an upgrade
            # both found the old fingerprint, and the second applied it again behind the
            # first one's, waiting on the merges the first had started meanwhile.
            applied = await _applied(conn)
            if applied == fingerprint:
                if not always:
                    return Migration.CURRENT
                found = Migration.CURRENT
            else:
                await _refuse_foreign_tables(conn)
                fresh = applied is None and not await conn.fetchval(sql("schema_installed"))
                found = Migration.CREATED if fresh else Migration.UPDATED
            await conn.execute(text)
            await conn.execute(sql("schema_mark"), fingerprint)
    return found


@asynccontextmanager
async def schema_locked(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """A transaction begun once the schema lock is held. Taken inside the transaction, the
    lock let its look at the catalog keep what the session saw before the wait (the first
    look's "no such table", cached): of two first starts, the second found the other's
    mirror but not its fingerprint, and said "schema updated from an earlier release's"."""
    await conn.execute(sql("schema_lock"))
    try:
        async with conn.transaction():
            yield
    finally:
        with contextlib.suppress(*CAUGHT):  # a broken session took its lock with it
            await conn.execute(sql("schema_unlock"))


async def _refuse_foreign_tables(conn: asyncpg.Connection) -> None:
    """ConfigError when tables by asyncsync's names are someone else's (the old scripts',
    the planning document's ``import_failures``): schema.sql would fail on them half-way,
    "column account does not exist", and nothing of theirs must be altered."""
    foreign = await foreign_tables(conn)
    if foreign:
        raise ConfigError(
            f"the database already holds {', '.join(foreign)}, which asyncsync did not "
            "create (no column account): give asyncsync a database of its own, or a schema "
            "of its own (CREATE SCHEMA mirror, then ?search_path=mirror in DATABASE_URL), "
            "or rename those tables"
        )


async def foreign_tables(db: asyncpg.Pool | asyncpg.Connection) -> list[str]:
    """Tables by asyncsync's names that asyncsync did not create (``schema_foreign``)."""
    return [row["name"] for row in await db.fetch(sql("schema_foreign"))]


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
        if not math.isfinite(seconds):  # inf waited for ever on a port that never answers
            raise ValueError(raw)
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
