"""What serve exposes, scraped for real on port 0: /metrics (checked by promtool),
/healthz, /readyz with its reasons, and the gauges refreshed from the database."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from asyncsync import metrics
from asyncsync.errors import DatabaseError, TinyUnavailable
from asyncsync.modes import execute
from asyncsync.modes.serve import check_readiness, serve_loop
from asyncsync.options import IntegrityOptions, ServeOptions, SyncOptions
from asyncsync.readiness import Readiness
from asyncsync.status import Situacao

from .helpers import common_for, cycle

ROOT = Path(__file__).resolve().parent.parent


def promtool() -> str:
    """promtool's path; CI installs it (.ci/run), a laptop may not have it."""
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs the Debian prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return found


async def get(port: int, path: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, r.content_type, await r.text()


async def test_health_readiness_and_gauges_scraped_for_real(simulator, runtime_for, db) -> None:
    sim = await simulator(orders=300, seed=41, latency_s=0.05)
    broken = sorted(sim.orders)[:2]
    for order_id in broken:
        sim.fail_detail[order_id] = "malformed"  # the record is at fault
    readiness = Readiness()
    options = ServeOptions(interval_s=0.05, cycle=cycle())
    seen: dict[str, object] = {}
    listing = asyncio.Event()
    sim.on_list_page = lambda s, p: listing.set()
    async with (
        runtime_for(sim, max_retries=1) as rt,
        metrics.metrics_server("127.0.0.1", 0, readiness.reasons) as port,
    ):
        seen["healthz"] = await get(port, "/healthz")
        serving = asyncio.create_task(
            serve_loop(rt, options, asyncio.Event(), max_cycles=1, readiness=readiness)
        )
        # While the first cycle runs (a first sync can take hours): alive, not ready (never
        # synced), and the gauges are there already.
        await asyncio.wait_for(listing.wait(), 10)
        seen["during"] = await get(port, "/readyz")
        during = await get(port, "/metrics")
        await asyncio.wait_for(serving, 60)
        seen["after"] = await get(port, "/readyz")
        seen["metrics"] = await get(port, "/metrics")
    assert seen["healthz"] == (200, "application/json", '{"alive": true}')
    status, _, body = seen["during"]  # type: ignore[misc]
    assert status == 503 and '"freshness": "no full sync or cycle has completed yet"' in body
    assert 'asyncsync_import_failures_pending{account="default"} 0.0' in during[2]
    assert 'asyncsync_orders{account="default",status="0"}' in during[2]
    assert seen["after"] == (200, "application/json", '{"ready": true}')
    _, _, text = seen["metrics"]  # type: ignore[misc]

    # The gauges say what the database says.
    acc = {"account": "default"}
    for code, n in (await rt_counts(db)).items():
        assert metrics.value("asyncsync_orders", {**acc, "status": str(code)}) == n
    assert metrics.value("asyncsync_import_failures_pending", acc) == 2
    assert metrics.value("asyncsync_import_failures_manual_review", acc) == 0
    refreshed = await db.fetchval("SELECT extract(epoch FROM updated_at) FROM tiny_tokens")
    assert metrics.value("asyncsync_token_refreshed_timestamp_seconds", acc) == pytest.approx(
        float(refreshed)
    )
    assert metrics.value("asyncsync_access_token_expires_timestamp_seconds", acc) > refreshed
    assert metrics.value("asyncsync_ready") == 1
    assert 'asyncsync_orders{account="default",status="3"}' in text
    assert "_created" not in text

    checked = await asyncio.to_thread(
        subprocess.run, [promtool(), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Every metric the shipped dashboard and alert rules query exists in this scrape.
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")}
    for queried in shipped_queries():
        assert queried in names or queried.rsplit("_", 1)[0] in names, queried


async def rt_counts(db) -> dict[int, int]:
    rows = await db.fetch("SELECT situacao, count(*) AS n FROM ordens_servico GROUP BY 1")
    return {r["situacao"]: r["n"] for r in rows}


def shipped_queries() -> set[str]:
    """Metric names in the Grafana dashboard and the Prometheus rules."""
    import re

    text = (ROOT / "deploy/grafana/dashboards/asyncsync.json").read_text()
    text += (ROOT / "deploy/prometheus/alerts.yml").read_text()
    found = set(re.findall(r"\basyncsync_[a-z_]+", text))
    assert len(found) >= 10, found
    return found


async def test_readiness_names_its_reasons(simulator, runtime_for, db) -> None:
    sim = await simulator(orders=50, seed=42)
    readiness = Readiness()
    options = ServeOptions(interval_s=60)
    async with runtime_for(sim) as rt:
        await serve_loop(rt, options.__class__(interval_s=0.01), asyncio.Event(), max_cycles=1)
        await check_readiness(rt, options, readiness)
        assert readiness.reasons() == {}
        # The stored access token lapsed long ago and no cycle refreshed it.
        await db.execute("UPDATE tiny_tokens SET access_expires_at = now() - interval '1 hour'")
        await check_readiness(rt, options, readiness)
        assert readiness.reasons()["token"].startswith("the access token expired at")
        # The last success is older than three intervals (at least an hour).
        later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
        await check_readiness(rt, options, readiness, now=later)
        assert readiness.reasons()["freshness"].startswith("last success 1")
        assert readiness.reasons()["freshness"].endswith("(limit 60 min)")  # not 1:00:00
        assert metrics.value("asyncsync_ready") == 0

    async def unreachable() -> None:
        raise DatabaseError("connection refused")

    idle = SimpleNamespace(breaker=SimpleNamespace(retry_at=0.0, reason=""))
    broken = SimpleNamespace(store=SimpleNamespace(ping=unreachable), client=idle)
    await check_readiness(broken, options, readiness)  # type: ignore[arg-type]
    assert readiness.reasons()["database"] == "unreachable: connection refused"
    async with metrics.metrics_server("127.0.0.1", 0, readiness.reasons) as port:
        status, _, body = await get(port, "/readyz")
    assert status == 503
    assert '"database": "unreachable: connection refused"' in body and '"ready": false' in body
    readiness.clear("database")
    readiness.clear("token")
    readiness.clear("freshness")
    assert readiness.ready and metrics.value("asyncsync_ready") == 1


async def test_readyz_tiny_says_what_the_circuit_says_while_a_cycle_runs(
    simulator, runtime_for, db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The "tiny" reason was judged only as a cycle ended: once the circuit had closed
    (Tiny answering the next cycle's probe) /readyz said "tiny: unavailable" for as long
    as that cycle ran, hours for a first sync. The refresh between cycles judges it too."""
    import dataclasses

    from asyncsync.work import worker

    monkeypatch.setattr(worker, "READINESS_EVERY_S", 0.2)
    monkeypatch.setattr(worker, "LEASE_CHECK_S", 0.2)
    from asyncsync.seams import ListQuery

    sim = await simulator(orders=200, seed=44)
    readiness = Readiness()
    options = ServeOptions(interval_s=3600, heartbeat_s=10, integrity_interval_s=0, drain_s=1)
    stop = asyncio.Event()

    async def reasons_until(done) -> dict[str, str]:  # type: ignore[no-untyped-def]
        for _ in range(60):  # 3 s
            if done(readiness.reasons()):
                return readiness.reasons()
            await asyncio.sleep(0.05)
        return readiness.reasons()

    async with runtime_for(sim, max_retries=1, breaker_failures=2, breaker_cooldown_s=0.5) as rt:
        await rt.client.list_orders(ListQuery(0))  # a token in hand: the API is what fails
        sim.set_outage("503")
        serving = asyncio.create_task(serve_loop(rt, options, stop, readiness=readiness))
        opened = await reasons_until(lambda r: "tiny" in r)  # the failed cycle's judgement
        sim.config = dataclasses.replace(sim.config, latency_s=4.0)  # the next cycle is long
        sim.set_outage(None)
        while rt.client.breaker.retry_at:  # noqa: ASYNC110 (the probe closes it)
            await asyncio.sleep(0.05)
        closed = await reasons_until(lambda r: "tiny" not in r)
        ended = await db.fetchval("SELECT count(*) FROM sync_runs WHERE outcome = 'ok'")
        # The queue as the worker reads it at each refresh: the long cycle is running.
        running = {"kind": "cycle", "state": "running"}
        await reasons_until(lambda _: metrics.value("asyncsync_queue_units", running) == 1)
        queue = (metrics.value("asyncsync_queue_units", running),
                 metrics.value("asyncsync_queue_oldest_seconds", running))  # fmt: skip
        stop.set()
        await asyncio.wait_for(serving, 30)
    assert queue[0] == 1 and queue[1] > 0, queue
    assert opened["tiny"].startswith("unavailable: "), opened
    assert ended == 0  # the healed cycle still runs
    assert "tiny" not in closed, closed


def test_shipped_rules_and_prometheus_config_pass_promtool() -> None:
    tool = promtool()
    for args in (
        ["check", "rules", "deploy/prometheus/alerts.yml"],
        ["check", "config", "deploy/prometheus/prometheus.yml"],
        ["test", "rules", "deploy/prometheus/alerts_test.yml"],
    ):
        done = subprocess.run([tool, *args], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


async def test_one_shot_runs_failing_since_the_install_are_alerted_on(
    simulator, database_url, tmp_path
) -> None:
    """Tiny down since the install: the textfile of a failing sync or integrity check
    had no success gauge to age, and the shipped alerts fired on nothing (absent() of
    the last success saw other accounts'). Its series, as node-exporter serves them,
    fire AsyncsyncNoSuccessExported after an hour and AsyncsyncIntegrityNeverSucceeded
    after two days."""
    import dataclasses
    import math

    import yaml

    from asyncsync.options import RunOptions

    tool = promtool()
    sim = await simulator(orders=20, seed=45)
    sim.set_outage("503")
    path = tmp_path / "asyncsync.prom"
    common = common_for(sim, database_url, account="doomed", max_retries=1, breaker_failures=2)
    common = dataclasses.replace(common, run=RunOptions(metrics_textfile=path))
    exported: dict[str, str] = {}  # the file each run leaves, one after the other
    for mode, options in (("sync", SyncOptions(cycle=cycle())), ("integrity", IntegrityOptions())):
        with pytest.raises(TinyUnavailable):
            await execute(mode, common, options, asyncio.Event())
        for line in path.read_text().splitlines():
            if line.startswith("asyncsync_") and 'account="doomed"' in line:
                series, value = line.rsplit(" ", 1)
                exported[series] = value
    assert 'asyncsync_runs_total{account="doomed",mode="integrity",outcome="failed"}' in exported
    alerts = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    described = {r["alert"]: r["annotations"]["description"] for r in alerts["groups"][0]["rules"]}

    def fired(alert: str, severity: str, summary: str) -> list[dict[str, object]]:
        labels = {"severity": severity, "account": "doomed"}
        said = {"summary": summary, "description": described[alert]}
        return [{"exp_labels": labels, "exp_annotations": said}]

    minutes = 50 * 60
    rules = {
        "rule_files": [str(ROOT / "deploy/prometheus/alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": series, "values": f"{float(value):.0f}x{minutes}"}
                for series, value in exported.items()
                if not math.isnan(float(value)) and float(value) >= 0
            ] + [{"series": 'asyncsync_last_success_timestamp_seconds{account="other",mode="sync"}',
                  "values": f"0+60x{minutes}"}],
            "alert_rule_test": [
                {"eval_time": "50m", "alertname": "AsyncsyncNoSuccessExported", "exp_alerts": []},
                {"eval_time": "70m", "alertname": "AsyncsyncNoSuccessExported",
                 "exp_alerts": fired("AsyncsyncNoSuccessExported", "warning",
                                     "asyncsync has not reported a successful sync of account "
                                     "doomed for an hour")},
                {"eval_time": "47h", "alertname": "AsyncsyncIntegrityNeverSucceeded",
                 "exp_alerts": []},
                {"eval_time": "49h", "alertname": "AsyncsyncIntegrityNeverSucceeded",
                 "exp_alerts": fired("AsyncsyncIntegrityNeverSucceeded", "info",
                                     "No integrity check of account doomed has succeeded, "
                                     "and its checks fail")},
            ],
        }],
    }  # fmt: skip
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(yaml.safe_dump(rules))
    done = await asyncio.to_thread(
        subprocess.run, [tool, "test", "rules", str(tests)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_and_dashboard_are_well_formed() -> None:
    import json

    import yaml

    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    assert set(compose["services"]) == {"postgres", "asyncsync", "prometheus", "grafana"}
    serve = compose["services"]["asyncsync"]
    assert "serve" in serve["command"] and "--simulator" in serve["command"]
    assert serve["environment"]["DATABASE_URL"].startswith("postgresql://")
    for service in compose["services"].values():  # every mounted file ships in deploy/
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / "deploy" / source).exists(), source
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/asyncsync.json").read_text())
    assert dashboard["title"] and len(dashboard["panels"]) >= 8
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert "asyncsync_" in target["expr"], panel["title"]


async def test_the_counters_and_gauges_say_what_happened(simulator, database_url, db) -> None:
    account = "counted"  # its own series: other tests' runs do not move them
    acc = {"account": account}
    sim = await simulator(orders=250, seed=43)
    common = common_for(sim, database_url, account=account)
    assert await execute("sync", common, SyncOptions(cycle=cycle()), asyncio.Event()) == 0
    # A first load is 250 first sightings and no status change.
    assert metrics.value("asyncsync_first_sightings_total", acc) == 250
    # The counters the alerts take the increase of are there at 0 before their first
    # failure: born at 1, the first failed run, refresh or 429 was no increase to
    # Prometheus, and AsyncsyncCyclesFailing fired a failed cycle late.
    for name, labels in (
        ("asyncsync_runs_total", {"mode": "sync", "outcome": "failed"}),
        ("asyncsync_token_refresh_failures_total", {"reason": "unavailable"}),
        ("asyncsync_token_refresh_failures_total", {"reason": "invalid_grant"}),
        ("asyncsync_tiny_rate_limited_total", {}),
    ):
        assert metrics.REGISTRY.get_sample_value(name, {**acc, **labels}) == 0, name
    assert metrics.value("asyncsync_status_changes_total", acc) == 0
    moved = [i for i in sorted(sim.orders)[:6] if sim.orders[i].situacao != Situacao.CANCELADA]
    for order_id in moved:
        sim.set_status(order_id, Situacao.CANCELADA)
    no_details = SyncOptions(cycle=cycle(detail_budget=0))
    assert await execute("sync", common, no_details, asyncio.Event()) == 0
    assert metrics.value("asyncsync_first_sightings_total", acc) == 250
    assert metrics.value("asyncsync_status_changes_total", acc) == len(moved) > 0
    # The gauges a one-shot run leaves: the detail backlog it did not work, the
    # integrity check's verdict.
    assert metrics.value("asyncsync_detail_backlog", acc) == len(moved)
    # The orders gauges are the mirror's counts after the moves (the report's census).
    counted = await db.fetch(
        "SELECT situacao, count(*) AS n FROM ordens_servico"
        " WHERE account = $1 AND NOT possibly_deleted GROUP BY situacao",
        account,
    )
    by_status = {r["situacao"]: r["n"] for r in counted}
    assert by_status.get(int(Situacao.CANCELADA), 0) >= len(moved)
    for code in range(8):
        gauge = metrics.value("asyncsync_orders", {**acc, "status": str(code)})
        assert gauge == by_status.get(code, 0), code
    assert await execute("integrity", common, IntegrityOptions(), asyncio.Event()) == 0
    assert metrics.value("asyncsync_integrity_consistent", acc) == 1
    # A failed run is counted, but its duration is not a run's duration.
    runs = {**acc, "mode": "sync"}
    timed = metrics.value("asyncsync_run_seconds_count", runs)
    sim.set_outage("503")
    broken = common_for(sim, database_url, account=account, max_retries=1, breaker_failures=2)
    with pytest.raises(TinyUnavailable):
        await execute("sync", broken, SyncOptions(cycle=cycle()), asyncio.Event())
    assert metrics.value("asyncsync_run_seconds_count", runs) == timed == 2
    assert metrics.value("asyncsync_runs_total", {**runs, "outcome": "failed"}) == 1


def test_pgqueuers_flush_failures_are_said_once_a_minute(caplog) -> None:
    # While the database is away its buffers fail to flush ten times a second, each with
    # a traceback: one short line a minute is enough (the worker says the rest).
    from asyncsync.store.queue import _FlushFailedOnceAMinute

    assert any(
        isinstance(f, _FlushFailedOnceAMinute) for f in logging.getLogger("pgqueuer").filters
    )
    library = logging.getLogger("pgqueuer.test")  # a filter of its own: no earlier test's line
    library.addFilter(_FlushFailedOnceAMinute())
    with caplog.at_level(logging.WARNING, logger="pgqueuer.test"):
        for _ in range(20):
            try:
                raise ConnectionRefusedError("[Errno 111] 100% refused")
            except ConnectionRefusedError:
                library.exception("Flush failed, requeuing %d items", 1)
        library.warning("something else")
    said = [r for r in caplog.records if r.name == "pgqueuer.test"]
    assert [r.getMessage() for r in said] == [
        "Flush failed, requeuing 1 items (ConnectionRefusedError('[Errno 111] 100% refused'); "
        "said once a minute)",
        "something else",
    ]
    assert said[0].exc_info is None
