"""Reading Tiny's JSON answers, including the ones whose text is not quite UTF-8.

An answer is JSON in UTF-8, read by orjson. Two flaws of real data make a whole answer
unreadable to it, and a listing page with one such order in it would stop every run at
that page: a byte that is not UTF-8 (a name saved in Latin-1 / Windows-1252 somewhere
along the way: ``Concei\\xe7\\xe3o``) and half of a surrogate pair (an emoji cut in two:
``\\ud83c`` escaped alone); so do a tab or a line break left unescaped inside a string.
Such an answer is read again, leniently: a stray byte as the Windows-1252 character it
nearly always is (``ç``, ``ã``), a lone surrogate as U+FFFD, a control character inside
a string as itself, a leading byte-order mark dropped. Anything else that is not JSON
stays unreadable.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from typing import Any

import aiohttp
import orjson

_CP1252 = "asyncsync-cp1252"
_SURROGATE = re.compile("[\ud800-\udfff]")


def _as_cp1252(error: UnicodeError) -> tuple[str, int]:
    """Decoding error handler: the bytes that are not UTF-8, read as Windows-1252."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    stray = error.object[error.start : error.end]
    return bytes(stray).decode("cp1252", errors="replace"), error.end


codecs.register_error(_CP1252, _as_cp1252)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: orjson refuses them too


def _number(text: str) -> int | float:
    """An integer as orjson reads it: past 64 bits, a float (orjson writes no larger int)."""
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(value)


def _decimal(text: str) -> float | str:
    """A number as orjson reads it; one past a double's range (``1e400``: orjson refuses the
    answer) as its text: read as infinity, it was stored as null, in the failure's raw
    answer and in a stored detail alike (sweep L)."""
    value = float(text)
    return value if math.isfinite(value) else text


def _mended(value: Any) -> Any:
    """``value`` with lone surrogates replaced by U+FFFD in every string (keys too)."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_mended(k): _mended(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mended(v) for v in value]
    return value


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes | None:
    """The body of ``resp``, or None once it is announced or read past ``cap`` bytes: no
    more than that is ever held (a gzip answer inflates as it is read)."""
    if resp.content_length is not None and resp.content_length > cap:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def loads(body: bytes) -> tuple[Any, bool]:
    """The JSON value of ``body``, and whether its text had to be mended to be read.

    Raises ``ValueError`` when it is not JSON even so."""
    try:
        return orjson.loads(body), False
    except orjson.JSONDecodeError:
        pass
    text = body.decode("utf-8", errors=_CP1252).removeprefix("\ufeff")
    try:
        value = json.loads(text, parse_int=_number, parse_float=_decimal,
                           parse_constant=_no_constants, strict=False)  # fmt: skip
        return _mended(value), True
    except RecursionError:  # orjson stops at 1024 levels; Python's stack about there
        pass
    # One record nested past that made its whole page unreadable, and every full sync
    # stopped at it for good (sweep L): what lies deeper than CUT_DEPTH is cut, so the
    # page reads, and that record (past the 254 levels a row stores) is an import failure.
    try:
        value = json.loads(_cut(text, CUT_DEPTH), parse_int=_number, parse_float=_decimal,
                           parse_constant=_no_constants, strict=False)  # fmt: skip
    except RecursionError:
        raise ValueError("nested too deeply to be an answer") from None
    return _mended(value), True


#: Values nested deeper than this in an answer too deep to read are cut (see loads).
CUT_DEPTH = 300
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
_CUT = '"(cut: nested too deeply)"'


def _cut(text: str, depth: int) -> str:
    """``text`` with every array or object that opens deeper than ``depth`` levels replaced
    by a string saying so (strings are skipped whole: a bracket inside one is text)."""
    out: list[str] = []
    level, kept, skipping_from = 0, 0, -1
    for token in _TOKENS.finditer(text):
        mark = token.group()
        if mark[0] == '"':
            continue
        if mark in "[{":
            level += 1
            if level == depth + 1 and skipping_from < 0:
                out.append(text[kept : token.start()])
                skipping_from = token.start()
        else:
            if level == depth + 1 and skipping_from >= 0:
                out.append(_CUT)
                kept, skipping_from = token.end(), -1
            level -= 1
    out.append(text[kept:] if skipping_from < 0 else text[kept:skipping_from] + _CUT)
    return "".join(out)
