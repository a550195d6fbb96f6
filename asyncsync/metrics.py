"""Prometheus metrics and the ``/metrics`` endpoint (prometheus-async).

Metrics live on prometheus_client's default registry, which prometheus-async serves;
tests read them through :func:`value` as deltas around the code they exercise.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

REQUESTS = Counter(
    "asyncsync_tiny_requests_total",
    "Requests sent to the Tiny API, by endpoint and HTTP status (or 'error').",
    ["endpoint", "status"],
)
REQUEST_SECONDS = Histogram(
    "asyncsync_tiny_request_seconds",
    "Latency of Tiny API requests.",
    ["endpoint"],
)
RATE_LIMITED = Counter("asyncsync_tiny_rate_limited_total", "429 answers from Tiny.")
RATE_PAUSE_SECONDS = Counter(
    "asyncsync_tiny_rate_pause_seconds_total",
    "Seconds the account's requests were held back by a 429 or an exhausted quota.",
)
TOKEN_REFRESHES = Counter("asyncsync_token_refreshes_total", "OAuth token refreshes performed.")
ORDERS_SYNCED = Counter(
    "asyncsync_orders_synced_total",
    "Orders received from listings, by outcome (inserted/changed/unchanged).",
    ["outcome"],
)
STATUS_CHANGES = Counter("asyncsync_status_changes_total", "Status changes recorded in history.")
IMPORT_FAILURES = Counter("asyncsync_import_failures_total", "Records stored in import_failures.")
DETAILS_FETCHED = Counter("asyncsync_details_fetched_total", "Order details fetched and merged.")
RUN_SECONDS = Histogram(
    "asyncsync_run_seconds",
    "Duration of a sync cycle or mode run.",
    ["mode"],
    buckets=(1, 5, 15, 60, 300, 900, 3600, 14400, 86400),
)
LAST_SUCCESS = Gauge(
    "asyncsync_last_success_timestamp_seconds",
    "Unix time of the last successful run, by mode.",
    ["mode"],
)
DETAIL_BACKLOG = Gauge("asyncsync_detail_backlog", "Orders still waiting for their detail.")


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
