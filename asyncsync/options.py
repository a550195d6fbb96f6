"""Settings: one frozen value built from flags and their environment-variable twins.

Every setting has an env var (shown in ``asyncsync --help``); flags win over env vars.
:func:`load_bootstrap_tokens` reads the user's existing ``tiny_token.json``.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson

from .errors import ConfigError
from .status import CLOSED_STATUSES, OPEN_STATUSES

DEFAULT_API_BASE_URL = "https://api.tiny.com.br/public-api/v3"
DEFAULT_TOKEN_URL = "https://accounts.tiny.com.br/realms/tiny/protocol/openid-connect/token"


def default_data_dir() -> Path:
    """Where the embedded PostgreSQL keeps its files when no DATABASE_URL is given."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "asyncsync"


@dataclass(frozen=True)
class Credentials:
    """OAuth client credentials and the bootstrap refresh token (never logged)."""

    client_id: str
    client_secret: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    access_expires_at: dt.datetime | None = None


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know; built once by the CLI (or a test)."""

    database_url: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    account: str = "default"
    api_base_url: str = DEFAULT_API_BASE_URL
    token_url: str = DEFAULT_TOKEN_URL
    credentials: Credentials | None = None
    rate_limit_per_minute: int = 120
    max_concurrency: int = 8
    request_timeout_s: float = 30.0
    max_retries: int = 5
    page_size: int = 100
    batch_size: int = 2000
    queue_pages: int = 32
    detail_budget: int | None = None  # detail requests per run; None = no limit
    open_statuses: tuple[int, ...] = tuple(int(s) for s in OPEN_STATUSES)
    closed_statuses: tuple[int, ...] = tuple(int(s) for s in CLOSED_STATUSES)
    recent_window_days: int = 45
    sweep_interval_s: float = 86400.0
    interval_s: float = 900.0
    partitions_in_flight: int = 5
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"

    def __post_init__(self) -> None:
        for name in (
            "rate_limit_per_minute",
            "max_concurrency",
            "page_size",
            "batch_size",
            "partitions_in_flight",
            "max_retries",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.request_timeout_s <= 0:
            raise ConfigError("request_timeout_s must be positive")
        for name in ("api_base_url", "token_url"):
            check_http_url(getattr(self, name), name)
        if self.database_url is not None:
            parsed = urlparse(self.database_url)
            if parsed.scheme not in ("postgres", "postgresql"):
                raise ConfigError(
                    f"DATABASE_URL must start with postgresql://, got {self.database_url!r}"
                )
        if not self.account or len(self.account) > 64:
            raise ConfigError("account must be 1 to 64 characters")

    def require_credentials(self) -> Credentials:
        """The credentials, or a ConfigError that says how to provide them."""
        if self.credentials is None:
            raise ConfigError(
                "no Tiny credentials: set TINY_CLIENT_ID, TINY_CLIENT_SECRET and "
                "TINY_REFRESH_TOKEN, or point TINY_TOKEN_FILE at your tiny_token.json"
            )
        return self.credentials


def check_http_url(value: str, name: str) -> None:
    """Raise ConfigError unless ``value`` is an absolute http(s) URL."""
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"{name} must be an http(s) URL, got {value!r}")


def load_bootstrap_tokens(
    path: Path, client_id: str | None, client_secret: str | None
) -> Credentials:
    """Read a ``tiny_token.json``: ``refresh_token`` plus optional ``access_token``,
    ``expires_at`` (epoch seconds or ISO 8601), ``client_id`` and ``client_secret``."""
    try:
        data: Any = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"token file {path} does not exist") from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"token file {path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("refresh_token"), str):
        raise ConfigError(f"token file {path} has no refresh_token")
    cid = client_id or data.get("client_id")
    secret = client_secret or data.get("client_secret")
    if not cid or not secret:
        raise ConfigError(
            f"token file {path} has no client_id/client_secret: set TINY_CLIENT_ID and "
            "TINY_CLIENT_SECRET"
        )
    expires: dt.datetime | None = None
    raw_exp = data.get("expires_at")
    if isinstance(raw_exp, int | float):
        expires = dt.datetime.fromtimestamp(raw_exp, dt.UTC)
    elif isinstance(raw_exp, str):
        try:
            expires = dt.datetime.fromisoformat(raw_exp)
        except ValueError:
            raise ConfigError(f"token file {path}: unreadable expires_at {raw_exp!r}") from None
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=dt.UTC)
    access = data.get("access_token") if isinstance(data.get("access_token"), str) else None
    return Credentials(
        client_id=str(cid),
        client_secret=str(secret),
        refresh_token=data["refresh_token"],
        access_token=access if expires else None,
        access_expires_at=expires if access else None,
    )
