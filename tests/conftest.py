"""Test fixtures: a real PostgreSQL (a fresh database per test) and the Tiny simulator.

PostgreSQL comes from ``ASYNCSYNC_TEST_DSN`` when set, else from the embedded server
(pgserver) the product itself uses by default, started once per session. Each test gets
its own database, cloned from a template that already holds the schema.
"""

from __future__ import annotations

import asyncio
import compileall
import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import asyncsync
from asyncsync.client import window
from asyncsync.runtime import Runtime, open_runtime
from asyncsync.simulator import SimConfig, TinySimulator
from asyncsync.store.database import connect_pool, migrate, with_database
from asyncsync.store.embedded import embedded_server

from .helpers import common_for

TEMPLATE = f"asyncsync_tpl_{os.getpid()}"


@pytest.fixture(scope="session", autouse=True)
def compiled_package() -> None:
    """The package's bytecode, written once as ``pip install`` writes it: the tests start
    ``asyncsync`` in a child process hundreds of times, and under PYTHONDONTWRITEBYTECODE
    (as on this machine) an editable install compiled every module from source each time
    (~0.15 s a start)."""
    if sys.dont_write_bytecode:
        compileall.compile_dir(Path(asyncsync.__file__).parent, quiet=1)


@pytest.fixture(scope="session")
def admin_dsn() -> Iterator[str]:
    """A DSN with rights to create databases."""
    dsn = os.environ.get("ASYNCSYNC_TEST_DSN")
    if dsn:
        yield dsn
        return
    with (
        tempfile.TemporaryDirectory(prefix="asyncsync-test-pg-") as tmp,
        embedded_server(Path(tmp)) as dsn,
    ):
        yield dsn


@pytest.fixture(scope="session")
def template_db(admin_dsn: str) -> Iterator[str]:
    """A database with the schema applied, cloned for every test."""

    async def create() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
            await conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
        finally:
            await conn.close()
        async with connect_pool(with_database(admin_dsn, TEMPLATE), max_size=1) as pool:
            await migrate(pool)

    async def drop() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    yield TEMPLATE
    asyncio.run(drop())


@pytest.fixture
async def database_url(admin_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A fresh database holding the schema and nothing else."""
    name = f"asyncsync_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await conn.close()
    yield with_database(admin_dsn, name)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test's database, for assertions."""
    async with connect_pool(database_url, max_size=2, application_name="tests") as pool:
        yield pool


SimFactory = Callable[..., Any]


@pytest.fixture
async def simulator() -> AsyncIterator[SimFactory]:
    """``await simulator(orders=..., ...)`` starts a simulator on a free port."""
    started: list[TinySimulator] = []

    async def make(**config: Any) -> TinySimulator:
        config.setdefault("rate_limit_per_minute", 60_000)
        sim = TinySimulator(SimConfig(**config))
        await sim.__aenter__()
        window.LEARNED.pop(sim.base_url.rstrip("/"), None)  # a port an earlier one had
        started.append(sim)
        return sim

    yield make
    for sim in started:
        await sim.aclose()


@pytest.fixture
def runtime_for(database_url: str) -> Callable[..., Any]:
    """``async with runtime_for(sim, **tiny) as rt``: the product's own wiring, with
    TinyOptions overrides (``max_retries=2``...)."""

    def make(sim: TinySimulator, **tiny: Any) -> Any:
        return open_runtime(common_for(sim, database_url, **tiny))

    return make


__all__ = ["Runtime"]
