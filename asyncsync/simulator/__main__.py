"""``python -m asyncsync.simulator``: run the Tiny API simulator until SIGINT/SIGTERM.

Every flag also reads a ``TINY_SIM_*`` environment variable (shown in ``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import serve
from .data import Quirks, SimConfig

SITUACAO_QUIRKS = ("int", "str", "label", "mixed", "unstable")
WINDOW_QUIRKS = ("end-exclusive", "start-exclusive", "exclusive")
QUIRK_NAMES = (*SITUACAO_QUIRKS, "zero-dates", "money-strings", "no-paginacao", *WINDOW_QUIRKS,
               "forma-pagamento")  # fmt: skip


def parse_quirks(text: str) -> Quirks:
    """``"label,zero-dates"`` -> ``Quirks(situacao_style="label", zero_dates=True)``."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in QUIRK_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown quirk(s) {unknown}; choose from {QUIRK_NAMES}")
    styles = [n for n in names if n in SITUACAO_QUIRKS]
    if len(styles) > 1:
        raise argparse.ArgumentTypeError(f"choose one situacao style, not {styles}")
    windows = [n for n in names if n in WINDOW_QUIRKS]
    if len(windows) > 1:
        raise argparse.ArgumentTypeError(f"choose one date window, not {windows}")
    return Quirks(
        situacao_style=styles[0] if styles else "int",
        zero_dates="zero-dates" in names,
        money_as_string="money-strings" in names,
        omit_paginacao="no-paginacao" in names,
        date_window=windows[0] if windows else "inclusive",
        forma_pagamento="forma-pagamento" in names,
    )


def _env(name: str, default: str) -> str:
    return os.environ.get(f"TINY_SIM_{name}", default)


def error_rate(text: str) -> float:
    """A fraction from 0 to 1 (an injected-error rate)."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a rate must be from 0 to 1, not {text}")
    return value


def uri_list(text: str) -> tuple[str, ...]:
    """``"http://a/cb,http://b/cb"`` -> a tuple of redirect URIs."""
    return tuple(u.strip() for u in text.split(",") if u.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m asyncsync.simulator",
        description="Serve a simulated Tiny ERP API v3 (service orders + OAuth2 endpoints).",
    )

    def opt(flag: str, env: str, default: str, type_: Callable[[str], Any], help_: str) -> None:
        p.add_argument(
            flag,
            type=type_,
            default=_env(env, default),  # a string default: argparse converts and reports it
            help=f"{help_} (env TINY_SIM_{env}, default %(default)s)",
        )

    opt("--host", "HOST", "127.0.0.1", str, "address to bind")
    opt("--port", "PORT", "8080", int, "port to bind, 0 for a free one")
    opt("--orders", "ORDERS", "5000", int, "how many orders to generate")
    opt("--seed", "SEED", "1", int, "generator seed")
    opt("--start-year", "START_YEAR", "2014", int, "first emission year")
    opt("--rate-limit", "RATE_LIMIT", "120", int, "requests allowed per window")
    opt("--rate-window-s", "RATE_WINDOW_S", "60", float, "rate window length, seconds")
    opt("--latency-ms", "LATENCY_MS", "0", float, "added to every API response, ms")
    opt("--max-limit", "MAX_LIMIT", "100", int, "cap on the limit parameter")
    opt("--access-ttl-s", "ACCESS_TTL_S", "14400", float, "access token lifetime, seconds")
    opt("--refresh-ttl-s", "REFRESH_TTL_S", "86400", float, "refresh token lifetime, seconds")
    opt("--code-ttl-s", "CODE_TTL_S", "60", float, "authorization code lifetime, seconds")
    opt(
        "--redirect-uris",
        "REDIRECT_URIS",
        "",
        uri_list,
        "comma list of registered redirect URIs; empty accepts any http loopback URI",
    )
    opt(
        "--detail-error-rate",
        "DETAIL_ERROR_RATE",
        "0",
        error_rate,
        "fraction of detail requests answering 500",
    )
    opt(
        "--list-error-rate",
        "LIST_ERROR_RATE",
        "0",
        error_rate,
        "fraction of list requests answering 500",
    )
    p.add_argument(
        "--quirks",
        type=parse_quirks,
        default=_env("QUIRKS", ""),
        help=f"comma list of {', '.join(QUIRK_NAMES)} (env TINY_SIM_QUIRKS)",
    )
    p.add_argument(
        "--no-rotate",
        action="store_true",
        default=_env("NO_ROTATE", "") not in ("", "0", "false"),
        help="keep one refresh token instead of rotating (env TINY_SIM_NO_ROTATE)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The :class:`SimConfig` that parsed flags describe."""
    return SimConfig(
        orders=args.orders,
        seed=args.seed,
        start_year=args.start_year,
        rate_limit_per_minute=args.rate_limit,
        rate_window_s=args.rate_window_s,
        latency_s=args.latency_ms / 1000,
        max_limit=args.max_limit,
        quirks=args.quirks,
        rotate_refresh_tokens=not args.no_rotate,
        access_ttl_s=args.access_ttl_s,
        refresh_ttl_s=args.refresh_ttl_s,
        code_ttl_s=args.code_ttl_s,
        redirect_uris=args.redirect_uris,
        detail_error_rate=args.detail_error_rate,
        list_error_rate=args.list_error_rate,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        asyncio.run(serve(config_from_args(args), args.host, args.port))
    except KeyboardInterrupt:  # a second Ctrl-C, or a platform without signal handlers
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
