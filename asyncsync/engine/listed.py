"""The ids a listing read, held in 8 bytes each instead of a set's ~90.

A cycle keeps every id its listing read: the open orders the mirror holds and no listing
returned have moved (:func:`~asyncsync.engine.cycle.run_cycle`), and a 404 for a listed
order is an import failure, not a deletion (:class:`~asyncsync.engine.details.Enricher`).
Both only ask "was this id listed?". The daily sweep lists every closed status whole:
at a million orders, Python ints in sets (per status, then their union) put 60-100 MB
on the peak RSS of the process, once a day.

So a :class:`ListedIdsBuilder` appends ids to an ``array('q')`` and sorts each run of
:data:`RUN` ids as it fills (a run's sort briefly costs ~40 bytes an id: ~3 MB);
:meth:`~ListedIdsBuilder.build` merges the runs into one array of distinct ids in
ascending order, a :class:`ListedIds` read by binary search. The merge briefly holds the
runs and their result: 16 bytes an id at the peak, ~0.5 s of CPU a million ids.
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import groupby

#: Ids sorted at once while a listing runs (the transient cost of a sort: ~40 bytes each).
RUN = 1 << 16


def _ids() -> array[int]:
    return array("q")


@dataclass(frozen=True, eq=False)
class ListedIds:
    """Distinct ids in ascending order, as :class:`ListedIdsBuilder` builds them: a
    read-only ``Collection[int]`` whose membership test is a binary search."""

    ids: array[int] = field(default_factory=_ids)

    def __contains__(self, order_id: object) -> bool:
        if not isinstance(order_id, int):
            return False
        at = bisect_left(self.ids, order_id)
        return at < len(self.ids) and self.ids[at] == order_id

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids)

    def unlisted(self, ids: Iterable[int]) -> set[int]:
        """The ids of ``ids`` not listed: ``set(ids) - listed``."""
        return {i for i in ids if i not in self}


class ListedIdsBuilder:
    """Collects ids in any order, repeats included; :meth:`build` makes the value."""

    def __init__(self, run: int = RUN) -> None:
        self._run = run
        self._runs: list[array[int]] = []  # each sorted, its ids distinct
        self._tail = _ids()  # unsorted, up to about ``run`` ids

    def extend(self, ids: Iterable[int]) -> None:
        self._tail.extend(ids)
        if len(self._tail) >= self._run:
            self._seal()

    def _seal(self) -> None:
        if self._tail:
            self._runs.append(array("q", sorted(set(self._tail))))
            self._tail = _ids()

    def build(self) -> ListedIds:
        """Every id collected so far, repeats once; the builder may go on collecting."""
        self._seal()
        if len(self._runs) > 1:
            merged = heapq.merge(*self._runs)
            self._runs = [array("q", (order_id for order_id, _ in groupby(merged)))]
        return ListedIds(self._runs[0]) if self._runs else ListedIds()
