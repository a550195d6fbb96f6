"""Listing support: query parsing and a per-status sorted index of order ids.

Pages are cut from the *current* state at request time (offset pagination is not a
snapshot, as on the live API). Filtered id lists are cached until the next mutation,
so paging a date window of a 100k-order state costs one filter pass, not one per page.
"""

from __future__ import annotations

import bisect
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from asyncsync.status import Situacao, parse_situacao

from .data import SimOrder

#: An order id, or a raw malformed item injected by a test.
Entry = int | dict[str, Any]
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_CACHE_SIZE = 128


class QueryError(ValueError):
    """A bad query parameter; becomes a 400 with ``detalhes``."""

    def __init__(self, campo: str, mensagem: str) -> None:
        super().__init__(f"{campo}: {mensagem}")
        self.campo = campo
        self.mensagem = mensagem


@dataclass(frozen=True)
class ListQuery:
    """The parsed parameters of ``GET /ordem-servico``."""

    situacao: Situacao | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    numero: str | None = None
    nome: str | None = None
    id_contato: int | None = None
    limit: int = 100
    offset: int = 0
    descending: bool = False

    def covering(self, date_window: str) -> ListQuery:
        """The same query with its window as the days it covers, both ends included, for
        an API whose window leaves out its first day, its last day, or both."""
        day = dt.timedelta(days=1)
        lo, hi = self.date_from, self.date_to
        if lo is not None and date_window in ("start-exclusive", "exclusive"):
            lo += day
        if hi is not None and date_window in ("end-exclusive", "exclusive"):
            hi -= day
        return replace(self, date_from=lo, date_to=hi)

    @property
    def filtered(self) -> bool:
        return any(
            v is not None
            for v in (self.date_from, self.date_to, self.numero, self.nome, self.id_contato)
        )

    def keep(self, order: SimOrder) -> bool:
        """Whether ``order`` passes every filter except ``situacao``."""
        if self.date_from is not None and order.data < self.date_from:
            return False
        if self.date_to is not None and order.data > self.date_to:
            return False
        if self.numero is not None and order.numero != self.numero:
            return False
        if self.id_contato is not None and order.cliente.get("id") != self.id_contato:
            return False
        return (
            self.nome is None or self.nome.casefold() in str(order.cliente.get("nome")).casefold()
        )

    def keep_raw(self, item: dict[str, Any]) -> bool:
        """Malformed items: only the date window applies, and only when ``data`` parses."""
        try:
            day = dt.date.fromisoformat(str(item.get("data")))
        except ValueError:
            return True
        lo, hi = self.date_from or dt.date.min, self.date_to or dt.date.max
        return lo <= day <= hi


