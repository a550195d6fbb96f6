"""Every command-line flag, its environment twin, and how its text becomes a typed value.

One table (:data:`FLAGS`) binds each flag to a field of an options dataclass in
:mod:`asyncsync.options`, which states the default. A value is validated by the same
parser whether it came from a flag or from the environment, and a bad one is a
:class:`~asyncsync.errors.ConfigError` naming where it came from (``--rate-limit`` or
``TINY_RATE_LIMIT_PER_MINUTE``). Flags win over environment variables.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .options import (
    ACCOUNT_KEY,
    AuthorizeOptions,
    BackfillOptions,
    CommonOptions,
    CycleOptions,
    DatabaseOptions,
    HealthOptions,
    IntegrityOptions,
    MigrateOptions,
    OutputOptions,
    RetryOptions,
    ServeOptions,
    SimulateOptions,
    SimulatorOptions,
    SyncOptions,
    TinyOptions,
)

Parser = Callable[[str], object]

# --- parsers: text in, a value or ValueError("must be ..., got ...") out -----------------


def text(raw: str) -> str:
    return raw


def integer(minimum: int, maximum: int | None = None) -> Parser:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"must be a whole number, got {raw!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            span = f"from {minimum} to {maximum}" if maximum is not None else f"≥ {minimum}"
            raise ValueError(f"must be {span}, got {value}")
        return value

    return parse


def number(minimum: float, *, strict: bool = False) -> Parser:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"must be a number, got {raw!r}") from None
        if value != value or value < minimum or (strict and value == minimum):
            raise ValueError(f"must be {'>' if strict else '≥'} {minimum:g}, got {raw!r}")
        return value

    return parse


def fraction(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError(f"must be a number, got {raw!r}") from None
    if not 0 < value <= 1:
        raise ValueError(f"must be more than 0 and at most 1, got {raw!r}")
    return value


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"must be true or false (1/0, yes/no, on/off), got {raw!r}")


def choice(*allowed: str, fold: Callable[[str], str] = str.lower) -> Parser:
    def parse(raw: str) -> str:
        value = fold(raw.strip())
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {raw!r}")
        return value

    return parse


def http_url(raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http(s) URL, got {raw!r}")
    return raw.strip()


def dsn(raw: str) -> str:
    """A PostgreSQL URL; the message never repeats a password."""
    value = raw.strip()
    try:
        parts = urlsplit(value)
        port = parts.port  # raises on a port that is not a number
        host = parts.hostname
    except ValueError as exc:
        raise ValueError(f"is not a valid PostgreSQL URL ({exc})") from None
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"must start with postgresql://, got {parts.scheme or 'no'} scheme")
    if not host and "host=" not in parts.query:
        raise ValueError("names no host (postgresql://user@host:5432/database)")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"has port {port}, outside 1..65535")
    return value


def status_codes(raw: str) -> tuple[int, ...]:
    try:
        codes = tuple(int(x) for x in raw.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"must be status codes like 0,1,2, got {raw!r}") from None
    if not codes or any(not 0 <= c <= 7 for c in codes):
        raise ValueError(f"must be status codes from 0 to 7, got {raw!r}")
    return codes


def month(raw: str) -> dt.date:
    """``"2014-01"`` → ``date(2014, 1, 1)``."""
    year, _, mon = raw.strip().partition("-")
    if not (len(year) == 4 and year.isdigit() and len(mon) == 2 and mon.isdigit()):
        raise ValueError(f"must be a month like 2014-01, got {raw!r}")
    if not 1 <= int(mon) <= 12 or int(year) < 1900:
        raise ValueError(f"must be a month like 2014-01, got {raw!r}")
    return dt.date(int(year), int(mon), 1)


def path(raw: str) -> Path:
    if not raw.strip():
        raise ValueError("must be a path, got nothing")
    return Path(raw).expanduser()


def account_key(raw: str) -> str:
    value = raw.strip()
    if not ACCOUNT_KEY.fullmatch(value):
        raise ValueError(f"must be 1 to 64 letters, digits, '.', '_' or '-', got {raw!r}")
    return value


# --- the table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    """One option: its flag, its environment twin, and the options field it fills."""

    flag: str
    env: str
    target: type
    field: str
    parse: Parser
    help: str
    boolean: bool = False
    metavar: str | None = None
    secret: bool = False  # its value never appears in help or messages


F = Flag
FLAGS: tuple[Flag, ...] = (
    # account, database
    F("--account", "ASYNCSYNC_ACCOUNT", CommonOptions, "account", account_key,
      "key of the Tiny account in every table", metavar="KEY"),
    F("--database-url", "DATABASE_URL", DatabaseOptions, "database_url", dsn,
      "PostgreSQL URL; absent: an embedded PostgreSQL under --data-dir", metavar="URL",
      secret=True),
    F("--data-dir", "ASYNCSYNC_DATA_DIR", DatabaseOptions, "data_dir", path,
      "embedded PostgreSQL data directory", metavar="DIR"),
    F("--statement-timeout", "ASYNCSYNC_STATEMENT_TIMEOUT_S", DatabaseOptions,
      "statement_timeout_s", number(1), "seconds a statement may take before it is an "
      "error (a frozen database)", metavar="S"),
    F("--lock-timeout", "ASYNCSYNC_LOCK_TIMEOUT_S", DatabaseOptions, "lock_timeout_s",
      number(1), "seconds a statement may wait for a lock", metavar="S"),
    F("--db-reconnect", "ASYNCSYNC_DB_RECONNECT_S", DatabaseOptions, "reconnect_s",
      number(0), "seconds a statement is tried again while the database is unreachable",
      metavar="S"),
    # Tiny
    F("--api-base-url", "TINY_API_BASE_URL", TinyOptions, "api_base_url", http_url,
      "Tiny API base URL", metavar="URL"),
    F("--token-url", "TINY_TOKEN_URL", TinyOptions, "token_url", http_url,
      "OAuth token endpoint", metavar="URL"),
    F("--client-id", "TINY_CLIENT_ID", TinyOptions, "client_id", text, "OAuth client id"),
    F("--client-secret", "TINY_CLIENT_SECRET", TinyOptions, "client_secret", text,
      "OAuth client secret", secret=True),
    F("--refresh-token", "TINY_REFRESH_TOKEN", TinyOptions, "refresh_token", text,
      "bootstrap refresh token (the newest one is kept in the database)", secret=True),
    F("--token-file", "TINY_TOKEN_FILE", TinyOptions, "token_file", path,
      "tiny_token.json to bootstrap from (./tiny_token.json if present)", metavar="PATH"),
    F("--rate-limit", "TINY_RATE_LIMIT_PER_MINUTE", TinyOptions, "rate_limit_per_minute",
      integer(1), "ceiling on requests per minute (default: none, the pace follows the "
      "account's quota from X-RateLimit-Limit)", metavar="N"),
    F("--quota-share", "TINY_QUOTA_SHARE", TinyOptions, "quota_share", fraction,
      "part of the account's quota to use, leaving the rest to its other apps",
      metavar="FRACTION"),
    F("--max-concurrency", "TINY_MAX_CONCURRENCY", TinyOptions, "max_concurrency",
      integer(1, 256), "requests in flight, at most", metavar="N"),
    F("--timeout", "TINY_REQUEST_TIMEOUT_S", TinyOptions, "request_timeout_s",
      number(0, strict=True), "seconds per request", metavar="S"),
    F("--max-retries", "TINY_MAX_RETRIES", TinyOptions, "max_retries", integer(1, 100),
      "tries per request on 5xx, 429 and timeouts", metavar="N"),
    F("--breaker-failures", "TINY_BREAKER_FAILURES", TinyOptions, "breaker_failures",
      integer(1, 1000), "transport failures or 5xx in a row after which Tiny is taken "
      "for down: the run fails, serve waits for the cool-down", metavar="N"),
    F("--breaker-cooldown", "TINY_BREAKER_COOLDOWN_S", TinyOptions, "breaker_cooldown_s",
      number(1), "seconds without requests once Tiny is down", metavar="S"),
    F("--max-answer-mb", "TINY_MAX_ANSWER_MB", TinyOptions, "max_answer_mb",
      number(0, strict=True), "answers larger than this are refused unread", metavar="MB"),
    # bundled simulator
    F("--simulator", "ASYNCSYNC_SIMULATOR_ORDERS", SimulatorOptions, "orders", integer(1),
      "run against the bundled Tiny simulator with this many orders", metavar="N"),
    F("--sim-seed", "ASYNCSYNC_SIM_SEED", SimulatorOptions, "seed", integer(0),
      "simulator seed", metavar="N"),
    F("--sim-latency-ms", "ASYNCSYNC_SIM_LATENCY_MS", SimulatorOptions, "latency_ms",
      number(0), "simulator latency per request", metavar="MS"),
    F("--sim-port", "ASYNCSYNC_SIM_PORT", SimulatorOptions, "port", integer(0, 65535),
      "simulate: port to listen on", metavar="PORT"),
    F("--sim-quota", "ASYNCSYNC_SIM_QUOTA_PER_MINUTE", SimulatorOptions, "quota_per_minute",
      integer(1), "the simulated plan's requests per minute (default: --rate-limit, else "
      "6000)", metavar="N"),
    # output
    F("--log-level", "ASYNCSYNC_LOG_LEVEL", OutputOptions, "log_level",
      choice("DEBUG", "INFO", "WARNING", "ERROR", fold=str.upper), "log level"),
    F("--log-format", "ASYNCSYNC_LOG_FORMAT", OutputOptions, "log_format",
      choice("auto", "json", "text"), "log format (auto: text on a terminal, else json)"),
    F("--json", "ASYNCSYNC_JSON_REPORT", OutputOptions, "json_path", path,
      "write the run report as JSON to this file", metavar="PATH"),
    # sync and serve cycles
    F("--detail-budget", "ASYNCSYNC_DETAIL_BUDGET", CycleOptions, "detail_budget", integer(0),
      "most detail requests per run (default: no limit; serve: ~70%% of an interval's quota)",
      metavar="N"),
    F("--open-statuses", "ASYNCSYNC_OPEN_STATUSES", CycleOptions, "open_statuses",
      status_codes, "status codes listed completely every cycle", metavar="CODES"),
    F("--recent-days", "ASYNCSYNC_RECENT_DAYS", CycleOptions, "recent_days", integer(1),
      "closed statuses are listed over this many recent days each cycle", metavar="DAYS"),
    F("--sweep-interval", "ASYNCSYNC_SWEEP_INTERVAL_S", CycleOptions, "sweep_interval_s",
      number(60), "seconds between complete listings of closed statuses", metavar="S"),
    F("--full", "ASYNCSYNC_FULL", SyncOptions, "full", boolean, "force a full sync",
      boolean=True),
    # serve
    F("--interval", "ASYNCSYNC_INTERVAL_S", ServeOptions, "interval_s", number(1),
      "seconds between cycles", metavar="S"),
    F("--metrics-port", "ASYNCSYNC_METRICS_PORT", ServeOptions, "metrics_port",
      integer(0, 65535), "serve Prometheus /metrics on this port (0: any free port)",
      metavar="PORT"),
    F("--metrics-host", "ASYNCSYNC_METRICS_HOST", ServeOptions, "metrics_host", text,
      "address /metrics listens on", metavar="HOST"),
    # backfill
    F("--from", "ASYNCSYNC_FROM", BackfillOptions, "date_from", month,
      "first month, YYYY-MM (default 2014-01)", metavar="MONTH"),
    F("--to", "ASYNCSYNC_TO", BackfillOptions, "date_to", month,
      "last month, YYYY-MM (default: this month)", metavar="MONTH"),
    F("--partitions", "ASYNCSYNC_PARTITIONS", BackfillOptions, "partitions", integer(1, 64),
      "month × status partitions paged at once", metavar="N"),
    F("--detail-budget", "ASYNCSYNC_DETAIL_BUDGET", BackfillOptions, "detail_budget",
      integer(0), "most detail requests after the listing (default: no limit)", metavar="N"),
    # authorize
    F("--redirect-uri", "TINY_REDIRECT_URI", AuthorizeOptions, "redirect_uri", http_url,
      "the redirect URI registered for the app in Tiny; a 127.0.0.1/localhost one is "
      "caught here, any other is pasted back", metavar="URL"),
    F("--auth-url", "TINY_AUTH_URL", AuthorizeOptions, "auth_url", http_url,
      "OAuth authorization endpoint (default: the token URL's .../auth)", metavar="URL"),
    F("--authorize-timeout", "ASYNCSYNC_AUTHORIZE_TIMEOUT_S", AuthorizeOptions, "timeout_s",
      number(1), "seconds to wait for the person to authorize", metavar="S"),
    # integrity, health
    F("--deep", "ASYNCSYNC_DEEP", IntegrityOptions, "deep", boolean,
      "compare every id even when the totals agree", boolean=True),
    F("--interval", "ASYNCSYNC_INTERVAL_S", HealthOptions, "interval_s", number(1),
      "the serve interval: healthy when synced within three of them (at least an hour)",
      metavar="S"),
)  # fmt: skip

#: Group titles in ``--help``, in display order.
TITLES: dict[type, str] = {
    SyncOptions: "sync",
    CycleOptions: "sync and serve cycles",
    ServeOptions: "serve",
    BackfillOptions: "backfill",
    IntegrityOptions: "integrity",
    HealthOptions: "health",
    AuthorizeOptions: "authorize",
    CommonOptions: "account",
    DatabaseOptions: "database",
    TinyOptions: "Tiny API",
    SimulatorOptions: "bundled simulator",
    OutputOptions: "output",
}

_EVERYTHING = (CommonOptions, DatabaseOptions, TinyOptions, SimulatorOptions, OutputOptions)
_LOCAL = (CommonOptions, DatabaseOptions, OutputOptions)


@dataclass(frozen=True)
class Mode:
    """A ``--mode``: its options value and the flag groups it reads."""

    options: type
    groups: tuple[type, ...]
    help: str


MODES: dict[str, Mode] = {
    "sync": Mode(SyncOptions, (SyncOptions, CycleOptions, *_EVERYTHING),
                 "a full sync the first time, an incremental cycle after"),
    "serve": Mode(ServeOptions, (ServeOptions, CycleOptions, *_EVERYTHING),
                  "the service: a cycle every --interval, retries, /metrics"),
    "backfill": Mode(BackfillOptions, (BackfillOptions, *_EVERYTHING),
                     "the history, month by month, checkpointed and resumable"),
    "integrity": Mode(IntegrityOptions, (IntegrityOptions, *_EVERYTHING),
                      "compare the mirror with the API and fix it"),
    "retry": Mode(RetryOptions, _EVERYTHING, "retry failed imports that are due"),
    "health": Mode(HealthOptions, (HealthOptions, *_LOCAL),
                   "exit 0 when the mirror was synced recently"),
    "migrate": Mode(MigrateOptions, _LOCAL, "create or update the schema"),
    "authorize": Mode(AuthorizeOptions, (AuthorizeOptions, *_EVERYTHING),
                      "first authorization: a person logs in to Tiny, the tokens are stored"),
    "simulate": Mode(SimulateOptions, (SimulatorOptions, TinyOptions, OutputOptions),
                     "serve the bundled Tiny simulator"),
}  # fmt: skip


def _default_text(cls: type, name: str) -> str:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                value = f.default
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                return ""
            if value is None or value is False:
                return ""
            if isinstance(value, tuple):
                value = ",".join(str(v) for v in value)
            return f" (default: {value})".replace("%", "%%")
    raise AssertionError(f"{cls.__name__} has no field {name}")


def _add(parser: argparse.ArgumentParser | Any, flag: Flag) -> None:
    help_text = f"{flag.help}{'' if flag.secret else _default_text(flag.target, flag.field)}"
    help_text += f" [env: {flag.env}]"
    dest = f"{flag.target.__name__}.{flag.field}"
    if flag.boolean:
        parser.add_argument(
            flag.flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
            help=help_text,
        )  # fmt: skip
    else:
        parser.add_argument(flag.flag, dest=dest, default=None, help=help_text,
                            metavar=flag.metavar or "TEXT")  # fmt: skip


def build_parser(mode: str | None) -> argparse.ArgumentParser:
    """The parser of one mode; with None, every mode's groups (for ``--help``)."""
    prog = "asyncsync" if mode is None else f"asyncsync {mode}"
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Mirror Tiny ERP service orders into PostgreSQL. Usage: asyncsync MODE [options] "
            "(or --mode MODE / ASYNCSYNC_MODE). Modes: "
            + "; ".join(f"{name}: {m.help}" for name, m in MODES.items())
            + ". Every flag has an environment variable; flags win."
        ),
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"asyncsync {__version__}")
    parser.add_argument(
        "--mode", metavar="MODE", default=None,
        help=f"what to run, also the first word: {', '.join(MODES)} (default: sync) "
        "[env: ASYNCSYNC_MODE]",
    )  # fmt: skip
    groups = list(TITLES) if mode is None else [g for g in TITLES if g in MODES[mode].groups]
    shown: set[str] = set()  # a flag several modes share (--interval) is shown once
    for cls in groups:
        group = parser.add_argument_group(TITLES[cls])
        for flag in FLAGS:
            if flag.target is cls and flag.flag not in shown:
                shown.add(flag.flag)
                _add(group, flag)
    return parser


