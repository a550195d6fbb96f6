"""Typed options: one frozen value per concern and per mode, with its defaults stated here
once. The CLI (:mod:`asyncsync.flags`) fills them from flags and their environment twins;
tests and benchmarks build them directly.

:func:`load_bootstrap_tokens` reads the user's existing ``tiny_token.json``.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .errors import ConfigError
from .status import ALL_STATUSES, OPEN_STATUSES

DEFAULT_API_BASE_URL = "https://api.tiny.com.br/public-api/v3"
DEFAULT_TOKEN_URL = "https://accounts.tiny.com.br/realms/tiny/protocol/openid-connect/token"
ALL_CODES = tuple(int(s) for s in ALL_STATUSES)
ACCOUNT_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: Orders merged in one transaction when pages stream in faster than the database takes
#: them (a first load). Each transaction costs PostgreSQL about 2 ms of CPU of its own:
#: at 5,000 a first load ran 15-20% faster than at 2,000 (bench_scale.py --batch, six
#: interleaved runs), and 10,000 gained nothing more. A batch that waits on its checkpoint
#: (backfill) or finds the queue empty is merged as it is.
BATCH_ORDERS = 5000


def default_data_dir() -> Path:
    """Where the embedded PostgreSQL keeps its files when no DATABASE_URL is given."""
    base = os.environ.get("XDG_DATA_HOME")
    if not base:
        try:
            base = str(Path.home() / ".local" / "share")
        except RuntimeError:  # no HOME and a uid /etc/passwd lacks (a container's): here
            base = ".local/share"
    return Path(base) / "asyncsync"


@dataclass(frozen=True)
class Credentials:
    """OAuth client credentials and the bootstrap refresh token (never logged)."""

    client_id: str
    client_secret: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    access_expires_at: dt.datetime | None = None


# --- what every mode may use ------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseOptions:
    """Where the mirror lives."""

    database_url: str | None = field(default=None, repr=False)  # None: the embedded server
    data_dir: Path = field(default_factory=default_data_dir)
    statement_timeout_s: float = 120.0  # a frozen database becomes an error after this
    lock_timeout_s: float = 30.0
    reconnect_s: float = 30.0  # a statement is tried again this long while the db is away
    pool_size: int | None = None  # connections at most; None: 4, serve: fit to its slots
    run_history_days: int = 400  # runs older than this are pruned as new ones land; 0: never

    @property
    def rescue_dir(self) -> Path:
        """Where refresh tokens the database could not take wait for it (TokenManager)."""
        return self.data_dir / "rescued-tokens"

    def pool_for(self, slots: int | None = None) -> int:
        """The pool's size: as configured, else 4 for a one-shot run, or for a worker
        running ``slots`` units at once enough that they rarely wait, plus the queue's
        listener, its claims and heartbeats, and the lease session."""
        if self.pool_size is not None:
            return self.pool_size
        return 4 if slots is None else min(slots, 12) + 4


@dataclass(frozen=True)
class TinyOptions:
    """How to reach one Tiny account's API."""

    api_base_url: str = DEFAULT_API_BASE_URL
    token_url: str = DEFAULT_TOKEN_URL
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    token_file: Path | None = None  # a tiny_token.json to bootstrap from
    rate_limit_per_minute: int | None = None  # a ceiling; None: the quota Tiny announces
    quota_share: float = 1.0  # the part of the announced quota this service may use
    max_concurrency: int = 8
    request_timeout_s: float = 30.0
    max_retries: int = 5
    breaker_failures: int = 10  # transport failures, 5xx, proxy pages in a row: "Tiny is down"
    breaker_cooldown_s: float = 60.0  # no request for this long once Tiny is down
    max_answer_mb: float = 50.0  # answers larger than this are refused unread

    def credentials(self) -> Credentials:
        """The credentials, or a ConfigError that says how to provide them.

        The app's client id and secret are always needed; a refresh token only until the
        database holds one (``asyncsync authorize`` stores the first)."""
        token_file = self.token_file or (
            Path("tiny_token.json") if Path("tiny_token.json").exists() else None
        )
        if self.refresh_token or token_file is None:
            given = {"TINY_CLIENT_ID": self.client_id, "TINY_CLIENT_SECRET": self.client_secret}
            if not any(given.values()):
                raise ConfigError(
                    "no Tiny credentials: set TINY_CLIENT_ID and TINY_CLIENT_SECRET (the app's), "
                    "then run `asyncsync authorize` once, or point TINY_TOKEN_FILE at your "
                    "tiny_token.json"
                )
            missing = [name for name, value in given.items() if not value]
            if missing:
                raise ConfigError(f"incomplete Tiny credentials: also set {', '.join(missing)}")
            assert self.client_id and self.client_secret
            return Credentials(self.client_id, self.client_secret, self.refresh_token)
        return load_bootstrap_tokens(token_file, self.client_id, self.client_secret)


