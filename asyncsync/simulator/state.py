"""The simulator's world and its synchronous control API, apart from any HTTP.

:class:`SimState` holds the live orders, the tokens, the rate window and the fault switches;
:class:`~.app.TinySimulator` serves them. Control methods are plain and synchronous: they
run on the event loop between requests, so every request sees a consistent state.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from typing import Any

from asyncsync.status import Situacao

from .access import RateWindow, SimStats
from .data import (
    ID_BASE,
    OrderFactory,
    SimConfig,
    SimOrder,
    generate_orders,
    next_id_after,
    tiny_now,
)
from .faults import Outage
from .index import OrderIndex
from .oauth import TokenStore
from .render import Renderer, malform

DEFAULT_CONFIG = SimConfig()
#: Default size of a ``fail_detail[id] = "huge"`` answer, bytes.
HUGE_DETAIL_BYTES = 60_000_000


class SimState:
    """Orders, tokens, quota and faults, with the control methods tests call."""

    def __init__(self, config: SimConfig = DEFAULT_CONFIG) -> None:
        self.config = config
        #: Wall clock used for conclusion times and new orders (São Paulo's, naive, as
        #: Tiny renders it); tests may replace it.
        self.clock: Callable[[], dt.datetime] = tiny_now
        drawn_at = config.drawn_at()
        generated = generate_orders(config, drawn_at)
        #: The live state, id -> order.
        self.orders: dict[int, SimOrder] = {o.id: o for o in generated}
        self._index = OrderIndex(generated)
        self._renderer = Renderer(config.quirks, config.seed)
        self._rng = random.Random(f"{config.seed}:control")
        #: Draws for injected errors; its own stream, so error rates do not move the data.
        self._fault_rng = random.Random(f"{config.seed}:faults")
        self._factory = OrderFactory(self._rng, drawn_at, clients=50)
        self._last_id = generated[-1].id if generated else ID_BASE
        self._last_numero = len(generated)
        self._tokens = TokenStore(config)
        self._rate = RateWindow(config.rate_limit_per_minute, config.rate_window_s)
        self._rate.other_apps = config.other_apps
        self._outage = Outage()
        self.stats = SimStats()
        #: Order id -> a ``fail_detail`` mode (``500``, ``401``, ``403``, ``404``, ``malformed``,
        #: ``huge``, ``html``: a proxy's maintenance page, 200 ``text/html``), applied on
        #: ``GET /ordem-servico/{id}``.
        self.fail_detail: dict[int, str] = {}
        #: Raw malformed list items injected by :meth:`add_malformed`.
        self.malformed: list[dict[str, Any]] = []
        #: Fraction (0..1) of detail / list requests answering 500, drawn per request.
        self.detail_error_rate: float = config.detail_error_rate
        self.list_error_rate: float = config.list_error_rate
        #: When > 0, every list answer is padded to at least this many bytes (streamed).
        self.pad_list_bytes: int = 0
        #: The size of a ``fail_detail[id] = "huge"`` answer, bytes.
        self.huge_detail_bytes: int = HUGE_DETAIL_BYTES
        #: The "person" at the authorization endpoint declines instead of consenting.
        self.deny_authorization: bool = False
        #: The next this many requests to the token endpoint answer 503 (a Keycloak
        #: restart, its proxy's hiccup) while the API itself stays up.
        self.fail_token_requests: int = 0
        #: While true, the token endpoint answers a proxy's maintenance page (200
        #: ``text/html``, no OAuth JSON), whatever the API does: the token host down
        #: behind its proxy. Counted as an outage answer.
        self.token_page: bool = False
        #: ``(text, raw)``: list and detail answers carry the bytes ``raw`` where the JSON
        #: of ``text`` would be: text that is not UTF-8 (a name in Latin-1, half an emoji's
        #: surrogate pair), which no JSON encoder here would write.
        self.byte_patches: list[tuple[str, bytes]] = []

    def now(self) -> dt.datetime:
        return self.clock()

    # --- orders ------------------------------------------------------------------------

    def set_status(self, order_id: int, situacao: Situacao) -> None:
        """Move an order; entering FINALIZADA stamps ``data_conclusao`` if it had none.

        Leaving FINALIZADA keeps ``data_conclusao``: what the live API does there is
        unknown, and keeping it is the harder case for a client that trusts the field.
        """
        order = self.orders[order_id]
        old, new = order.situacao, Situacao(situacao)
        order.situacao = new
        if new is Situacao.FINALIZADA and order.data_conclusao is None:
            order.data_conclusao = self.now()
        self._index.move(order_id, old, new)

    def _fresh_identity(self) -> tuple[int, str]:
        self._last_id = next_id_after(self._rng, self._last_id)
        self._last_numero += 1
        return self._last_id, str(self._last_numero)

    def add_order(self, *, situacao: Situacao, data: dt.date | None = None) -> int:
        """Create an order with an id above all existing ones; return the id."""
        status = Situacao(situacao)
        order_id, numero = self._fresh_identity()
        order = self._factory.make(order_id, numero, data or self.now().date(), status)
        order.data_conclusao = self.now() if status is Situacao.FINALIZADA else None
        self.orders[order_id] = order
        self._index.add(order_id, status)
        return order_id

    def edit_order(self, order_id: int, **fields: Any) -> None:
        """Change fields of an order other than its status (``cliente``, ``valor``,
        ``data``, ``data_prevista``...): its next listing and detail show them."""
        order = self.orders[order_id]
        for name, value in fields.items():
            if name == "situacao" or not hasattr(order, name):
                raise ValueError(f"edit_order cannot set {name!r}")
            setattr(order, name, value)
        self._index.changed()

    def delete_order(self, order_id: int) -> None:
        order = self.orders.pop(order_id)
        self._index.remove(order_id, order.situacao)

    def add_malformed(self, kind: str, situacao: Situacao) -> dict[str, Any]:
        """Inject a broken list item (``no_id``, ``bad_date``, ``bad_type``) into listings of
        ``situacao``. It is not an order: absent from ``orders``, ``snapshot()`` and details.
        """
        status = Situacao(situacao)
        malform({"id": 0}, kind)  # validate the kind before consuming an id
        order_id, numero = self._fresh_identity()
        template = self._factory.make(order_id, numero, self.now().date(), status)
        item = malform(self._renderer.list_item(template), kind)
        self.malformed.append(item)
        self._index.add_raw(status, item)
        return item

    def snapshot(self) -> dict[int, dict[str, object]]:
        """A canonical, typed view of every order, for assertions."""
        return {
            o.id: {
                "numero": o.numero,
                "situacao": int(o.situacao),
                "data_emissao": o.data,
                "data_prevista": o.data_prevista,
                "data_conclusao": o.data_conclusao,
                "cliente_nome": o.cliente.get("nome"),
                "valor": o.valor,
            }
            for o in self.orders.values()
        }

    # --- tokens ------------------------------------------------------------------------

    def expire_access_tokens(self) -> None:
        """Every access token issued so far now answers 401."""
        self._tokens.expire_access()

    def revoke_refresh_tokens(self) -> None:
        """Every refresh token now answers ``invalid_grant``."""
        self._tokens.revoke_refresh()

    def valid_refresh_token(self) -> str | None:
        """The refresh token that currently works (the newest after rotation or after an
        authorization-code exchange), if any."""
        return self._tokens.valid_refresh()

    # --- faults and quota --------------------------------------------------------------

    @property
    def outage(self) -> str | None:
        """The current outage mode, ``None`` when healthy."""
        return self._outage.mode

    def set_outage(self, mode: str | None) -> None:
        """``None`` (healthy), ``"503"`` / ``"500"`` (every API and token request answers
        that, uncharged), ``"reset"`` (the connection is dropped unanswered), ``"hang"``
        (requests wait: served as usual once the outage is lifted, 503 after an hour) or
        ``"html"`` (a load balancer's maintenance page, 200 ``text/html``, to every API
        request, uncharged; the token endpoint, another host at Tiny, stays up: see
        :attr:`token_page` for its own) or ``"waf"`` (a firewall's block page, 403
        ``text/html``, to every API request, uncharged; the token endpoint stays up).

        A client that times out on a hang has hung up: what it would have got is moot.
        """
        self._outage.set(mode)

    @property
    def rate_limit(self) -> int:
        """The quota of the current rate window (what ``X-RateLimit-Limit`` says)."""
        return self._rate.limit

    def set_rate_limit(self, limit: int) -> None:
        """Change the quota: from the next window, or at once if this one is unused."""
        self._rate.set_limit(limit)

    @property
    def other_apps(self) -> int:
        """Requests of each rate window the account's other apps spend."""
        return self._rate.other_apps

    def set_other_apps(self, requests: int) -> None:
        """Let the account's other apps spend ``requests`` of each rate window as it opens
        (the current one included): ``X-RateLimit-Remaining`` counts them, and a caller
        that trusts only its own count meets 429s."""
        if requests < 0:
            raise ValueError("requests must not be negative")
        self._rate.other_apps = requests

    def control_state(self) -> dict[str, object]:
        """The current fault and quota switches, as ``/_sim/control`` and stats show them."""
        return {
            "outage": self.outage,
            "detail_error_rate": self.detail_error_rate,
            "list_error_rate": self.list_error_rate,
            "rate_limit": self.rate_limit,
            "other_apps": self.other_apps,
            "pad_list_bytes": self.pad_list_bytes,
            "huge_detail_bytes": self.huge_detail_bytes,
            "deny_authorization": self.deny_authorization,
            "token_page": self.token_page,
        }
