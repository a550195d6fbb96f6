"""Render simulator orders into the JSON shapes of Tiny API v3, honouring :class:`Quirks`.

Per-order variants (``mixed`` situacao style, the money string form, the zero-date form)
are picked by a hash of the seed and the order id, so an order always looks the same in
the listing and in its detail, and the same seed always gives the same bytes. The
``unstable`` situacao style is the exception on purpose: a seeded stream advanced at every
rendering, so one order arrives as ``3``, ``"3"`` and ``"3 - Finalizada"`` across answers
and a client cannot get away with comparing raw values.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any

from asyncsync.status import Situacao, format_situacao

from .data import Quirks, SimOrder

#: Detail fields that are always strings, even without the money quirk.
STRING_MONEY_FIELDS = frozenset({"totalServicos", "totalOrdemServico", "totalPecas", "desconto"})
#: Detail fields the generator does not vary, with the value the API answers.
DETAIL_DEFAULTS: dict[str, Any] = {
    "observacoesServico": "",
    "observacoesInternas": "",
    "orcado": "N",
    "idContaContabil": 0,
    "idListaPreco": 0,
    "idLocalPrestacao": 0,
    "idDeposito": 0,
}
_BR_SWAP = str.maketrans(",.", ".,")
_STYLES = ("int", "str", "label")
_SALT_STATUS, _SALT_MONEY, _SALT_ZERO = 0x51, 0xA7, 0x3C


def brazilian(value: Decimal) -> str:
    """``Decimal("1234.5")`` -> ``"1.234,50"``."""
    return f"{value:,.2f}".translate(_BR_SWAP)


def format_date(value: dt.date) -> str:
    """``YYYY-MM-DD`` (``isoformat``: a fifth of ``strftime``'s cost, the same text)."""
    return value.isoformat()


def format_datetime(value: dt.datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS``, without fractions or offset."""
    return value.isoformat(" ", "seconds")[:19]


class Renderer:
    """Turns :class:`SimOrder` values into list items and detail bodies."""

    def __init__(self, quirks: Quirks, seed: int) -> None:
        self.quirks = quirks
        self._seed = seed
        self._unstable = random.Random(f"{seed}:unstable")

    def _bit(self, order_id: int, salt: int, modulo: int) -> int:
        # A cheap, stable integer hash (Knuth multiplicative); Python's hash() is salted.
        h = ((order_id ^ (self._seed * 0x9E3779B1) ^ salt) * 0x85EBCA6B) & 0xFFFFFFFF
        return (h >> 13) % modulo

    def situacao(self, status: Situacao, order_id: int) -> int | str:
        style = self.quirks.situacao_style
        if style == "mixed":
            style = _STYLES[self._bit(order_id, _SALT_STATUS, 3)]
        elif style == "unstable":
            style = self._unstable.choice(_STYLES)
        return format_situacao(status, style)

    def money(self, value: Decimal, order_id: int, *, string: bool = False) -> float | str:
        """A number, or a string when ``string`` or the money quirk says so."""
        if self.quirks.money_as_string:
            if self._bit(order_id, _SALT_MONEY, 2):
                return brazilian(value)
            return f"{value:.2f}"
        return f"{value:.2f}" if string else float(value)

    def moment(self, value: dt.datetime | None, order_id: int) -> str | None:
        """A ``YYYY-MM-DD HH:MM:SS`` value; empty as null or, with the quirk, a zero date."""
        if value is not None:
            return format_datetime(value)
        if not self.quirks.zero_dates:
            return None
        return "0000-00-00" if self._bit(order_id, _SALT_ZERO, 2) else "0000-00-00 00:00:00"

    def list_item(self, order: SimOrder) -> dict[str, Any]:
        """One entry of ``GET /ordem-servico``'s ``itens``."""
        oid = order.id
        return {
            "id": str(oid) if self.quirks.ids_as_strings else oid,
            "situacao": self.situacao(order.situacao, oid),
            "data": format_date(order.data),
            "dataPrevista": self.moment(order.data_prevista, oid),
            "valor": self.money(order.valor, oid),
            "numeroOrdemServico": order.numero,
            "cliente": order.cliente,
            "marcadores": order.marcadores,
        }

    def detail(self, order: SimOrder) -> dict[str, Any]:
        """The body of ``GET /ordem-servico/{id}``."""
        oid = order.id
        body: dict[str, Any] = {
            "id": str(oid) if self.quirks.ids_as_strings else oid,
            "numeroOrdemServico": order.numero,
            "situacao": self.situacao(order.situacao, oid),
            "data": format_date(order.data),
            "dataPrevista": self.moment(order.data_prevista, oid),
            "dataConclusao": self.moment(order.data_conclusao, oid),
            "totalOrdemServico": self.money(order.valor, oid, string=True),
        }
        body.update(DETAIL_DEFAULTS)
        for key, value in order.extra.items():
            if isinstance(value, Decimal):
                value = self.money(value, oid, string=key in STRING_MONEY_FIELDS)
            body[key] = value
        forma = body.get("formaRecebimento")
        body.setdefault("idForma", forma.get("id", 0) if isinstance(forma, dict) else 0)
        if self.quirks.forma_pagamento and "formaRecebimento" in body:
            body["formaPagamento"] = body.pop("formaRecebimento")
        body["contato"] = order.cliente
        return body


def malform(item: dict[str, Any], kind: str) -> dict[str, Any]:
    """Break a rendered list item the way ``kind`` says (``no_id``, ``bad_date``, ``bad_type``)."""
    broken = dict(item)
    if kind == "no_id":
        del broken["id"]
    elif kind == "bad_date":
        broken["data"] = "2021-13-45"
    elif kind == "bad_type":
        broken["valor"] = {"oops": 1}
    else:
        raise ValueError(f"unknown malformed kind {kind!r}; use no_id, bad_date or bad_type")
    return broken
