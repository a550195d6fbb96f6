"""The rows of bench/run.py's tables, from the JSON figures its scenarios wrote.

:func:`summary_rows` sets each figure beside its baseline measured in the same run;
:func:`target_rows` checks the figures against the targets of issue 12. A scenario that
did not run (``--only``) or failed simply gives no rows.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from typing import Any

Row = list[object]
FLAT = 0.75  # the last quarter of a load at least this share of the first quarter's rate


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "-"


def path(size: dict[str, Any], prefix: str) -> dict[str, Any] | None:
    return next((p for p in size["paths"] if p["path"].startswith(prefix)), None)


def pipelined(size: dict[str, Any]) -> dict[str, Any]:
    found = path(size, f"first load, {size['in_flight']} batches") or path(size, "first load")
    assert found is not None
    return found


def copy_ratios(size: dict[str, Any]) -> list[float]:
    """The pipelined first load ÷ the ceiling timed just before it, round by round.

    The ceiling swings by a third from one run to the next on a shared host, and the
    median ceiling and the median load may come from different rounds; a round's two
    runs are a few seconds apart, so their ratio cancels the host's drift."""
    loads, ceilings = pipelined(size).get("runs", []), size.get("ceiling_runs", [])
    if len(loads) != len(ceilings):
        return []
    return [a / b for a, b in zip(loads, ceilings, strict=True) if b]


def _scale(fig: dict[str, Any]) -> Iterator[Row]:
    for s in fig["sizes"]:
        n, c, e = s["orders"], s["ceiling_rows_s"], s["executemany_rows_s"]
        first, k = pipelined(s), s["in_flight"]
        tag = f"scale {n:,}"
        em = f"executemany upsert ({s['executemany_rows']:,} rows)"
        yield [tag, f"first load, {k} batches in flight, rows/s", first["rows_s"],
               "raw COPY (ceiling)", c, _ratio(first["rows_s"], c)]  # fmt: skip
        yield [tag, "  the same", first["rows_s"], em, e, _ratio(first["rows_s"], e)]  # fmt: skip
        floor = path(s, "raw COPY into the mirror's tables")
        if floor is not None:
            yield [tag, "  the same", first["rows_s"], "raw COPY into its tables + history",
                   floor["rows_s"], _ratio(first["rows_s"], floor["rows_s"])]  # fmt: skip
        one = path(s, "first load, 1 batch")
        if one is not None:
            yield [tag, "first load, 1 batch at a time", one["rows_s"], em, e,
                   _ratio(one["rows_s"], e)]  # fmt: skip
        yield [tag, "first load, last ¼ of batches, rows/s", first["last_quarter"],
               "its first ¼", first["first_quarter"],
               _ratio(first["last_quarter"], first["first_quarter"])]  # fmt: skip
        for label in ("re-sync 0% changed", "re-sync 1% changed"):
            p = path(s, label)
            if p is not None:
                yield [tag, f"{label}, rows/s", p["rows_s"], "raw COPY (ceiling)", c,
                       _ratio(p["rows_s"], c)]  # fmt: skip
        w = path(s, "listing writer, first load")
        if w is not None:
            yield [tag, "listing writer first load (parse included)", w["rows_s"], em, e,
                   _ratio(w["rows_s"], e)]  # fmt: skip


def _e2e(fig: dict[str, Any]) -> Iterator[Row]:
    for f in fig["listing"]:
        serial = f["serial"]["orders_s"]
        yield [f"e2e {f['orders']:,}", "listing only, orders/s (whole command)", f["orders_s"],
               "serial loader (old scripts)", serial, _ratio(f["orders_s"], serial)]  # fmt: skip
    details = fig["details"]
    for d in details:
        if "fetch_only_s" in d:
            yield ["e2e details", f"details pass, {d['concurrency']} in flight, orders/s",
                   d["orders_s"], "the same requests, nothing merged", d["fetch_only_s"],
                   _ratio(d["orders_s"], d["fetch_only_s"])]  # fmt: skip
    if details:
        base = details[0]
        for d in details[1:]:
            yield ["e2e details", f"a detail per order, {d['concurrency']} in flight, orders/s",
                   d["orders_s"], f"{base['concurrency']} in flight (default)", base["orders_s"],
                   _ratio(d["orders_s"], base["orders_s"])]  # fmt: skip


