"""Time, read in one place.

Every layer asks this module for the wall clock (UTC, aware) and the monotonic clock, and
takes a :data:`Clock` where a test must be able to pin "now" (retry schedules, integrity
runs, token expiry).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from zoneinfo import ZoneInfo

#: A source of aware UTC datetimes; :func:`utcnow` unless a test pins it.
Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    """The wall clock, as an aware UTC datetime."""
    return dt.datetime.now(dt.UTC)


#: Tiny's zone: its dates and naive date-times are São Paulo's (and so are the mirror's
#: ``timestamp`` columns).
TINY_ZONE = ZoneInfo("America/Sao_Paulo")


def tiny_today(now: dt.datetime | None = None) -> dt.date:
    """The day it is where Tiny dates its orders (``now``: an aware datetime)."""
    return (now or utcnow()).astimezone(TINY_ZONE).date()


def monotonic() -> float:
    """Seconds on a clock that never goes back (durations, deadlines)."""
    return time.monotonic()


def iso(moment: dt.datetime | None) -> str | None:
    """RFC 3339 with milliseconds, or None."""
    return None if moment is None else moment.isoformat(timespec="milliseconds")
