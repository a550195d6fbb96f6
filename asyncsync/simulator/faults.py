"""Server-side failures a client of the live API meets: outages (5xx for everything, a
dropped connection, a request that never answers, a proxy's maintenance page, a
firewall's block page) and huge answers.

Huge answers are streamed in 1 MiB chunks with a known ``Content-Length``, so a 300 MB
body costs the simulator 1 MiB of memory, not 300: the point is to test the *client's*
memory bound, not the simulator's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import orjson
from aiohttp import web

#: ``set_outage`` modes besides ``None`` (healthy).
OUTAGE_MODES = ("503", "500", "reset", "hang", "html", "waf")
#: What a load balancer or proxy in front of the API answers, with 200, while Tiny is
#: down for maintenance (``set_outage("html")``, ``fail_detail[id] = "html"``).
MAINTENANCE_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>Em manutenção</title></head>"
    "<body><h1>Estamos em manutenção</h1><p>Voltamos em instantes.</p></body></html>\n"
)
#: What a web application firewall or proxy in front of the API answers, with 403, to
#: every request while it blocks the caller for a while (``set_outage("waf")``).
BLOCK_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head>"
    "<body><h1>Acesso bloqueado</h1><p>Tente novamente mais tarde.</p></body></html>\n"
)
#: A hung request gives up (answering 503) after this long.
HANG_LIMIT_S = 3600.0
CHUNK = 1 << 20
_PHRASE = b"Observacao muito longa do cliente, repetida. "
#: Filler for list padding and for a huge ``observacoes``: plain ASCII, nothing to escape.
PADDING = memoryview(b"x" * CHUNK)
NOTES = memoryview((_PHRASE * (CHUNK // len(_PHRASE) + 1))[:CHUNK])


class Outage:
    """The current outage mode, and the wake-up call for requests hanging in it."""

    def __init__(self) -> None:
        self.mode: str | None = None
        self._lifted = asyncio.Event()
        self._lifted.set()
        self._closing = False

    def set(self, mode: str | None) -> None:
        if mode is not None and mode not in OUTAGE_MODES:
            raise ValueError(f"outage mode must be None or one of {OUTAGE_MODES}, not {mode!r}")
        self.mode = mode
        if mode == "hang":
            self._lifted.clear()
        else:
            self._lifted.set()

    def close(self) -> None:
        """Release every hung request (they answer 503), so the server can shut down."""
        self._closing = True
        self._lifted.set()

    async def sit_out(self) -> str | None:
        """The outage this request meets, once any ``hang`` is over: ``None`` means the
        outage was lifted meanwhile and the request is served normally."""
        mode = self.mode
        try:
            async with asyncio.timeout(HANG_LIMIT_S):
                while mode == "hang" and not self._closing:
                    await self._lifted.wait()
                    mode = self.mode
        except TimeoutError:
            return "503"
        return "503" if mode == "hang" else mode


def maintenance_page() -> web.Response:
    """A proxy's maintenance page, answered 200 as ``text/html`` without rate headers."""
    return web.Response(text=MAINTENANCE_PAGE, content_type="text/html")


def block_page() -> web.Response:
    """A firewall's block page, answered 403 as ``text/html`` without rate headers."""
    return web.Response(status=403, text=BLOCK_PAGE, content_type="text/html")


def drop(request: web.Request) -> web.Response:
    """Close the connection without answering: the client sees a transport failure.

    The returned response is never sent; aiohttp notices the closed transport and moves on
    quietly (raising from the handler instead would log an error for a planned event).
    """
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=503)


def padded_layout(head: bytes, field: str, size: int, lead: bytes = b"") -> tuple[bytes, int]:
    """Split a JSON object so that it ends in ``"field": "<lead><filler>"`` and is at least
    ``size`` bytes: the bytes before the filler, and the filler's length."""
    if not (head.startswith(b"{") and head.endswith(b"}")):
        raise ValueError("head must be a JSON object")
    comma = b"," if len(head) > 2 else b""
    opening = head[:-1] + comma + orjson.dumps(field) + b':"' + lead
    return opening, max(size - len(opening) - 2, 0)


async def send_padded(
    request: web.Request,
    head: bytes,
    field: str,
    size: int,
    headers: Mapping[str, str],
    *,
    lead: bytes = b"",
    filler: memoryview = PADDING,
) -> web.StreamResponse:
    """Stream ``head`` (a JSON object) grown by a long string ``field`` to ``size`` bytes."""
    opening, fill = padded_layout(head, field, size, lead)
    resp = web.StreamResponse(headers=headers)
    resp.content_type = "application/json"
    resp.content_length = len(opening) + fill + 2
    try:
        await resp.prepare(request)
        await resp.write(opening)
        while fill > 0:
            n = min(fill, len(filler))
            await resp.write(filler[:n])
            fill -= n
        await resp.write(b'"}')
        await resp.write_eof()
    except ConnectionError:
        pass  # the client hung up mid-answer: nobody left to tell
    return resp
