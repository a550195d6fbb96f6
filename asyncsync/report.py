"""Plain-text tables for the reports a person reads at the end of a run."""

from __future__ import annotations

from collections.abc import Sequence

from .client import ClientStats
from .ratelimit import LimiterStats
from .status import Situacao


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> str:
    """A boxed table; numbers right-aligned, text left-aligned."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [
        all(isinstance(r[i], int | float) or r[i] in ("", None, "-") for r in rows) and bool(rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "│ " + " │ ".join(parts) + " │"

    rule = "─┼─".join("─" * w for w in widths)
    out = [title] if title else []
    out += [line(headers), "├─" + rule + "─┤", *(line(r) for r in cells)]
    return "\n".join(out)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def status_name(code: int) -> str:
    """``"3 Finalizada"``."""
    try:
        return f"{code} {Situacao(code).label}"
    except ValueError:
        return str(code)


def api_stats(client: ClientStats, limiter: LimiterStats) -> dict[str, object]:
    """Request counters of a run, for reports and JSON."""
    mean_ms, p95_ms = client.latency_summary()
    return {
        "requests": dict(client.requests),
        "requests_total": client.total,
        "rate_limited_429": limiter.throttled,
        "retries": client.retries,
        "paused_s": round(limiter.paused_s, 1),
        "latency_mean_ms": round(mean_ms, 1),
        "latency_p95_ms": round(p95_ms, 1),
    }


def api_line(api: dict[str, object]) -> str:
    """One line of the API statistics of :func:`api_stats`, for the end of a report."""
    total = api.get("requests_total", 0)
    return (
        f"API requests {total:,} {api.get('requests', {})}, "
        f"429s {api.get('rate_limited_429', 0)}, retries {api.get('retries', 0)}, "
        f"latency mean {api.get('latency_mean_ms', 0)} ms, p95 {api.get('latency_p95_ms', 0)} ms"
    )


def ids_text(ids: Sequence[object], limit: int = 10) -> str:
    """``"1, 2, 3 … (+7)"``: a sample of ids for a table cell."""
    head = ", ".join(str(i) for i in ids[:limit])
    return head + (f" … (+{len(ids) - limit})" if len(ids) > limit else "")
