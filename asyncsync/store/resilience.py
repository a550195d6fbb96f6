"""The database comes and goes: errors converted where they enter, and brief outages ridden.

:func:`classify` turns an asyncpg (or socket) error into the package's tree: a database
that cannot be reached, went away mid-statement, timed out or is restarting becomes
:class:`~asyncsync.errors.DatabaseUnavailable`; anything else (a value PostgreSQL refuses,
a constraint) stays a plain :class:`~asyncsync.errors.DatabaseError`, SQLSTATE kept.

:class:`Reconnect` runs a unit of work again, on a fresh connection, while the database is
unavailable, for a bounded time: a restart of a few seconds costs a pause, not a run. Only
whole units are repeated (one transaction, one statement), so nothing is done twice: a
transaction the connection died in was rolled back by the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from ..errors import DatabaseError, DatabaseUnavailable
from .sqlfiles import sql

log = logging.getLogger(__name__)
T = TypeVar("T")

#: SQLSTATEs that say "not now" rather than "not this": shutdowns, restarts, too many
#: connections, a statement or lock wait cut by its timeout, a server that is read-only
#: (a standby after a failover) or out of disk or memory, a transaction chosen as a
#: deadlock's or a serialization conflict's victim, or left idle past the server's limit;
#: a database that no longer exists once connected to (dropped to be restored: at
#: start the same answer is the URL's fault, see ``database._connect_error``).
#: The unit of work is tried again, as after a restart: each one is a transaction.
_NOT_NOW = {
    "57P01", "57P02", "57P03", "53300", "57014", "55P03",
    "25006", "53100", "53200", "40001", "40P01", "25P03", "3D000",
}  # fmt: skip
#: What to add to the server's message, for the states it does not explain itself.
_HINTS = {
    "57014": " (a statement or lock timeout: is the database frozen?)",
    "55P03": " (a statement or lock timeout: is the database frozen?)",
    "25006": " (the server is read-only: a standby, after a failover?)",
    "53100": " (the database server's disk is full)",
    "3D000": " (dropped while in use: being restored?)",
    "55000": " (ALTER DATABASE ... ALLOW_CONNECTIONS false: under maintenance?)",
}
#: "Not in the prerequisite state", FATAL: said only at connection time, by a database that
#: takes no connections now (``ALLOW_CONNECTIONS false``); said of a statement, as an
#: ERROR, it is about that statement. serve died of the first, a one-shot run exited 1.
_REFUSING = "55000"


#: asyncpg's words for a pool this process closed (``Pool.close``/``terminate``).
_OURS_CLOSED = frozenset({"pool is closing", "pool is closed"})


def classify(exc: BaseException, what: str) -> DatabaseError:
    """The package's error for ``exc`` met while ``what``."""
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        refusing = state == _REFUSING and (exc.severity_en or exc.severity) == "FATAL"
        if state.startswith("08") or state in _NOT_NOW or refusing:
            hint = _HINTS.get(state, "")
            return DatabaseUnavailable(f"{what}: {exc}{hint}", sqlstate=state)
        return DatabaseError(f"{what}: {exc}", sqlstate=state)
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError):
        # asyncpg could not encode a value for PostgreSQL: a property of the data.
        return DatabaseError(f"{what}: {exc}", sqlstate="22000")
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc.__context__, TimeoutError):
        # A statement timed out, asyncpg closed its connection, and the transaction's
        # rollback then met the closed connection: the timeout is what happened.
        return classify(exc.__context__, what)
    if isinstance(exc, TimeoutError):
        return DatabaseUnavailable(f"{what}: the database did not answer in time (frozen?)")
    if isinstance(exc, asyncpg.InterfaceError) and str(exc) in _OURS_CLOSED:
        # This process closing its own pool (a drain cut at its deadline): no outage to
        # wait out for 30 s, nor one to blame on the database.
        return DatabaseError(f"{what}: stopped: this process closed its connections")
    if isinstance(exc, OSError | asyncpg.InterfaceError):
        return DatabaseUnavailable(f"{what}: the database is unreachable: {exc}")
    if isinstance(exc, asyncpg.InternalClientError):
        # A pooled connection whose backend was just terminated: the FATAL message has
        # arrived, the end of the stream not yet, so asyncpg still thinks it is busy.
        return DatabaseUnavailable(f"{what}: the connection broke: {exc}")
    raise TypeError(f"not a database error: {exc!r}")  # pragma: no cover


