"""What a worker says about an account's health: the ``serve_health`` marker that
``--mode health`` reads, and the readiness of a single-account worker (``/readyz``)."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Sequence

import orjson

from .. import metrics
from ..clock import iso, utcnow
from ..errors import DatabaseError
from ..jobs.retry import DEFAULT_POLICY
from ..overview import (
    AccountStatus,
    freshness_limit,
    in_minutes,
    observe_status,
    reauthorization_problem,
)
from ..readiness import Readiness
from ..seams import QueueCount
from .ports import AccountRuntime, Breaker, Fleet
from .units import Kind

#: The sync_metadata key where a worker says how an account's last cycle went (read by
#: ``--mode health``).
SERVE_HEALTH_KEY = "serve_health"


#: What could not be said because the database was away, by account (a multi-account
#: worker builds a new runtime for each lease of an account, and a dropped runtime's
#: address is soon another's): said once it answers (the next cycle's start, the
#: readiness check after a cycle), unless something newer was.
_UNSAID: dict[str, str] = {}


async def say_health(rt: AccountRuntime, problem: str | None) -> None:
    """Tell ``--mode health`` (another process) how the account's last cycle went."""
    value = {"ok": problem is None, "problem": problem, "at": iso(utcnow())}
    _UNSAID[rt.account] = orjson.dumps(value).decode()
    await say_unsaid(rt, fresh=True)


async def say_unsaid(rt: AccountRuntime, *, fresh: bool = False) -> None:
    """Write what :func:`say_health` could not, if anything (best effort). Left unsaid, a
    cycle the database failed read as the one before it (healthy) once the database was
    back, until the next cycle ended. What another worker said since (a later cycle of
    the account) is newer: it stays, and this is dropped. ``fresh``: said just now."""
    account = rt.account
    value = _UNSAID.get(account)
    if value is None:
        return
    with contextlib.suppress(DatabaseError):  # the database may be what failed
        if not fresh and _newer(await rt.store.metadata.get(SERVE_HEALTH_KEY), value):
            if _UNSAID.get(account) == value:
                del _UNSAID[account]
            return
        await rt.store.metadata.set(SERVE_HEALTH_KEY, value)
        if _UNSAID.get(account) == value:
            del _UNSAID[account]


