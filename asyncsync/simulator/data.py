"""Configuration and seeded, deterministic fake service orders for the simulator.

:func:`generate_orders` builds the initial state; :class:`OrderFactory` fills in the
per-order details and is reused by the control API (``add_order``, ``add_malformed``).
The same seed (and the same ``today``) always yields the same orders.

Time is São Paulo's, as Tiny's is (:func:`tiny_now`), whatever the host's zone: the default
``today`` is São Paulo's date, and no date-time drawn is later than São Paulo's now (Tiny
never reports a conclusion in the future); ``dataPrevista``, a due date, may be.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from asyncsync.status import Situacao

SITUACAO_STYLES: tuple[str, ...] = ("int", "str", "label", "mixed", "unstable")
ID_BASE = 700_000_000
_ID_MAX_GAP = 37


#: Tiny's zone: its dates and date-times are São Paulo's, whatever the host's zone is.
TINY_ZONE = ZoneInfo("America/Sao_Paulo")


def tiny_now() -> dt.datetime:
    """São Paulo's wall clock, naive as Tiny renders it, to the second."""
    return dt.datetime.now(TINY_ZONE).replace(tzinfo=None, microsecond=0)


DATE_WINDOWS = ("inclusive", "end-exclusive", "start-exclusive", "exclusive")


@dataclass(frozen=True)
class Quirks:
    """Switches for the response variants seen from the live API (a client must accept all)."""

    #: ``int`` | ``str`` | ``label`` | ``mixed`` (chosen per order, seeded) | ``unstable``
    #: (chosen afresh at every rendering, so one order arrives in several forms).
    situacao_style: str = "int"
    #: Empty ``dataPrevista``/``dataConclusao`` as ``"0000-00-00"`` / ``"0000-00-00 00:00:00"``
    #: (the form is chosen per order) instead of ``null``.
    zero_dates: bool = False
    #: Money as strings, per order either ``"1234.56"`` or Brazilian ``"1.234,56"``.
    money_as_string: bool = False
    #: List responses carry only ``{"itens": [...]}``.
    omit_paginacao: bool = False
    #: Which days ``dataInicialEmissao``..``dataFinalEmissao`` cover (undocumented):
    #: ``inclusive`` (both), ``end-exclusive``, ``start-exclusive`` or ``exclusive``.
    date_window: str = "inclusive"
    #: The status answering a refused (expired, revoked, unknown) access token: Tiny
    #: documents both 401 and 403, and which one a dead token gets is not said.
    refused_token_status: int = 401
    #: Order ids as numeric strings (``"700000123"``), as Tiny's older API sent every
    #: number; the client accepts them like ``situacao``'s ``"3"``.
    ids_as_strings: bool = False
    #: The detail's payment form as the older spec names it, ``formaPagamento``, instead
    #: of ``formaRecebimento`` (the same ``{id, nome}``).
    forma_pagamento: bool = False

    def __post_init__(self) -> None:
        if self.situacao_style not in SITUACAO_STYLES:
            raise ValueError(f"situacao_style must be one of {SITUACAO_STYLES}")
        if self.date_window not in DATE_WINDOWS:
            raise ValueError(f"date_window must be one of {DATE_WINDOWS}")
        if self.refused_token_status not in (401, 403):
            raise ValueError("refused_token_status must be 401 or 403")


@dataclass(frozen=True)
class SimConfig:
    """Everything that shapes one simulator instance."""

    orders: int = 1000
    seed: int = 1
    #: Emission dates are spread from January 1st of ``start_year`` to ``today``.
    start_year: int = 2014
    #: ``None`` means São Paulo's date at generation time (see :meth:`drawn_at`).
    today: dt.date | None = None
    rate_limit_per_minute: int = 120
    #: Length of one fixed rate-limit window, in seconds (tests shrink it).
    rate_window_s: float = 60.0
    #: Requests of each rate window spent by the account's other apps (the quota is the
    #: account's, shared by every app connected to it), as each window opens.
    other_apps: int = 0
    #: Added to every API response, in seconds.
    latency_s: float = 0.0
    #: A ``limit`` query parameter above this is capped to it.
    max_limit: int = 100
    quirks: Quirks = Quirks()
    client_id: str = "sim-client"
    client_secret: str = "sim-secret"
    #: The initial valid refresh token.
    refresh_token: str = "sim-refresh-0"
    access_ttl_s: float = 14400.0
    refresh_ttl_s: float = 86400.0
    #: Slept after a grant before its answer leaves (a slow Keycloak): the token's life
    #: has begun when it arrives.
    token_latency_s: float = 0.0
    #: Each refresh returns a new refresh token and invalidates the old one.
    rotate_refresh_tokens: bool = True
    #: Redirect URIs registered for the app; empty accepts any loopback ``http`` URI.
    redirect_uris: tuple[str, ...] = ()
    #: How long an authorization code can be exchanged, in (monotonic) seconds.
    code_ttl_s: float = 60.0
    #: Initial ``TinySimulator.detail_error_rate`` / ``list_error_rate`` (0..1).
    detail_error_rate: float = 0.0
    list_error_rate: float = 0.0

    def drawn_at(self) -> dt.datetime:
        """The São Paulo moment (naive) the orders are drawn at, the latest any of their
        date-times can be: São Paulo's now; for an explicit ``today`` other than São Paulo's
        date, that day's last second, so its orders are the same whenever they are drawn."""
        now = tiny_now()
        if self.today is None or self.today == now.date():
            return now
        return dt.datetime.combine(self.today, dt.time(23, 59, 59))


