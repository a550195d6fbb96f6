"""``--mode simulate``: serve the bundled Tiny simulator on ``--sim-port`` until stopped
(it prints the credentials to use)."""

from __future__ import annotations

import asyncio

from ..errors import ConfigError
from ..options import CommonOptions, SimulateOptions


async def run(common: CommonOptions, options: SimulateOptions, stop: asyncio.Event) -> int:
    """Serve a simulator until ``stop``."""
    from ..simulator import SimConfig, serve

    sim = common.simulator
    config = SimConfig(
        orders=sim.orders or 5000,
        seed=sim.seed,
        rate_limit_per_minute=sim.quota(common.tiny),
        latency_s=sim.latency_ms / 1000,
    )
    try:
        await serve(config, "127.0.0.1", sim.port, stop)
    except OSError as exc:  # the port in use: configuration, as serve's --metrics-port
        raise ConfigError(
            f"--sim-port (ASYNCSYNC_SIM_PORT): cannot listen on 127.0.0.1:{sim.port}: "
            f"{exc.strerror or exc}"
        ) from None
    return 0
