"""The Tiny side: the HTTP client of one account, its rate limiter and its OAuth tokens.

``http`` (:class:`TinyClient`, which implements ``OrderSource``), ``ratelimit``
(:class:`AccountLimiter`: the account's token bucket, concurrency cap and shared pause) and
``tokens`` (:class:`TokenManager`: proactive, single-flight refreshes through a
``TokenStore``). This wing never imports the store: tokens are persisted through the
``TokenStore`` Protocol.
"""

from __future__ import annotations

from .breaker import CircuitBreaker
from .http import TinyClient
from .ratelimit import AccountLimiter
from .tokens import MemoryTokenStore, Refusals, TokenManager

__all__ = [
    "AccountLimiter",
    "CircuitBreaker",
    "MemoryTokenStore",
    "Refusals",
    "TinyClient",
    "TokenManager",
]