@dataclass(frozen=True)
class SimulatorOptions:
    """The bundled Tiny simulator (``--simulator N`` runs any mode against it)."""

    orders: int | None = None
    seed: int = 1
    latency_ms: float = 0.0
    port: int = 8080  # simulate mode
    quota_per_minute: int | None = None  # the simulated plan; None: --rate-limit, else 6000

    def quota(self, tiny: TinyOptions) -> int:
        return self.quota_per_minute or tiny.rate_limit_per_minute or 6000


@dataclass(frozen=True)
class OutputOptions:
    """Logs and reports."""

    log_level: str = "INFO"
    log_format: str = "auto"  # auto | json | text
    json_path: Path | None = None  # write the report as JSON here; Path("-"): to stdout
    json_append: bool = False  # add the report as a line (--all-accounts: one an account)

    @property
    def json_to_stdout(self) -> bool:
        return self.json_path == STDOUT


#: ``--json`` with no file: the JSON goes to standard output instead of the table.
STDOUT = Path("-")


#: After SIGTERM/SIGINT, seconds the drain (requests in flight, merging what arrived) may
#: take before the run is cut: under Kubernetes' default 30 s grace period.
DRAIN_S = 25.0


@dataclass(frozen=True)
class RunOptions:
    """What a one-shot run (sync, backfill, integrity, retry, failures) may be told."""

    wait_lock_s: float = 0.0  # wait this long for the account's run lock before exit 3
    all_accounts: bool = False  # run for every enabled account in turn
    metrics_textfile: Path | None = None  # write the metrics here at the end (node-exporter)
    drain_s: float = DRAIN_S  # after SIGTERM/SIGINT, how long the drain may take


@dataclass(frozen=True)
class CommonOptions:
    """What every mode is given besides its own options."""

    account: str = "default"
    database: DatabaseOptions = field(default_factory=DatabaseOptions)
    tiny: TinyOptions = field(default_factory=TinyOptions)
    simulator: SimulatorOptions = field(default_factory=SimulatorOptions)
    output: OutputOptions = field(default_factory=OutputOptions)
    run: RunOptions = field(default_factory=RunOptions)

    def __post_init__(self) -> None:
        if not ACCOUNT_KEY.fullmatch(self.account):
            raise ConfigError(
                f"account must be 1 to 64 letters, digits, '.', '_' or '-', got {self.account!r}"
            )


# --- one value per mode ------------------------------------------------------------------


#: Detail requests a run may spend: a number, None for no limit, or what to ask once the
#: details pass starts (serve's default follows the quota, which Tiny announces only in
#: its answers: reckoned before the listing, it was the 120 a minute assumed till then).
DetailBudget = int | Callable[[], int] | None


@dataclass(frozen=True)
class CycleOptions:
    """How a sync lists and enriches (a one-shot sync and every serve cycle)."""

    detail_budget: DetailBudget = None  # detail requests per run; None: no limit
    open_statuses: tuple[int, ...] = tuple(int(s) for s in OPEN_STATUSES)
    recent_days: int = 45
    sweep_interval_s: float = 86400.0
    page_size: int = 100
    batch_size: int = BATCH_ORDERS
    queue_pages: int = 32

    @property
    def closed_statuses(self) -> tuple[int, ...]:
        return tuple(s for s in ALL_CODES if s not in self.open_statuses)


@dataclass(frozen=True)
class SyncOptions:
    """``--mode sync``."""

    full: bool = False
    cycle: CycleOptions = field(default_factory=CycleOptions)


@dataclass(frozen=True)
class ServeOptions:
    """``--mode serve``."""

    interval_s: float = 900.0
    metrics_host: str = "127.0.0.1"  # a container publishes it: set 0.0.0.0 inside one
    metrics_port: int | None = None
    cycle: CycleOptions = field(default_factory=CycleOptions)
    slots: int = 16  # units this worker runs at once (each its own account)
    background_slots: int = 2  # backfill months at once, every worker; as many integrity checks
    heartbeat_s: float = 30.0  # a unit whose worker is silent this long is taken over
    integrity_interval_s: float = 86400.0  # between integrity checks of an account; 0: never
    drain_s: float = DRAIN_S  # after SIGTERM/SIGINT, how long the drain may take

    def detail_budget(self, rate_per_minute: int) -> int:
        """Detail requests one cycle may spend: the configured budget, else about 70% of
        what the quota allows in one interval (at least 500), so a long backlog of details
        never delays the next cycle much (it resumes where it stopped, open orders first)."""
        configured = self.cycle.detail_budget
        if isinstance(configured, int):
            return configured
        return max(500, int(rate_per_minute * self.interval_s / 60 * 0.7))


@dataclass(frozen=True)
class BackfillOptions:
    """``--mode backfill``."""

    date_from: dt.date | None = None  # a month (its first day); None: 2014-01
    date_to: dt.date | None = None  # a month (its first day); None: this month
    partitions: int = 5
    enqueue: bool = False  # put the months on the work queue for the workers instead
    detail_budget: int | None = None
    page_size: int = 100
    batch_size: int = BATCH_ORDERS
    queue_pages: int = 32


