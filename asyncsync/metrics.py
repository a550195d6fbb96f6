"""Prometheus metrics and the ``/metrics`` endpoint (prometheus-async).

Metrics live on prometheus_client's default registry, which prometheus-async serves.
Every per-account series carries an ``account`` label, so one worker serving many
accounts exports them side by side. Tests read samples through :func:`value` as deltas
around the code they exercise (the registry is process-wide).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import prometheus_client
from prometheus_client import REGISTRY, Counter, Gauge, Histogram

# `_created` samples triple the size of a scrape and no dashboard reads them.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

REQUESTS = Counter(
    "asyncsync_tiny_requests_total",
    "Requests sent to the Tiny API, by endpoint and HTTP status (or 'error').",
    ["account", "endpoint", "status"],
)
REQUEST_SECONDS = Histogram(
    "asyncsync_tiny_request_seconds",
    "Latency of Tiny API requests.",
    ["account", "endpoint"],
)
RATE_LIMITED = Counter("asyncsync_tiny_rate_limited_total", "429 answers from Tiny.", ["account"])
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


@asynccontextmanager
async def metrics_server(host: str, port: int) -> AsyncIterator[int]:
    """Serve ``/metrics`` while the context is open; yields the bound port (0 → free port)."""
    from prometheus_async.aio.web import start_http_server

    server = await start_http_server(addr=host, port=port)
    try:
        yield int(server.socket.port)
    finally:
        await asyncio.shield(server.close())


def value(name: str, labels: dict[str, str] | None = None) -> float:
    """Current value of a sample (e.g. ``asyncsync_tiny_rate_limited_total``), 0 if absent."""
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0
