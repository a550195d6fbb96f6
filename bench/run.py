"""Every benchmark from one command: one table, one JSON file, one chart.

    .venv/bin/python bench/run.py [--quick] [--only scale,e2e] [--profile]
    .venv/bin/python -m bench [...]          (the same, from the repository root)

Each scenario is one of the programs in ``bench/``, run in a process of its own with the
preset's arguments (its full output kept in ``bench/results/<date>/<scenario>.log``). Each
writes its figures as JSON; this program reads them back, prints one table of every
scenario with its baseline measured in the same run and their ratio, and the targets of
issue 12 with whether they were reached; writes everything to
``bench/results/<date>.json``; and draws ``bench/results/<date>.png`` (matplotlib, from
the ``bench`` extra: ``pip install -e '.[bench]'``), the chart the README shows.

Presets: ``--quick`` (small sizes, under two minutes on the 2-core development machine)
and the full one (100k and 1M orders; tens of minutes). ``--profile`` makes the scale
scenario print where a first load's time goes (statement by statement, Python against
PostgreSQL CPU, PostgreSQL's functions under ``perf``, and a profile of the listing
writer).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import DEFAULT_DSN, DSN_ENV, describe_dsn, print_table, server_settings
from _targets import summary_rows, target_rows

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: scenario -> (program, quick arguments, full arguments)
SCENARIOS: dict[str, tuple[str, list[str], list[str]]] = {
    "scale": ("bench_scale.py",
              ["--sizes", "10000,40000", "--executemany-rows", "10000"],
              ["--sizes", "100000,1000000", "--executemany-rows", "100000"]),
    "e2e": ("bench_e2e.py",
            ["--sizes", "20000", "--detail-orders", "2000", "--serial-orders", "3000"],
            ["--sizes", "20000,100000", "--detail-orders", "5000", "--serial-orders", "20000"]),
    "memory": ("bench_memory.py",
               ["--sizes", "5000,20000"],
               ["--sizes", "100000,1000000", "--naive-max", "100000"]),
    "merge": ("bench_merge.py",
              ["--rows", "10000", "--batch-sizes", "5000", "--per-row", "1000"],
              ["--rows", "100000", "--batch-sizes", "2000,5000,10000"]),
    "incremental": ("bench_incremental.py",
                    ["--orders", "5000", "--changes", "100"],
                    ["--orders", "100000", "--changes", "200"]),
    "backfill": ("bench_backfill.py",
                 ["--orders", "2000", "--quota", "6000", "--latency-ms", "20",
                  "--baseline-seconds", "8"],
                 ["--orders", "100000", "--quota", "600", "--baseline-seconds", "180"]),
}  # fmt: skip


def run_scenario(name: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One program in a child process; returns its JSON figures and how long it took."""
    program, quick, full = SCENARIOS[name]
    out_json = folder / f"{name}.json"
    cmd = [sys.executable, str(HERE / program), "--dsn", args.dsn, "--json-out", str(out_json)]
    cmd += quick if args.quick else full
    if args.profile and name == "scale":
        cmd.append("--profile")
    log = folder / f"{name}.log"
    print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as sink:
        done = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    text = log.read_text(encoding="utf-8")
    if args.profile and name == "scale":
        print(text.split("size ", 1)[0], flush=True)  # the profile part of its output
    if done.returncode != 0 or not out_json.exists():
        print(f"[{name}] failed (exit {done.returncode}); last lines of {log}:\n"
              + "\n".join(text.splitlines()[-15:]), flush=True)  # fmt: skip
        return {"failed": done.returncode, "seconds": seconds}
    figures: dict[str, Any] = json.loads(out_json.read_text(encoding="utf-8"))
    figures["seconds"] = seconds
    print(f"[{name}] done in {seconds:.0f} s", flush=True)
    return figures


