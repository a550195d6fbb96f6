"""The command line: parse, configure, run one mode, print the cause chain on failure.

Every flag has an environment-variable twin, shown in ``--help``; flags win.
Exit codes: 0 ok, 1 the run failed or found what it could not fix, 2 bad configuration,
3 another run of the account holds the lock, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import (
    DEFAULT_API_BASE_URL,
    DEFAULT_TOKEN_URL,
    Credentials,
    Settings,
    default_data_dir,
    load_bootstrap_tokens,
)
from .errors import AsyncsyncError, ConfigError, LockBusy, ReauthorizationRequired
from .tasks import first_leaf

MODES = ("sync", "backfill", "integrity", "retry", "serve", "migrate", "health", "simulate")


def _env_flag(parser: Any, flag: str, env: str, help: str, **kw: Any) -> None:
    default = os.environ.get(env)
    if kw.get("action") == "store_true":
        kw["default"] = (default or "").lower() in ("1", "true", "yes", "on")
    else:
        kw["default"] = default if default not in (None, "") else kw.get("default")
    parser.add_argument(flag, help=f"{help} [env: {env}]", **kw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="asyncsync",
        description="Mirror Tiny ERP service orders into PostgreSQL.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("run")
    _env_flag(g, "--mode", "ASYNCSYNC_MODE", "what to run", choices=MODES, default="sync")
    _env_flag(g, "--full", "ASYNCSYNC_FULL", "sync: force a full sync", action="store_true")
    _env_flag(g, "--from", "ASYNCSYNC_FROM", "backfill: first month, YYYY-MM", dest="date_from")
    _env_flag(g, "--to", "ASYNCSYNC_TO", "backfill: last month, YYYY-MM", dest="date_to")
    _env_flag(g, "--partitions", "ASYNCSYNC_PARTITIONS", "backfill: partitions in flight",
              type=int, default=5)  # fmt: skip
    _env_flag(g, "--deep", "ASYNCSYNC_DEEP", "integrity: compare ids even if totals match",
              action="store_true")  # fmt: skip
    _env_flag(g, "--json", "ASYNCSYNC_JSON_REPORT", "write the report as JSON to this path",
              dest="json_path")  # fmt: skip
    _env_flag(g, "--detail-budget", "ASYNCSYNC_DETAIL_BUDGET",
              "most detail requests per run (default: no limit)", type=int)  # fmt: skip
    _env_flag(g, "--interval", "ASYNCSYNC_INTERVAL_S", "serve: seconds between cycles",
              type=float, default=900.0)  # fmt: skip
    _env_flag(g, "--sweep-interval", "ASYNCSYNC_SWEEP_INTERVAL_S",
              "seconds between full sweeps of closed statuses", type=float,
              default=86400.0)  # fmt: skip
    _env_flag(g, "--recent-days", "ASYNCSYNC_RECENT_DAYS",
              "closed statuses are listed over this many recent days each cycle",
              type=int, default=45)  # fmt: skip
    _env_flag(g, "--open-statuses", "ASYNCSYNC_OPEN_STATUSES",
              "status codes listed completely every cycle", default="0,1,2,5,6")  # fmt: skip
    _env_flag(g, "--metrics-port", "ASYNCSYNC_METRICS_PORT",
              "serve Prometheus /metrics on this port", type=int)  # fmt: skip
    _env_flag(g, "--metrics-host", "ASYNCSYNC_METRICS_HOST", "address /metrics listens on",
              default="0.0.0.0")  # fmt: skip

    d = p.add_argument_group("database")
    _env_flag(d, "--database-url", "DATABASE_URL",
              "PostgreSQL DSN; absent: an embedded PostgreSQL under --data-dir")  # fmt: skip
    _env_flag(d, "--data-dir", "ASYNCSYNC_DATA_DIR", "embedded PostgreSQL data directory",
              default=str(default_data_dir()))  # fmt: skip
    _env_flag(d, "--account", "ASYNCSYNC_ACCOUNT", "account key in every table", default="default")

    t = p.add_argument_group("Tiny API")
    _env_flag(t, "--api-base-url", "TINY_API_BASE_URL", "API base URL",
              default=DEFAULT_API_BASE_URL)  # fmt: skip
    _env_flag(t, "--token-url", "TINY_TOKEN_URL", "OAuth token endpoint",
              default=DEFAULT_TOKEN_URL)  # fmt: skip
    _env_flag(t, "--client-id", "TINY_CLIENT_ID", "OAuth client id")
    _env_flag(t, "--client-secret", "TINY_CLIENT_SECRET", "OAuth client secret")
    _env_flag(t, "--refresh-token", "TINY_REFRESH_TOKEN", "bootstrap refresh token")
    _env_flag(t, "--token-file", "TINY_TOKEN_FILE",
              "tiny_token.json to bootstrap from (./tiny_token.json if present)")  # fmt: skip
    _env_flag(t, "--rate-limit", "TINY_RATE_LIMIT_PER_MINUTE", "requests per minute (ceiling)",
              type=int, default=120)  # fmt: skip
    _env_flag(t, "--max-concurrency", "TINY_MAX_CONCURRENCY", "requests in flight at most",
              type=int, default=8)  # fmt: skip
    _env_flag(t, "--timeout", "TINY_REQUEST_TIMEOUT_S", "seconds per request", type=float,
              default=30.0)  # fmt: skip
    _env_flag(t, "--max-retries", "TINY_MAX_RETRIES", "tries per request on 5xx/429/timeouts",
              type=int, default=5)  # fmt: skip

    s = p.add_argument_group("simulator")
    _env_flag(s, "--simulator", "ASYNCSYNC_SIMULATOR_ORDERS",
              "run against the bundled Tiny simulator with this many orders", type=int)  # fmt: skip
    _env_flag(s, "--sim-seed", "ASYNCSYNC_SIM_SEED", "simulator seed", type=int, default=1)
    _env_flag(s, "--sim-port", "ASYNCSYNC_SIM_PORT", "simulate: port to listen on", type=int,
              default=8080)  # fmt: skip
    _env_flag(s, "--sim-latency-ms", "ASYNCSYNC_SIM_LATENCY_MS", "simulator latency",
              type=float, default=0.0)  # fmt: skip

    o = p.add_argument_group("output")
    _env_flag(o, "--log-level", "ASYNCSYNC_LOG_LEVEL", "log level", default="INFO",
              type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"))  # fmt: skip
    _env_flag(o, "--log-format", "ASYNCSYNC_LOG_FORMAT", "log format",
              choices=("auto", "json", "text"), default="auto")  # fmt: skip
    return p


def credentials_from(args: argparse.Namespace) -> Credentials | None:
    """Credentials from flags/env, else from a tiny_token.json; None when none given."""
    token_file = args.token_file or (
        "tiny_token.json" if Path("tiny_token.json").exists() else None
    )
    if args.refresh_token or not token_file:
        given = {
            "TINY_CLIENT_ID": args.client_id,
            "TINY_CLIENT_SECRET": args.client_secret,
            "TINY_REFRESH_TOKEN": args.refresh_token,
        }
        if not any(given.values()):
            return None
        missing = [name for name, value in given.items() if not value]
        if missing:
            raise ConfigError(f"incomplete Tiny credentials: also set {', '.join(missing)}")
        return Credentials(args.client_id, args.client_secret, args.refresh_token)
    return load_bootstrap_tokens(Path(token_file), args.client_id, args.client_secret)


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from parsed arguments; ConfigError when something is off."""
    try:
        open_statuses = tuple(int(x) for x in str(args.open_statuses).split(",") if x.strip())
    except ValueError:
        raise ConfigError(
            f"--open-statuses must be codes like 0,1,2, got {args.open_statuses!r}"
        ) from None
    if any(not 0 <= s <= 7 for s in open_statuses):
        raise ConfigError("--open-statuses: status codes go from 0 to 7")
    return Settings(
        database_url=args.database_url,
        data_dir=Path(args.data_dir),
        account=args.account,
        api_base_url=args.api_base_url,
        token_url=args.token_url,
        credentials=credentials_from(args),
        rate_limit_per_minute=args.rate_limit,
        max_concurrency=args.max_concurrency,
        request_timeout_s=args.timeout,
        max_retries=args.max_retries,
        detail_budget=args.detail_budget,
        open_statuses=open_statuses,
        closed_statuses=tuple(s for s in range(8) if s not in open_statuses),
        recent_window_days=args.recent_days,
        sweep_interval_s=args.sweep_interval,
        interval_s=args.interval,
        partitions_in_flight=args.partitions,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
    )


