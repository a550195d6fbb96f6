"""Merges of one account that may run at once, serialized where they touch the same rows.

The listing writer keeps more than one batch merging, so that PostgreSQL works on one
batch while Python parses and encodes the next, and two backends share the cores. Two
transactions that both saw an order as new would both insert it (one fails on the primary
key), and two that write the same failure row or checkpoint would wait on each other's
locks. So a merge first claims its order ids, failure ids and checkpoint keys; a merge
whose claims meet those of one started earlier waits until that one has finished, which
keeps the order in which the caller asked. Merges over disjoint rows run concurrently,
each still one transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager


class Claims:
    """The keys held by the merges in flight of one store."""

    def __init__(self) -> None:
        self._held: list[tuple[frozenset[Hashable], asyncio.Event]] = []

    @asynccontextmanager
    async def hold(self, keys: frozenset[Hashable]) -> AsyncIterator[None]:
        """Wait for every earlier holder of any of ``keys``, then hold them for the block."""
        earlier = [done for held, done in self._held if not held.isdisjoint(keys)]
        mine = (keys, asyncio.Event())
        self._held.append(mine)  # before any await: a later call sees this one
        try:
            for done in earlier:
                await done.wait()
            yield
        finally:
            self._held.remove(mine)
            mine[1].set()

    def __len__(self) -> int:
        """Merges holding or waiting for their claims."""
        return len(self._held)
