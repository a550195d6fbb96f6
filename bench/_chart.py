"""The chart of bench/run.py: scaling curves and peer ratios (matplotlib, the bench extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from _targets import path, pipelined


def _curves(ax: Any, scale: dict[str, Any], e2e: dict[str, Any]) -> None:
    sizes = scale.get("sizes", [])
    xs = [s["orders"] for s in sizes]

    def line(label: str, ys: list[float | None], style: str) -> None:
        points = [(x, y) for x, y in zip(xs, ys, strict=True) if y]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=label)

    line("raw COPY, unlogged, no index (ceiling)", [s["ceiling_rows_s"] for s in sizes], "k--o")
    line("re-sync 0% changed", [(path(s, "re-sync 0%") or {}).get("rows_s") for s in sizes], "g-o")
    line("first load, pipelined", [pipelined(s)["rows_s"] for s in sizes], "b-o")
    line("first load, 1 batch at a time",
         [(path(s, "first load, 1 batch") or {}).get("rows_s") for s in sizes], "b:o")  # fmt: skip
    writer = [(path(s, "listing writer, first") or {}).get("rows_s") for s in sizes]
    line("listing writer first load (parse incl.)", writer, "c-s")
    line("executemany upsert", [s["executemany_rows_s"] for s in sizes], "r-o")
    listing = e2e.get("listing", [])
    if listing:
        ax.plot([f["orders"] for f in listing], [f["orders_s"] for f in listing], "m-^",
                label="end to end, listing (orders/s, 20 ms API)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("orders in the mirror")
    ax.set_ylabel("rows/s")
    ax.set_title("throughput as the mirror grows")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left")


def _ratios(results: dict[str, dict[str, Any]]) -> list[tuple[str, float]]:
    """(label, how many times better than the baseline): above 1 asyncsync wins."""
    out: list[tuple[str, float]] = []
    sizes = results.get("scale", {}).get("sizes", [])
    if sizes:
        s = sizes[-1]
        n, first = s["orders"], pipelined(s)["rows_s"]
        out.append((f"first load ÷ executemany ({n:,})", first / s["executemany_rows_s"]))
        out.append((f"first load ÷ raw COPY ({n:,})", first / s["ceiling_rows_s"]))
        resync = path(s, "re-sync 0%")
        if resync:
            out.append((f"re-sync 0% ÷ raw COPY ({n:,})", resync["rows_s"] / s["ceiling_rows_s"]))
    e2e = results.get("e2e", {})
    for f in e2e.get("listing", [])[-1:]:
        out.append((f"e2e listing ÷ serial loader ({f['orders']:,})",
                    f["orders_s"] / max(f["serial"]["orders_s"], 1)))  # fmt: skip
    details = e2e.get("details", [])
    if len(details) > 1:
        out.append((f"details {details[-1]['concurrency']} ÷ {details[0]['concurrency']} in flight",
                    details[-1]["orders_s"] / max(details[0]["orders_s"], 1)))  # fmt: skip
    memory = results.get("memory", {})
    peaks = memory.get("peak_mib", {})
    naive = [n for n in memory.get("sizes", []) if f"naive {n}" in peaks]
    if naive:
        n = naive[-1]
        out.append((f"naive ÷ asyncsync peak RSS ({n:,})",
                    peaks[f"naive {n}"] / peaks[f"asyncsync {n}"]))  # fmt: skip
    inc = results.get("incremental", {})
    if "cycle" in inc:
        old = inc.get("old_scripts") or inc["seed"]  # the key's earlier name
        saved = old["requests"] / inc["cycle"]["requests"]
        out.append(("old scripts ÷ cycle API requests", saved))
    back = results.get("backfill", {})
    if back.get("serial"):
        out.append(("backfill: serial ÷ asyncsync wall time",
                    back["serial"]["wall_s"] / back["asyncsync"]["wall_s"]))  # fmt: skip
    return out


def draw(results: dict[str, dict[str, Any]], out: Path, subtitle: str) -> Path:
    """Draw the two panels into ``out`` (PNG); returns ``out``."""
    ok = {k: v for k, v in results.items() if "failed" not in v}
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    _curves(left, ok.get("scale", {}), ok.get("e2e", {}))
    ratios = _ratios(ok)
    labels = [label for label, _ in ratios]
    values = [value for _, value in ratios]
    right.barh(labels, values, color=["tab:green" if v >= 1 else "tab:red" for v in values])
    right.axvline(1.0, color="k", linewidth=1)
    right.set_xscale("log")
    right.invert_yaxis()
    for i, v in enumerate(values):
        right.text(v, i, f" {v:.2f}×", va="center", fontsize=8)
    right.set_title("asyncsync against its baseline, same run (> 1× is better)")
    right.tick_params(axis="y", labelsize=8)
    fig.suptitle(f"asyncsync benchmarks — {subtitle}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
