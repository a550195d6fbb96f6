"""Mapping raw Tiny JSON to typed rows: the values the engine hands to the sink.

Parsing is strict about meaning and lenient about form: every documented quirk
(situacao as ``3``/``"3"``/``"3 - Finalizada"``, ``"0000-00-00"`` dates, money as
``"1.234,56"``) is accepted; anything else raises :class:`RecordError` carrying the
raw item, so the caller can store it in ``import_failures`` and go on.

Two things PostgreSQL cannot hold are dealt with here: NUL characters (neither ``text``
nor ``jsonb`` stores them) are removed from every string of an item before anything
else, and a date of year 9999 (a placeholder, which asyncpg would turn into
``infinity``) means "no date". The content hash is taken over the item with its parsed
fields in one normal form, so the same order answered as ``3`` or ``"3 - Finalizada"``,
``1234.5`` or ``"1.234,50"``, hashes the same: a change of form is not a change.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from .clock import TINY_ZONE
from .errors import RecordError
from .status import Situacao, parse_situacao

_ZERO_DATES = {"", "0000-00-00", "0000-00-00 00:00:00"}
#: A year this far out is a placeholder for "no date" (asyncpg maps date.max to infinity).
_NO_DATE_YEAR = 9999
#: The year 1 is the other ("0001-01-01", .NET's and Java's "no date"): asyncpg maps
#: date.min to -infinity, which reports took for a conclusion Tiny gave (sweep L).
_NO_DATE_YEAR_BEFORE = 1


#: The longest error kept in ``import_failures.erro``: the value it quotes is whole in
#: ``dados_api`` (a 100,000-character value was stored twice, and filled the terminal).
ERROR_CHARS = 300


def _said(exc: ValueError) -> str:
    """The error of a record, cut to :data:`ERROR_CHARS` (saying how long it was)."""
    text = str(exc)
    if len(text) <= ERROR_CHARS:
        return text
    return f"{text[:ERROR_CHARS]}… ({len(text):,} characters; the value is in dados_api)"


def _placeholder(year: int) -> bool:
    return year >= _NO_DATE_YEAR or year <= _NO_DATE_YEAR_BEFORE


#: numeric(14, 2) holds less than this; a larger amount is bad data, not a crash.
_MONEY_LIMIT = Decimal(10) ** 12
_FLOAT_LIMIT = 1e12  # _MONEY_LIMIT, exactly, for a float
_CENT = Decimal("0.01")
#: Money fields of a detail (numbers or strings, in either decimal form).
_DETAIL_MONEY = ("totalServicos", "totalOrdemServico", "totalPecas", "desconto", "valor",
                 "alqComissao", "vlrComissao")  # fmt: skip
#: ids are bigint.
_ID_MAX = 2**63 - 1
_CODES = frozenset(int(code) for code in Situacao)


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """One service order as the listing shows it, typed, with its raw payload and hash."""

    id: int
    numero: str | None
    situacao: int
    data_emissao: dt.date | None
    data_prevista: dt.datetime | None
    cliente_id: int | None
    cliente_nome: str | None
    valor: Decimal | None
    payload: str  # canonical JSON of the raw item (sorted keys)
    hash: bytes  # blake2b-128 of ``payload``
    observed_at: dt.datetime  # when the request that returned it was sent


@dataclass(frozen=True, slots=True)
class DetailRecord:
    """What ``GET /ordem-servico/{id}`` adds: the conclusion date and the full payload."""

    id: int
    situacao: int
    data_conclusao: dt.datetime | None
    payload: str
    hash: bytes
    observed_at: dt.datetime


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """A record or order that could not be imported; becomes an ``import_failures`` row."""

    order_id: int
    error: str
    raw: str | None  # JSON text of what the API answered, for debugging

    def __post_init__(self) -> None:
        # The error may quote a body and the raw answer may be any text: PostgreSQL stores
        # neither with a NUL in it, and a failure row it refuses would sink its whole batch.
        if "\x00" in self.error:
            object.__setattr__(self, "error", self.error.replace("\x00", ""))
        if self.raw is not None and "\\u0000" in self.raw:
            object.__setattr__(self, "raw", storable_json(self.raw))


def canonical_json(item: object) -> str:
    """Serialize ``item`` with sorted keys so equal content gives equal text and hash."""
    return _canonical_bytes(item).decode()


def _canonical_bytes(item: object) -> bytes:
    """:func:`canonical_json` as the UTF-8 bytes orjson writes, before any decoding."""
    return orjson.dumps(item, option=orjson.OPT_SORT_KEYS)


def content_hash(payload: str) -> bytes:
    """16-byte blake2b digest used to skip unchanged rows before any write."""
    return _digest(payload.encode())


def _digest(utf8: bytes) -> bytes:
    """:func:`content_hash` of a payload already in UTF-8 (no decode and encode again)."""
    return hashlib.blake2b(utf8, digest_size=16).digest()


def without_nul(value: Any) -> Any:
    """``value`` with NUL characters removed from every string in it (keys included)."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