def _int_param(params: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise QueryError(name, f"O valor '{raw}' não é um número inteiro válido") from None
    if value < minimum:
        raise QueryError(name, f"O valor deve ser maior ou igual a {minimum}")
    return value


def _date_param(params: Mapping[str, str], name: str) -> dt.date | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        if not _DATE_RE.fullmatch(raw):
            raise ValueError(raw)
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise QueryError(name, f"Data inválida '{raw}', use o formato AAAA-MM-DD") from None


def parse_query(params: Mapping[str, str], max_limit: int) -> ListQuery:
    """Validate the listing parameters; raise :class:`QueryError` on the first bad one."""
    situacao = None
    if params.get("situacao", "") != "":
        try:
            situacao = parse_situacao(params["situacao"])
        except ValueError:
            raise QueryError("situacao", f"Situação inválida '{params['situacao']}'") from None
    order_by = params.get("orderBy", "asc").lower()
    if order_by not in ("asc", "desc"):
        raise QueryError("orderBy", "Use asc ou desc")
    id_contato = _int_param(params, "idContato", -1, 0)
    return ListQuery(
        situacao=situacao,
        date_from=_date_param(params, "dataInicialEmissao"),
        date_to=_date_param(params, "dataFinalEmissao"),
        numero=params.get("numeroOrdemServico") or None,
        nome=params.get("nomeCliente") or None,
        id_contato=None if id_contato < 0 else id_contato,
        limit=min(_int_param(params, "limit", 100, 1), max_limit),
        offset=_int_param(params, "offset", 0, 0),
        descending=order_by == "desc",
    )


def _insert(ids: list[int], order_id: int) -> None:
    if not ids or ids[-1] < order_id:
        ids.append(order_id)  # the common case: fresh ids are the largest
    else:
        bisect.insort(ids, order_id)


def _remove(ids: list[int], order_id: int) -> None:
    i = bisect.bisect_left(ids, order_id)
    if i < len(ids) and ids[i] == order_id:
        del ids[i]


class OrderIndex:
    """Sorted ids per status and overall, plus injected malformed items per status."""

    def __init__(self, orders: Sequence[SimOrder]) -> None:
        ordered = sorted(orders, key=lambda o: o.id)
        self._all: list[int] = [o.id for o in ordered]
        self._by_status: dict[Situacao, list[int]] = {s: [] for s in Situacao}
        for o in ordered:
            self._by_status[o.situacao].append(o.id)
        self._raw: dict[Situacao, list[dict[str, Any]]] = {s: [] for s in Situacao}
        self._cache: dict[tuple[object, ...], list[Entry]] = {}

    def changed(self) -> None:
        self._cache.clear()

    def add(self, order_id: int, status: Situacao) -> None:
        _insert(self._all, order_id)
        _insert(self._by_status[status], order_id)
        self.changed()

    def remove(self, order_id: int, status: Situacao) -> None:
        _remove(self._all, order_id)
        _remove(self._by_status[status], order_id)
        self.changed()

    def move(self, order_id: int, old: Situacao, new: Situacao) -> None:
        if old is not new:
            _remove(self._by_status[old], order_id)
            _insert(self._by_status[new], order_id)
            self.changed()

    def add_raw(self, status: Situacao, item: dict[str, Any]) -> None:
        self._raw[status].append(item)
        self.changed()

    def ids(self, status: Situacao | None) -> list[int]:
        """The live sorted id list (do not mutate)."""
        return self._all if status is None else self._by_status[status]

    def _raw_items(self, status: Situacao | None) -> list[dict[str, Any]]:
        if status is not None:
            return self._raw[status]
        return [item for items in self._raw.values() for item in items]

    def _matching(
        self, q: ListQuery, orders: Mapping[int, SimOrder]
    ) -> tuple[Sequence[Entry], int]:
        """Every matching entry by ascending id, no-id items at the end; and their count."""
        raw = [item for item in self._raw_items(q.situacao) if q.keep_raw(item)]
        tail = sum(1 for item in raw if not isinstance(item.get("id"), int))
        if not raw and not q.filtered:
            return self.ids(q.situacao), 0  # the live list: sliced at once, never kept
        key = (q.situacao, q.date_from, q.date_to, q.numero, q.nome, q.id_contato)
        cached = self._cache.get(key)
        if cached is None:
            ids = self.ids(q.situacao)
            kept: list[Entry] = [i for i in ids if q.keep(orders[i])] if q.filtered else list(ids)
            if raw:
                with_id = [item for item in raw if isinstance(item.get("id"), int)]
                kept = sorted([*kept, *with_id], key=_entry_id)
                kept.extend(item for item in raw if not isinstance(item.get("id"), int))
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = cached = kept
        return cached, tail

    def page(self, q: ListQuery, orders: Mapping[int, SimOrder]) -> tuple[list[Entry], int]:
        """The entries of one page and the total number of matching entries."""
        seq, tail = self._matching(q, orders)
        total, start, stop = len(seq), q.offset, q.offset + q.limit
        if not q.descending:
            return list(seq[start:stop]), total
        head = total - tail  # descending by id; no-id items still come last
        out = list(reversed(seq[max(head - stop, 0) : max(head - start, 0)]))
        rest = q.limit - len(out)
        if rest > 0:
            first_tail = max(start, head)
            out.extend(seq[first_tail : first_tail + rest])
        return out, total


def _entry_id(entry: Entry) -> int:
    if isinstance(entry, int):
        return entry
    value = entry.get("id")
    return value if isinstance(value, int) else 0
