"""Tiny's emission-date window: do ``dataInicialEmissao`` and ``dataFinalEmissao`` include
their own day? The API does not say. Everything above the client means both ends
included (a backfill month is its first to its last day; the drift search splits a range
at ``mid`` | ``mid + 1``), so the client finds out once, with a few single-item requests
about one order whose emission day it knows, and widens each window it sends by a day at
an end the API leaves out. Guessing wrong would skip, in silence, every order emitted on
the last (or first) day of every month.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

DAY = dt.timedelta(days=1)

#: What each API base URL was found to do, in this process (the same for every account).
LEARNED: dict[str, WindowEnds] = {}

#: ``(situacao, first, last) -> (orders counted, emission day of the first one listed)``
#: with the two parameters sent as given (``None``: left out).
Probe = Callable[[int, dt.date | None, dt.date | None], Awaitable[tuple[int, dt.date | None]]]


@dataclass(frozen=True, slots=True)
class WindowEnds:
    """Whether each end of the API's window includes its day."""

    start: bool = True
    end: bool = True

    def params(
        self, first: dt.date | None, last: dt.date | None
    ) -> tuple[dt.date | None, dt.date | None]:
        """What to send for the days ``first``..``last``, both included."""
        return (
            first if first is None or self.start else first - DAY,
            last if last is None or self.end else last + DAY,
        )

    def __str__(self) -> str:
        def word(included: bool) -> str:
            return "included" if included else "left out"

        return f"first day {word(self.start)}, last day {word(self.end)}"


#: Orders asked about at most: one whose day answers in no window has moved meanwhile
#: (another status, deleted), and the next status's first order is asked instead.
LOOKS = 3


async def learn(probe: Probe, statuses: Iterable[int]) -> WindowEnds | None:
    """The API's window ends, from the first order listed with an emission day (None: no
    such order, or :data:`LOOKS` of them answered in no window)."""
    looks = 0
    for situacao in statuses:
        if looks >= LOOKS:
            return None
        _, day = await probe(situacao, None, None)
        if day is None:
            continue
        looks += 1
        for first, last, ends in (
            (day, day, WindowEnds(True, True)),
            (day, day + DAY, WindowEnds(True, False)),
            (day - DAY, day, WindowEnds(False, True)),
            (day - DAY, day + DAY, WindowEnds(False, False)),
        ):
            counted, seen = await probe(situacao, first, last)
            # The window must hold that day's orders, not a neighbour's: under a wrong
            # guess the API may still list the next (or previous) day.
            if counted > 0 and seen == day:
                return ends
    return None


def emission_day(item: object) -> dt.date | None:
    """The ``data`` of a list item, if it is a real day (not ``"0000-00-00"``, not junk)."""
    data = item.get("data") if isinstance(item, dict) else None
    if not isinstance(data, str):
        return None
    try:
        return dt.date.fromisoformat(data[:10])
    except ValueError:
        return None
