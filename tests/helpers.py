"""Shortcuts for tests: options pointed at a simulator, and each job run on a Runtime."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from asyncsync.accounts import AccountConfig
from asyncsync.clock import utcnow
from asyncsync.jobs import RunContext
from asyncsync.jobs.integrity import check_integrity
from asyncsync.jobs.retry import retry_due
from asyncsync.jobs.sync import full_sync as full_sync_job
from asyncsync.jobs.sync import incremental_sync as incremental_job
from asyncsync.modes import pointed_at
from asyncsync.options import CommonOptions, CycleOptions, DatabaseOptions, TinyOptions
from asyncsync.report import RunReport
from asyncsync.runtime import Runtime
from asyncsync.simulator import TinySimulator
from asyncsync.store.accounts import PgAccounts

#: Test defaults: small batches so merges are many, short timeouts.
TEST_TINY = {"max_concurrency": 8, "request_timeout_s": 10.0, "max_retries": 4}


def common_for(
    sim: TinySimulator, database_url: str, *, account: str = "default", **tiny: Any
) -> CommonOptions:
    """Options pointing at a running simulator and a test database."""
    base = CommonOptions(
        account=account,
        database=DatabaseOptions(
            database_url=database_url,
            data_dir=Path(tempfile.gettempdir()) / "asyncsync-unused",
        ),
        tiny=TinyOptions(**TEST_TINY),
    )
    return pointed_at(base, sim, **tiny)


def cycle(**overrides: Any) -> CycleOptions:
    return dataclasses.replace(CycleOptions(batch_size=500), **overrides)


def context(rt: Runtime, stop: asyncio.Event | None = None, clock: Any = utcnow) -> RunContext:
    return rt.context(stop or asyncio.Event(), progress=io.StringIO(), clock=clock)


async def full_sync(rt: Runtime, *, stop: asyncio.Event | None = None, **opts: Any) -> RunReport:
    s = rt.store
    return await full_sync_job(rt.client, s.orders, s.metadata, cycle(**opts), context(rt, stop))


async def incremental_sync(
    rt: Runtime, *, stop: asyncio.Event | None = None, **opts: Any
) -> RunReport:
    s = rt.store
    return await incremental_job(rt.client, s.orders, s.metadata, cycle(**opts), context(rt, stop))


async def integrity(
    rt: Runtime,
    *,
    deep: bool = False,
    at: dt.datetime | None = None,
    stop: asyncio.Event | None = None,
) -> RunReport:
    s = rt.store
    clock = (lambda: at) if at is not None else utcnow
    return await check_integrity(
        rt.client, s.orders, s.integrity, s.failures, context(rt, stop, clock), deep=deep
    )


async def retry(rt: Runtime, *, now: dt.datetime, stop: asyncio.Event | None = None) -> RunReport:
    s = rt.store
    return await retry_due(rt.client, s.orders, s.failures, context(rt, stop), now=now)


def break_list_item(sim: TinySimulator, order_id: int) -> Callable[[], None]:
    """From now on, ``order_id``'s list item carries a date no parser reads (its detail is
    left as it is); returns what mends it (the item renders as before)."""
    render = sim._renderer.list_item

    def listed(order: Any) -> Any:
        item = render(order)
        if order.id == order_id:
            item["data"] = "31/02/2020x"
        return item

    def mend() -> None:
        sim._renderer.list_item = render  # type: ignore[method-assign]

    sim._renderer.list_item = listed  # type: ignore[method-assign]
    return mend


async def register(
    registry: PgAccounts, sims: dict[str, TinySimulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An account row per simulator, its refresh token in ``REFRESH_<key>``."""
    for key, sim in sims.items():
        monkeypatch.setenv(f"REFRESH_{key}", sim.valid_refresh_token() or "")
        await registry.put(AccountConfig(
            key=key, api_base_url=sim.base_url, token_url=sim.token_url,
            client_id=sim.config.client_id, client_secret=sim.config.client_secret,
            refresh_token_env=f"REFRESH_{key}",
        ))  # fmt: skip


async def metrics_port(caplog: pytest.LogCaptureFixture) -> int:
    """The port serve's log line says it listens on."""
    for _ in range(100):
        said = [r.getMessage() for r in caplog.records if "metrics on" in r.getMessage()]
        if said:
            return int(said[0].split("/metrics")[0].rsplit(":", 1)[1])
        await asyncio.sleep(0.1)
    raise AssertionError("serve did not say where its metrics are")
