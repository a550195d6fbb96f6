"""The first authorization: show a person where to log in, wait for Tiny's redirect,
exchange the code, and say what to run next. The tokens are stored by the exchange."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

from ..report import Outcome, RunReport
from ..seams import Authorizer
from . import RunContext

NEXT_STEPS = (
    "next: asyncsync backfill --from 2014-01   (the history, resumable)",
    "then: asyncsync serve --metrics-port 9108  (incremental cycles every 15 minutes)",
)


def next_steps(account: str) -> tuple[str, ...]:
    """What to run next; an account of the table names itself, and its history goes on
    the work queue for the workers (as the README's walkthrough says)."""
    if account == "default":
        return NEXT_STEPS
    return (
        f"next: asyncsync backfill --account {account} --enqueue --from 2014-01   "
        "(the history, for the workers)",
        "then: asyncsync serve --metrics-port 9108  (a worker; every account's cycles)",
    )


async def authorize(
    authorizer: Authorizer, ctx: RunContext, *, timeout_s: float, say: Callable[[str], None]
) -> RunReport:
    """Walk a person through the authorization-code flow; the tokens end in the store."""
    started_at = ctx.clock()
    state = secrets.token_urlsafe(16)
    say(
        "Open this address in a browser, log in to Tiny and allow access:\n\n"
        f"    {authorizer.url(state)}\n"
    )
    if authorizer.caught_locally:
        say(
            f"Waiting for Tiny to send the browser back to {authorizer.redirect_uri} "
            f"(up to {timeout_s:.0f} s). If that page does not load, paste here the "
            "address the browser ended on."
        )
    else:
        say("Then paste here the address the browser ended on (it holds a code=...).")
    code = await _unless_stopped(authorizer.code(state, timeout_s), ctx.stop)
    if code is None:  # SIGINT/SIGTERM while waiting for the person: nothing to drain
        return RunReport(
            mode="authorize", account=ctx.account, started_at=started_at,
            finished_at=ctx.clock(), outcome=Outcome.INTERRUPTED, title="first authorization",
            facts={"tokens": "none stored: interrupted before Tiny's redirect arrived"},
        )  # fmt: skip
    # Once the code is here, the exchange runs to its end: Tiny spends the code.
    tokens = await authorizer.exchange(code)
    lifetime = "unknown"
    if tokens.access_expires_at and tokens.access_issued_at:
        lifetime = f"{(tokens.access_expires_at - tokens.access_issued_at).total_seconds():.0f} s"
    return RunReport(
        mode="authorize",
        account=ctx.account,
        started_at=started_at,
        finished_at=ctx.clock(),
        outcome=Outcome.OK,
        title="first authorization",
        facts={
            "tokens": "stored in the database (tiny_tokens); TINY_REFRESH_TOKEN is not needed",
            "access_token_lifetime": lifetime,
        },
        notes=next_steps(ctx.account),
    )


async def _unless_stopped(waiting: Coroutine[Any, Any, str], stop: asyncio.Event) -> str | None:
    """What ``waiting`` returns, or None as soon as ``stop`` is set (``waiting`` cancelled)."""
    job = asyncio.ensure_future(waiting)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({job, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not job.done():
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
    return None if job.cancelled() else job.result()
