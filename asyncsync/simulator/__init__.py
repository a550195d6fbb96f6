"""A faithful local stand-in for Tiny ERP (Olist) API v3 service orders.

``TinySimulator`` serves ``GET /ordem-servico`` (listing, offset pagination over the live
state), ``GET /ordem-servico/{id}`` (detail) and the Keycloak-like OAuth2 token endpoint,
with the quirks, rate limits and failures a client of the real API meets. Tests drive it
through plain synchronous control methods. Modules: ``data`` (config, orders, generator),
``render`` (JSON shapes and quirks), ``index`` (listing), ``access`` (tokens, rate
window), ``app`` (the server and control API).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from .access import SimStats
from .app import TinySimulator
from .data import Quirks, SimConfig, SimOrder

__all__ = ["Quirks", "SimConfig", "SimOrder", "SimStats", "TinySimulator", "announcement", "serve"]


def announcement(sim: TinySimulator) -> str:
    """The one line that tells a client how to connect."""
    cfg = sim.config
    return (
        f"tiny simulator: base_url={sim.base_url} token_url={sim.token_url} "
        f"client_id={cfg.client_id} client_secret={cfg.client_secret} "
        f"refresh_token={sim.valid_refresh_token() or cfg.refresh_token} orders={len(sim.orders)}"
    )


async def serve(config: SimConfig, host: str, port: int, stop: asyncio.Event | None = None) -> None:
    """Run a simulator until ``stop`` is set, printing :func:`announcement` once started.

    Without ``stop``, SIGINT and SIGTERM end it (where the loop supports signal handlers).
    """
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
    try:
        async with TinySimulator(config, host=host, port=port) as sim:
            print(announcement(sim), flush=True)
            await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
