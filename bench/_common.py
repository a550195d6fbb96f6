"""Helpers shared by the benchmark programs in ``bench/`` (not a benchmark itself).

Every benchmark works in its own scratch database, created on the server named by
``--dsn`` (env ``ASYNCSYNC_BENCH_DSN``) and dropped at the end, so it never touches
real data and two benchmarks never share tables.
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import asyncpg

import asyncsync
from asyncsync.modes import pointed_at
from asyncsync.options import CommonOptions, DatabaseOptions, TinyOptions
from asyncsync.records import OrderRecord
from asyncsync.simulator import TinySimulator
from asyncsync.store.database import connect_pool, migrate, redact, with_database

#: The old scripts' write: a plain upsert of one listed order (no history: they keep none).
OLD_UPSERT = """
INSERT INTO ordens_servico AS o (account, id, numero, situacao, data_emissao, data_prevista,
                                 cliente_id, cliente_nome, valor, payload, list_hash, observed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (account, id) DO UPDATE SET
    numero = EXCLUDED.numero, situacao = EXCLUDED.situacao,
    data_emissao = EXCLUDED.data_emissao, data_prevista = EXCLUDED.data_prevista,
    cliente_id = EXCLUDED.cliente_id, cliente_nome = EXCLUDED.cliente_nome,
    valor = EXCLUDED.valor, payload = EXCLUDED.payload, list_hash = EXCLUDED.list_hash,
    observed_at = EXCLUDED.observed_at, updated_at = now(), synced_at = now()
"""


def upsert_args(account: str, r: OrderRecord) -> tuple[Any, ...]:
    """The 12 parameters of :data:`OLD_UPSERT` (and of bench_merge's naive upsert)."""
    return (
        account, r.id, r.numero, r.situacao, r.data_emissao, r.data_prevista, r.cliente_id,
        r.cliente_nome, r.valor, r.payload, r.hash, r.observed_at,
    )  # fmt: skip


DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
DSN_ENV = "ASYNCSYNC_BENCH_DSN"


def compile_package() -> None:
    """Write the package's bytecode as ``pip install`` does, before a timed command: under
    PYTHONDONTWRITEBYTECODE (this machine's environment) an editable install compiled every
    module from source at each start (~0.15 s of a command's wall clock here)."""
    compileall.compile_dir(Path(asyncsync.__file__).parent, quiet=1)


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with ``--dsn`` and ``--quick``; the description is the docstring."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--dsn",
        default=os.environ.get(DSN_ENV) or DEFAULT_DSN,
        help=f"PostgreSQL DSN allowed to CREATE DATABASE [env: {DSN_ENV}; default {DEFAULT_DSN}]",
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    p.add_argument("--json-out", help="also write the figures as JSON to this file (bench/run.py)")
    return p


def write_json(path: str | None, figures: object) -> None:
    """Write ``figures`` as JSON to ``path`` (nothing when None): what bench/run.py reads."""
    if path:
        Path(path).write_text(json.dumps(figures, indent=1, default=str), encoding="utf-8")


@asynccontextmanager
async def scratch_database(
    admin_dsn: str, label: str, *, schema: bool = True, prefix: str = "bench"
) -> AsyncIterator[str]:
    """A fresh database ``<prefix>_<label>_<random>`` (schema applied); dropped on exit."""
    name = f"{prefix}_{label}_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    dsn = with_database(admin_dsn, name)
    try:
        if schema:
            async with connect_pool(dsn, max_size=1) as pool:
                await migrate(pool)
        yield dsn
    finally:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def server_settings(dsn: str) -> str:
    """Server version and the settings that change these figures, for the output header."""
    conn = await asyncpg.connect(dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        rows = await conn.fetch(
            "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[]) ORDER BY name",
            ["autovacuum", "shared_buffers", "synchronous_commit", "fsync"],
        )
    finally:
        await conn.close()
    return f"PostgreSQL {version}, " + ", ".join(f"{r['name']}={r['setting']}" for r in rows)


def describe_dsn(dsn: str) -> str:
    """The DSN without its password, for the header of a benchmark's output."""
    return redact(dsn)


#: Where the embedded PostgreSQL would live; never used: every benchmark names its database.
UNUSED_DATA_DIR = Path(tempfile.gettempdir()) / "asyncsync-bench-unused"


def common_options(database_url: str, **tiny: Any) -> CommonOptions:
    """Options for a scratch database; ``tiny`` sets :class:`TinyOptions` fields."""
    return CommonOptions(
        database=DatabaseOptions(database_url=database_url, data_dir=UNUSED_DATA_DIR),
        tiny=TinyOptions(**tiny),
    )


def common_for(sim: TinySimulator, database_url: str, **tiny: Any) -> CommonOptions:
    """Options pointing the product at an in-process simulator and a scratch database;
    ``tiny`` overrides what the simulator says (its quota, for one)."""
    return pointed_at(common_options(database_url, request_timeout_s=60.0), sim, **tiny)


@dataclasses.dataclass
class Elapsed:
    """Seconds measured by :func:`timed` (set when the block ends)."""

    s: float = 0.0


@contextmanager
def timed() -> Iterator[Elapsed]:
    """``with timed() as t: ...`` then ``t.s`` holds the wall-clock seconds of the block."""
    out = Elapsed()
    started = time.perf_counter()
    try:
        yield out
    finally:
        out.s = time.perf_counter() - started


def per_s(count: int, seconds: float) -> int:
    """``count / seconds`` rounded, 0 when nothing was timed."""
    return round(count / seconds) if seconds > 0 else 0


_NUMERIC = re.compile(r"[-+\d,.%×/→() ]*\d[-+\d,.%×/→() ]*|-")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> None:
    """Print a boxed table in the style of ``asyncsync.report.table`` (floats with two
    decimals; columns of numbers, or of numeric-looking text, right-aligned), then a blank
    line."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    right = [
        bool(cells) and all(_NUMERIC.fullmatch(r[i]) for r in cells) for i in range(len(widths))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)
        ]
        return "│ " + " │ ".join(parts) + " │"

    out = [title] if title else []
    out += [line(headers), "├─" + "─┼─".join("─" * w for w in widths) + "─┤"]
    out += [line(r) for r in cells]
    print("\n".join(out) + "\n", flush=True)
