"""Every worker's per-account gauges say what the database says, not what this worker
saw when it last ran the account: an account's units go to whichever worker picks them,
so a worker that ran an account's cycle an hour ago (or met its refused token) and has
not held it since must not keep exporting that hour-old success (AsyncsyncSyncStale
fires on it) or that refusal (AsyncsyncReauthorizationRequired, critical, fires forever)
once another worker synced it; a removed account's series go."""

from __future__ import annotations

import datetime as dt

from asyncsync import metrics
from asyncsync.accounts import AccountConfig
from asyncsync.clock import utcnow
from asyncsync.errors import ReauthorizationRequired
from asyncsync.options import ServeOptions
from asyncsync.report import Outcome, RunReport, failed_report
from asyncsync.runtime.fleet import open_fleet
from asyncsync.work.health import refresh

from .helpers import common_for


def gauge(name: str, **labels: str) -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels)


async def test_a_workers_gauges_follow_what_other_workers_did(simulator, database_url) -> None:
    sim = await simulator(orders=5)
    options = ServeOptions(interval_s=900, integrity_interval_s=0)
    async with open_fleet(common_for(sim, database_url), options) as fleet:
        registry = fleet.database.registry
        for key in ("acme", "gone"):
            await registry.put(AccountConfig(key=key, client_id="c", client_secret="s"))
        # What this worker saw when it last ran them, an hour ago: acme's refresh token
        # refused, gone synced.
        an_hour_ago = (utcnow() - dt.timedelta(hours=1)).timestamp()
        for key in ("acme", "gone"):
            metrics.LAST_SUCCESS.labels(key, "sync").set(an_hour_ago)
        metrics.REAUTHORIZATION_REQUIRED.labels("acme").set(1)
        refused = failed_report("sync", "acme", utcnow() - dt.timedelta(hours=1),
                                ReauthorizationRequired("invalid_grant"))  # fmt: skip
        await fleet.database.account("acme").runs.record(refused, invoked_as="serve")
        # Since then, a person authorized acme again and another worker synced it; gone
        # was removed.
        now = utcnow()
        ok = RunReport(mode="sync", account="acme", started_at=now - dt.timedelta(seconds=3),
                       finished_at=now, outcome=Outcome.OK, title="incremental cycle")  # fmt: skip
        await fleet.database.account("acme").runs.record(ok, invoked_as="serve")
        await registry.remove("gone")

        await refresh(fleet, options.interval_s, None)  # this worker's periodic refresh

    assert gauge("asyncsync_last_success_timestamp_seconds", account="acme", mode="sync") == (
        now.timestamp()
    )
    assert gauge("asyncsync_reauthorization_required", account="acme") == 0
    assert gauge("asyncsync_last_success_timestamp_seconds", account="gone", mode="sync") is None
