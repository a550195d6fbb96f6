"""Workers of one database that run with different --interval (or --integrity-interval,
--background-slots, --heartbeat-timeout) say so: an account's next cycle follows whichever
worker ran it last, so one worker at the default 900 s among workers at 60 s pushed every
cycle it ran 15 minutes out, silently. Two workers in one process, on a real database."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging

import pytest

from asyncsync import metrics
from asyncsync.options import ServeOptions
from asyncsync.runtime import fleet as fleet_module
from asyncsync.runtime.fleet import open_fleet
from asyncsync.work.agreement import Agreement
from asyncsync.work.worker import work

from .helpers import common_for
from .test_cli import run_cli

FAST = ServeOptions(interval_s=60, slots=4, background_slots=2, heartbeat_s=10,
                    integrity_interval_s=0)  # fmt: skip
SLOW = dataclasses.replace(FAST, interval_s=900)  # ASYNCSYNC_INTERVAL_S left at its default


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each fleet opened in this process gets a name of its own (host:pid is one)."""
    given: list[str] = []
    counter = itertools.count(1)

    def name() -> str:
        given.append(f"asyncsync worker test:{next(counter)}")
        return given[-1]

    monkeypatch.setattr(fleet_module, "worker_name", name)
    return given


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "asyncsync.work.agreement" and r.levelno == logging.WARNING]  # fmt: skip


def status(database_url: str, *args: str) -> str:
    result = run_cli("status", "--database-url", database_url, *args)
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


async def test_workers_with_different_intervals_warn_and_status_shows_it(
    simulator, database_url, names, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="asyncsync")
    sim = await simulator(orders=20, seed=41)
    common = common_for(sim, database_url)
    stop = asyncio.Event()
    async with open_fleet(common, FAST) as fast, open_fleet(common, SLOW) as slow:
        a, b = names
        runs = [asyncio.create_task(work(f.database.queue, f, o, stop))
                for f, o in ((fast, FAST), (slow, SLOW))]  # fmt: skip
        try:
            # Each worker compares as it starts: the second one to say its settings meets
            # the first one's.
            async with asyncio.timeout(30):
                while not warnings_of(caplog):  # noqa: ASYNC110 (the log fills meanwhile)
                    await asyncio.sleep(0.1)
        finally:
            stop.set()
            for run in runs:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(run, 60)
        said = warnings_of(caplog)  # the first to start may have met the second, or not
        assert said and set(said) <= {
            f"{b} runs --interval 900 (ASYNCSYNC_INTERVAL_S), this one 60: an account's next "
            "cycle (and keep-alive) follows whichever worker ran it last; every worker must "
            "use the same",
            f"{a} runs --interval 60 (ASYNCSYNC_INTERVAL_S), this one 900: an account's next "
            "cycle (and keep-alive) follows whichever worker ran it last; every worker must "
            "use the same",
        }
        # Checked again and again (every 30 s), each disagreement is said once.
        caplog.clear()
        checks = Agreement(fast, FAST), Agreement(slow, SLOW)
        for _ in range(2):
            for check in checks:
                await check.check()
        assert sorted(warnings_of(caplog)) == [
            f"{a} runs --interval 60 (ASYNCSYNC_INTERVAL_S), this one 900: an account's next "
            "cycle (and keep-alive) follows whichever worker ran it last; every worker must "
            "use the same",
            f"{b} runs --interval 900 (ASYNCSYNC_INTERVAL_S), this one 60: an account's next "
            "cycle (and keep-alive) follows whichever worker ran it last; every worker must "
            "use the same",
        ]
        differ = "asyncsync_worker_settings_differ"
        assert metrics.value(differ, {"setting": "--interval"}) == 1
        assert metrics.value(differ, {"setting": "--heartbeat-timeout"}) == 0
        shown = json.loads(await asyncio.to_thread(status, database_url, "--json"))
        assert [w["worker"] for w in shown["workers"]] == [a, b]
        assert shown["workers_disagree"] == [{
            "setting": "--interval", "env": "ASYNCSYNC_INTERVAL_S",
            "values": {"60": [a], "900": [b]},
            "consequence": "an account's next cycle (and keep-alive) follows whichever worker ran "
                           "it last",
        }]  # fmt: skip
        text = await asyncio.to_thread(status, database_url, "--log-format", "text")
        said = f"workers disagree on --interval (ASYNCSYNC_INTERVAL_S): 60 on {a}; 900 on {b}."
        assert said in " ".join(text.split())
    # Stopped, they leave the comparison at once.
    shown = json.loads(await asyncio.to_thread(status, database_url, "--json"))
    assert shown["workers"] == [] and shown["workers_disagree"] == []


async def test_workers_that_agree_say_nothing_and_the_long_gone_are_forgotten(
    simulator, database_url, names, db, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="asyncsync")
    sim = await simulator(orders=5, seed=42)
    common = common_for(sim, database_url)
    async with open_fleet(common, FAST) as one, open_fleet(common, FAST) as two:
        checks = Agreement(one, FAST), Agreement(two, FAST)
        for check in checks:
            assert await check.check() == []
        shown = json.loads(await asyncio.to_thread(status, database_url, "--json"))
        assert len(shown["workers"]) == 2 and shown["workers_disagree"] == []
        # A worker at 900 s, silent for three minutes (stopped, killed): no longer running.
        await db.execute(
            "INSERT INTO worker_settings VALUES ('asyncsync worker gone:1', 900, 0, 2, 10, "
            "now() - interval '3 minutes'), ('asyncsync worker gone:2', 900, 0, 2, 10, "
            "now() - interval '2 days')"
        )
        for check in checks:
            assert await check.check() == []
        assert warnings_of(caplog) == []
        assert metrics.value("asyncsync_worker_settings_differ", {"setting": "--interval"}) == 0
        # The one silent for a day is deleted; the other is kept a while (status ignores it).
        kept = await db.fetch("SELECT worker FROM worker_settings ORDER BY worker")
        assert [r["worker"] for r in kept] == ["asyncsync worker gone:1", *names]
        shown = json.loads(await asyncio.to_thread(status, database_url, "--json"))
        assert shown["workers_disagree"] == []