def _memory(fig: dict[str, Any]) -> Iterator[Row]:
    peaks = fig["peak_mib"]
    for n in fig["sizes"]:
        mine, naive = peaks.get(f"asyncsync {n}"), peaks.get(f"naive {n}")
        yield [f"memory {n:,}", "peak RSS of a full sync, MiB", round(mine, 1),
               "naive: all pages in a list", "-" if naive is None else round(naive, 1),
               "-" if naive is None else _ratio(mine, naive)]  # fmt: skip


def _merge(fig: dict[str, Any]) -> Iterator[Row]:
    paths = fig["paths"]
    for batch in sorted({p["batch"] for p in paths if isinstance(p["batch"], int)}):
        base = next((p for p in paths if p["path"] == "executemany naive upsert, first load"
                     and p["batch"] == batch), None)  # fmt: skip
        for p in paths:
            if p["batch"] == batch and p["path"].startswith("PgOrderStore") and base:
                yield [f"merge {fig['orders']:,}, batch {batch:,}",
                       p["path"].replace("PgOrderStore.merge_listed, ", "merge_listed "),
                       p["rows_s"], "executemany, first load", base["rows_s"],
                       _ratio(p["rows_s"], base["rows_s"])]  # fmt: skip


def _incremental(fig: dict[str, Any]) -> Iterator[Row]:
    c, old = fig["cycle"], fig.get("old_scripts") or fig["seed"]  # the key's earlier name
    tag = f"incremental {fig['orders']:,}"
    yield [tag, "API requests of one hourly cycle", c["requests"], "old scripts: 30-day re-read",
           old["requests"], _ratio(c["requests"], old["requests"])]  # fmt: skip
    yield [tag, f"changes caught of {fig['changes']}", c["caught"], "old scripts: 30-day re-read",
           old["caught"], _ratio(c["caught"], old["caught"])]  # fmt: skip


def _backfill(fig: dict[str, Any]) -> Iterator[Row]:
    mine, serial = fig["asyncsync"], fig.get("serial")
    tag = f"backfill {fig['orders']:,}"
    share = mine["per_minute"] / fig["quota"]
    if serial:
        other = serial["per_minute"] / fig["quota"]
        mark = " (extrapolated)" if serial["extrapolated"] else ""
        yield [tag, "achieved ÷ quota", f"{share:.1%}", f"serial loader (old scripts){mark}",
               f"{other:.1%}", _ratio(share, other)]  # fmt: skip
        yield [tag, "wall seconds", round(mine["wall_s"], 1), f"serial loader (old scripts){mark}",
               round(serial["wall_s"], 1), _ratio(mine["wall_s"], serial["wall_s"])]  # fmt: skip


SUMMARIES = {"scale": _scale, "e2e": _e2e, "memory": _memory, "merge": _merge,
             "incremental": _incremental, "backfill": _backfill}  # fmt: skip


