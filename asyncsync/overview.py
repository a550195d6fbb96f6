"""What an operator asks of an account, as values: the last runs, freshness, the mirror by
status, the failures, the tokens and the run lock.

The store reads an :class:`AccountStatus` in one go; ``asyncsync status`` renders it
(:func:`status_dict` for ``--json``, :func:`render_status` for a terminal, or
:func:`render_summary` a line an account with ``--all-accounts``) and
:func:`observe_status` copies it into the Prometheus gauges, so the dashboard and the
command say the same thing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from . import metrics
from .clock import iso
from .errors import ReauthorizationRequired, authorize_command
from .report import status_name
from .tables import FittedTable, table

#: Fresh when the last sync finished within this many intervals (and at least an hour),
#: the rule of ``--mode health`` and of ``/readyz``.
FRESH_INTERVALS = 3


def freshness_limit(interval_s: float) -> dt.timedelta:
    """How old the last sync may be before the mirror counts as stale."""
    return dt.timedelta(seconds=max(FRESH_INTERVALS * interval_s, 3600))


def in_minutes(span: dt.timedelta) -> str:
    """``60 min``: a freshness limit as status, health and /readyz all say it."""
    return f"{int(span.total_seconds() // 60)} min"


def reauthorization_problem(account: str) -> str:
    """How health, ``/readyz`` and status say that ``account`` waits for a person."""
    return f"re-authorization required: run `{authorize_command(account)}`"


@dataclass(frozen=True)
class RunSummary:
    """One row of run history, as the status shows it."""

    mode: str
    invoked_as: str
    title: str
    started_at: dt.datetime
    finished_at: dt.datetime
    outcome: str
    requests: int = 0
    rate_limited: int = 0
    quota_per_minute: int | None = None
    errors: Sequence[str] = ()
    facts: Mapping[str, Any] = field(default_factory=dict)
    #: When the row was written, by the database's clock (None: a row older than that).
    recorded_at: dt.datetime | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "invoked_as": self.invoked_as,
            "title": self.title,
            "outcome": self.outcome,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "duration_s": round((self.finished_at - self.started_at).total_seconds(), 2),
            "requests": self.requests,
            "rate_limited_429": self.rate_limited,
            "quota_per_minute": self.quota_per_minute,
            "errors": list(self.errors),
        }


@dataclass(frozen=True)
class FailureCounts:
    """Open ``import_failures`` of an account."""

    pending: int = 0  # a retry will come
    manual_review: int = 0  # attempts used up, or no id: a person must look
    ignored: int = 0  # a person chose to ignore them


@dataclass(frozen=True)
class TokenAges:
    """The ``tiny_tokens`` row, without its secrets."""

    refreshed_at: dt.datetime  # the last refresh, which also rotated the refresh token
    access_expires_at: dt.datetime | None


@dataclass(frozen=True)
class FailureRow:
    """One ``import_failures`` row for ``asyncsync failures list``."""

    id_ordem: int
    state: str  # pending | review | ignored | resolved
    tentativas: int
    erro: str | None
    primeira_tentativa: dt.datetime | None
    ultima_tentativa: dt.datetime | None
    next_due_at: dt.datetime | None

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id_ordem,
            "state": self.state,
            "attempts": self.tentativas,
            "error": self.erro,
            "first_attempt": iso(self.primeira_tentativa),
            "last_attempt": iso(self.ultima_tentativa),
            "next_due_at": iso(self.next_due_at),
        }


@dataclass(frozen=True)
class AccountStatus:
    """Everything ``asyncsync status`` says about one account."""

    account: str
    as_of: dt.datetime
    last_runs: Mapping[str, RunSummary]  # mode -> its latest run, whatever the outcome
    last_success: Mapping[str, RunSummary]  # mode -> its latest run that finished
    last_synced_at: dt.datetime | None  # the last full sync or cycle that completed
    orders_by_status: Mapping[int, int]
    detail_backlog: int
    failures: FailureCounts
    token: TokenAges | None
    lock_holder: str | None  # application_name of the session holding the run lock

    def fresh(self, interval_s: float) -> bool:
        last = self.last_synced_at
        return last is not None and self.as_of - last <= freshness_limit(interval_s)

    @property
    def reauthorization_required(self) -> bool:
        """Whether the account waits for a person (see :func:`awaits_authorization`)."""
        return awaits_authorization(self.last_runs.get("sync"), self.token)

    @property
    def quota_per_minute(self) -> int | None:
        """The pace the client kept in the most recent run that talked to Tiny."""
        runs = [r for r in self.last_runs.values() if r.quota_per_minute]
        return max(runs, key=lambda r: r.started_at).quota_per_minute if runs else None


def awaits_authorization(last_sync: RunSummary | None, token: TokenAges | None) -> bool:
    """Whether an account waits for a person to authorize the app again: its last sync (a
    serve cycle's or a one-shot's, whoever ran it) failed because Tiny refused its refresh
    token, and no tokens were stored since. ``asyncsync authorize`` stores new ones: from
    then on the account waits for its next cycle, not for a person, and a person who just
    authorized it is not told to do it again (health, ``/readyz``, the gauge behind the
    AsyncsyncReauthorizationRequired alert and status all judge it here).

    A refusal stores nothing, and tokens stored during the refused run (a refresh before
    the refusal) are older than its row. Both times are the database's clock: the run's
    own are its host's, and a host an hour behind the database would take a refresh of
    the hour before the refusal for a person's authorization (and never raise the alert).
    """
    if last_sync is None or last_sync.outcome != "failed":
        return False
    refused = f"{ReauthorizationRequired.__name__}:"
    if not any(error.startswith(refused) for error in last_sync.errors):
        return False
    # A row written before runs carried recorded_at: its host's clock, the one there is.
    recorded_at = last_sync.recorded_at or last_sync.finished_at
    return token is None or token.refreshed_at <= recorded_at


def _age_s(as_of: dt.datetime, moment: dt.datetime | None) -> float | None:
    return None if moment is None else round((as_of - moment).total_seconds(), 1)


def status_dict(
    status: AccountStatus, interval_s: float, not_served: str | None = None
) -> dict[str, object]:
    """The status as JSON-ready data (``asyncsync status --json``); ``not_served``: why no
    worker keeps the account fresh (``disabled``, ``removed``), if none does."""
    token: dict[str, object] | None = None
    if status.token is not None:
        expires = status.token.access_expires_at
        token = {
            "refreshed_at": iso(status.token.refreshed_at),
            "refresh_token_age_s": _age_s(status.as_of, status.token.refreshed_at),
            "access_expires_at": iso(expires),
            "access_expires_in_s": None
            if expires is None
            else round((expires - status.as_of).total_seconds(), 1),
        }
    integrity = status.last_success.get("integrity")
    return {
        "account": status.account,
        "as_of": iso(status.as_of),
        "served": not_served is None,
        "not_served": not_served,
        "freshness": {
            "last_synced_at": iso(status.last_synced_at),
            "age_s": _age_s(status.as_of, status.last_synced_at),
            "limit_s": freshness_limit(interval_s).total_seconds(),
            "fresh": status.fresh(interval_s),
        },
        "last_runs": {mode: run.as_dict() for mode, run in sorted(status.last_runs.items())},
        "last_success": {
            mode: iso(run.finished_at) for mode, run in sorted(status.last_success.items())
        },
        "orders_by_status": {str(code): n for code, n in sorted(status.orders_by_status.items())},
        "orders_total": sum(status.orders_by_status.values()),
        "detail_backlog": status.detail_backlog,
        "failures": {
            "pending": status.failures.pending,
            "manual_review": status.failures.manual_review,
            "ignored": status.failures.ignored,
        },
        "token": token,
        "reauthorization_required": status.reauthorization_required,
        "quota_per_minute": status.quota_per_minute,
        "integrity_consistent": None if integrity is None else integrity.facts.get("consistent"),
        "lock": {"held": status.lock_holder is not None, "holder": status.lock_holder},
    }


#: Characters of a run's error shown in its table cell; a longer one is whole below the table.
_ERROR_CELL = 60


def _cut(error: str) -> str:
    return error if len(error) <= _ERROR_CELL else error[: _ERROR_CELL - 1] + "…"


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    future = seconds < 0
    s = int(abs(seconds))
    text = (
        f"{s} s" if s < 120
        else f"{s // 60} min" if s < 7200
        else f"{s // 3600} h {s % 3600 // 60:02d} min" if s < 172800
        else f"{s // 86400} days"
    )  # fmt: skip
    return f"in {text}" if future else f"{text} ago"


def render_status(
    status: AccountStatus, interval_s: float, not_served: str | None = None
) -> RenderableType:
    """The status of one account for a terminal: a headline, then tables."""
    data = status_dict(status, interval_s, not_served)
    fresh: Any = data["freshness"]
    state = "fresh" if fresh["fresh"] else "STALE"
    if not_served is not None:  # no worker's to keep fresh: not an alarm
        state = f"{not_served}, not served"
    head = Text(
        f"account {status.account} — {state}: statuses listed completely "
        f"{_ago(fresh['age_s'])} (limit {in_minutes(dt.timedelta(seconds=fresh['limit_s']))})",
        style="bold" if fresh["fresh"] or not_served else "bold red",
    )
    runs = [
        [
            mode if run.invoked_as == mode else f"{mode} ({run.invoked_as})",
            run.outcome,
            _ago(_age_s(status.as_of, run.finished_at)),
            round((run.finished_at - run.started_at).total_seconds(), 1),
            run.requests,
            run.rate_limited,
            _ago(_age_s(status.as_of, status.last_success[mode].finished_at))
            if mode in status.last_success
            else "never",
            _cut(run.errors[0] if run.errors else ""),
        ]
        for mode, run in sorted(status.last_runs.items())
    ]
    # A cell keeps the table narrow; the sentence, often ending in what to do, is whole below.
    whole = [
        Text(f"{mode}: {run.errors[0]}", style="red")
        for mode, run in sorted(status.last_runs.items())
        if run.errors and len(run.errors[0]) > _ERROR_CELL
    ]
    parts: list[RenderableType] = [head]
    if status.reauthorization_required:
        parts.append(Text(reauthorization_problem(status.account), style="bold red"))
    if runs:
        parts.append(
            table(
                ["mode", "outcome", "finished", "seconds", "requests", "429s", "last ok", "error"],
                runs,
                title="last run of each mode",
            )
        )
        parts.extend(whole)
    else:
        parts.append(Text("no run recorded yet"))
    by_status: list[list[object]] = [
        [status_name(code), n] for code, n in sorted(status.orders_by_status.items())
    ]
    mirror = table(["status", "orders"], by_status, title="the mirror")
    mirror.add_section()
    mirror.add_row("total", f"{sum(status.orders_by_status.values()):,}", style="bold")
    parts.append(mirror)
    facts: list[list[object]] = [
        ["details still waiting", status.detail_backlog],
        ["failures waiting for a retry", status.failures.pending],
        ["failures for manual review", status.failures.manual_review],
        ["failures ignored", status.failures.ignored],
        ["quota seen (requests/minute)", status.quota_per_minute],
    ]
    token: Any = data["token"]
    if token is None:
        facts.append(["tokens", "none stored yet"])
    else:
        expires_in = token["access_expires_in_s"]
        facts.append(
            ["access token expires", "unknown" if expires_in is None else _ago(-expires_in)]
        )
        facts.append(["refresh token rotated", _ago(token["refresh_token_age_s"])])
    integrity = data["integrity_consistent"]
    facts.append(["last integrity check", "-" if integrity is None else
                  "consistent" if integrity else "inconsistent"])  # fmt: skip
    lock = "free" if status.lock_holder is None else f"held by {status.lock_holder}"
    facts.append(["run lock", lock])
    parts.append(table(["", ""], facts, title="state", show_header=False))
    return Group(*parts)


def render_summary(
    states: Sequence[AccountStatus], interval_s: float, not_served: Mapping[str, str]
) -> RenderableType:
    """Many accounts for a terminal, a line each (``status --all-accounts``): what an
    operator scans 60 accounts for; ``--full`` shows each one's :func:`render_status`.
    ``not_served``: account -> why no worker keeps it fresh (``disabled``, ``removed``)."""
    if not states:
        return Text("no account in the database yet")
    rows: list[list[object]] = []
    for status in states:
        state = "fresh" if status.fresh(interval_s) else Text("STALE", "bold red")
        if status.reauthorization_required:
            state = Text.assemble(state, (", re-authorization required", "bold red"))
        sync = status.last_runs.get("sync")  # a one-shot sync's or a serve cycle's
        holder = status.lock_holder
        rows.append([
            status.account,
            not_served.get(status.account) or state,
            "never" if sync is None
            else f"{sync.outcome}, {_ago(_age_s(status.as_of, sync.finished_at))}",
            sum(status.orders_by_status.values()),
            status.detail_backlog,
            status.failures.pending,
            status.failures.manual_review,
            status.quota_per_minute,
            "free" if holder is None else holder.removeprefix("asyncsync "),
        ])  # fmt: skip
    served = [s for s in states if s.account not in not_served]
    fresh = sum(s.fresh(interval_s) for s in served)
    return FittedTable(
        ["account", "state", "last sync", "orders", "backlog", "retry", "review", "quota",
         "lock"],
        rows,
        title=f"{len(states)} account{'' if len(states) == 1 else 's'}: {fresh} fresh, "
        f"{len(served) - fresh} STALE, {len(states) - len(served)} not served "
        "(--full: each one's tables)",
    )  # fmt: skip


def _minute(moment: dt.datetime | None) -> str:
    """``2026-12-02 20:27:33`` (UTC): short enough for an 80-column table."""
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}"


def render_failures(rows: Sequence[FailureRow]) -> RenderableType:
    """``asyncsync failures list`` for a terminal."""
    if not rows:
        return Text("no import failures in that state")
    return table(
        ["order", "state", "attempts", "last attempt (UTC)", "next due (UTC)", "error"],
        [
            [
                str(r.id_ordem),  # an id to paste into `failures retry|ignore`, not a count
                r.state,
                r.tentativas,
                _minute(r.ultima_tentativa),
                _minute(r.next_due_at),
                (r.erro or "")[:80],
            ]
            for r in rows
        ],
        title=f"{len(rows)} import failure(s)",
    )


def observe_status(status: AccountStatus) -> None:
    """Copy the status into the Prometheus gauges of its account."""
    account = status.account
    for code in range(8):
        metrics.ORDERS.labels(account, str(code)).set(status.orders_by_status.get(code, 0))
    metrics.DETAIL_BACKLOG.labels(account).set(status.detail_backlog)
    metrics.FAILURES_PENDING.labels(account).set(status.failures.pending)
    metrics.FAILURES_MANUAL_REVIEW.labels(account).set(status.failures.manual_review)
    if status.token is not None:
        metrics.TOKEN_REFRESHED.labels(account).set(status.token.refreshed_at.timestamp())
        if status.token.access_expires_at is not None:
            expires = status.token.access_expires_at.timestamp()
            metrics.ACCESS_TOKEN_EXPIRES.labels(account).set(expires)
    for mode, run in status.last_success.items():
        metrics.LAST_SUCCESS.labels(account, mode).set(run.finished_at.timestamp())
    integrity = status.last_success.get("integrity")  # an interrupted check says nothing
    if integrity is not None:
        consistent = integrity.facts.get("consistent")
        metrics.INTEGRITY_CONSISTENT.labels(account).set(1 if consistent else 0)
        metrics.INTEGRITY_LAST_RUN.labels(account).set(integrity.finished_at.timestamp())
