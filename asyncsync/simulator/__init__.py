"""A faithful local stand-in for Tiny ERP (Olist) API v3 service orders.

``TinySimulator`` serves ``GET /ordem-servico`` (listing, offset pagination over the
live state), ``GET /ordem-servico/{id}`` (detail) and the Keycloak-like OAuth2 endpoints
(``.../openid-connect/auth``, standing in for the person who consents, and ``.../token``
with the ``authorization_code`` and ``refresh_token`` grants), with the quirks, rate
limits and failures a client of the real API meets: per-order detail failures, transient
500s at a seeded rate, outages (5xx, dropped connections, hangs, a proxy's maintenance
page, a firewall's block page; the token endpoint's own maintenance page), huge streamed
answers, and a quota that can change while a client runs. Tests
drive it through plain synchronous control methods; a test in another process uses
``POST /_sim/control`` and ``GET /_sim/stats``.

Modules: ``data`` (config, orders, generator), ``render`` (JSON shapes and quirks),
``index`` (listing), ``access`` (counters, rate window), ``oauth`` (codes, tokens, grants),
``consent`` (the authorization endpoint), ``faults`` (outages, streamed huge answers),
``state`` (the world and its control API), ``control`` (``/_sim/control`` bodies) and
``app`` (the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from .access import SimStats
from .app import TinySimulator
from .data import Quirks, SimConfig, SimOrder
from .faults import OUTAGE_MODES

__all__ = [
    "OUTAGE_MODES",
    "Quirks",
    "SimConfig",
    "SimOrder",
    "SimStats",
    "TinySimulator",
    "announcement",
    "serve",
]


def announcement(sim: TinySimulator) -> str:
    """The one line that tells a client how to connect."""
    cfg = sim.config
    return (
        f"tiny simulator: base_url={sim.base_url} token_url={sim.token_url} "
        f"auth_url={sim.auth_url} "
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