def summary_rows(results: dict[str, dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []
    for name, fig in results.items():
        if "failed" not in fig:
            rows += list(SUMMARIES[name](fig))
    return rows


def cpu_bound(f: dict[str, Any], cores: int = 2) -> str:
    """orders/s that ``cores`` fully busy would allow, from the CPU seconds the command,
    PostgreSQL and the simulator spent per order in this run ('' when one is unknown)."""
    names = {"asyncsync": "cli_cpu_s", "PostgreSQL": "pg_cpu_s", "simulator": "sim_cpu_s"}
    ms = {name: f.get(key) for name, key in names.items()}
    if any(v is None for v in ms.values()):
        return ""
    per_k = {name: 1e6 * float(v or 0) / f["orders"] for name, v in ms.items()}
    total = sum(per_k.values())
    parts = ", ".join(f"{name} {v:.0f}" for name, v in per_k.items())
    return f"{cores * 1000 / total * 1000:,.0f}/s: {total:.0f} ms CPU per 1,000 orders ({parts})"


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def target_rows(results: dict[str, dict[str, Any]]) -> list[Row]:
    """Each target of issue 12 with the figure that decides it."""
    rows: list[Row] = []
    scale = results.get("scale", {})
    for s in scale.get("sizes", []):
        n, c, e = s["orders"], s["ceiling_rows_s"], s["executemany_rows_s"]
        first = pipelined(s)
        for label, p in (("first load", first), ("re-sync 0%", path(s, "re-sync 0%"))):
            if p is None:
                continue
            share = p["last_quarter"] / p["first_quarter"] if p["first_quarter"] else 0.0
            shown = f"{p['first_quarter']:,} → {p['last_quarter']:,} rows/s ({share:.2f}×)"
            ratios = p.get("quarter_ratios")
            if ratios and len(ratios) > 1:  # interleaved rounds: the median round decides
                share = statistics.median_low(ratios)
                shown += f"; each round {', '.join(f'{r:.2f}×' for r in ratios)}"
            rows.append([f"{n:,}: {label}, last ¼ of batches within 25% of the first ¼",
                         shown, _yes(share >= FLAT)])  # fmt: skip
        plan = s["plan_end_of_load"]
        rows.append([f"{n:,}: the lookup reads only the batch's rows, by index",
                     f"{plan[0]}: {plan[2]:,} rows read", _yes("Index" in plan[0])])  # fmt: skip
        share = first["rows_s"] / c
        shown = f"{share:.2f}×"
        paired = copy_ratios(s)
        if len(paired) > 1:  # interleaved rounds: the median round decides, as for ¼ above
            each = ", ".join(f"{r:.2f}×" for r in paired)
            shown = f"median load ÷ median ceiling {shown}; each round {each}"
            share = statistics.median_low(paired)
        rows.append([f"{n:,}: first load ≥ 0.5× raw COPY", shown, _yes(share >= 0.5)])
        floor = path(s, "raw COPY into the mirror's tables")
        if floor is not None:
            rows.append(["  the floor: raw COPY into the mirror's own tables + history",
                         f"{floor['rows_s'] / c:.2f}× COPY; the first load is "
                         f"{first['rows_s'] / floor['rows_s']:.2f}× the floor", "-"])  # fmt: skip
        if first.get("pg_cpu_s") and first.get("client_cpu_s"):
            per_row = 1e6 * (first["pg_cpu_s"] + first["client_cpu_s"]) / n
            bound = 2e6 / per_row
            rows.append(["  the most 2 cores allow at the CPU this load spent per row",
                         f"{bound:,.0f} rows/s = {bound / c:.2f}× COPY: {per_row:.1f} µs CPU a "
                         f"row (Python {1e6 * first['client_cpu_s'] / n:.1f}, PostgreSQL "
                         f"{1e6 * first['pg_cpu_s'] / n:.1f})", "-"])  # fmt: skip
        rows.append([f"{n:,}: first load ≥ 2× executemany", f"{first['rows_s'] / e:.2f}×",
                     _yes(first["rows_s"] >= 2 * e)])  # fmt: skip
        resync = path(s, "re-sync 0%")
        if resync is not None:
            rows.append([f"{n:,}: re-sync ≥ raw COPY", f"{resync['rows_s'] / c:.2f}×",
                         _yes(resync["rows_s"] >= c)])  # fmt: skip
    memory = results.get("memory", {})
    if "peak_mib" in memory:
        sizes = memory["sizes"]
        lo, hi = (memory["peak_mib"][f"asyncsync {n}"] for n in (sizes[0], sizes[-1]))
        rows.append([f"peak RSS at {sizes[-1]:,} ≤ 1.3× at {sizes[0]:,}, under 300 MB",
                     f"{lo:.0f} → {hi:.0f} MiB ({hi / lo:.2f}×)",
                     _yes(hi <= 1.3 * lo and hi * 2**20 < 300e6)])  # fmt: skip
    e2e = results.get("e2e", {})
    for f in e2e.get("listing", []):
        if f["orders"] >= 100_000:
            rows.append([f"e2e listing only ≥ 30,000 orders/s at {f['orders']:,}",
                         f"{f['orders_s']:,}/s", _yes(f["orders_s"] >= 30_000)])  # fmt: skip
            bound = cpu_bound(f)
            if bound:
                rows.append(["  the most 2 cores allow at the CPU this run spent per order",
                             bound, "-"])  # fmt: skip
    for d in e2e.get("details", []):
        if d["concurrency"] == 32:
            rows.append(["e2e a detail per order ≥ 1,000 orders/s at 32 in flight",
                         f"{d['orders_s']:,}/s", _yes(d["orders_s"] >= 1000)])  # fmt: skip
    return rows
