"""The one exception tree of asyncsync.

Every error the package raises on purpose derives from :class:`AsyncsyncError`.
aiohttp and asyncpg errors are converted where they enter (``raise ... from exc``),
so the original stays reachable as ``__cause__``::

    AsyncsyncError
    ├── ConfigError                 bad or missing configuration; the CLI prints it and exits 2
    ├── TinyError                   anything that went wrong talking to Tiny
    │   ├── TinyAuthError           the OAuth exchange failed
    │   │   ├── TinyAuthMisconfigured     the app itself was refused (also a ConfigError)
    │   │   └── ReauthorizationRequired   invalid_grant: a person must authorize again
    │   ├── TinyHTTPError           an HTTP answer we cannot use (.status, .body)
    │   │   ├── TinyNotFound        404 for one order
    │   │   └── TinyOrderForbidden  401 on one order while the token is fresh
    │   ├── TinyRateLimited         429, after the account-wide pause and retries ran out
    │   ├── TinyUnavailable         5xx / timeouts / connection errors / a page in front
    │   │   └── TinyOutage          the circuit is open: too many failures in a row
    │   └── TinyBadPayload          a 200 whose body is not the JSON we expect
    │       └── TinyAnswerTooLarge  an answer over the size cap, refused unread
    ├── DatabaseError               PostgreSQL failed (.sqlstate)
    │   ├── DatabaseUnavailable     unreachable, gone mid-statement, restarting or frozen
    │   ├── LockBusy                another run of the same account holds the lock
    │   │   └── AccountBusy         another process holds the account's lease (a worker)
    │   └── LeaseLost               a worker's lease on the account ended mid-unit
    ├── RecordError                 one API record cannot be mapped (goes to import_failures)
    ├── Requeue                     a unit of work asks the queue to run it again later
    └── RequestWithheld             the run is stopping: a request not sent yet never will be
"""

from __future__ import annotations


class AsyncsyncError(Exception):
    """Root of every error asyncsync raises on purpose."""


class ConfigError(AsyncsyncError):
    """The configuration is missing or wrong; the message says what to change."""


class TinyError(AsyncsyncError):
    """Talking to the Tiny API failed."""


class TinyAuthError(TinyError):
    """The OAuth token endpoint refused or failed."""


class TinyAuthMisconfigured(TinyAuthError, ConfigError):
    """The token endpoint refused the app itself (its client id or secret) or is not at the
    configured address: the configuration must change (exit 2), not the tokens."""


class ReauthorizationRequired(TinyAuthError):
    """The refresh token is expired or revoked: only a person can authorize again."""


class TinyHTTPError(TinyError):
    """An HTTP answer the client cannot use."""

    def __init__(self, message: str, *, status: int, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class TinyNotFound(TinyHTTPError):
    """404: the order does not exist (any more)."""


class TinyOrderForbidden(TinyHTTPError):
    """401 for one order even with a freshly refreshed token: a per-order failure."""


class TinyRateLimited(TinyError):
    """429 kept coming after the account-wide pause and the bounded retries."""


class TinyUnavailable(TinyError):
    """5xx, timeouts, connection errors or a page from in front of Tiny (not JSON, not
    announced as JSON: a proxy's answered 200, a firewall's answered 401 or 403, or a
    page at a token endpoint known to work) persisted past the bounded retries.

    ``status`` and ``body`` keep the last answer (None and "" when there was none)."""

    def __init__(self, message: str, *, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class TinyOutage(TinyUnavailable):
    """Tiny failed ``threshold`` times in a row: no request is sent until the cool-down ends.

    Not a property of any record: a pass that meets it stops, and nothing is written to
    ``import_failures``."""

    def __init__(self, message: str, *, retry_at_s: float) -> None:
        super().__init__(message)
        self.retry_at_s = retry_at_s  # monotonic time when the next probe may go


class TinyBadPayload(TinyError):
    """A 200 answer whose body is not the JSON the API documents."""

    def __init__(self, message: str, *, body: str = "") -> None:
        super().__init__(message)
        self.body = body


class TinyAnswerTooLarge(TinyBadPayload):
    """An answer larger than the configured cap; the rest of it was never read."""


class DatabaseError(AsyncsyncError):
    """PostgreSQL failed; ``sqlstate`` keeps the server's error code when there is one."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached, went away mid-statement, is restarting, or did not
    answer within the statement timeout: an outage, not a property of the data."""


class LockBusy(DatabaseError):
    """Another sync, backfill or integrity run of the same account is running."""


class AccountBusy(LockBusy):
    """Another process holds the account's lease: a worker puts the unit back in the queue
    instead of waiting for it. ``here``: another unit of this process holds it."""

    def __init__(self, message: str, *, holder: str | None = None, here: bool = False) -> None:
        super().__init__(message)
        self.holder = holder
        self.here = here


class LeaseLost(DatabaseError):
    """A merge of a worker whose lease on the account ended (its session silent past the
    heartbeat timeout: a frozen process): another worker may hold the account now, so
    nothing more is written for it here."""


class Requeue(AsyncsyncError):
    """Raised by a unit of work: the queue runs the same unit again in ``delay_s`` seconds
    (its account was busy, a shutdown interrupted it, or it is periodic and re-armed)."""

    def __init__(self, delay_s: float, reason: str) -> None:
        super().__init__(reason)
        self.delay_s = max(delay_s, 0.0)
        self.reason = reason


class RequestWithheld(AsyncsyncError):
    """The run was told to stop while this request still waited to be sent (at the
    account's limiter, for the circuit's probe, or for its retry): it never went out.

    Not a :class:`TinyError`: Tiny said nothing, of itself or of any record. Whoever asked
    treats it as the stop it is (no import failure, no outage), and what earlier requests
    brought is merged as usual."""


class RecordError(AsyncsyncError):
    """One API record cannot be mapped to a row; it goes to ``import_failures``."""

    def __init__(self, message: str, *, raw: object, order_id: int | None = None) -> None:
        super().__init__(message)
        self.raw = raw
        self.order_id = order_id


def authorize_command(account: str) -> str:
    """The command that authorizes ``account`` again (its key named unless the default)."""
    if account == "default":
        return "asyncsync authorize"
    return f"asyncsync authorize --account {account}"
