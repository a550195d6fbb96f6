"""The simulator: an aiohttp server over a live, mutable set of orders, plus a control API.

Every API request goes through the same gate, in this order: it is counted in
:class:`SimStats`; the bearer token is checked (401); the rate window is charged (429,
plain text, as the live API answers outside its JSON error shape); ``latency_s`` is
slept. All API answers, 401 and 429 included, carry the ``X-RateLimit-*`` headers; a 401
does not charge the window (the account behind an unknown token is unknown).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

from asyncsync.status import Situacao, parse_situacao

from .access import RateWindow, SimStats, TokenStore
from .data import ID_BASE, OrderFactory, SimConfig, SimOrder, generate_orders, next_id_after
from .index import OrderIndex, QueryError, parse_query
from .render import Renderer, malform

API_PREFIX = "/public-api/v3"
TOKEN_PATH = "/realms/tiny/protocol/openid-connect/token"
STATS_PATH = "/_sim/stats"
DEFAULT_CONFIG = SimConfig()
#: ``fail_detail`` modes: an HTTP status to answer, or ``malformed`` (200, body not JSON).
DETAIL_FAILURES = frozenset({"500", "malformed", "401", "404"})
NOT_FOUND = "Ordem de serviço não encontrada"

ListPageHook = Callable[["TinySimulator", dict[str, str]], None]


def _wall_clock() -> dt.datetime:
    """Naive local time, as Tiny (America/Sao_Paulo) renders it, to the second."""
    return dt.datetime.now().replace(microsecond=0)


def _json(
    body: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def _error(
    status: int,
    mensagem: str,
    detalhes: list[dict[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return _json({"mensagem": mensagem, "detalhes": detalhes}, status, headers)


def _status_key(params: Mapping[str, str]) -> int | None:
    raw = params.get("situacao", "")
    if raw == "":
        return -1
    try:
        return int(parse_situacao(raw))
    except ValueError:
        return None


class TinySimulator:
    """A local stand-in for Tiny API v3 service orders and its OAuth2 token endpoint.

    Use as ``async with TinySimulator(config) as sim:``; ``port=0`` picks a free port.
    The control methods (``set_status``, ``add_order``, ...) are plain and synchronous:
    they run on the event loop between requests, so every request sees a consistent state.
    """

    def __init__(
        self, config: SimConfig = DEFAULT_CONFIG, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config
        self._host, self._port = host, port
        #: Wall clock used for conclusion times and new orders; tests may replace it.
        self.clock: Callable[[], dt.datetime] = _wall_clock
        generated = generate_orders(config)
        #: The live state, id -> order.
        self.orders: dict[int, SimOrder] = {o.id: o for o in generated}
        self._index = OrderIndex(generated)
        self._renderer = Renderer(config.quirks, config.seed)
        self._rng = random.Random(f"{config.seed}:control")
        self._factory = OrderFactory(self._rng, config.resolved_today(), clients=50)
        self._last_id = generated[-1].id if generated else ID_BASE
        self._last_numero = len(generated)
        self._tokens = TokenStore(config)
        self._rate = RateWindow(config.rate_limit_per_minute, config.rate_window_s)
        self.stats = SimStats()
        #: Order id -> a mode of :data:`DETAIL_FAILURES`, applied on ``GET /ordem-servico/{id}``.
        self.fail_detail: dict[int, str] = {}
        #: Raw malformed list items injected by :meth:`add_malformed`.
        self.malformed: list[dict[str, Any]] = []
        #: Called with the query params after each list page is rendered, before it is sent.
        self.on_list_page: ListPageHook | None = None
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self._closed = False

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> TinySimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Bind and serve; a simulator starts at most once."""
        if self._runner is not None or self._closed:
            raise RuntimeError("a TinySimulator can only be started once")
        app = web.Application()
        app.router.add_get(f"{API_PREFIX}/ordem-servico", self._list)
        app.router.add_get(f"{API_PREFIX}/ordem-servico/{{id}}", self._detail)
        app.router.add_post(TOKEN_PATH, self._token)
        app.router.add_get(STATS_PATH, self._stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])

    async def aclose(self) -> None:
        """Stop serving (idempotent)."""
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def origin(self) -> str:
        if self._bound_port is None:
            raise RuntimeError("the simulator is not started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._bound_port}"

    @property
    def base_url(self) -> str:
        return self.origin + API_PREFIX

    @property
    def token_url(self) -> str:
        return self.origin + TOKEN_PATH

    # --- control API -------------------------------------------------------------------

    def now(self) -> dt.datetime:
        return self.clock()

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

    def expire_access_tokens(self) -> None:
        """Every access token issued so far now answers 401."""
        self._tokens.expire_access()

    def revoke_refresh_tokens(self) -> None:
        """Every refresh token now answers ``invalid_grant``."""
        self._tokens.revoke_refresh()

    def valid_refresh_token(self) -> str | None:
        """The refresh token that currently works (the newest after rotation), if any."""
        return self._tokens.valid_refresh()

    # --- HTTP --------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self._tokens.check_access(token.strip())

    async def _admit(
        self, request: web.Request, endpoint: str
    ) -> tuple[web.Response | None, dict[str, str]]:
        """The common gate; returns the refusal to send, if any, and the rate headers."""
        self.stats.requests_total += 1
        self.stats.requests_by_endpoint[endpoint] += 1
        refusal: web.Response | None = None
        if not self._authorized(request):
            self.stats.unauthorized += 1
            headers = self._rate.peek().headers()
            refusal = _error(401, "Token inválido", headers=headers)
        else:
            verdict = self._rate.hit()
            headers = verdict.headers()
            if not verdict.allowed:
                self.stats.rate_limited += 1
                refusal = web.Response(status=429, text="Too Many Requests", headers=headers)
        if self.config.latency_s > 0:
            await asyncio.sleep(self.config.latency_s)
        return refusal, headers

    async def _list(self, request: web.Request) -> web.Response:
        params = {key: request.query[key] for key in request.query}
        status_key = _status_key(params)
        if status_key is not None:
            self.stats.list_requests_by_status[status_key] += 1
        refusal, headers = await self._admit(request, "list")
        if refusal is not None:
            return refusal
        try:
            query = parse_query(params, self.config.max_limit)
        except QueryError as exc:
            detalhes = [{"campo": exc.campo, "mensagem": exc.mensagem}]
            return _error(400, "Parâmetros inválidos", detalhes, headers)
        entries, total = self._index.page(query, self.orders)
        render = self._renderer.list_item
        itens = [render(self.orders[e]) if isinstance(e, int) else e for e in entries]
        body: dict[str, object] = {"itens": itens}
        if not self.config.quirks.omit_paginacao:
            body["paginacao"] = {"limit": query.limit, "offset": query.offset, "total": total}
        payload = orjson.dumps(body)  # before the hook: its changes belong to later pages
        if self.on_list_page is not None:
            self.on_list_page(self, params)
        return web.Response(body=payload, content_type="application/json", headers=headers)

    async def _detail(self, request: web.Request) -> web.Response:
        refusal, headers = await self._admit(request, "detail")
        if refusal is not None:
            return refusal
        raw = request.match_info["id"]
        try:
            order_id = int(raw)
        except ValueError:
            detalhes = [{"campo": "idOrdemServico", "mensagem": f"Valor inválido '{raw}'"}]
            return _error(400, "Parâmetros inválidos", detalhes, headers)
        mode = self.fail_detail.get(order_id)
        if mode is not None:
            return self._failure(mode, order_id, headers)
        order = self.orders.get(order_id)
        if order is None:
            return _error(404, NOT_FOUND, None, headers)
        return _json(self._renderer.detail(order), headers=headers)

    @staticmethod
    def _failure(mode: str, order_id: int, headers: dict[str, str]) -> web.Response:
        if mode == "malformed":  # a truncated body, announced as JSON
            body = f'{{"id": {order_id}, "situacao": "3", "dataConclusao": "20'.encode()
            return web.Response(body=body, content_type="application/json", headers=headers)
        if mode == "401":
            return _error(401, "Token inválido", None, headers)
        if mode == "404":
            return _error(404, NOT_FOUND, None, headers)
        if mode == "500":
            return _error(500, "Erro interno do servidor", None, headers)
        return _error(500, f"simulator: unknown fail_detail mode {mode!r}", None, headers)

    async def _token(self, request: web.Request) -> web.Response:
        self.stats.requests_by_endpoint["token"] += 1
        form = await request.post()
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        grant = self._tokens.grant(fields)
        if grant.ok:
            self.stats.token_refreshes += 1
        return _json(grant.body, grant.status, {"Cache-Control": "no-store"})

    async def _stats(self, request: web.Request) -> web.Response:
        return _json({**self.stats.as_dict(), "orders": len(self.orders)})
