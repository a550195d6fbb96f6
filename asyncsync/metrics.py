"""Prometheus metrics, the ``/metrics``, ``/healthz`` and ``/readyz`` endpoints, and the
textfile a one-shot run leaves for node-exporter.

Metrics live on prometheus_client's default registry, which prometheus-async serves.
Every per-account series carries an ``account`` label, so one worker serving many
accounts exports them side by side. Tests read samples through :func:`value` as deltas
around the code they exercise (the registry is process-wide).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import prometheus_client
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

#: What ``/readyz`` asks: the reasons not to be ready, name → sentence (none: ready).
Reasons = Callable[[], Mapping[str, str]]

# `_created` samples triple the size of a scrape and no dashboard reads them.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

REQUESTS = Counter(
    "asyncsync_tiny_requests_total",
    "Requests sent to the Tiny API, by endpoint and HTTP status ('error': no answer; "
    "'page': a page from in front of Tiny, not JSON).",
    ["account", "endpoint", "status"],
)
REQUEST_SECONDS = Histogram(
    "asyncsync_tiny_request_seconds",
    "Latency of Tiny API requests.",
    ["account", "endpoint"],
)
RATE_LIMITED = Counter("asyncsync_tiny_rate_limited_total", "429 answers from Tiny.", ["account"])
ANSWERS_MENDED = Counter(
    "asyncsync_tiny_answers_mended_total",
    "Tiny answers whose text was not UTF-8, read mended (stray bytes as Windows-1252, half "
    "surrogate pairs as U+FFFD), by endpoint.",
    ["account", "endpoint"],
)
RATE_PAUSE_SECONDS = Counter(
    "asyncsync_tiny_rate_pause_seconds_total",
    "Seconds the account's requests were held back by a 429 or an exhausted quota.",
    ["account"],
)
TOKEN_REFRESHES = Counter(
    "asyncsync_token_refreshes_total", "OAuth token refreshes performed.", ["account"]
)
TOKEN_REFRESH_FAILURES = Counter(
    "asyncsync_token_refresh_failures_total",
    "OAuth token refreshes that failed, by reason (invalid_grant means a person must "
    "authorize the app again).",
    ["account", "reason"],
)
REFRESH_TOKEN_AGE = Gauge(
    "asyncsync_refresh_token_age_seconds",
    "Age of the account's refresh token (it lapses after about a day unused).",
    ["account"],
)
QUOTA = Gauge(
    "asyncsync_tiny_quota_per_minute",
    "Requests per minute the client paces itself to (X-RateLimit-Limit × share, capped).",
    ["account"],
)
CIRCUIT_OPEN = Gauge(
    "asyncsync_tiny_circuit_open",
    "1 while requests to Tiny are suspended after consecutive failures, else 0.",
    ["account"],
)
CIRCUIT_OPENINGS = Counter(
    "asyncsync_tiny_circuit_openings_total",
    "Times Tiny was declared unavailable (the circuit opened).",
    ["account"],
)
ORDERS_SYNCED = Counter(
    "asyncsync_orders_synced_total",
    "Orders received from listings, by outcome (inserted/changed/unchanged).",
    ["account", "outcome"],
)
FIRST_SIGHTINGS = Counter(
    "asyncsync_first_sightings_total",
    "Orders seen for the first time (a history row with no previous status).",
    ["account"],
)
STATUS_CHANGES = Counter(
    "asyncsync_status_changes_total",
    "Status changes of known orders recorded in history.",
    ["account"],
)
IMPORT_FAILURES = Counter(
    "asyncsync_import_failures_total",
    "Records written to import_failures (new or failing again).",
    ["account"],
)
DETAILS_FETCHED = Counter(
    "asyncsync_details_fetched_total", "Order details fetched and merged.", ["account"]
)
DETAIL_BACKLOG = Gauge(
    "asyncsync_detail_backlog", "Orders still waiting for their detail.", ["account"]
)
RUNS = Counter(
    "asyncsync_runs_total",
    "Finished runs and serve cycles, by mode and outcome (ok/attention/interrupted/failed).",
    ["account", "mode", "outcome"],
)
RUN_SECONDS = Histogram(
    "asyncsync_run_seconds",
    "Duration of runs and serve cycles that ran to their end, by mode.",
    ["account", "mode"],
    buckets=(1, 5, 15, 60, 300, 900, 3600, 14400, 86400),
)
LAST_SUCCESS = Gauge(
    "asyncsync_last_success_timestamp_seconds",
    "Unix time of the last successful run, by mode.",
    ["account", "mode"],
)


# --- gauges refreshed from the database after each cycle or one-shot run -----------------

ORDERS = Gauge(
    "asyncsync_orders",
    "Orders in the mirror by status code (the possibly-deleted left out).",
    ["account", "status"],
)
FAILURES_PENDING = Gauge(
    "asyncsync_import_failures_pending",
    "Open import failures a later retry will try again.",
    ["account"],
)
FAILURES_MANUAL_REVIEW = Gauge(
    "asyncsync_import_failures_manual_review",
    "Open import failures left for a person (attempts used up, or no id to fetch).",
    ["account"],
)
# Timestamps rather than ages: an age exported at the end of a cycle is stale until the
# next one, while `time() - timestamp` is exact at every evaluation.
TOKEN_REFRESHED = Gauge(
    "asyncsync_token_refreshed_timestamp_seconds",
    "Unix time of the last token refresh, which also rotated the refresh token "
    "(Tiny's refresh token lives about a day).",
    ["account"],
)
ACCESS_TOKEN_EXPIRES = Gauge(
    "asyncsync_access_token_expires_timestamp_seconds",
    "Unix time the stored access token expires.",
    ["account"],
)
REAUTHORIZATION_REQUIRED = Gauge(
    "asyncsync_reauthorization_required",
    "1 when Tiny answered invalid_grant: only a person can authorize the app again.",
    ["account"],
)
INTEGRITY_CONSISTENT = Gauge(
    "asyncsync_integrity_consistent",
    "1 when the last finished integrity check found the mirror consistent, else 0.",
    ["account"],
)
INTEGRITY_LAST_RUN = Gauge(
    "asyncsync_integrity_last_run_timestamp_seconds",
    "Unix time the last finished integrity check ended.",
    ["account"],
)
SETTINGS_DIFFER = Gauge(
    "asyncsync_worker_settings_differ",
    "Other serve workers of the database, seen within two minutes, that run this setting "
    "(by flag) with another value than this worker: every worker must use the same.",
    ["setting"],
)
QUEUE_UNITS = Gauge(
    "asyncsync_queue_units",
    "Units on the work queue by kind and state (queued: due now; deferred: due later; "
    "running; failed), as a worker last read the database: every worker exports the same.",
    ["kind", "state"],
)
QUEUE_OLDEST = Gauge(
    "asyncsync_queue_oldest_seconds",
    "Age of the oldest unit of each kind and state: queued since it was due, running since "
    "it was picked, deferred and failed since put back (0: none).",
    ["kind", "state"],
)
READY = Gauge(
    "asyncsync_ready",
    "1 when serve is ready (database reachable, token valid, last success recent), else 0.",
)


@asynccontextmanager
async def metrics_server(
    host: str, port: int, reasons: Reasons | None = None
) -> AsyncIterator[int]:
    """Serve ``/metrics``, ``/healthz`` (the process answers) and ``/readyz`` (200, or 503
    with what ``reasons()`` returns) while the context is open; yields the bound port
    (0 → a free port)."""
    # aiohttp's server half loads here: a one-shot run that serves nothing never pays it.
    from aiohttp import web
    from prometheus_async.aio.web import server_stats

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def readyz(request: web.Request) -> web.Response:
        found = {} if reasons is None else dict(reasons())
        if found:
            return web.json_response({"ready": False, "reasons": found}, status=503)
        return web.json_response({"ready": True})

    app = web.Application()
    app.router.add_get("/metrics", server_stats)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await asyncio.shield(runner.cleanup())


class _Ours:
    """The asyncsync series of the default registry (no process or Python collectors), but
    ``asyncsync_ready``: a one-shot run is never ready or not (it has no ``/readyz``), and
    its 0 in the textfile fired AsyncsyncNotReady for as long as node-exporter served it."""

    def collect(self) -> Iterator[Metric]:
        for family in REGISTRY.collect():
            if family.name.startswith("asyncsync_") and family.name != "asyncsync_ready":
                yield family


def write_textfile(path: Path) -> None:
    """Write the asyncsync series for node-exporter's textfile collector, atomically: a
    temporary file in the same directory, then a rename, so a scrape never reads half."""
    data = generate_latest(_Ours())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def value(name: str, labels: dict[str, str] | None = None) -> float:
    """Current value of a sample (e.g. ``asyncsync_tiny_rate_limited_total``), 0 if absent."""
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0
