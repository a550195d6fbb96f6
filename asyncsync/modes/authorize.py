"""``--mode authorize``: the first authorization of the app by a person; see
:mod:`asyncsync.jobs.authorize`. Run it once per account (and again whenever Tiny answers
``invalid_grant``, exit code 4)."""

from __future__ import annotations

import asyncio
import dataclasses

from ..jobs.authorize import authorize
from ..options import AuthorizeOptions, CommonOptions
from ..report import Outcome, RunReport
from ..runtime import open_authorization
from ..work.planner import cycle_due_now


def _say(text: str) -> None:
    print(text, flush=True)


async def run(common: CommonOptions, options: AuthorizeOptions, stop: asyncio.Event) -> RunReport:
    """Authorize the account's app and store its first tokens."""
    async with open_authorization(common, options, stop) as (authorizer, ctx, queue):
        ctx = dataclasses.replace(ctx, stop=stop)  # Ctrl-C while waiting for the person
        report = await authorize(authorizer, ctx, timeout_s=options.timeout_s, say=_say)
        if report.outcome is Outcome.OK:  # authorized again: no interval's wait for it
            await cycle_due_now(queue, ctx.account)
        return report