def cause_chain(exc: BaseException) -> str:
    """``message (caused by: ...)`` down the ``__cause__`` chain."""
    parts = [str(exc) or type(exc).__name__]
    cause = exc.__cause__
    while cause is not None and len(parts) < 5:
        parts.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__
    return parts[0] + "".join(f"\n  caused by {p}" for p in parts[1:])


async def _run_mode(args: argparse.Namespace, settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def on_signal() -> None:
        if stop.is_set():  # second signal: stop draining
            task.cancel()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal)
    mode = importlib.import_module(f"asyncsync.modes.{args.mode}")
    from .modes.simulate import bundled

    simulated = args.simulator if args.mode != "simulate" else None
    async with bundled(settings, simulated, seed=args.sim_seed,
                       latency_s=args.sim_latency_ms / 1000) as effective:  # fmt: skip
        code: int = await mode.run(effective, args=args, stop=stop)
    return 130 if stop.is_set() and code == 0 and args.mode != "serve" else code


def _runner() -> Callable[[Any], int]:
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    from . import logs

    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    try:
        settings = settings_from(args)
        return _runner()(_run_mode(args, settings))
    except BaseException as exc:  # every failure becomes a sentence and an exit code
        return report_failure(args.mode, exc)


def report_failure(mode: str, exc: BaseException) -> int:
    """Print what went wrong in a sentence (with its causes) and return the exit code."""
    if isinstance(exc, BaseExceptionGroup):  # a safety net: task groups are unwrapped
        exc = first_leaf(exc)
    if isinstance(exc, ConfigError):
        print(f"asyncsync: configuration error: {cause_chain(exc)}", file=sys.stderr)
        return 2
    if isinstance(exc, LockBusy):
        print(f"asyncsync: {exc}", file=sys.stderr)
        return 3
    if isinstance(exc, ReauthorizationRequired):
        print(f"asyncsync: {exc}", file=sys.stderr)
        return 1
    if isinstance(exc, AsyncsyncError):
        print(f"asyncsync: {mode} failed: {cause_chain(exc)}", file=sys.stderr)
        return 1
    if isinstance(exc, OSError):  # a port taken, a directory not writable...
        print(f"asyncsync: {mode} failed: {exc}", file=sys.stderr)
        return 1
    if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError):
        print("asyncsync: interrupted", file=sys.stderr)
        return 130
    raise exc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
