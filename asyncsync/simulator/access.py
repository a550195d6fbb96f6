"""What callers of the simulated API did, and how much of the quota they used: the request
counters and the per-account rate window.

The window uses :func:`time.monotonic`, so changing the simulator's wall ``clock`` does not
reset it; tests use a short ``rate_window_s`` instead. Tokens live in :mod:`.oauth`.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]


@dataclass
class SimStats:
    """Mutable request counters (``GET /_sim/stats`` shows them as JSON)."""

    #: Keys ``list``, ``detail``, ``token`` and ``auth``.
    requests_by_endpoint: Counter[str] = field(default_factory=Counter)
    #: Listing requests per ``situacao`` filter; ``-1`` counts listings without one.
    list_requests_by_status: Counter[int] = field(default_factory=Counter)
    #: API requests (list and detail, whatever their answer); token requests excluded.
    requests_total: int = 0
    rate_limited: int = 0
    unauthorized: int = 0
    #: Successful ``refresh_token`` grants.
    token_refreshes: int = 0
    #: Successful ``authorization_code`` grants.
    code_exchanges: int = 0
    #: Refresh grants presenting a refresh token that an earlier grant had rotated away:
    #: the sign of two processes refreshing with the same token.
    stale_refresh_uses: int = 0
    #: Requests (API and token endpoint) answered by an outage: 5xx, dropped, hung or a
    #: page from in front of Tiny (``set_outage("html")``, ``"waf"``, ``token_page``).
    outage_answers: int = 0
    #: 500s injected by ``detail_error_rate`` / ``list_error_rate``.
    injected_errors: int = 0
    #: The most requests of this simulator's callers *accepted* (not 429) in any one rate
    #: window so far (the account's other apps, ``other_apps``, not counted).
    window_peak: int = 0
    #: Rate windows that saw at least one charged request.
    windows: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "requests_total": self.requests_total,
            "requests_by_endpoint": dict(self.requests_by_endpoint),
            "list_requests_by_status": {str(k): v for k, v in self.list_requests_by_status.items()},
            "rate_limited": self.rate_limited,
            "unauthorized": self.unauthorized,
            "token_refreshes": self.token_refreshes,
            "code_exchanges": self.code_exchanges,
            "stale_refresh_uses": self.stale_refresh_uses,
            "outage_answers": self.outage_answers,
            "injected_errors": self.injected_errors,
            "window_peak": self.window_peak,
            "windows": self.windows,
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
    """Fixed windows of ``window_s`` seconds, ``limit`` requests each, from creation time.

    Tiny's quota is the account's, shared by every app connected to it: ``other_apps``
    requests of each window are spent by those apps as it opens (another app's job at the
    top of the minute). They count in ``X-RateLimit-Remaining``: a caller that trusts only
    its own count meets a 429 where it thinks there is room.

    It also keeps the figures a multi-worker test checks the quota against:
    :attr:`windows_seen` and :attr:`peak` (most accepted requests in one window).
    """

    def __init__(self, limit: int, window_s: float, clock: Clock = time.monotonic) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        if limit < 0:
            raise ValueError("limit must not be negative")
        self._limit, self._window_s, self._clock = limit, window_s, clock
        self._pending: int | None = None
        self._origin = clock()
        self._current = 0
        self._used = 0  # every app's requests in the current window
        self._theirs = 0  # the other apps' part of them
        self._accepted = 0  # the callers' requests the current window let through
        self.other_apps = 0
        self.windows_seen = 0
        self.peak = 0

    @property
    def limit(self) -> int:
        """The limit of the current window (what the headers report)."""
        self._roll()
        return self._limit

    def set_limit(self, limit: int) -> None:
        """Change the quota, as a plan change would.

        A window that has already counted a caller's request keeps its limit (its answers told the
        client so); the change applies from the next window. A window nobody has used yet
        takes the new limit at once, so a test can set the quota before the first request.
        """
        if limit < 0:
            raise ValueError("limit must not be negative")
        self._roll()
        if self._used == self._theirs:
            self._limit, self._pending = limit, None
        else:
            self._pending = limit

    def _roll(self) -> float:
        """Start a new window if due; return the seconds until the current one ends."""
        elapsed = self._clock() - self._origin
        window = int(elapsed // self._window_s)
        if window != self._current:
            self._current, self._used, self._theirs, self._accepted = window, 0, 0, 0
            if self._pending is not None:
                self._limit, self._pending = self._pending, None
        if self.other_apps > self._theirs:  # a new window, or other apps switched on
            self._used += self.other_apps - self._theirs
            self._theirs = self.other_apps
        return (window + 1) * self._window_s - elapsed

    def _verdict(self, allowed: bool, left_s: float) -> RateVerdict:
        remaining = max(self._limit - self._used, 0)
        return RateVerdict(allowed, self._limit, remaining, max(math.ceil(left_s), 1))

    def hit(self) -> RateVerdict:
        """Count one request; it is allowed while the window's quota lasts."""
        left_s = self._roll()
        if self._used == self._theirs:
            self.windows_seen += 1
        self._used += 1
        allowed = self._used <= self._limit
        self._accepted += allowed
        self.peak = max(self.peak, self._accepted)
        return self._verdict(allowed, left_s)

    def peek(self) -> RateVerdict:
        """The current state, without counting a request (for 401 answers)."""
        return self._verdict(True, self._roll())
