"""Section 6's indexes on ``import_failures`` against account-leading ones, for the queries
that read the table: many accounts, each with a long tail of resolved failures.

What it measures
    ``--accounts`` accounts × ``--failures`` rows each (default 20 × 50,000: a million),
    mostly resolved (``--open-share``, 2 %, open: a fifth of those at manual review, the
    rest on the retry schedule, some due; 0.5 % of the resolved ones ignored by a person),
    the accounts' rows interleaved in the heap as they arrive over time. Each query runs
    through the store's own methods (``asyncsync.store.failures``, its SQL files), every
    account in turn, ``--reps`` times, the median in milliseconds, under three index sets
    built in turn in each of ``--rounds`` interleaved rounds:

    * ``doc``: ``schema.sql`` as shipped: the planning document's ``(resolvido)`` and
      ``(tentativas)``, and the primary key ``(account, id_ordem)``;
    * ``+ account-leading``: the document's two with ``account`` first;
    * ``+ open by account``: ``schema.sql``'s own addition (read from it), one partial
      index of the open failures, ``(account, ultima_tentativa) WHERE NOT
      coalesce(resolvido, false)`` (the queries' own words).

    The doc's indexes stay in every set: extra ones are added, never swapped in.

    .venv/bin/python bench/bench_failures.py [--accounts 20] [--failures 50000]
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from _common import describe_dsn, parser, print_table, scratch_database, server_settings, write_json

from asyncsync.jobs.retry import DEFAULT_POLICY
from asyncsync.store import AccountStore, Database
from asyncsync.store.database import connect_pool
from asyncsync.store.sqlfiles import sql

SCHEMA = Path(__file__).resolve().parent.parent / "schema.sql"
#: The planning document's indexes (section 6), kept in every set.
DOC = ("idx_import_failures_resolvido", "idx_import_failures_tentativas")


def shipped_extras() -> tuple[str, ...]:
    """``schema.sql``'s CREATE INDEX statements on import_failures beyond the document's."""
    text = SCHEMA.read_text(encoding="utf-8")
    found = re.finditer(r"CREATE INDEX IF NOT EXISTS (\w+)\s+ON import_failures [^;]+;", text)
    return tuple(m.group(0) for m in found if m.group(1) not in DOC)


#: The index sets compared: each one's CREATE INDEX statements on top of the doc's.
VARIANTS: dict[str, tuple[str, ...]] = {
    "doc": (),
    "+ account-leading": (
        "CREATE INDEX bench_failures_account_resolvido ON import_failures (account, resolvido)",
        "CREATE INDEX bench_failures_account_tentativas ON import_failures (account, tentativas)",
    ),
    "+ open by account": shipped_extras(),
}

#: The failures: accounts interleaved (each id's row in every account, then the next id).
FILL = """
INSERT INTO import_failures (account, id_ordem, primeira_tentativa, ultima_tentativa, erro,
                             tentativas, resolvido, dados_api, ignorado_em)
SELECT 'bench' || lpad(a::text, 3, '0'),
       CASE WHEN s.open AND i % 50 = 0 THEN -i ELSE 700000000 + i END,
       $4::timestamp - make_interval(secs => (i % 86400) + 3600),
       $4::timestamp - make_interval(secs => i % 7200),
       'TinyBadPayload: the detail is not JSON (order ' || i || ')',
       CASE WHEN s.open THEN 1 + i % 5 ELSE 1 + i % 3 END,
       NOT s.open,
       jsonb_build_object('list_item', jsonb_build_object('id', i, 'situacao', (i % 8)::text)),
       CASE WHEN NOT s.open AND i % 200 = 1 THEN $4::timestamp END
FROM generate_series(1, $2) AS i
CROSS JOIN generate_series(1, $1) AS a
CROSS JOIN LATERAL (SELECT (i * 7919 % 10000) < $3::float8 * 10000 AS open) s
"""

#: A query of one account: its stores, the pool (for a statement no store method runs
#: alone), the clock.
Query = Callable[[AccountStore, asyncpg.Pool, dt.datetime], Awaitable[Any]]
P = DEFAULT_POLICY

#: The queries timed: what retry, integrity, status, ``failures list`` and the listing ask.
QUERIES: dict[str, Query] = {
    "retry: due (retry_due, 200)": lambda s, _, now: s.failures.due(now, P, 200),
    "retry: pending (retry_pending)": lambda s, _, now: s.failures.pending(now, P),
    "manual review (retry_manual_review)": lambda s, _, now: s.failures.manual_review(P),
    "status: counts (failure_counts)": lambda s, _, now: s.failures.counts(P),
    "failures list --state open (50)": lambda s, _, now: s.failures.listing("open", P, 50),
    "failures list --state all (50)": lambda s, _, now: s.failures.listing("all", P, 50),
    "integrity: tracked counts": lambda s, _, now: s.integrity.counts(),
    "listing merge: open ids (open_failure_ids)": lambda s, pool, now: pool.fetch(
        sql("open_failure_ids"), s.account
    ),
}


def index_name(statement: str) -> str:
    return re.sub(r"^CREATE INDEX (IF NOT EXISTS )?", "", statement).split()[0]


async def fill(pool: asyncpg.Pool, accounts: int, per_account: int, open_share: float) -> float:
    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    async with pool.acquire() as conn:
        await conn.execute(FILL, accounts, per_account, open_share, now)
        await conn.execute("VACUUM ANALYZE import_failures")
    return time.perf_counter() - started


async def plan(pool: asyncpg.Pool, account: str, now: dt.datetime) -> str:
    """The retry-due query's plan, its scan nodes on one line."""
    args = (account, now, P.max_attempts, P.base_s, P.factor, 200, None)
    async with pool.acquire() as conn:
        rows = await conn.fetch("EXPLAIN " + sql("retry_due"), *args)
    scans = [r[0].strip(" ->") for r in rows if "Scan" in r[0]]
    return "; ".join(s.split("  (")[0] for s in scans)


