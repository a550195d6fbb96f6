"""The table of every flag: its environment twin, the options field it fills, its parser,
and which groups of flags each mode reads (:data:`MODES`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import (
    ACCOUNT_ACTIONS,
    FAILURE_ACTIONS,
    FAILURE_STATES,
    STDOUT,
    AccountsOptions,
    AuthorizeOptions,
    BackfillOptions,
    CommonOptions,
    CycleOptions,
    DatabaseOptions,
    FailuresOptions,
    HealthOptions,
    IntegrityOptions,
    MigrateOptions,
    OutputOptions,
    RetryOptions,
    RunOptions,
    ServeOptions,
    SimulateOptions,
    SimulatorOptions,
    StatusOptions,
    SyncOptions,
    TinyOptions,
)
from ..parsers import (
    PG_TIMEOUT_MAX_S,
    Parser,
    account_key,
    boolean,
    choice,
    credential,
    dsn,
    env_name,
    fraction,
    host,
    http_url,
    integer,
    month,
    number,
    order_ids,
    path,
    status_codes,
    textfile,
    writable_file,
)

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
    const: str | None = None  # the value of the flag given alone (``--json``)
    nargs: str | None = None  # positionals (no leading ``--``): ``?`` or ``*``

    @property
    def positional(self) -> bool:
        return not self.flag.startswith("-")


F = Flag
#: Days of run history at most: the cutoff (the database's now() less this many days) must
#: be a timestamp PostgreSQL holds (4713 BC), or recording every run failed ('timestamp out
#: of range'), and past 999,999,999 days Python's timedelta could not hold it at all.
RUN_HISTORY_DAYS_MAX = 1_000_000
#: Days of a cycle's emission window at most: a century is every order Tiny holds, and
#: past about 740,000 days the window's first day is before the year 1 (no date).
RECENT_DAYS_MAX = 36_500


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
      "statement_timeout_s", number(1, maximum=PG_TIMEOUT_MAX_S),
      "seconds a statement may take before it is an error (a frozen database); a "
      "transaction idle this long (a frozen process) is ended", metavar="S"),
    F("--lock-timeout", "ASYNCSYNC_LOCK_TIMEOUT_S", DatabaseOptions, "lock_timeout_s",
      number(1, maximum=PG_TIMEOUT_MAX_S), "seconds a statement may wait for a lock",
      metavar="S"),
    F("--db-reconnect", "ASYNCSYNC_DB_RECONNECT_S", DatabaseOptions, "reconnect_s",
      number(0), "seconds a statement is tried again while the database is unreachable",
      metavar="S"),
    F("--db-pool-size", "ASYNCSYNC_DB_POOL_SIZE", DatabaseOptions, "pool_size",
      integer(2, 500), "database connections at most (default: 4; serve: its slots, at "
      "most 12, plus 4)", metavar="N"),
    F("--run-history-days", "ASYNCSYNC_RUN_HISTORY_DAYS", DatabaseOptions,
      "run_history_days", integer(0, RUN_HISTORY_DAYS_MAX), "days of sync_runs kept (the "
      "newest run and the newest successful one of each mode always are); 0 keeps every "
      "run", metavar="DAYS"),
    # Tiny
    F("--api-base-url", "TINY_API_BASE_URL", TinyOptions, "api_base_url", http_url,
      "Tiny API base URL", metavar="URL"),
    F("--token-url", "TINY_TOKEN_URL", TinyOptions, "token_url", http_url,
      "OAuth token endpoint", metavar="URL"),
    F("--client-id", "TINY_CLIENT_ID", TinyOptions, "client_id", credential, "OAuth client id"),
    F("--client-secret", "TINY_CLIENT_SECRET", TinyOptions, "client_secret", credential,
      "OAuth client secret", secret=True),
    F("--refresh-token", "TINY_REFRESH_TOKEN", TinyOptions, "refresh_token", credential,
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
    # At least a second: 0.001 s took every answer for Tiny unavailable (exit 5).
    F("--timeout", "TINY_REQUEST_TIMEOUT_S", TinyOptions, "request_timeout_s",
      number(1), "seconds per request", metavar="S"),
    F("--max-retries", "TINY_MAX_RETRIES", TinyOptions, "max_retries", integer(1, 100),
      "tries per request on 5xx, 429 and timeouts", metavar="N"),
    F("--breaker-failures", "TINY_BREAKER_FAILURES", TinyOptions, "breaker_failures",
      integer(1, 1000), "transport failures, 5xx or proxy pages in a row after which Tiny "
      "is taken for down: the run fails, serve waits for the cool-down", metavar="N"),
    F("--breaker-cooldown", "TINY_BREAKER_COOLDOWN_S", TinyOptions, "breaker_cooldown_s",
      number(1), "seconds without requests once Tiny is down", metavar="S"),
    F("--max-answer-mb", "TINY_MAX_ANSWER_MB", TinyOptions, "max_answer_mb",
      number(0.01), "answers larger than this are refused unread (at least 0.01: 10 kB)",
      metavar="MB"),
    # bundled simulator
    # Drawn at start, in memory: 2e9 ended in a MemoryError's traceback.
    F("--simulator", "ASYNCSYNC_SIMULATOR_ORDERS", SimulatorOptions, "orders",
      integer(1, 10_000_000),
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
    F("--json", "ASYNCSYNC_JSON_REPORT", OutputOptions, "json_path", writable_file,
      "write the report as JSON to this file; alone (or '-'): to stdout, instead of tables",
      metavar="PATH", const=str(STDOUT)),
    # one-shot runs
    F("--drain-timeout", "ASYNCSYNC_DRAIN_TIMEOUT_S", RunOptions, "drain_s", number(0),
      "after SIGTERM, seconds the drain may take before the run is cut (exit 130)",
      metavar="S"),
    F("--wait-lock", "ASYNCSYNC_WAIT_LOCK_S", RunOptions, "wait_lock_s", number(0),
      "wait up to this long for the account's run lock before giving up (exit 3)",
      metavar="S"),
    F("--textfile", "ASYNCSYNC_METRICS_TEXTFILE", RunOptions, "metrics_textfile", textfile,
      "at the end, write the metrics to this file for node-exporter's textfile collector",
      metavar="PATH"),
    F("--all-accounts", "ASYNCSYNC_ALL_ACCOUNTS", RunOptions, "all_accounts", boolean,
      "run for every enabled account of the accounts table, one after the other",
      boolean=True),
    # sync and serve cycles
    F("--detail-budget", "ASYNCSYNC_DETAIL_BUDGET", CycleOptions, "detail_budget", integer(0),
      "most detail requests per run for changed orders (default: no limit; serve: ~70%% of "
      "an interval's quota, at least 500); open orders absent from every listing are asked "
      "regardless",
      metavar="N"),
    F("--open-statuses", "ASYNCSYNC_OPEN_STATUSES", CycleOptions, "open_statuses",
      status_codes, "status codes listed completely every cycle", metavar="CODES"),
    F("--recent-days", "ASYNCSYNC_RECENT_DAYS", CycleOptions, "recent_days",
      integer(1, RECENT_DAYS_MAX),
      "closed statuses are listed over this many recent days each cycle", metavar="DAYS"),
    F("--sweep-interval", "ASYNCSYNC_SWEEP_INTERVAL_S", CycleOptions, "sweep_interval_s",
      number(60), "seconds between complete listings of closed statuses", metavar="S"),
    F("--full", "ASYNCSYNC_FULL", SyncOptions, "full", boolean, "force a full sync",
      boolean=True),
    # serve
    F("--interval", "ASYNCSYNC_INTERVAL_S", ServeOptions, "interval_s", number(1),
      "seconds between cycles", metavar="S"),
    F("--drain-timeout", "ASYNCSYNC_DRAIN_TIMEOUT_S", ServeOptions, "drain_s", number(0),
      "after SIGTERM, seconds the drain may take before the cycle is cut", metavar="S"),
    F("--metrics-port", "ASYNCSYNC_METRICS_PORT", ServeOptions, "metrics_port",
      integer(0, 65535), "serve Prometheus /metrics on this port (0: any free port)",
      metavar="PORT"),
    F("--metrics-host", "ASYNCSYNC_METRICS_HOST", ServeOptions, "metrics_host", host,
      "address /metrics, /healthz and /readyz listen on (0.0.0.0: every interface)",
      metavar="HOST"),
    F("--slots", "ASYNCSYNC_SLOTS", ServeOptions, "slots", integer(2, 1024),
      "units of work this worker runs at once (each of its own account)", metavar="N"),
    F("--background-slots", "ASYNCSYNC_BACKGROUND_SLOTS", ServeOptions, "background_slots",
      integer(1, 1024), "backfill months running at once across every worker, and as "
      "many integrity checks (keep --slots above twice this; every worker must agree)",
      metavar="N"),
    F("--heartbeat-timeout", "ASYNCSYNC_HEARTBEAT_TIMEOUT_S", ServeOptions, "heartbeat_s",
      number(1, maximum=PG_TIMEOUT_MAX_S), "seconds without a heartbeat after which another "
      "worker takes a unit over (its worker died)", metavar="S"),
    F("--integrity-interval", "ASYNCSYNC_INTEGRITY_INTERVAL_S", ServeOptions,
      "integrity_interval_s", number(0), "seconds between integrity checks of each account "
      "(0: never)", metavar="S"),
    # backfill
    F("--from", "ASYNCSYNC_FROM", BackfillOptions, "date_from", month,
      "first month, YYYY-MM (default 2014-01)", metavar="MONTH"),
    F("--to", "ASYNCSYNC_TO", BackfillOptions, "date_to", month,
      "last month, YYYY-MM (default: this month)", metavar="MONTH"),
    F("--partitions", "ASYNCSYNC_PARTITIONS", BackfillOptions, "partitions", integer(1, 64),
      "month × status partitions paged at once", metavar="N"),
    F("--detail-budget", "ASYNCSYNC_DETAIL_BUDGET", BackfillOptions, "detail_budget",
      integer(0), "most detail requests after the listing (default: no limit)", metavar="N"),
    F("--enqueue", "ASYNCSYNC_ENQUEUE", BackfillOptions, "enqueue", boolean,
      "put the months on the work queue for the serve workers instead of running them "
      "here (their details are then fetched by the account's cycles)", boolean=True),
    # integrity, health
    F("--deep", "ASYNCSYNC_DEEP", IntegrityOptions, "deep", boolean,
      "compare every id even when the totals agree", boolean=True),
    F("--interval", "ASYNCSYNC_INTERVAL_S", HealthOptions, "interval_s", number(1),
      "the serve interval: healthy when synced within three of them (at least an hour)",
      metavar="S"),
    F("--all-accounts", "ASYNCSYNC_ALL_ACCOUNTS", HealthOptions, "all_accounts", boolean,
      "every enabled account of the accounts table: a line each, unhealthy if any is",
      boolean=True),
    # authorize
    F("--redirect-uri", "TINY_REDIRECT_URI", AuthorizeOptions, "redirect_uri", http_url,
      "the redirect URI registered for the app in Tiny; a 127.0.0.1/localhost one is "
      "caught here, any other is pasted back", metavar="URL"),
    F("--auth-url", "TINY_AUTH_URL", AuthorizeOptions, "auth_url", http_url,
      "OAuth authorization endpoint (default: the token URL's .../auth)", metavar="URL"),
    F("--authorize-timeout", "ASYNCSYNC_AUTHORIZE_TIMEOUT_S", AuthorizeOptions, "timeout_s",
      number(1), "seconds to wait for the person to authorize", metavar="S"),
    # status
    F("--all-accounts", "ASYNCSYNC_ALL_ACCOUNTS", StatusOptions, "all_accounts", boolean,
      "every account in the database, not only --account: a line each", boolean=True),
    F("--full", "ASYNCSYNC_STATUS_FULL", StatusOptions, "full", boolean,
      "with --all-accounts: each account's tables, as --account shows one, not a line "
      "each", boolean=True),
    F("--interval", "ASYNCSYNC_INTERVAL_S", StatusOptions, "interval_s", number(1),
      "the serve interval: fresh when synced within three of them (at least an hour)",
      metavar="S"),
    # failures
    F("action", "ASYNCSYNC_FAILURES_ACTION", FailuresOptions, "action",
      choice(*FAILURE_ACTIONS), "list, retry (now) or ignore import failures",
      metavar="{" + ",".join(FAILURE_ACTIONS) + "}", nargs="?"),
    F("ids", "ASYNCSYNC_FAILURE_IDS", FailuresOptions, "ids", order_ids,
      "order ids to retry or ignore", metavar="ID", nargs="*"),
    F("--all", "ASYNCSYNC_FAILURES_ALL", FailuresOptions, "every", boolean,
      "retry or ignore every failure left for manual review", boolean=True),
    F("--state", "ASYNCSYNC_FAILURES_STATE", FailuresOptions, "state", choice(*FAILURE_STATES),
      "list: which failures (open = pending + review)"),
    F("--limit", "ASYNCSYNC_FAILURES_LIMIT", FailuresOptions, "limit", integer(1),
      "list: at most this many", metavar="N"),
    # accounts
    F("accounts-action", "ASYNCSYNC_ACCOUNTS_ACTION", AccountsOptions, "action",
      choice(*ACCOUNT_ACTIONS), "list, add, disable, enable or remove an account",
      metavar="{" + ",".join(ACCOUNT_ACTIONS) + "}", nargs="?"),
    F("key", "ASYNCSYNC_ACCOUNT_KEY", AccountsOptions, "key", account_key,
      "the account's key (as --account)", metavar="KEY", nargs="?"),
    F("--client-secret-env", "ASYNCSYNC_CLIENT_SECRET_ENV", AccountsOptions,
      "client_secret_env", env_name, "add: the environment variable holding the account's "
      "client secret (every worker reads it)", metavar="VAR"),
    F("--client-secret-file", "ASYNCSYNC_CLIENT_SECRET_FILE", AccountsOptions,
      "client_secret_file", path, "add: a file holding the client secret (a container "
      "secret)", metavar="PATH"),
    F("--store-client-secret", "ASYNCSYNC_STORE_CLIENT_SECRET", AccountsOptions,
      "store_client_secret", boolean, "add: keep --client-secret in clear in the accounts "
      "table (opt in; by reference is safer)", boolean=True),
    F("--refresh-token-env", "ASYNCSYNC_REFRESH_TOKEN_ENV", AccountsOptions,
      "refresh_token_env", env_name, "add: the environment variable holding a bootstrap "
      "refresh token (optional: asyncsync authorize --account KEY stores the first)",
      metavar="VAR"),
    F("--refresh-token-file", "ASYNCSYNC_REFRESH_TOKEN_FILE", AccountsOptions,
      "refresh_token_file", path, "add: a file holding a bootstrap refresh token",
      metavar="PATH"),
)  # fmt: skip

#: Group titles in ``--help``, in display order.
TITLES: dict[type, str] = {
    SyncOptions: "sync",
    CycleOptions: "sync and serve cycles",
    ServeOptions: "serve",
    BackfillOptions: "backfill",
    IntegrityOptions: "integrity",
    HealthOptions: "health",
    StatusOptions: "status",
    AuthorizeOptions: "authorize",
    FailuresOptions: "failures",
    AccountsOptions: "accounts",
    RunOptions: "one-shot runs",
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
    unread: tuple[str, ...] = ()  # flags of its groups it has no use for: refused, not ignored
    only: tuple[Only, ...] = ()  # flags it reads in some cases alone: refused in the others


@dataclass(frozen=True)
class Only:
    """Flags a mode reads only when a field of its options has one of ``values`` (``--state``:
    ``failures list``). Given on the command line in another case, they are refused, not
    ignored; their variables are not (one environment file serves every case)."""

    flags: tuple[str, ...]
    field: str
    values: tuple[object, ...]
    case: str  # the case that reads them, as the user writes it: "failures list"


#: The modes that print no report: --json offered and ignored was a lie of their --help.
_NO_REPORT = ("--json",)
#: Only simulate listens: a run's --simulator is reached in-process.
_SIM_PORT = ("--sim-port",)
#: Only a mode that records runs (sync_runs) prunes them.
_NO_RUNS = ("--run-history-days",)
#: What only a Tiny client (requests to the API) reads.
_CLIENT = ("--rate-limit", "--max-concurrency", "--timeout", "--max-retries",
           "--breaker-failures", "--breaker-cooldown", "--max-answer-mb")  # fmt: skip
#: What ``accounts add`` alone reads: list, enable, disable and remove name a key.
_ADD = ("--api-base-url", "--token-url", "--client-id", "--client-secret", "--refresh-token",
        "--quota-share",
        *(f.flag for f in FLAGS if f.target is AccountsOptions and not f.positional))  # fmt: skip
#: What reaching an account (its URLs and credentials) reads.
_REACH = ("--api-base-url", "--token-url", "--client-id", "--client-secret", "--refresh-token",
          "--token-file", "--quota-share")  # fmt: skip


MODES: dict[str, Mode] = {
    "sync": Mode(SyncOptions, (SyncOptions, CycleOptions, RunOptions, *_EVERYTHING),
                 "a full sync the first time, an incremental cycle after", _SIM_PORT),
    "serve": Mode(ServeOptions, (ServeOptions, CycleOptions, *_EVERYTHING),
                  "the service: a cycle every --interval, retries, /metrics, /readyz",
                  (*_NO_REPORT, *_SIM_PORT)),
    "backfill": Mode(BackfillOptions, (BackfillOptions, RunOptions, *_EVERYTHING),
                     "the history, month by month, checkpointed and resumable", _SIM_PORT,
                     # An enqueued month runs on a worker, with the worker's settings.
                     (Only(("--partitions", "--detail-budget"), "enqueue", (False,),
                           "backfill without --enqueue (a worker runs an enqueued month with "
                           "its own)"),)),
    "integrity": Mode(IntegrityOptions, (IntegrityOptions, RunOptions, *_EVERYTHING),
                      "compare the mirror with the API and fix it", _SIM_PORT),
    "retry": Mode(RetryOptions, (RunOptions, *_EVERYTHING), "retry failed imports that are due",
                  _SIM_PORT),
    "status": Mode(StatusOptions, (StatusOptions, *_LOCAL),
                   "last runs, freshness, backlog, failures, tokens and lock, per account",
                   _NO_RUNS,
                   # One account's status shows its tables already.
                   (Only(("--full",), "all_accounts", (True,), "status --all-accounts"),)),
    "failures": Mode(FailuresOptions, (FailuresOptions, RunOptions, *_EVERYTHING),
                     "list import failures, retry them now, or ignore them", _SIM_PORT,
                     (Only(("--state", "--limit"), "action", ("list",), "failures list"),
                      Only(("--all",), "action", ("retry", "ignore"),
                           "failures retry and failures ignore"))),
    # add takes an account's URLs, client id and quota share; it sends no request.
    "accounts": Mode(AccountsOptions, (AccountsOptions, TinyOptions, *_LOCAL),
                     "list, add, disable, enable or remove the Tiny accounts of the database",
                     ("--account", *_NO_RUNS, "--token-file", *_CLIENT),
                     (Only(_ADD, "action", ("add",), "accounts add"),)),
    # health sets its own statement timeout (10 s) and no reconnect: a probe answers fast.
    "health": Mode(HealthOptions, (HealthOptions, *_LOCAL),
                   "exit 0 when the mirror was synced recently",
                   (*_NO_REPORT, *_NO_RUNS, "--statement-timeout", "--db-reconnect")),
    "migrate": Mode(MigrateOptions, _LOCAL, "create or update the schema",
                    (*_NO_REPORT, "--account", *_NO_RUNS)),
    # authorize talks to the token endpoint only (--timeout bounds it), never to the API;
    # it trades the person's code for the refresh token, never spends one it was given.
    "authorize": Mode(AuthorizeOptions, (AuthorizeOptions, *_EVERYTHING),
                      "first authorization: a person logs in to Tiny, the tokens are stored",
                      (*_NO_REPORT, *_SIM_PORT, "--api-base-url", "--quota-share",
                       "--refresh-token", *(f for f in _CLIENT if f != "--timeout"))),
    # The simulator's plan is --sim-quota, else --rate-limit; it reaches no account.
    "simulate": Mode(SimulateOptions, (SimulatorOptions, TinyOptions, OutputOptions),
                     "serve the bundled Tiny simulator",
                     (*_NO_REPORT, *_REACH, *(f for f in _CLIENT if f != "--rate-limit"))),
}  # fmt: skip