def _newer(stored: str | None, value: str) -> bool:
    """Whether the stored marker was said after ``value``."""
    if not stored:
        return False
    try:
        at = dt.datetime.fromisoformat(str(orjson.loads(stored)["at"]))
        return at > dt.datetime.fromisoformat(str(orjson.loads(value)["at"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return False


async def check_readiness(
    rt: AccountRuntime, interval_s: float, readiness: Readiness, now: dt.datetime | None = None
) -> None:
    """Re-check the database, Tiny, the stored token and freshness of one account, and
    refresh its gauges."""
    now = now or utcnow()
    judge_tiny(rt.client.breaker, readiness)
    try:
        await rt.store.ping()
        status = await rt.store.status(now, DEFAULT_POLICY)
    except DatabaseError as exc:
        readiness.set("database", f"unreachable: {exc}")
        return
    readiness.clear("database")
    await say_unsaid(rt)
    observe_status(status)
    judge(status, interval_s, readiness, now)


#: What a single-account worker's readiness says of its account; a worker of the accounts
#: table says none of it (an account's cycles go to whichever worker picks them).
SINGLE_ACCOUNT_REASONS = ("token", "freshness", "authorization", "tiny")


async def refresh(fleet: Fleet, interval_s: float, readiness: Readiness | None) -> None:
    """Between cycles too (a first sync can take hours): the gauges of the accounts this
    worker serves, and a single-account worker's token, freshness and circuit (a worker of the
    accounts table clears what it said of them while it served a single account)."""
    now = utcnow()
    try:
        statuses = await fleet.statuses(now)
        single = await fleet.single()
    except DatabaseError as exc:
        if readiness is not None:
            readiness.set("database", f"unreachable: {exc}")
        return
    for status in statuses:
        observe_status(status)
        observe_authorization(status)
    forget_others({status.account for status in statuses})
    if single and readiness is not None and statuses:
        judge(statuses[0], interval_s, readiness, now)
        judge_tiny(fleet.breaker(statuses[0].account), readiness)
    elif readiness is not None and not single:  # the accounts table's: no account judged
        for reason in SINGLE_ACCOUNT_REASONS:
            readiness.clear(reason)


#: The states of a unit on the queue, as ``census`` names them.
QUEUE_STATES = ("queued", "deferred", "running", "failed")


def observe_queue(census: Sequence[QueueCount]) -> None:
    """The queue's gauges: every kind in every state, 0 when none (a state that emptied
    must not keep its last count)."""
    seen = {(c.kind.removeprefix("asyncsync."), c.state): c for c in census}
    for kind in (k.short for k in Kind):
        for state in QUEUE_STATES:
            count = seen.get((kind, state))
            metrics.QUEUE_UNITS.labels(kind, state).set(count.units if count else 0)
            oldest = count.oldest_s if count and count.oldest_s else 0.0
            metrics.QUEUE_OLDEST.labels(kind, state).set(oldest)


def judge_tiny(breaker: Breaker | None, readiness: Readiness) -> None:
    """The "tiny" reason: what the account's circuit says (``None``: no unit of it ran
    here yet, nothing said). Judged between cycles too: a circuit that closed as a long
    cycle began said "unavailable" until that cycle ended."""
    if breaker is not None and breaker.retry_at:
        readiness.set("tiny", f"unavailable: {breaker.reason}")
    else:
        readiness.clear("tiny")


def observe_authorization(status: AccountStatus) -> None:
    """Whether the account waits for a person, as the run history and the stored tokens
    say (whichever worker ran its last cycle): a worker that met the refusal itself must
    not go on saying so once another worker's cycle succeeded, nor once a person
    authorized the account again."""
    if "sync" not in status.last_runs:
        return
    required = status.reauthorization_required
    metrics.REAUTHORIZATION_REQUIRED.labels(status.account).set(1 if required else 0)


#: The gauges of one account that say its state (counters keep what this worker did).
_STATE_GAUGES = (
    metrics.LAST_SUCCESS, metrics.ORDERS, metrics.DETAIL_BACKLOG, metrics.FAILURES_PENDING,
    metrics.FAILURES_MANUAL_REVIEW, metrics.TOKEN_REFRESHED, metrics.ACCESS_TOKEN_EXPIRES,
    metrics.REAUTHORIZATION_REQUIRED, metrics.INTEGRITY_CONSISTENT, metrics.INTEGRITY_LAST_RUN,
)  # fmt: skip


def forget_others(accounts: set[str]) -> None:
    """Drop the state gauges of accounts no longer served (removed, disabled): a removed
    account's last success would age into AsyncsyncSyncStale forever."""
    exported = {
        sample.labels["account"]
        for gauge in _STATE_GAUGES
        for family in gauge.collect()
        for sample in family.samples
    }
    for account in exported - accounts:
        for gauge in _STATE_GAUGES:
            gauge.remove_by_labels({"account": account})


def judge(status: AccountStatus, interval_s: float, readiness: Readiness, now: dt.datetime) -> None:
    """The token, freshness and re-authorization reasons of one account's readiness."""
    waiting = reauthorization_problem(status.account)
    if status.reauthorization_required:
        readiness.set("authorization", waiting)
    elif readiness.reasons().get("authorization") == waiting:  # authorized again since
        readiness.clear("authorization")  # (Tiny refusing the app's id is the cycle's)
    # The access token is refreshed only when a request needs one, so it may lapse between
    # cycles; expired for longer than an interval (and the refresh margin) means no cycle
    # could refresh it.
    expires = status.token.access_expires_at if status.token else None
    grace = dt.timedelta(seconds=interval_s + 300)
    if expires is not None and now - expires > grace:
        readiness.set("token", f"the access token expired at {expires:%Y-%m-%d %H:%M} UTC "
                      "and no cycle has refreshed it")  # fmt: skip
    else:
        readiness.clear("token")
    limit = freshness_limit(interval_s)
    last = status.last_synced_at
    if last is None:
        readiness.set("freshness", "no full sync or cycle has completed yet")
    elif now - last > limit:
        ago, most = in_minutes(now - last), in_minutes(limit)
        readiness.set("freshness", f"last success {ago} ago (limit {most})")
    else:
        readiness.clear("freshness")
