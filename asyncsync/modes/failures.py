"""``asyncsync failures list|retry|ignore [ID ...]``: act on ``import_failures``.

* ``list`` (the default): open failures (``--state`` pending, review, ignored, resolved,
  all), newest attempt first, as a table or JSON;
* ``retry ID ... | --all``: give the failures (or every one left for manual review) a
  fresh schedule and retry them now, under the account's run lock; the run report says
  what resolved, and the run history keeps it as a ``retry`` run;
* ``ignore ID ... | --all``: a person has looked: the failures count as resolved and a
  listing that shows the same broken record again does not reopen them.
"""

from __future__ import annotations

import asyncio
import dataclasses

from ..clock import utcnow
from ..errors import ConfigError
from ..jobs.retry import DEFAULT_POLICY, retry_due
from ..options import CommonOptions, FailuresOptions
from ..overview import render_failures
from ..report import RunReport
from ..runtime import database_of, known_account, open_runtime
from . import show


async def _retryable(common: CommonOptions, stop: asyncio.Event) -> bool:
    """Whether ``retry --all`` would rearm anything: a failure left for manual review
    with a real order id (a synthetic, negative one cannot be fetched)."""
    async with database_of(common, stop=stop) as database:
        review = await database.account(common.account).failures.manual_review(DEFAULT_POLICY)
    return any(r.id_ordem > 0 for r in review)


def _targets(options: FailuresOptions) -> list[int] | None:
    if options.ids and options.every:
        raise ConfigError(f"failures {options.action}: give order ids or --all, not both")
    if not options.ids and not options.every:
        raise ConfigError(
            f"failures {options.action} needs order ids (asyncsync failures "
            f"{options.action} 123 456) or --all for every failure left for manual review"
        )
    return None if options.every else list(options.ids)


async def run(
    common: CommonOptions, options: FailuresOptions, stop: asyncio.Event
) -> RunReport | int:
    """List, retry or ignore; ``retry`` returns its run report."""
    if options.action == "retry":
        return await _retry(common, options, stop)
    if options.action == "list" and options.ids:  # `failures list 5` listed them all
        raise ConfigError("failures list takes no order ids (--limit N: the first N)")
    targets = _targets(options) if options.action == "ignore" else None
    async with database_of(common, stop=stop) as database:
        await known_account(database, common.account)  # a typo: exit 2, not "no failures"
        failures = database.account(common.account).failures
        if options.action == "list":
            rows = await failures.listing(options.state, DEFAULT_POLICY, options.limit)
            listed = {"account": common.account, "failures": [r.as_dict() for r in rows]}
            show(render_failures(rows), listed, common)
            return 0
        ignored = await failures.ignore(targets, now=utcnow(), policy=DEFAULT_POLICY)
    left = sorted(set(targets or ()) - set(ignored))
    message = f"ignored {len(ignored)} failure(s): {', '.join(map(str, ignored)) or '-'}"
    if left:
        message += f"; not open, left as they were: {', '.join(map(str, left))}"
    show(message, {"account": common.account, "ignored": ignored, "not_open": left}, common)
    return 0


async def _retry(
    common: CommonOptions, options: FailuresOptions, stop: asyncio.Event
) -> RunReport | int:
    targets = _targets(options)
    if targets is None and not await _retryable(common, stop):
        # Nothing to ask Tiny for: said from the database alone, no credentials needed.
        message = "no failure left for manual review has an order id to fetch: nothing to retry"
        show(message, {"account": common.account, "rearmed": []}, common)
        return 0
    async with (
        open_runtime(common, stop=stop) as rt,
        rt.store.lock("retry", wait_s=common.run.wait_lock_s, stop=stop),
    ):
        store = rt.store
        ctx = rt.context(stop)
        rearmed = await store.failures.rearm(targets, now=ctx.clock(), policy=DEFAULT_POLICY)
        report = await retry_due(
            rt.client, store.orders, store.failures, ctx, ids=rearmed, outage_if_unanswered=True
        )
    left = sorted(set(targets or ()) - set(rearmed))
    if not left:
        return report
    # A mistyped id, or one resolved meanwhile: said, as ignore says it.
    return dataclasses.replace(
        report,
        counts={**report.counts, "not_open": len(left)},
        notes=[*report.notes, f"not open, left as they were: {', '.join(map(str, left))}"],
    )
