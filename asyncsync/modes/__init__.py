"""One module per ``--mode``. Each exposes ``async def run(common, options, stop)``
returning a :class:`~asyncsync.report.RunReport` (or an exit code for modes that are not
runs, such as ``health``); :func:`execute` runs one and presents what it returned.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..options import CommonOptions
from ..report import RunReport, log_fields, observe, render_text, to_json

if TYPE_CHECKING:
    from ..simulator import TinySimulator

log = logging.getLogger(__name__)

#: The sync_metadata key where serve says how its last cycle went (read by --mode health).
SERVE_HEALTH_KEY = "serve_health"


async def execute(mode: str, common: CommonOptions, options: Any, stop: asyncio.Event) -> int:
    """Run ``mode`` (against the bundled simulator when asked) and return the exit code."""
    module = importlib.import_module(f"{__name__}.{mode}")
    async with bundled(common, serve_only=mode == "simulate") as effective:
        result: RunReport | int = await module.run(effective, options, stop)
    if isinstance(result, int):
        return result
    present(result, effective)
    return result.exit_code


def present(report: RunReport, common: CommonOptions) -> None:
    """Show a finished run: the table on stdout, JSON where asked, metrics, one log line."""
    observe(report)
    log.info("%s %s", report.mode, report.outcome.value, extra={"fields": log_fields(report)})
    sys.stdout.write(render_text(report) + "\n")
    sys.stdout.flush()
    if common.output.json_path is not None:
        write_text(common.output.json_path, to_json(report) + "\n")


def write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


@asynccontextmanager
async def bundled(
    common: CommonOptions, *, serve_only: bool = False
) -> AsyncIterator[CommonOptions]:
    """With ``--simulator N``: start a simulator and yield options pointed at it.

    The simulator's quota is the configured rate limit, so the demo shows real pacing.
    """
    if serve_only or not common.simulator.orders:
        yield common
        return
    from ..simulator import SimConfig, TinySimulator

    config = SimConfig(
        orders=common.simulator.orders,
        seed=common.simulator.seed,
        rate_limit_per_minute=common.simulator.quota(common.tiny),
        latency_s=common.simulator.latency_ms / 1000,
    )
    async with TinySimulator(config) as sim:
        log.info("bundled Tiny simulator with %d orders at %s", config.orders, sim.base_url)
        yield pointed_at(common, sim)


def pointed_at(common: CommonOptions, sim: TinySimulator, **tiny: Any) -> CommonOptions:
    """``common`` talking to a running simulator: its URLs and credentials."""
    pointing: dict[str, Any] = {
        "api_base_url": sim.base_url,
        "token_url": sim.token_url,
        "client_id": sim.config.client_id,
        "client_secret": sim.config.client_secret,
        "refresh_token": sim.valid_refresh_token(),
        "token_file": None,
    }
    return dataclasses.replace(
        common, tiny=dataclasses.replace(common.tiny, **{**pointing, **tiny})
    )