def _md_table(headers: list[str], rows: list[list[object]]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:,.2f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown(header: str, results: dict[str, Any], targets: list[list[object]]) -> str:
    """The run's two tables in Markdown, for the README's benchmark section."""
    return (
        "```\n" + header + "```\n\n"
        + _md_table(["scenario", "measure", "asyncsync", "baseline (same run)", "baseline",
                     "ratio"], summary_rows(results))
        + "\n" + _md_table(["target (issue 12)", "measured", "reached"], targets)
    )  # fmt: skip


def render_saved(path: Path) -> None:
    """The tables, Markdown and chart of a run saved by this program, from its JSON."""
    document = json.loads(path.read_text(encoding="utf-8"))
    results, host = document["scenarios"], document["machine"]
    header = (f"bench/run.py, {document['preset']} preset, {document['label']}\n"
              f"machine: {host['cpus']} CPUs ({host['cpu']}), {host['memory_gib']} GiB, Python "
              f"{host['python']}, load average at start {host['load'][0]:.2f}\n"
              f"PostgreSQL: {document['postgresql']}\n")  # fmt: skip
    targets = target_rows(results)
    print(header)
    print_table(
        ["scenario", "measure", "asyncsync", "baseline (same run)", "baseline", "ratio"],
        summary_rows(results),
        f"every scenario ({document['seconds']:.0f} s in all)",
    )
    print_table(["target (issue 12)", "measured", "reached"], targets, "targets")
    md = path.with_suffix(".md")
    md.write_text(markdown(header, results, targets), encoding="utf-8")
    print(f"the README's tables: {md}")
    from _chart import draw

    print(f"chart: {draw(results, path.with_suffix('.png'), header.splitlines()[1])}")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kib / 2**20, 1),
            "python": platform.python_version(), "load": os.getloadavg()}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dsn", default=os.environ.get(DSN_ENV) or DEFAULT_DSN,
                   help=f"PostgreSQL DSN allowed to CREATE DATABASE [env: {DSN_ENV}]")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="small sizes, under two minutes")
    p.add_argument("--only", help=f"comma list of scenarios among {', '.join(SCENARIOS)}")
    p.add_argument("--profile", action="store_true", help="explain the scale scenario's time")
    p.add_argument("--label", help="name of the results (default: today's date)")
    p.add_argument(
        "--render", metavar="JSON", help="run nothing: tables, Markdown and chart of a saved run"
    )
    args = p.parse_args()
    if args.render:
        render_saved(Path(args.render))
        return
    names = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenarios {unknown}; choose among {list(SCENARIOS)}")
    label = args.label or dt.date.today().isoformat() + ("-quick" if args.quick else "")
    folder = RESULTS / label
    folder.mkdir(parents=True, exist_ok=True)
    host = machine()
    settings = asyncio.run(server_settings(args.dsn))
    header = (f"bench/run.py, {'quick' if args.quick else 'full'} preset, {label}\n"
              f"machine: {host['cpus']} CPUs ({host['cpu']}), {host['memory_gib']} GiB, Python "
              f"{host['python']}, load average at start {host['load'][0]:.2f}\n"
              f"PostgreSQL: {describe_dsn(args.dsn)}, {settings}\n")  # fmt: skip
    print(header, flush=True)
    started = time.perf_counter()
    results = {name: run_scenario(name, args, folder) for name in names}
    total = time.perf_counter() - started
    print()
    print(header)
    print_table(
        ["scenario", "measure", "asyncsync", "baseline (same run)", "baseline", "ratio"],
        summary_rows(results),
        f"every scenario, its baseline and their ratio ({total:.0f} s in all)",
    )
    targets = target_rows(results)
    print_table(["target (issue 12)", "measured", "reached"], targets, "targets")
    document = {"label": label, "preset": "quick" if args.quick else "full",
                "machine": host, "postgresql": settings, "seconds": total,
                "scenarios": results, "targets": targets}  # fmt: skip
    out = RESULTS / f"{label}.json"
    out.write_text(json.dumps(document, indent=1, default=str), encoding="utf-8")
    print(f"figures: {out}")
    md = RESULTS / f"{label}.md"
    md.write_text(markdown(header, results, targets), encoding="utf-8")
    print(f"the README's tables: {md}")
    try:
        from _chart import draw
    except ImportError as exc:
        print(f"no chart: {exc} (install the bench extra: pip install -e '.[bench]')")
        return
    print(f"chart: {draw(results, RESULTS / f'{label}.png', header.splitlines()[1])}")


if __name__ == "__main__":
    main()