@dataclass(frozen=True)
class IntegrityOptions:
    """``--mode integrity``."""

    deep: bool = False
    page_size: int = 100


@dataclass(frozen=True)
class RetryOptions:
    """``--mode retry``."""


@dataclass(frozen=True)
class HealthOptions:
    """``--mode health``."""

    interval_s: float = 900.0
    all_accounts: bool = False  # every enabled account, a line each


@dataclass(frozen=True)
class StatusOptions:
    """``asyncsync status``."""

    all_accounts: bool = False  # every account, a line each
    interval_s: float = 900.0  # the serve interval: fresh within three of them
    full: bool = False  # with all_accounts: each account's tables, not a line each


#: What ``asyncsync failures`` can do.
FAILURE_ACTIONS = ("list", "retry", "ignore")
#: The states ``asyncsync failures list --state`` selects.
FAILURE_STATES = ("open", "pending", "review", "ignored", "resolved", "all")


@dataclass(frozen=True)
class FailuresOptions:
    """``asyncsync failures list|retry|ignore [IDS]``."""

    action: str = "list"
    ids: tuple[int, ...] = ()
    every: bool = False  # retry/ignore every failure left for manual review
    state: str = "open"  # list: which failures
    limit: int = 100  # list: at most this many rows


#: What ``asyncsync accounts`` can do.
ACCOUNT_ACTIONS = ("list", "add", "disable", "enable", "remove")


@dataclass(frozen=True)
class AccountsOptions:
    """``asyncsync accounts list|add|disable|enable|remove [KEY]``. ``add`` takes the
    account's URLs, client id and quota share from the Tiny flags (``--api-base-url``,
    ``--token-url``, ``--client-id``, ``--quota-share``) and its secrets by reference."""

    action: str = "list"
    key: str | None = None
    client_secret_env: str | None = None
    client_secret_file: Path | None = None
    store_client_secret: bool = False  # opt in: keep --client-secret in the database
    refresh_token_env: str | None = None
    refresh_token_file: Path | None = None


@dataclass(frozen=True)
class MigrateOptions:
    """``--mode migrate``."""


@dataclass(frozen=True)
class AuthorizeOptions:
    """``--mode authorize``: the first authorization of the app, in a browser."""

    redirect_uri: str = "http://127.0.0.1:8765/callback"  # as registered for the app in Tiny
    auth_url: str | None = None  # None: the token URL's sibling .../auth
    timeout_s: float = 600.0  # how long to wait for the person

    def authorization_url(self, token_url: str) -> str:
        if self.auth_url:
            return self.auth_url
        head, _, last = token_url.rstrip("/").rpartition("/")
        return f"{head}/auth" if last == "token" else token_url.rstrip("/") + "/auth"


@dataclass(frozen=True)
class SimulateOptions:
    """``--mode simulate`` (its figures are in :class:`SimulatorOptions`)."""


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def load_bootstrap_tokens(
    path: Path, client_id: str | None, client_secret: str | None
) -> Credentials:
    """Read a ``tiny_token.json``: ``refresh_token`` plus optional ``access_token``,
    ``expires_at`` (epoch seconds or ISO 8601), ``client_id`` and ``client_secret``."""
    file = f"the token file {path} (--token-file, TINY_TOKEN_FILE)"
    try:
        data: Any = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{file} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{file} cannot be read: {exc.strerror or exc}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{file} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("refresh_token"), str):
        raise ConfigError(f"{file} has no refresh_token")
    cid = client_id or data.get("client_id")
    secret = client_secret or data.get("client_secret")
    if not cid or not secret:
        raise ConfigError(
            # Not "client_secret: ...": the redaction of secret fields would mask the word.
            f"{file} has no client_id/client_secret; set TINY_CLIENT_ID and TINY_CLIENT_SECRET"
        )
    expires: dt.datetime | None = None
    raw_exp = data.get("expires_at")
    if isinstance(raw_exp, int | float):
        try:  # milliseconds (JavaScript's Date.now()) are past the year 9999
            expires = dt.datetime.fromtimestamp(raw_exp, dt.UTC)
        except (OverflowError, OSError, ValueError):
            said = f"{file}: expires_at {raw_exp!r} is no epoch time in seconds"
            raise ConfigError(said) from None
    elif isinstance(raw_exp, str):
        try:
            expires = dt.datetime.fromisoformat(raw_exp)
        except ValueError:
            raise ConfigError(f"{file}: unreadable expires_at {raw_exp!r}") from None
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=dt.UTC)
    if expires is not None and expires < _EPOCH:
        # Go's zero time (0001-01-01T00:00:00Z) says "unknown": no expiry to go by, so
        # the access token is not used (its renewal, 5 minutes earlier, is no date).
        expires = None
    access = data.get("access_token") if isinstance(data.get("access_token"), str) else None
    return Credentials(
        client_id=str(cid),
        client_secret=str(secret),
        refresh_token=data["refresh_token"],
        access_token=access if expires else None,
        access_expires_at=expires if access else None,
    )