def storable(item: Any, order_id: int | None = None) -> tuple[Any, str]:
    """What PostgreSQL can store of a raw item (NUL characters removed), and its canonical
    JSON. The serialized text is searched, not the structure: one pass in C, not a walk.

    An item nested deeper than orjson writes (254 levels; it reads 1,024) raises
    :class:`RecordError` whose raw is the item's text as one JSON string: every later
    step (a failure's wrapping, a retry's) could write no deeper structure either."""
    item, utf8 = _storable_bytes(item, order_id)
    return item, utf8.decode()


def _storable_bytes(item: Any, order_id: int | None) -> tuple[Any, bytes]:
    """:func:`storable` with the canonical JSON as UTF-8 bytes, what its hash is taken of."""
    try:
        payload = _canonical_bytes(item)
    except orjson.JSONEncodeError:
        try:
            text = json.dumps(item, ensure_ascii=False, sort_keys=True)
        except RecursionError:
            text = None
        raw = None if text is None else canonical_json(text)
        if order_id is None:
            order_id = item_id(item) or synthetic_id(raw or "")
        raise RecordError("nested too deeply to store (over 254 levels of JSON)",
                          raw=raw, order_id=order_id) from None  # fmt: skip
    if b"\\u0000" in payload:  # orjson writes a NUL as \u0000
        item = without_nul(item)
        payload = _canonical_bytes(item)
    return item, payload


def storable_json(text: str) -> str:
    """JSON text as PostgreSQL can store it: NUL characters removed from its strings."""
    return storable(orjson.loads(text))[1] if "\\u0000" in text else text


def synthetic_id(payload: str) -> int:
    """A stable negative id for a record that has none, so it can key ``import_failures``."""
    return -(int.from_bytes(content_hash(payload)[:4], "big") & 0x7FFFFFFF) - 1