@dataclass(slots=True)
class SimOrder:
    """One service order as the simulator holds it (mutable: it is the live state).

    Change ``situacao`` through :meth:`TinySimulator.set_status`, never directly: the
    listing index must follow. Filtered listings (date window, client, number) are cached
    until the next control-API call, so edit ``data``/``cliente`` in place only before
    listing. Nested dicts in ``extra`` (``categoria``, ``vendedor``, ...)
    are shared between orders: replace them rather than mutate them.
    """

    id: int
    numero: str
    situacao: Situacao
    data: dt.date
    data_prevista: dt.datetime | None
    data_conclusao: dt.datetime | None
    valor: Decimal
    cliente: dict[str, Any]
    #: The remaining detail fields, keyed by their API name; money as ``Decimal``.
    extra: dict[str, Any]
    marcadores: list[dict[str, Any]] = field(default_factory=list)


_FIRST = (
    "Ana", "Bruno", "Carla", "Daniel", "Eduarda", "Felipe", "Gabriela", "Henrique", "Isabela",
    "João", "Karina", "Lucas", "Mariana", "Nicolas", "Otávio", "Patrícia", "Rafael", "Sofia",
    "Thiago", "Vitória", "Wagner", "Yasmin", "Antônio", "Beatriz", "Conceição", "Sebastião",
)  # fmt: skip
_LAST = (
    "Silva", "Santos", "Oliveira", "Souza", "Rodrigues", "Ferreira", "Alves", "Pereira", "Lima",
    "Gomes", "Costa", "Ribeiro", "Martins", "Carvalho", "Araújo", "Melo", "Barbosa", "Rocha",
    "Dias", "Nascimento", "Moreira", "Cardoso", "Teixeira", "Correia", "Gonçalves", "Mendes",
)  # fmt: skip
_BUSINESS = (
    "Oficina", "Assistência Técnica", "Comércio", "Distribuidora", "Mecânica", "Clínica",
    "Padaria", "Construtora", "Transportes", "Informática", "Refrigeração", "Auto Peças",
)  # fmt: skip
_EQUIPMENT = (
    "Notebook Dell Inspiron 15", "Impressora HP LaserJet M1132", "Geladeira Brastemp Frost Free",
    "Ar-condicionado Split 12000 BTUs", "Smartphone Samsung Galaxy A32", "Máquina de lavar LG 11kg",
    "Televisor LG 50\" 4K", "Compressor Schulz 10 pés", "Micro-ondas Electrolux 31L",
    "Roteador TP-Link Archer C6", "Motor elétrico WEG 2cv", "Nobreak SMS 1200VA",
)  # fmt: skip
_PROBLEMS = (
    "Não liga", "Liga e desliga sozinho", "Barulho excessivo", "Não gela", "Tela quebrada",
    "Vazamento de água", "Superaquecimento", "Não imprime", "Manutenção preventiva",
    "Troca de peça com defeito", "Sem sinal", "Bateria não segura carga",
)  # fmt: skip
_NOTES = ("", "", "", "Cliente retira na loja", "Urgente", "Garantia", "Aguardando peça")
_TECHS = ("Carlos Técnico", "Marcos Reparos", "Juliana Eletrônica", "Paulo Refrigeração", "")
_CATEGORIES = (
    {"id": 101, "descricao": "Manutenção"},
    {"id": 102, "descricao": "Instalação"},
    {"id": 103, "descricao": "Garantia"},
    {"id": 104, "descricao": "Orçamento"},
    {"id": 0, "descricao": ""},
)
_PAYMENTS = (
    {"id": 1, "nome": "Dinheiro"},
    {"id": 2, "nome": "Cartão de crédito"},
    {"id": 3, "nome": "Boleto"},
    {"id": 4, "nome": "PIX"},
    {"id": 5, "nome": "Cartão de débito"},
)
_SELLERS = (
    {"id": 9001, "nome": "Roberta Vendas"},
    {"id": 9002, "nome": "Fernando Comercial"},
    {"id": 0, "nome": ""},
)
_TAGS = ({"id": 51, "descricao": "Prioridade"}, {"id": 52, "descricao": "Retorno"},
         {"id": 53, "descricao": "Garantia"}, {"id": 54, "descricao": "VIP"})  # fmt: skip