def pick_mode(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[str | None, list[str]]:
    """The mode (first positional word, ``--mode``, or ``ASYNCSYNC_MODE``) and the rest."""
    rest = list(argv)
    named: tuple[str, str] | None = None
    if rest and not rest[0].startswith("-"):
        named = (rest.pop(0), "the mode")
    for i, arg in enumerate(rest):
        if arg == "--mode" and i + 1 < len(rest):
            named = (rest[i + 1], "--mode")
            del rest[i : i + 2]
            break
        if arg.startswith("--mode="):
            named = (arg.split("=", 1)[1], "--mode")
            del rest[i]
            break
    if named is None and environ.get("ASYNCSYNC_MODE"):
        named = (environ["ASYNCSYNC_MODE"], "ASYNCSYNC_MODE")
    if named is None:
        return None, rest
    value, source = named
    if value not in MODES:
        raise ConfigError(f"{source} must be one of {', '.join(MODES)}, got {value!r}")
    return value, rest


def read_values(
    ns: argparse.Namespace, environ: Mapping[str, str], groups: Sequence[type]
) -> dict[tuple[type, str], object]:
    """Parse every flag of ``groups`` given as a flag or an env var; (class, field) → value."""
    values: dict[tuple[type, str], object] = {}
    for flag in FLAGS:
        if flag.target not in groups:
            continue
        given = getattr(ns, f"{flag.target.__name__}.{flag.field}", None)
        if given is not None and flag.boolean:
            values[(flag.target, flag.field)] = given
            continue
        source, raw = (flag.flag, given) if given is not None else (flag.env, environ.get(flag.env))
        if raw is None or (raw == "" and source == flag.env):
            continue  # unset, or set to nothing: the default
        try:
            values[(flag.target, flag.field)] = flag.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source} {exc}") from None
    return values


def build(cls: type, values: Mapping[tuple[type, str], object]) -> Any:
    """An instance of the options dataclass ``cls``, nested groups included."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = build(hints[f.name], values)
        elif (cls, f.name) in values:
            kwargs[f.name] = values[(cls, f.name)]
    return cls(**kwargs)


@dataclass(frozen=True)
class Invocation:
    """What the command line asks for."""

    mode: str
    common: CommonOptions
    options: Any


def parse(argv: Sequence[str], environ: Mapping[str, str]) -> Invocation:
    """Mode and options from ``argv`` and ``environ``; ConfigError when something is off.

    ``--help`` and ``--version`` print and exit (SystemExit), as argparse does.
    """
    mode, rest = pick_mode(argv, environ)
    if mode is None:
        if any(a in ("-h", "--help", "--version") for a in rest):
            build_parser(None).parse_args(rest)
        mode = "sync"
    spec = MODES[mode]
    ns = build_parser(mode).parse_args(rest)
    values = read_values(ns, environ, spec.groups)
    return Invocation(mode, build(CommonOptions, values), build(spec.options, values))