def parse_date(value: object, field: str) -> dt.date | None:
    """``"YYYY-MM-DD"`` (or a datetime string: its day on Tiny's clock, as
    :func:`parse_datetime` reads it) → date; zero dates and null → None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected a date string, got {type(value).__name__}")
    text = value.strip()
    if text in _ZERO_DATES:
        return None
    if len(text) > 10:  # "2024-03-01T01:00:00Z" is Feb 29 in São Paulo, not its first digits
        moment = parse_datetime(value, field)
        return None if moment is None else moment.date()
    try:
        day = dt.date.fromisoformat(text[:10])
    except ValueError:
        raise ValueError(f"{field}: unparseable date {value!r}") from None
    return None if _placeholder(day.year) else day


def parse_datetime(value: object, field: str) -> dt.datetime | None:
    """``"YYYY-MM-DD HH:MM:SS"`` or ``"YYYY-MM-DD"`` → naive datetime; zero dates → None.
    A date-time with an offset (``...Z``, ``...+00:00``) is the same instant on Tiny's
    clock (America/Sao_Paulo), like every naive one, not its digits with the offset cut."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected a date-time string, got {type(value).__name__}")
    text = value.strip()
    if text in _ZERO_DATES:
        return None
    try:
        if len(text) <= 10:
            moment = dt.datetime.combine(dt.date.fromisoformat(text), dt.time())
        else:
            moment = dt.datetime.fromisoformat(text)
            if _placeholder(moment.year):  # whatever its offset
                return None
            if moment.tzinfo is not None:  # an instant: Tiny's wall clock at that instant
                moment = moment.astimezone(TINY_ZONE).replace(tzinfo=None)
    except ValueError:
        raise ValueError(f"{field}: unparseable date-time {value!r}") from None
    except OverflowError:  # "0001-01-01T00:00:00Z": before year 1 in São Paulo
        raise ValueError(f"{field}: date-time out of range {value!r}") from None
    return None if _placeholder(moment.year) else moment


#: Digits grouped in threes by one separator, dots or commas, nothing else: thousands
#: with no cents (R$ 1.234 the Brazilian way, 1,234 the US way), or an amount with three
#: decimals (1.234 the US way, 1,234 the Brazilian way); which was meant is not said.
_GROUPED = re.compile(r"[+-]?[1-9]\d{0,2}([.,])\d{3}(?:\1\d{3})*")


def parse_money(value: object, field: str) -> Decimal | None:
    """A number, ``"1234.56"``, ``"1234,56"`` or ``"1.234,56"`` → Decimal; null/"" → None."""
    if value is None:
        return None
    if type(value) is float and -_FLOAT_LIMIT < value < _FLOAT_LIMIT:  # NaN fails both
        return Decimal(repr(value)).quantize(_CENT)
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected money, got a boolean")
    if isinstance(value, int | float):
        return _bounded(Decimal(str(value)), field, value)
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected money, got {type(value).__name__}")
    text = value.strip()
    if not text:
        return None
    if _GROUPED.fullmatch(text):  # "1.234" or "1,234": a thousand, or one and a bit
        raise ValueError(f"{field}: ambiguous amount {value!r} (thousands or three decimals)")
    if "," in text:  # Brazilian form: dots group thousands, the comma is the decimal mark
        if "." in text[text.index(",") :]:  # "1,234.56": read so, it was 1.23, silently
            raise ValueError(f"{field}: ambiguous amount {value!r} (a dot after the comma)")
        text = text.replace(".", "").replace(",", ".")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{field}: unparseable amount {value!r}") from None
    return _bounded(amount, field, value)


def _bounded(amount: Decimal, field: str, value: object) -> Decimal:
    # adjusted() is exact and needs no context: abs() or quantize() of "1e999999999"
    # would raise decimal.Overflow, not a RecordError.
    if not amount.is_finite() or amount.adjusted() >= 12 or abs(amount) >= _MONEY_LIMIT:
        raise ValueError(f"{field}: amount out of range {value!r}")
    return amount.quantize(_CENT)


def _parse_id(value: object, field: str) -> int:
    if type(value) is int and 0 < value <= _ID_MAX:  # what nearly every answer carries
        return value
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{field}: missing")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and 0 < value <= _ID_MAX:
        return value
    raise ValueError(f"{field}: expected a positive integer id, got {value!r}")


def item_id(item: object) -> int | None:
    """The id of a raw list item or detail, in any form the records accept (``123``,
    ``"123"``); None when it has none."""
    try:
        return _parse_id(item.get("id"), "id") if isinstance(item, Mapping) else None
    except ValueError:
        return None


def _optional_id(value: object, field: str) -> int | None:
    """An id that may be absent: null, ``""`` and ``0`` mean none, in either form (``"0"``)."""
    if type(value) is int and 0 < value <= _ID_MAX:  # what nearly every answer carries
        return value
    if value in (None, "", 0) or (isinstance(value, str) and not value.strip().strip("0")):
        return None
    return _parse_id(value, field)


