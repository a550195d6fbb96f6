"""The two PostgreSQL job queue libraries asyncsync could scale out on, side by side:
pgqueuer (asyncpg) and procrastinate (psycopg 3), each in its own scratch database on the
same server.

* throughput: N no-op jobs enqueued in one batch, then one worker with 10 jobs at once
  drains them: jobs/s;
* latency: an idle worker is running; jobs are enqueued one at a time, 30 ms apart; the
  time from the enqueue call to the job's start (p50, p95, max);
* re-queue: one job that works 0.2 s, then asks to run again at once, 10 times: the time
  from the end of a run to the start of the next (what a periodic unit costs between two
  runs). pgqueuer is measured as it comes and with asyncsync's adapter, which announces a
  re-queued job.

Both use LISTEN/NOTIFY to wake an idle worker. procrastinate is installed only for this
program (``pip install -e '.[bench]'``).

    .venv/bin/python bench/bench_queue.py            # --quick: fewer jobs
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import parser, scratch_database

Stamp = dict[int, float]
#: Runs of the job that works a moment, then asks to run again at once.
REQUEUES = 10
WORK_S = 0.2


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


# --- pgqueuer ------------------------------------------------------------------------------


async def pgqueuer_bench(dsn: str, jobs: int, *, notify: bool = False) -> dict[str, float]:
    """With ``notify``, pgqueuer's queries as asyncsync's adapter has them: a re-queued
    job is announced (pgqueuer's own trigger cannot see an UPDATE)."""
    import asyncpg
    from pgqueuer import PgQueuer, Queries, RetryRequested
    from pgqueuer.db import AsyncpgPoolDriver

    from asyncsync.store.queue import _Queries

    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=8)
    kind = _Queries if notify else Queries

    def build() -> PgQueuer:
        driver = AsyncpgPoolDriver(pool)
        return PgQueuer(driver, queries=kind(driver))

    queries = kind(AsyncpgPoolDriver(pool))
    await queries.install()
    started: Stamp = {}
    done = asyncio.Event()
    expect = {"n": jobs}

    def make() -> PgQueuer:
        pgq = build()

        @pgq.entrypoint("noop", accepts_context=False)
        async def noop(job: object) -> None:
            started[int(job.payload or b"0")] = time.perf_counter()  # type: ignore[attr-defined]
            if len(started) >= expect["n"]:
                done.set()

        return pgq

    async def run(pgq: PgQueuer) -> None:
        await pgq.run(batch_size=5, max_concurrent_tasks=10,
                      dequeue_timeout=dt.timedelta(seconds=5))  # fmt: skip

    # Throughput.
    await queries.enqueue(["noop"] * jobs, [str(i).encode() for i in range(jobs)], [0] * jobs)
    pgq = make()
    t0 = time.perf_counter()
    task = asyncio.create_task(run(pgq))
    await done.wait()
    throughput = jobs / (time.perf_counter() - t0)
    pgq.shutdown.set()
    await task
    # Latency: one at a time into an idle worker.
    started.clear()
    done.clear()
    n = min(200, jobs)
    expect["n"] = n
    pgq = make()
    task = asyncio.create_task(run(pgq))
    await asyncio.sleep(1)
    sent: Stamp = {}
    for i in range(n):
        sent[i] = time.perf_counter()
        await queries.enqueue("noop", str(i).encode())
        await asyncio.sleep(0.03)
    await asyncio.wait_for(done.wait(), 30)
    pgq.shutdown.set()
    await task
    lat = [started[i] - sent[i] for i in range(n)]
    # Re-queue: a job that asks to run again at once.
    gaps: list[float] = []
    state = {"end": 0.0, "runs": 0}
    again = build()

    @again.entrypoint("again", accepts_context=False)
    async def rerun(job: object) -> None:
        if state["end"]:
            gaps.append(time.perf_counter() - state["end"])
        state["runs"] += 1
        if state["runs"] >= REQUEUES:
            again.shutdown.set()
            return
        await asyncio.sleep(WORK_S)
        state["end"] = time.perf_counter()
        raise RetryRequested(delay=dt.timedelta(0))

    await queries.enqueue("again", b"")
    await asyncio.wait_for(
        again.run(batch_size=1, max_concurrent_tasks=2, dequeue_timeout=dt.timedelta(seconds=5)),
        400,
    )
    await pool.close()
    return {"jobs_s": throughput, **latency(lat), "requeue_ms": statistics.median(gaps) * 1000}


# --- procrastinate -------------------------------------------------------------------------


async def procrastinate_bench(dsn: str, jobs: int) -> dict[str, float]:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))
    started: Stamp = {}
    done = asyncio.Event()
    expect = {"n": jobs}

    @app.task(name="noop")
    async def noop(i: int) -> None:
        started[i] = time.perf_counter()
        if len(started) >= expect["n"]:
            done.set()

    state = {"end": 0.0, "runs": 0}
    gaps: list[float] = []
    reran = asyncio.Event()

    @app.task(name="again", retry=procrastinate.RetryStrategy(max_attempts=100, wait=0))
    async def rerun() -> None:
        if state["end"]:
            gaps.append(time.perf_counter() - state["end"])
        state["runs"] += 1
        if state["runs"] >= REQUEUES:
            reran.set()
            return
        await asyncio.sleep(WORK_S)
        state["end"] = time.perf_counter()
        raise RuntimeError("again")  # its retry strategy runs it again at once

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        await noop.batch_defer_async(*({"i": i} for i in range(jobs)))
        t0 = time.perf_counter()
        worker = asyncio.create_task(app.run_worker_async(concurrency=10, wait=True))
        await done.wait()
        throughput = jobs / (time.perf_counter() - t0)
        started.clear()
        done.clear()
        n = min(200, jobs)
        expect["n"] = n
        sent: Stamp = {}
        for i in range(n):
            sent[i] = time.perf_counter()
            await noop.defer_async(i=i)
            await asyncio.sleep(0.03)
        await asyncio.wait_for(done.wait(), 30)
        lat = [started[i] - sent[i] for i in range(n)]
        await rerun.defer_async()
        await asyncio.wait_for(reran.wait(), 120)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    return {"jobs_s": throughput, **latency(lat), "requeue_ms": statistics.median(gaps) * 1000}


def latency(values: list[float]) -> dict[str, float]:
    return {"p50_ms": pct(values, 0.5), "p95_ms": pct(values, 0.95), "max_ms": max(values) * 1000}


async def main() -> None:
    args = parser(__doc__).parse_args()
    jobs = 500 if args.quick else 3000
    results: dict[str, dict[str, float]] = {}

    async def adapted(dsn: str, jobs: int) -> dict[str, float]:
        return await pgqueuer_bench(dsn, jobs, notify=True)

    runs: dict[str, Callable[[str, int], Awaitable[dict[str, float]]]] = {
        "pgqueuer 1.6.0": pgqueuer_bench,
        "pgqueuer+notify": adapted,
        "procrastinate": procrastinate_bench,
    }
    for name, run in runs.items():
        async with scratch_database(args.dsn, "queue", schema=False) as dsn:
            results[name] = await run(dsn, jobs)
    print(f"{jobs} no-op jobs, one worker, 10 at once; latency over 200 single enqueues")
    print(f"{'library':<16} {'jobs/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} "
          f"{'re-queue ms':>12}")  # fmt: skip
    for name, r in results.items():
        print(f"{name:<16} {r['jobs_s']:>8.0f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} "
              f"{r['max_ms']:>8.1f} {r['requeue_ms']:>12.1f}")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
