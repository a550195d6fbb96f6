"""Reading the mirror back in the simulator's snapshot shape, for exact comparisons."""

from __future__ import annotations

from typing import Any

import asyncpg

MIRROR_SQL = """
SELECT id, numero, situacao, data_emissao, data_prevista, data_conclusao, cliente_nome, valor
FROM ordens_servico WHERE account = $1
"""


async def mirror(pool: asyncpg.Pool, account: str = "default") -> dict[int, dict[str, Any]]:
    rows = await pool.fetch(MIRROR_SQL, account)
    return {
        r["id"]: {
            "numero": r["numero"],
            "situacao": r["situacao"],
            "data_emissao": r["data_emissao"],
            "data_prevista": r["data_prevista"],
            "data_conclusao": r["data_conclusao"],
            "cliente_nome": r["cliente_nome"],
            "valor": r["valor"],
        }
        for r in rows
    }


def diff(expected: dict[int, dict[str, Any]], got: dict[int, dict[str, Any]]) -> list[str]:
    """Human-readable differences, at most 20."""
    out = [f"missing {i}" for i in sorted(expected.keys() - got.keys())]
    out += [f"extra {i}" for i in sorted(got.keys() - expected.keys())]
    for i in sorted(expected.keys() & got.keys()):
        for k, v in expected[i].items():
            if got[i][k] != v:
                out.append(f"{i}.{k}: expected {v!r}, got {got[i][k]!r}")
    return out[:20]


async def history(pool: asyncpg.Pool) -> list[tuple[int, int | None, int]]:
    rows = await pool.fetch(
        "SELECT id_os, status_antigo, status_novo FROM ordem_status_history ORDER BY seq"
    )
    return [(r["id_os"], r["status_antigo"], r["status_novo"]) for r in rows]
