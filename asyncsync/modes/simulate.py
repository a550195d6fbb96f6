"""``--mode simulate`` (serve the bundled Tiny simulator) and ``--simulator N`` (any mode
runs against an in-process simulator with N orders, for demos and first runs)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from ..config import Credentials, Settings

if TYPE_CHECKING:
    from ..simulator import TinySimulator

log = logging.getLogger(__name__)


@asynccontextmanager
async def bundled(
    settings: Settings, orders: int | None, *, seed: int = 1, latency_s: float = 0.0
) -> AsyncIterator[Settings]:
    """With ``orders``: start a simulator and yield settings pointed at it; else as given.

    The simulator's quota is the configured rate limit, so the demo shows real pacing.
    """
    if not orders:
        yield settings
        return
    from ..simulator import SimConfig, TinySimulator

    config = SimConfig(
        orders=orders,
        seed=seed,
        rate_limit_per_minute=settings.rate_limit_per_minute,
        latency_s=latency_s,
    )
    async with TinySimulator(config) as sim:
        log.info("bundled Tiny simulator with %d orders at %s", orders, sim.base_url)
        yield pointed_at(settings, sim)


def pointed_at(settings: Settings, sim: TinySimulator, **overrides: Any) -> Settings:
    """``settings`` talking to a running simulator: its URLs, credentials and quota."""
    pointing: dict[str, Any] = {
        "api_base_url": sim.base_url,
        "token_url": sim.token_url,
        "credentials": Credentials(
            sim.config.client_id, sim.config.client_secret, sim.valid_refresh_token()
        ),
        "rate_limit_per_minute": sim.config.rate_limit_per_minute,
    }
    return dataclasses.replace(settings, **{**pointing, **overrides})


async def run(settings: Settings, *, args: Any, stop: asyncio.Event) -> int:
    """Serve a simulator on ``--sim-port`` until stopped."""
    from ..simulator import SimConfig, serve

    config = SimConfig(
        orders=args.simulator or 5000,
        seed=args.sim_seed,
        rate_limit_per_minute=settings.rate_limit_per_minute,
        latency_s=args.sim_latency_ms / 1000,
    )
    await serve(config, "127.0.0.1", args.sim_port, stop)
    return 0
