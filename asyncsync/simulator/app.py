"""The simulator's aiohttp server over :class:`~.state.SimState`.

Every API request goes through the same gate, in this order: it is counted in
:class:`SimStats`; an outage answers it (5xx in Tiny's JSON error shape, a dropped
connection, a hang, a proxy's maintenance page answered 200, or a firewall's block page
answered 403) without charging the
rate window; the bearer token is checked (401); the rate window is charged (429, plain
text, as the live API answers outside its JSON error shape); ``latency_s`` is slept; an
injected transient 500 may answer it. API answers past the outage check, 401 and 429
included, carry the ``X-RateLimit-*`` headers; a 401 does not charge the window (the
account behind an unknown token is unknown). The token endpoint meets outages too (but
for the API's maintenance and block pages; ``token_page`` answers its own maintenance
page); the authorization endpoint and ``/_sim/*`` do not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from types import TracebackType

import orjson
from aiohttp import web

from asyncsync.status import parse_situacao

from .consent import authorize
from .control import ControlChange, ControlError
from .data import SimConfig
from .faults import NOTES, block_page, drop, maintenance_page, send_padded
from .index import QueryError, parse_query
from .oauth import EXCHANGED, REFRESHED, STALE, not_a_form
from .state import DEFAULT_CONFIG, SimState

API_PREFIX = "/public-api/v3"
OIDC_PREFIX = "/realms/tiny/protocol/openid-connect"
TOKEN_PATH = f"{OIDC_PREFIX}/token"
AUTH_PATH = f"{OIDC_PREFIX}/auth"
STATS_PATH = "/_sim/stats"
CONTROL_PATH = "/_sim/control"
NOT_FOUND = "Ordem de serviço não encontrada"
INTERNAL_ERROR = "Erro interno do servidor"
OUTAGE_MESSAGES = {503: "Serviço temporariamente indisponível", 500: INTERNAL_ERROR}
#: Outage modes of pages in front of the API alone (another host serves the token endpoint).
_API_PAGES = ("html", "waf")

ListPageHook = Callable[["TinySimulator", dict[str, str]], None]
Answer = web.StreamResponse


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


class TinySimulator(SimState):
    """A local stand-in for Tiny API v3 service orders and its OAuth2 endpoints.

    Use as ``async with TinySimulator(config) as sim:``; ``port=0`` picks a free port.
    The control methods (``set_status``, ``set_outage``, ...) come from :class:`SimState`.
    """

    def __init__(
        self, config: SimConfig = DEFAULT_CONFIG, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        super().__init__(config)
        self._host, self._port = host, port
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
        app.router.add_get(AUTH_PATH, self._auth)
        app.router.add_get(STATS_PATH, self._stats)
        app.router.add_post(CONTROL_PATH, self._control)
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
        """Stop serving (idempotent); hung requests are released first, answering 503."""
        self._closed = True
        self._outage.close()
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

    @property
    def auth_url(self) -> str:
        """Where a client sends the person's browser for the first authorization."""
        return self.origin + AUTH_PATH

    # --- the gate ----------------------------------------------------------------------

    async def _outage_answer(self, request: web.Request, *, api: bool = True) -> Answer | None:
        """The answer an outage gives this request, or None to serve it."""
        if self._outage.mode is None or (self._outage.mode in _API_PAGES and not api):
            return None
        self.stats.outage_answers += 1
        mode = await self._outage.sit_out()
        if mode is None:
            return None
        if mode == "reset":
            return drop(request)
        if mode == "html":
            return maintenance_page()
        if mode == "waf":
            return block_page()
        status = int(mode)
        return _error(status, OUTAGE_MESSAGES.get(status, INTERNAL_ERROR))

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self._tokens.check_access(token.strip())

    async def _admit(
        self, request: web.Request, endpoint: str, error_rate: float
    ) -> tuple[Answer | None, dict[str, str]]:
        """The common gate; returns the refusal to send, if any, and the rate headers."""
        self.stats.requests_total += 1
        self.stats.requests_by_endpoint[endpoint] += 1
        outage = await self._outage_answer(request)
        if outage is not None:
            return outage, {}
        refusal: Answer | None = None
        if not self._authorized(request):
            self.stats.unauthorized += 1
            headers = self._rate.peek().headers()
            status = self.config.quirks.refused_token_status
            refusal = _error(status, "Token inválido", headers=headers)
        else:
            verdict = self._rate.hit()
            self.stats.windows, self.stats.window_peak = self._rate.windows_seen, self._rate.peak
            headers = verdict.headers()
            if not verdict.allowed:
                self.stats.rate_limited += 1
                refusal = web.Response(status=429, text="Too Many Requests", headers=headers)
        if self.config.latency_s > 0:
            await asyncio.sleep(self.config.latency_s)
        if refusal is None and error_rate > 0 and self._fault_rng.random() < error_rate:
            self.stats.injected_errors += 1
            refusal = _error(500, INTERNAL_ERROR, None, headers)
        return refusal, headers

    # --- API ---------------------------------------------------------------------------

    async def _list(self, request: web.Request) -> Answer:
        params = {key: request.query[key] for key in request.query}
        status_key = _status_key(params)
        if status_key is not None:
            self.stats.list_requests_by_status[status_key] += 1
        refusal, headers = await self._admit(request, "list", self.list_error_rate)
        if refusal is not None:
            return refusal
        try:
            query = parse_query(params, self.config.max_limit)
            query = query.covering(self.config.quirks.date_window)
        except QueryError as exc:
            detalhes = [{"campo": exc.campo, "mensagem": exc.mensagem}]
            return _error(400, "Parâmetros inválidos", detalhes, headers)
        entries, total = self._index.page(query, self.orders)
        render = self._renderer.list_item
        itens = [render(self.orders[e]) if isinstance(e, int) else e for e in entries]
        body: dict[str, object] = {"itens": itens}
        if not self.config.quirks.omit_paginacao:
            body["paginacao"] = {"limit": query.limit, "offset": query.offset, "total": total}
        payload = self._patched(orjson.dumps(body))  # before the hook: its changes are later
        pad = self.pad_list_bytes
        if self.on_list_page is not None:
            self.on_list_page(self, params)
        if pad > 0:
            return await send_padded(request, payload, "_padding", pad, headers)
        return web.Response(body=payload, content_type="application/json", headers=headers)

    async def _detail(self, request: web.Request) -> Answer:
        refusal, headers = await self._admit(request, "detail", self.detail_error_rate)
        if refusal is not None:
            return refusal
        raw = request.match_info["id"]
        try:
            order_id = int(raw)
        except ValueError:
            detalhes = [{"campo": "idOrdemServico", "mensagem": f"Valor inválido '{raw}'"}]
            return _error(400, "Parâmetros inválidos", detalhes, headers)
        mode = self.fail_detail.get(order_id)
        if mode is not None and mode != "huge":
            return self._failure(mode, order_id, headers)
        order = self.orders.get(order_id)
        if order is None:
            return _error(404, NOT_FOUND, None, headers)
        body = self._renderer.detail(order)
        if mode == "huge":  # the real fields, then a very long ``observacoes``
            lead = orjson.dumps(body.pop("observacoes", ""))[1:-1]
            head, size = orjson.dumps(body), self.huge_detail_bytes
            return await send_padded(
                request, head, "observacoes", size, headers, lead=lead, filler=NOTES
            )
        return web.Response(
            body=self._patched(orjson.dumps(body)), content_type="application/json",
            headers=headers,
        )  # fmt: skip

    def _patched(self, payload: bytes) -> bytes:
        for text, raw in self.byte_patches:
            payload = payload.replace(orjson.dumps(text)[1:-1], raw)
        return payload

    @staticmethod
    def _failure(mode: str, order_id: int, headers: dict[str, str]) -> web.Response:
        if mode == "malformed":  # a truncated body, announced as JSON
            body = f'{{"id": {order_id}, "situacao": "3", "dataConclusao": "20'.encode()
            return web.Response(body=body, content_type="application/json", headers=headers)
        if mode == "html":  # a proxy's page for this one address: never Tiny's answer
            return maintenance_page()
        if mode == "401":
            return _error(401, "Token inválido", None, headers)
        if mode == "403":  # this order is not this app's to read
            return _error(403, "Acesso negado", None, headers)
        if mode == "404":
            return _error(404, NOT_FOUND, None, headers)
        if mode == "500":
            return _error(500, INTERNAL_ERROR, None, headers)
        return _error(500, f"simulator: unknown fail_detail mode {mode!r}", None, headers)

    # --- OAuth2 ------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> Answer:
        self.stats.requests_by_endpoint["token"] += 1
        outage = await self._outage_answer(request, api=False)
        if outage is not None:
            return outage
        if self.token_page:  # the token host down behind its proxy
            self.stats.outage_answers += 1
            return maintenance_page()
        if self.fail_token_requests > 0:
            self.fail_token_requests -= 1
            return _error(503, OUTAGE_MESSAGES[503])
        grant = not_a_form(request.content_type)  # request.post() reads multipart too
        if grant is None:
            form = await request.post()
            grant = self._tokens.grant({k: v for k, v in form.items() if isinstance(v, str)})
        if grant.outcome == REFRESHED:
            self.stats.token_refreshes += 1
        elif grant.outcome == EXCHANGED:
            self.stats.code_exchanges += 1
        elif grant.outcome == STALE:
            self.stats.stale_refresh_uses += 1
        if self.config.token_latency_s > 0:
            await asyncio.sleep(self.config.token_latency_s)
        return _json(grant.body, grant.status, {"Cache-Control": "no-store"})

    async def _auth(self, request: web.Request) -> Answer:
        self.stats.requests_by_endpoint["auth"] += 1
        params = {key: request.query[key] for key in request.query}
        consent = authorize(
            params,
            self.config,
            deny=self.deny_authorization,
            issue_code=self._tokens.issue_code,
        )
        if consent.location is not None:
            return web.Response(status=consent.status, headers={"Location": consent.location})
        return web.Response(status=consent.status, text=consent.page, content_type="text/html")

    # --- test control ------------------------------------------------------------------

    async def _stats(self, request: web.Request) -> Answer:
        return _json(
            {**self.stats.as_dict(), "orders": len(self.orders), "control": self.control_state()}
        )

    async def _control(self, request: web.Request) -> Answer:
        try:
            change = ControlChange.parse(orjson.loads(await request.read()))
        except (orjson.JSONDecodeError, ControlError) as exc:
            return _json({"error": str(exc)}, 400)
        change.apply(self)
        return _json(self.control_state())
