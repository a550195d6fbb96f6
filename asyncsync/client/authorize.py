"""The first authorization: Tiny's OAuth authorization-code flow, for a person at a browser.

Tiny's refresh token lives about a day and rotates at every use, so the only way in is a
person logging in: the app sends the browser to Tiny's authorization endpoint, Tiny sends
it back to the app's registered redirect URI with a ``code``, and the code (valid about a
minute) is exchanged for the first tokens. :class:`Authorization` catches that redirect on
a local port when the redirect URI is a ``127.0.0.1``/``localhost`` one, and also accepts
the address the browser ended on, pasted on standard input (for any other redirect URI,
or a browser on another machine).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TextIO
from urllib.parse import parse_qs, urlencode, urlsplit

from ..errors import ConfigError, TinyAuthError
from ..seams import TokenSet
from .tokens import TokenManager

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from aiohttp import web

LOOPBACK = ("127.0.0.1", "localhost", "::1")
_PAGE = (
    "<!DOCTYPE html><html><head><meta charset='utf-8'><title>asyncsync</title></head>"
    "<body><h1>{title}</h1><p>{text}</p></body></html>"
)


class Authorization:
    """One authorization of one account's app. Implements ``seams.Authorizer``."""

    def __init__(
        self,
        tokens: TokenManager,
        *,
        auth_url: str,
        client_id: str,
        redirect_uri: str,
        paste: TextIO | None = None,
    ) -> None:
        self._tokens = tokens
        self._auth_url = auth_url
        self._client_id = client_id
        self.redirect_uri = redirect_uri
        self._paste = paste if paste is not None else sys.stdin
        self.caught_locally = urlsplit(redirect_uri).hostname in LOOPBACK
        # The exchange the redirect's page waited for (a code is good once): its tokens,
        # or why it failed.
        self._exchanged: dict[str, TokenSet | BaseException] = {}

    def url(self, state: str) -> str:
        """Where the person's browser goes first."""
        query = {
            "client_id": self._client_id,
            "redirect_uri": self.redirect_uri,
            "scope": "openid",
            "response_type": "code",
            "state": state,
        }
        return f"{self._auth_url}?{urlencode(query)}"

    async def code(self, state: str, timeout_s: float) -> str:
        """The authorization code, from the redirect caught here or from a pasted address."""
        found: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._read_paste(found, state)
        try:
            async with self._callback_server(found, state):
                async with asyncio.timeout(timeout_s):
                    return await found
        except TimeoutError:
            raise TinyAuthError(
                f"no authorization arrived within {timeout_s:.0f} s; run `asyncsync authorize` "
                "again"
            ) from None

    async def exchange(self, code: str) -> TokenSet:
        """Trade the code for the first tokens, stored in the database at once (done already
        when the redirect was caught here: its page says how it went)."""
        done = self._exchanged.pop(code, None)
        if isinstance(done, BaseException):
            raise done
        if done is not None:
            return done
        return await self._tokens.exchange_code(code, self.redirect_uri)

    @asynccontextmanager
    async def _callback_server(self, found: asyncio.Future[str], state: str) -> AsyncIterator[None]:
        if not self.caught_locally:
            yield
            return
        from aiohttp import web  # the server half of aiohttp: only this flow needs it

        parts = urlsplit(self.redirect_uri)
        path = parts.path or "/"

        taken: list[str] = []

        async def callback(request: web.Request) -> web.Response:
            try:
                code = code_from(dict(request.query), state)
            except TinyAuthError as exc:
                if not found.done():
                    found.set_exception(exc)
                return _page(400, "Authorization refused", str(exc))
            if found.done() or taken:  # a second visit (reloaded, or pasted meanwhile)
                return _page(409, "Already answered", "This authorization has had its answer.")
            taken.append(code)
            # The exchange before the page: "authorized" was shown while Tiny refused the
            # code or the app's credentials (the terminal said so, exit 2), and the person
            # at the browser, often not the one at the terminal, closed the tab (sweep K).
            try:
                self._exchanged[code] = await self._tokens.exchange_code(code, self.redirect_uri)
            except Exception as exc:  # said at the terminal too, by exchange()
                self._exchanged[code] = exc
                _settle(found, code)
                return _page(502, "Authorization failed",
                             f"Tiny refused it: {exc}. The terminal running asyncsync "
                             "authorize says what to do.")  # fmt: skip
            _settle(found, code)
            return _page(200, "asyncsync is authorized", "You can close this tab.")

        app = web.Application()
        app.router.add_get(path, callback)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host = "::1" if parts.hostname == "::1" else "127.0.0.1"
        try:
            await web.TCPSite(runner, host, parts.port or 80).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"cannot listen on {parts.hostname}:{parts.port or 80} for the redirect "
                f"({exc.strerror}): choose another --redirect-uri port (as registered in Tiny)"
            ) from None
        try:
            yield
        finally:
            await runner.cleanup()

    def _read_paste(self, found: asyncio.Future[str], state: str) -> None:
        """Read pasted addresses in a daemon thread (standard input cannot be awaited, and a
        daemon thread does not hold the process at exit)."""
        loop = asyncio.get_running_loop()

        def offer(line: str) -> None:
            if found.done() or not line.strip():
                return
            if "code=" not in line and "error=" not in line:
                log.warning("that is not the address the browser ended on: paste the whole "
                            "address, the one that holds code=...")  # fmt: skip
                return
            try:
                found.set_result(code_from(_query(line.strip()), state))
            except TinyAuthError as exc:
                found.set_exception(exc)

        def read() -> None:
            try:
                for line in self._paste:
                    loop.call_soon_threadsafe(offer, line)
            except (OSError, ValueError):
                return  # no usable standard input: the callback is the only way

        threading.Thread(target=read, name="authorize-paste", daemon=True).start()


def _settle(found: asyncio.Future[str], code: str) -> None:
    if not found.done():
        found.set_result(code)


def code_from(query: dict[str, str], state: str) -> str:
    """The code of a redirect's query, checked against ``state``; TinyAuthError otherwise."""
    if "error" in query:
        detail = query.get("error_description") or query["error"]
        raise TinyAuthError(f"Tiny did not authorize the app: {detail}")
    if query.get("state") != state:
        raise TinyAuthError("the redirect does not belong to this authorization (state differs)")
    code = query.get("code")
    if not code:
        raise TinyAuthError("the redirect carries no code")
    return code


def _query(address: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(address).query).items()}


def _page(status: int, title: str, text: str) -> web.Response:
    import html

    from aiohttp import web

    body = _PAGE.format(title=html.escape(title), text=html.escape(text))
    return web.Response(status=status, text=body, content_type="text/html")