def _optional_text(value: object, field: str) -> str | None:
    if value is None or type(value) is str:
        return value
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{field}: expected text, got {type(value).__name__}")


def _raw_id(item: Mapping[str, Any], payload: str) -> int:
    try:
        return _parse_id(item.get("id"), "id")
    except ValueError:
        return synthetic_id(payload)


def _iso(value: dt.date | None) -> str | None:
    return None if value is None else value.isoformat()


def normal_hash(item: Mapping[str, Any], parsed: Mapping[str, object]) -> bytes:
    """The content hash of ``item`` with its ``parsed`` fields in their normal form."""
    return content_hash(canonical_json({**item, **parsed}))


def _moment(value: dt.datetime | None) -> str | None:
    """A date-time in Tiny's own form (``YYYY-MM-DD HH:MM:SS``): what most answers carry."""
    return None if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _in_normal_form(
    fields: Mapping[str, Any],
    data: dt.date | None,
    prevista: dt.datetime | None,
    valor: Decimal | None,
) -> bool:
    """Whether the parsed fields already arrived in normal form (an int status, ISO dates,
    money as a number): checked by type and shape, without building the normal form."""
    raw_data, raw_prev, raw_valor = (
        fields.get("data"),
        fields.get("dataPrevista"),
        fields.get("valor"),
    )
    iso_day = type(raw_data) is str and len(raw_data) == 10 and data is not None
    tiny_moment = (
        type(raw_prev) is str and len(raw_prev) == 19 and raw_prev[10] == " "
        and prevista is not None
    )  # fmt: skip
    number = type(raw_valor) is float and float(valor or 0) == raw_valor
    return (
        type(fields.get("situacao")) is int
        and (raw_data is None or iso_day)
        and (raw_prev is None or tiny_moment)
        and (raw_valor is None or number)
    )


def parse_list_item(item: object, observed_at: dt.datetime) -> OrderRecord:
    """Map one item of ``GET /ordem-servico`` to an :class:`OrderRecord`."""
    # ``type(x) is dict`` first: the ABC check alone costs more than a field's parsing.
    if type(item) is not dict and not isinstance(item, Mapping):
        payload = storable(item)[1]  # an array nested too deeply is its own RecordError
        raise RecordError("list item is not an object", raw=payload, order_id=synthetic_id(payload))
    fields: Mapping[str, Any]
    fields, utf8 = _storable_bytes(item, None)
    payload = utf8.decode()
    try:
        cliente = fields.get("cliente") or {}
        if type(cliente) is not dict and not isinstance(cliente, Mapping):
            raise ValueError("cliente: expected an object")
        raw_situacao = fields.get("situacao")
        situacao = (
            raw_situacao
            if type(raw_situacao) is int and raw_situacao in _CODES
            else int(parse_situacao(raw_situacao))
        )
        data = parse_date(fields.get("data"), "data")
        prevista = parse_datetime(fields.get("dataPrevista"), "dataPrevista")
        valor = parse_money(fields.get("valor"), "valor")
        # Most answers already carry the normal form: then the payload's hash is the one.
        if _in_normal_form(fields, data, prevista, valor):
            digest = _digest(utf8)
        else:
            normal = {
                "situacao": situacao,
                "data": _iso(data),
                "dataPrevista": _moment(prevista),
                "valor": None if valor is None else float(valor),
            }
            digest = normal_hash(fields, normal)
        # Positional: keywords cost a third more, once per listed order.
        return OrderRecord(
            _parse_id(fields.get("id"), "id"),
            _optional_text(fields.get("numeroOrdemServico"), "numeroOrdemServico"),
            situacao,
            data,
            prevista,
            _optional_id(cliente.get("id"), "cliente.id"),
            _optional_text(cliente.get("nome"), "cliente.nome"),
            valor,
            payload,
            digest,
            observed_at,
        )
    except ValueError as exc:
        raise RecordError(_said(exc), raw=payload, order_id=_raw_id(fields, payload)) from exc


