"""Who may call the simulated API, and what they did: OAuth2 tokens (Keycloak-like),
the rate window and the request counters.

Tokens and windows use :func:`time.monotonic`, so changing the simulator's wall ``clock`` does not
expire tokens or reset windows; tests use ``expire_access_tokens()`` and a short
``rate_window_s`` instead.
"""

from __future__ import annotations

import itertools
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .data import SimConfig

Clock = Callable[[], float]


@dataclass
class SimStats:
    """Mutable request counters (``GET /_sim/stats`` shows them as JSON)."""

    #: Keys ``list``, ``detail`` and ``token``.
    requests_by_endpoint: Counter[str] = field(default_factory=Counter)
    #: Listing requests per ``situacao`` filter; ``-1`` counts listings without one.
    list_requests_by_status: Counter[int] = field(default_factory=Counter)
    #: API requests (list and detail, whatever their answer); token requests excluded.
    requests_total: int = 0
    rate_limited: int = 0
    unauthorized: int = 0
    #: Successful token grants.
    token_refreshes: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "requests_total": self.requests_total,
            "requests_by_endpoint": dict(self.requests_by_endpoint),
            "list_requests_by_status": {str(k): v for k, v in self.list_requests_by_status.items()},
            "rate_limited": self.rate_limited,
            "unauthorized": self.unauthorized,
            "token_refreshes": self.token_refreshes,
        }


@dataclass(frozen=True)
class RateVerdict:
    """The outcome of one request against the current window."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_s),
        }


class RateWindow:
    """Fixed windows of ``window_s`` seconds, ``limit`` requests each, from creation time."""

    def __init__(self, limit: int, window_s: float, clock: Clock = time.monotonic) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self._limit, self._window_s, self._clock = limit, window_s, clock
        self._origin = clock()
        self._current = 0
        self._used = 0

    def _roll(self) -> float:
        """Start a new window if due; return the seconds until the current one ends."""
        elapsed = self._clock() - self._origin
        window = int(elapsed // self._window_s)
        if window != self._current:
            self._current, self._used = window, 0
        return (window + 1) * self._window_s - elapsed

    def _verdict(self, allowed: bool, left_s: float) -> RateVerdict:
        remaining = max(self._limit - self._used, 0)
        return RateVerdict(allowed, self._limit, remaining, max(math.ceil(left_s), 1))

    def hit(self) -> RateVerdict:
        """Count one request; it is allowed while the window's quota lasts."""
        left_s = self._roll()
        self._used += 1
        return self._verdict(self._used <= self._limit, left_s)

    def peek(self) -> RateVerdict:
        """The current state, without counting a request (for 401 answers)."""
        return self._verdict(True, self._roll())


@dataclass(frozen=True)
class Grant:
    """The answer of the token endpoint: HTTP status and JSON body."""

    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == 200


def _oauth_error(status: int, error: str, description: str) -> Grant:
    return Grant(status, {"error": error, "error_description": description})


class TokenStore:
    """Issues opaque access tokens and (optionally rotating) refresh tokens."""

    def __init__(self, config: SimConfig, clock: Clock = time.monotonic) -> None:
        self._config, self._clock = config, clock
        self._access: dict[str, float] = {}
        self._refresh: dict[str, float] = {config.refresh_token: clock() + config.refresh_ttl_s}
        self._stale: set[str] = set()
        self._latest: str | None = config.refresh_token
        self._serial = itertools.count(1)

    def check_access(self, token: str) -> bool:
        expiry = self._access.get(token)
        return expiry is not None and self._clock() < expiry

    def expire_access(self) -> None:
        self._access.clear()

    def revoke_refresh(self) -> None:
        self._stale.update(self._refresh)
        self._refresh.clear()
        self._latest = None

    def valid_refresh(self) -> str | None:
        token = self._latest
        if token is None or self._refresh.get(token, 0.0) <= self._clock():
            return None
        return token

    def grant(self, form: Mapping[str, str]) -> Grant:
        """Answer one POST to the token endpoint."""
        cfg = self._config
        if form.get("client_id") != cfg.client_id or form.get("client_secret") != cfg.client_secret:
            return _oauth_error(
                401, "invalid_client", "Invalid client or Invalid client credentials"
            )
        if form.get("grant_type") != "refresh_token":
            return _oauth_error(400, "unsupported_grant_type", "Unsupported grant_type")
        old = form.get("refresh_token", "")
        expiry = self._refresh.get(old)
        now = self._clock()
        if expiry is None:
            reason = "Stale token" if old in self._stale else "Invalid refresh token"
            return _oauth_error(400, "invalid_grant", reason)
        if expiry <= now:
            return _oauth_error(400, "invalid_grant", "Token is not active")
        new = old
        if cfg.rotate_refresh_tokens:
            del self._refresh[old]
            self._stale.add(old)
            new = f"sim-refresh-{next(self._serial)}-{secrets.token_urlsafe(12)}"
            self._refresh[new] = now + cfg.refresh_ttl_s
            self._latest = new
        access = secrets.token_urlsafe(32)
        self._access[access] = now + cfg.access_ttl_s
        return Grant(
            200,
            {
                "access_token": access,
                "expires_in": int(cfg.access_ttl_s),
                "refresh_expires_in": round(self._refresh[new] - now),
                "refresh_token": new,
                "token_type": "Bearer",
                "not-before-policy": 0,
                "scope": "openid email offline_access",
            },
        )
