"""The small Protocols the engine joins, and the values that cross them.

The Tiny client implements :class:`OrderSource`; the PostgreSQL sink implements
:class:`OrderSink` and :class:`TokenStore`. Neither imports the other: the engine and
the modes wire them together, so each can be tested alone or swapped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from .records import DetailRecord, FailureRecord, OrderRecord


@dataclass(frozen=True, slots=True)
class ListQuery:
    """One page request of ``GET /ordem-servico``."""

    situacao: int
    offset: int = 0
    limit: int = 100
    date_from: dt.date | None = None  # dataInicialEmissao, inclusive
    date_to: dt.date | None = None  # dataFinalEmissao, inclusive


@dataclass(frozen=True, slots=True)
class Page:
    """One answered page: raw items (parsed later, one by one) and what paging said."""

    query: ListQuery
    items: tuple[Any, ...]
    total: int | None  # paginacao.total, when the API sent it
    observed_at: dt.datetime  # when the request was sent

    @property
    def is_last(self) -> bool:
        """Nothing comes after this page.

        With ``paginacao.total`` that is exact. Without it, a short page proves nothing:
        Tiny documents no maximum ``limit`` and a server may answer fewer items than asked
        on every page, so only an empty page ends the listing (one extra request).
        """
        if not self.items:
            return True
        if self.total is not None:
            return self.query.offset + len(self.items) >= self.total
        return False


@dataclass(frozen=True, slots=True)
class Detail:
    """The raw answer of ``GET /ordem-servico/{id}``."""

    order_id: int
    body: Any
    observed_at: dt.datetime


@dataclass(frozen=True)
class TokenSet:
    """OAuth tokens of one account. The repr never shows a token."""

    refresh_token: str = field(repr=False)
    access_token: str | None = field(default=None, repr=False)
    access_expires_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A progress marker stored in ``sync_metadata`` in the same transaction as its data."""

    key: str
    value: str  # JSON text


@dataclass
class MergeStats:
    """What one merge did; added up over a run."""

    received: int = 0
    inserted: int = 0
    changed: int = 0
    unchanged: int = 0
    status_changes: int = 0
    failures: int = 0
    details: int = 0
    missing: int = 0

    def add(self, other: MergeStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class OrderSource(Protocol):
    """Where orders come from (the Tiny API client)."""

    async def list_orders(self, query: ListQuery) -> Page: ...

    async def get_order(self, order_id: int) -> Detail: ...


class OrderSink(Protocol):
    """Where orders go (the PostgreSQL mirror)."""

    async def merge_listed(
        self,
        records: Sequence[OrderRecord],
        failures: Sequence[FailureRecord] = (),
        checkpoints: Sequence[Checkpoint] = (),
    ) -> MergeStats: ...

    async def merge_details(
        self,
        details: Sequence[DetailRecord],
        failures: Sequence[FailureRecord] = (),
        missing: Collection[int] = (),
    ) -> MergeStats: ...

    async def detail_backlog(self, limit: int, exclude: Collection[int] = ()) -> list[int]: ...

    async def detail_backlog_size(self) -> int: ...

    async def ids_in_statuses(self, statuses: Sequence[int]) -> set[int]: ...

    async def get_metadata(self, key: str) -> str | None: ...

    async def set_metadata(self, key: str, value: str) -> None: ...


class TokenStore(Protocol):
    """Where the newest tokens of an account live, shared by every process."""

    async def load(self) -> TokenSet | None: ...

    async def save(self, tokens: TokenSet) -> None: ...

    def exclusive(self) -> AbstractAsyncContextManager[None]:
        """Held while refreshing, so two processes never spend the same refresh token."""
        ...