def parse_detail(item: object, order_id: int, observed_at: dt.datetime) -> DetailRecord:
    """Map ``GET /ordem-servico/{id}`` to a :class:`DetailRecord` (checks the id matches)."""
    item, payload = storable(item, order_id)
    if not isinstance(item, Mapping):
        raise RecordError("detail is not an object", raw=payload, order_id=order_id)
    try:
        got = _parse_id(item.get("id"), "id")
        if got != order_id:
            raise ValueError(f"id: asked for {order_id}, got {got}")
        situacao = int(parse_situacao(item.get("situacao")))
        conclusao = parse_datetime(item.get("dataConclusao"), "dataConclusao")
        normal: dict[str, object] = {"situacao": situacao, "dataConclusao": _iso(conclusao)}
        for name in _DETAIL_MONEY:
            if name in item:
                try:
                    amount = parse_money(item[name], name)
                except ValueError:
                    continue  # not a field we store: its form stays as it came
                normal[name] = None if amount is None else str(amount)
        return DetailRecord(
            id=order_id,
            situacao=situacao,
            data_conclusao=conclusao,
            payload=payload,
            hash=normal_hash(item, normal),
            observed_at=observed_at,
        )
    except ValueError as exc:
        raise RecordError(_said(exc), raw=payload, order_id=order_id) from exc


def failure_from(exc: RecordError) -> FailureRecord:
    """The ``import_failures`` row for a record that could not be mapped."""
    raw = exc.raw if isinstance(exc.raw, str) or exc.raw is None else canonical_json(exc.raw)
    order_id = exc.order_id if exc.order_id is not None else synthetic_id(raw or "")
    return FailureRecord(order_id=order_id, error=str(exc), raw=raw)


#: The error of an order whose detail answered 404, in the words each path records it with:
#: a failure that comes back with the same error is the same failure (failure_upsert.sql).
DETAIL_NOT_FOUND = "TinyNotFound: the order's detail answered 404"


def detail_not_found(order_id: int, list_item: str | None = None) -> FailureRecord:
    """The failure of an order whose detail answered 404 (one kept only while Tiny lists
    the order: a deleted one is no failure): ``dados_api`` is ``{"detail": {"status":
    404}}``, with the ``list_item`` (JSON text) beside the answer when given."""
    dados: dict[str, object] = {"detail": {"status": 404}}
    if list_item is not None:
        dados["list_item"] = orjson.loads(list_item)
    return FailureRecord(order_id, DETAIL_NOT_FOUND, orjson.dumps(dados).decode())


def order_from_detail(item: object, order_id: int, observed_at: dt.datetime) -> OrderRecord:
    """An :class:`OrderRecord` built from a detail, to import an order known only by id.

    The detail carries every listed field (``contato`` is the listing's ``cliente``,
    ``totalOrdemServico`` its ``valor``); the next listing replaces the payload with the
    list item itself, without a history row since the status is the same.
    """
    if not isinstance(item, Mapping):
        raise RecordError("detail is not an object", raw=canonical_json(item), order_id=order_id)
    projected = {
        "id": item.get("id"),
        "situacao": item.get("situacao"),
        "data": item.get("data"),
        "dataPrevista": item.get("dataPrevista"),
        "valor": item.get("totalOrdemServico"),
        "numeroOrdemServico": item.get("numeroOrdemServico"),
        "cliente": item.get("contato") or item.get("cliente"),
    }
    record = parse_list_item(projected, observed_at)
    if record.id != order_id:
        raise RecordError(
            f"id: asked for {order_id}, got {record.id}",
            raw=canonical_json(item),
            order_id=order_id,
        )
    return record
