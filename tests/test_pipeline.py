"""The hashes-first lookup: a batch probes the primary key, never scans the mirror."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from asyncsync.records import parse_list_item
from asyncsync.store.database import sql
from asyncsync.store.orders import PgOrderStore

T1 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
T2, T3 = T1 + dt.timedelta(hours=1), T1 + dt.timedelta(hours=2)
OPEN = [0, 1, 2, 5, 6]


def item(order_id: int, situacao: int, valor: str = "10.00") -> dict[str, Any]:
    return {"id": order_id, "situacao": situacao, "data": "2025-12-01", "valor": valor}


async def test_the_hash_lookup_probes_the_primary_key_and_never_scans_the_mirror(db) -> None:
    sink = PgOrderStore(db, "default", OPEN)
    for start in range(1, 40_001, 10_000):
        await sink.merge_listed(
            [parse_list_item(item(i, i % 8), T1) for i in range(start, start + 10_000)]
        )
    # Never analyzed: the planner knows nothing of the ids (the case where a join would
    # hash the whole table for every batch).
    batch = [parse_list_item(item(i, 3), T2) for i in range(20_001, 25_001)]
    args = ([r.id for r in batch], [r.hash for r in batch], [r.observed_at for r in batch])
    async with db.acquire() as conn:
        plan = await conn.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + sql("find_changed"), "default", *args, False
        )
    nodes, stack = [], [orjson.loads(plan)[0]["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", []))
    reads = [n for n in nodes if n.get("Relation Name") == "ordens_servico"]
    assert reads and all(n["Node Type"] == "Index Scan" for n in reads)
    assert sum(n["Actual Rows"] * n["Actual Loops"] for n in reads) == 5000