_COMMISSION_RATES = (0, 0, 250, 500)  # hundredths of a percent

# Relative weights: closed statuses (3 dominates) and open ones.
_CLOSED_WEIGHTS = ((Situacao.FINALIZADA, 85), (Situacao.NAO_APROVADA, 7), (Situacao.CANCELADA, 8))
_OPEN_WEIGHTS = (
    (Situacao.EM_ABERTO, 30),
    (Situacao.ORCADA, 15),
    (Situacao.SERVICO_CONCLUIDO, 15),
    (Situacao.APROVADA, 15),
    (Situacao.EM_ANDAMENTO, 25),
)


def _weighted(pairs: tuple[tuple[Situacao, int], ...]) -> tuple[Situacao, ...]:
    return tuple(s for s, w in pairs for _ in range(w))


_CLOSED_BAG = _weighted(_CLOSED_WEIGHTS)
_OPEN_BAG = _weighted(_OPEN_WEIGHTS)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(str(int(rng.random() * 10)) for _ in range(n))


def _make_client(rng: random.Random, client_id: int) -> dict[str, Any]:
    if rng.random() < 0.7:
        name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)} {rng.choice(_LAST)}"
        d = _digits(rng, 11)
        doc, kind, fantasia = f"{d[:3]}.{d[3:6]}.{d[6:9]}-{d[9:]}", "F", ""
    else:
        fantasia = f"{rng.choice(_BUSINESS)} {rng.choice(_LAST)}"
        name = f"{fantasia} Ltda"
        d = _digits(rng, 14)
        doc, kind = f"{d[:2]}.{d[2:5]}.{d[5:8]}/{d[8:12]}-{d[12:]}", "J"
    return {
        "id": client_id,
        "nome": name,
        "codigo": str(client_id % 100_000),
        "fantasia": fantasia,
        "tipoPessoa": kind,
        "cpfCnpj": doc,
    }


def _cents(value: int) -> Decimal:
    return Decimal(value).scaleb(-2)


_ZERO = _cents(0)
_RATES = {rate: _cents(rate) for rate in _COMMISSION_RATES}
_DAYS = tuple(dt.timedelta(days=n) for n in range(32))