#: Every error a database call can raise that :func:`classify` sorts.
CAUGHT = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


async def within(awaitable: Awaitable[T], timeout_s: float) -> T:
    """``await awaitable``; TimeoutError once ``timeout_s`` passed without an answer. Not
    ``wait_for``: it would wait for the cancellation, which a frozen server (or a silent
    connection) never answers; the statement, cancelled, ends when the server answers,
    its own timeout fires, or its connection is terminated."""
    asking = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({asking}, timeout=timeout_s)
    if not done:
        asking.cancel()
        asking.add_done_callback(lambda a: a.cancelled() or a.exception())
        raise TimeoutError
    return asking.result()


async def guarded(awaitable: Awaitable[Any], what: str) -> Any:
    """Await ``awaitable`` once, converting database errors (see :func:`classify`)."""
    try:
        return await awaitable
    except CAUGHT as exc:
        raise classify(exc, what) from exc


@dataclass(frozen=True)
class Reconnect:
    """How long a unit of work is tried again while the database is unavailable."""

    within_s: float = 30.0
    first_pause_s: float = 0.2
    max_pause_s: float = 5.0

    async def run(self, work: Callable[[], Awaitable[T]], what: str) -> T:
        """``await work()``; again (a fresh call) after a pause while the database is
        unavailable, until ``within_s`` has passed; then the error."""
        deadline = time.monotonic() + self.within_s
        pause = self.first_pause_s
        tries = 0
        while True:
            try:
                return await work()
            except (*CAUGHT, DatabaseUnavailable) as exc:
                error = exc if isinstance(exc, DatabaseError) else classify(exc, what)
                tries += 1
                final = not isinstance(error, DatabaseUnavailable)
                if final or time.monotonic() + pause > deadline:
                    if tries > 1:
                        said = f"{error} (tried {tries} times)"
                        error = type(error)(said, sqlstate=error.sqlstate)
                    raise error from exc
                if tries == 1:
                    log.warning(  # the classified error: a timeout's own text is empty
                        "database unavailable; trying again for up to %.0f s: %s",
                        self.within_s, error,
                        extra={"fields": {"event": "database_unavailable"}},
                    )  # fmt: skip
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.max_pause_s)


class SqlRunner:
    """Runs the named SQL files on a pool, each statement ridden through brief outages."""

    def __init__(self, pool: asyncpg.Pool, reconnect: Reconnect) -> None:
        self.pool = pool
        self.reconnect = reconnect

    async def run(self, what: str, work: Callable[[], Awaitable[T]]) -> T:
        """A unit of work of the caller's (a whole transaction), tried again as a unit."""
        return await self.reconnect.run(work, what)

    async def fetch(self, what: str, name: str, *args: object) -> list[asyncpg.Record]:
        return await self.reconnect.run(lambda: self.pool.fetch(sql(name), *args), what)

    async def fetchrow(self, what: str, name: str, *args: object) -> asyncpg.Record | None:
        return await self.reconnect.run(lambda: self.pool.fetchrow(sql(name), *args), what)

    async def fetchval(self, what: str, name: str, *args: object) -> Any:
        return await self.reconnect.run(lambda: self.pool.fetchval(sql(name), *args), what)

    async def execute(self, what: str, name: str, *args: object) -> str:
        return await self.reconnect.run(lambda: self.pool.execute(sql(name), *args), what)