async def time_queries(
    pool: asyncpg.Pool, accounts: list[str], reps: int, now: dt.datetime
) -> dict[str, float]:
    """Median milliseconds of each query, every account in turn, ``reps`` times."""
    stores = [Database(pool).account(a) for a in accounts]
    out: dict[str, float] = {}
    for name, query in QUERIES.items():
        for s in stores[:3]:  # warm: plans cached, pages in shared buffers
            await query(s, pool, now)
        samples = []
        for _ in range(reps):
            for s in stores:
                started = time.perf_counter()
                await query(s, pool, now)
                samples.append((time.perf_counter() - started) * 1000)
        out[name] = statistics.median(samples)
    return out


async def run(
    dsn: str,
    prefix: str,
    n_accounts: int,
    per_account: int,
    open_share: float,
    reps: int,
    rounds: int,
) -> dict[str, Any]:
    accounts = [f"bench{a:03d}" for a in range(1, n_accounts + 1)]
    medians: dict[str, dict[str, list[float]]] = {v: {q: [] for q in QUERIES} for v in VARIANTS}
    sizes: dict[str, int] = {}
    plans: dict[str, str] = {}
    async with (
        scratch_database(dsn, "failures", prefix=prefix) as scratch,
        connect_pool(scratch, max_size=2) as pool,
    ):
        filled_s = await fill(pool, n_accounts, per_account, open_share)
        async with pool.acquire() as conn:
            rows = await conn.fetchval("SELECT count(*) FROM import_failures")
            open_rows = await conn.fetchval(
                "SELECT count(*) FROM import_failures WHERE NOT resolvido"
            )
            for statement in VARIANTS["+ open by account"]:  # the doc's alone to start
                await conn.execute(f"DROP INDEX IF EXISTS {index_name(statement)}")
        print(f"  {rows:,} failures ({open_rows:,} open) in {filled_s:.1f} s", flush=True)
        for r in range(rounds):
            for variant, creates in VARIANTS.items():
                async with pool.acquire() as conn:
                    for statement in creates:
                        await conn.execute(statement)
                    await conn.execute("ANALYZE import_failures")
                # A fresh pool: no prepared statement keeps a plan made without the index.
                async with connect_pool(scratch, max_size=1) as timing_pool:
                    now = dt.datetime.now(dt.UTC)
                    got = await time_queries(timing_pool, accounts, reps, now)
                    plans[variant] = await plan(timing_pool, accounts[0], now)
                for q, ms in got.items():
                    medians[variant][q].append(ms)
                async with pool.acquire() as conn:
                    sizes[variant] = await conn.fetchval(
                        "SELECT coalesce(sum(pg_relation_size(indexrelid)), 0) FROM pg_index"
                        " WHERE indrelid = 'import_failures'::regclass"
                    )
                    for statement in creates:
                        await conn.execute(f"DROP INDEX {index_name(statement)}")
                due = got[next(iter(QUERIES))]
                print(f"  round {r + 1}, {variant}: retry due {due:.2f} ms", flush=True)
    return {
        "accounts": n_accounts,
        "failures_per_account": per_account,
        "rows": rows,
        "open_rows": open_rows,
        "rounds": rounds,
        "reps": reps,
        "ms": {v: {q: statistics.median(m) for q, m in qs.items()} for v, qs in medians.items()},
        "index_bytes": sizes,
        "retry_due_plan": plans,
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--accounts", type=int, help="accounts (default 20; quick 5)")
    p.add_argument("--failures", type=int, help="failures per account (default 50000; quick 10000)")
    p.add_argument("--open-share", type=float, default=0.02, help="share of failures open")
    p.add_argument("--reps", type=int, default=5, help="times each account's query runs")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the index sets")
    p.add_argument("--db-prefix", default="bench", help="the scratch database's name prefix")
    args = p.parse_args()
    accounts = args.accounts or (5 if args.quick else 20)
    per_account = args.failures or (10_000 if args.quick else 50_000)
    print(f"{describe_dsn(args.dsn)}: {asyncio.run(server_settings(args.dsn))}", flush=True)
    figures = asyncio.run(
        run(
            args.dsn, args.db_prefix, accounts, per_account, args.open_share, args.reps, args.rounds
        )
    )
    ms = figures["ms"]
    doc, extras = ms["doc"], list(VARIANTS)[1:]
    headers = ["query (median ms)", *VARIANTS, *(f"doc ÷ {v[2:]}" for v in extras)]
    rows = [
        [q, *(ms[v][q] for v in VARIANTS), *(f"{doc[q] / ms[v][q]:.1f}×" for v in extras)]
        for q in QUERIES
    ]
    sizes = [round(figures["index_bytes"][v] / 2**20, 1) for v in VARIANTS]
    rows.append(["indexes on import_failures, MB", *sizes, *("" for _ in extras)])
    print_table(
        headers,
        rows,
        f"import_failures: {accounts} accounts × {per_account:,} failures "
        f"({figures['open_rows']:,} open of {figures['rows']:,}), medians of "
        f"{args.rounds} rounds × {args.reps} × {accounts} accounts",
    )
    for v, text in figures["retry_due_plan"].items():
        print(f"retry_due's plan, {v}: {text}")
    write_json(args.json_out, figures)


if __name__ == "__main__":
    main()