class OrderFactory:
    """Draws the details of orders from one seeded random stream."""

    def __init__(self, rng: random.Random, now: dt.datetime, clients: int) -> None:
        self._rng = rng
        #: No date-time drawn is later (São Paulo's wall clock, naive).
        self._now = now
        base = 800_000_000
        self._clients = [_make_client(rng, base + 17 * i) for i in range(max(clients, 1))]

    def status_for_age(self, age_days: int) -> Situacao:
        """Mostly closed, with open orders concentrated among the recent ones."""
        r = self._rng.random()
        p_open = 0.5 if age_days < 60 else 0.1 if age_days < 365 else 0.008
        bag = _OPEN_BAG if r < p_open else _CLOSED_BAG
        return bag[int(self._rng.random() * len(bag))]

    def conclusion_for(self, day: dt.date, situacao: Situacao) -> dt.datetime | None:
        """A conclusion time for FINALIZADA orders (about 10% left empty), else None."""
        r = self._rng.random
        if situacao is not Situacao.FINALIZADA or r() < 0.1:
            return None
        done = min(day + _DAYS[int(r() * 20)], self._now.date())
        seconds = int(r() * 36_000)
        drawn = dt.datetime(done.year, done.month, done.day, 8 + seconds // 3600,
                            seconds // 60 % 60, seconds % 60)  # fmt: skip
        return min(drawn, self._now)  # concluded today, later than now: just now

    def make(self, order_id: int, numero: str, day: dt.date, situacao: Situacao) -> SimOrder:
        """A complete order with the given identity, emission date and status."""
        r = self._rng.random
        prevista = None
        if r() >= 0.15:
            due = day + _DAYS[1 + int(r() * 10)]
            prevista = dt.datetime(due.year, due.month, due.day, 8 + int(r() * 10))
        # Cents, skewed toward small amounts (services alone: median about R$ 340).
        services = 3_000 + int(250_000 * r() ** 3)
        parts = 0 if r() < 0.5 else 500 + int(100_000 * r() ** 3)
        discount = 0 if r() < 0.8 else services * (1 + int(r() * 15)) // 100
        total = services + parts - discount
        rate = _COMMISSION_RATES[int(r() * 4)]
        extra: dict[str, Any] = {
            "equipamento": _EQUIPMENT[int(r() * len(_EQUIPMENT))],
            "equipamentoSerie": "" if r() < 0.6 else f"SN{int(r() * 1e8):08d}",
            "descricaoProblema": _PROBLEMS[int(r() * len(_PROBLEMS))],
            "observacoes": _NOTES[int(r() * len(_NOTES))],
            "tecnico": _TECHS[int(r() * len(_TECHS))],
            "vendedor": _SELLERS[int(r() * len(_SELLERS))],
            "categoria": _CATEGORIES[int(r() * len(_CATEGORIES))],
            "formaRecebimento": _PAYMENTS[int(r() * len(_PAYMENTS))],
            "orcar": "S" if r() < 0.3 else "N",
            "alqComissao": _RATES[rate],
            "vlrComissao": _cents(total * rate // 10_000) if rate else _ZERO,
            "totalServicos": _cents(services),
            "totalPecas": _cents(parts) if parts else _ZERO,
            "desconto": _cents(discount) if discount else _ZERO,
        }
        return SimOrder(
            id=order_id,
            numero=numero,
            situacao=situacao,
            data=day,
            data_prevista=prevista,
            data_conclusao=self.conclusion_for(day, situacao),
            valor=_cents(total),
            cliente=dict(self._clients[int(r() * len(self._clients))]),
            extra=extra,
            marcadores=[] if r() < 0.85 else [dict(_TAGS[int(r() * len(_TAGS))])],
        )


def generate_orders(config: SimConfig, now: dt.datetime | None = None) -> list[SimOrder]:
    """The initial orders, ids strictly increasing with the emission date, drawn at ``now``
    (by default :meth:`SimConfig.drawn_at`): emitted up to its date, concluded up to it."""
    rng = random.Random(config.seed)
    now = now or config.drawn_at()
    today = now.date()
    start = dt.date(config.start_year, 1, 1)
    span = max((today - start).days, 0)
    factory = OrderFactory(rng, now, clients=min(max(config.orders // 5, 10), 5000))
    # sqrt of a uniform draw skews toward 1, i.e. toward recent dates.
    offsets = sorted(min(span, int((span + 1) * rng.random() ** 0.5)) for _ in range(config.orders))
    dates = [start + dt.timedelta(days=n) for n in range(span + 1)]
    orders: list[SimOrder] = []
    order_id = ID_BASE
    for i, offset in enumerate(offsets):
        order_id += 1 + int(rng.random() * _ID_MAX_GAP)
        status = factory.status_for_age(span - offset)
        orders.append(factory.make(order_id, str(i + 1), dates[offset], status))
    if len(orders) >= len(Situacao):
        _ensure_every_status(orders, factory)
    return orders


def _ensure_every_status(orders: list[SimOrder], factory: OrderFactory) -> None:
    """Give each missing status to a recent order of an over-represented status."""
    counts = {s: 0 for s in Situacao}
    for order in orders:
        counts[order.situacao] += 1
    missing = [s for s in Situacao if counts[s] == 0]
    for order in reversed(orders):
        if not missing:
            return
        if counts[order.situacao] > 1:
            counts[order.situacao] -= 1
            order.situacao = missing.pop()
            order.data_conclusao = factory.conclusion_for(order.data, order.situacao)


def next_id_after(rng: random.Random, last_id: int) -> int:
    """A fresh id above ``last_id``, with the same kind of gap as generated ones."""
    return last_id + 1 + int(rng.random() * _ID_MAX_GAP)


__all__ = [
    "OrderFactory",
    "Quirks",
    "SimConfig",
    "SimOrder",
    "generate_orders",
    "next_id_after",
    "tiny_now",
]
