"""How the text of a flag or an environment variable becomes a typed value.

Each parser takes the raw text and returns the value, or raises ``ValueError("must be
..., got ...")``; :mod:`asyncsync.flags` prefixes the flag or variable it came from.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from .options import ACCOUNT_KEY

Parser = Callable[[str], object]


def credential(raw: str) -> str:
    """A client id, secret or token: without the spaces and the newline a secret file or a
    Kubernetes secret often ends with (Tiny refuses a secret that carries one)."""
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def host(raw: str) -> str:
    """An address to listen on. Never empty: to the server an empty host means every
    interface, where an empty environment variable means the default (loopback)."""
    value = raw.strip()
    if not value:
        raise ValueError("must be a host name or address (0.0.0.0: every interface), got ''")
    return value


#: A whole number flag's default upper bound: PostgreSQL's ``integer``. A count or a pace
#: past it is a typo, and would only break something later (the run history's columns are
#: ``integer``; a report's JSON holds 64 bits; a ``LIMIT`` past bigint is refused).
INTEGER_MAX = 2**31 - 1


def integer(minimum: int, maximum: int | None = None) -> Parser:
    """A whole number from ``minimum`` to ``maximum`` (default: :data:`INTEGER_MAX`)."""

    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"must be a whole number, got {raw!r}") from None
        if maximum is not None and not minimum <= value <= maximum:
            raise ValueError(f"must be from {minimum} to {maximum}, got {value}")
        if value < minimum:
            raise ValueError(f"must be ≥ {minimum}, got {value}")
        if value > INTEGER_MAX:
            raise ValueError(f"must be at most {INTEGER_MAX:,}, got {value}")
        return value

    return parse


#: A number flag's default upper bound: about three years of seconds. Every number is
#: a duration or a size, and ``inf`` or ``1e300`` would only break something later.
NUMBER_MAX = 1e8
#: PostgreSQL keeps statement_timeout and lock_timeout as int32 milliseconds.
PG_TIMEOUT_MAX_S = 2_147_483


def number(minimum: float, *, strict: bool = False, maximum: float = NUMBER_MAX) -> Parser:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"must be a number, got {raw!r}") from None
        if value != value or value < minimum or (strict and value == minimum):
            raise ValueError(f"must be {'>' if strict else '≥'} {minimum:g}, got {raw!r}")
        if value > maximum:
            raise ValueError(f"must be at most {maximum:,.0f}, got {raw!r}")
        return value

    return parse


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def fraction(raw: str) -> float:
    """A share: more than 0, at most 1."""
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError(f"must be a number, got {raw!r}") from None
    if not 0 < value <= 1:
        raise ValueError(f"must be more than 0 and at most 1, got {raw!r}")
    return value


def boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"must be true or false (1/0, yes/no, on/off), got {raw!r}")


def choice(*allowed: str, fold: Callable[[str], str] = str.lower) -> Parser:
    def parse(raw: str) -> str:
        value = fold(raw.strip())
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {raw!r}")
        return value

    return parse


def http_url(raw: str) -> str:
    try:
        parts = urlsplit(raw.strip())
    except ValueError:  # an unclosed [IPv6 address
        raise ValueError(f"must be an http(s) URL, got {raw!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL, got {raw!r}")
    try:
        port = parts.port  # raises on a port that is not a number, or past 65535
    except ValueError:
        port = 0
    if port == 0:  # aiohttp refused it at the first request (exit 5), authorize crashed
        raise ValueError(f"must be an http(s) URL with a port from 1 to 65535, got {raw!r}")
    if parts.username is not None or parts.password is not None:
        # aiohttp refused it beside the bearer token, a traceback at the first request
        raise ValueError("must not carry a user or password (user:password@): Tiny takes "
                         "its tokens, and the app's credentials, by their own flags")  # fmt: skip
    return raw.strip()


#: What a PostgreSQL URL whose password holds a reserved character needs.
_ENCODE = (" (a password holding '#', '/', '?' or '@' must be percent-encoded: %23, %2F, "
           "%3F, %40)")  # fmt: skip


def dsn(raw: str) -> str:
    """A PostgreSQL URL; the message never repeats a password."""
    value = raw.strip()
    try:
        parts = urlsplit(value)
        # libpq's list of hosts to try in turn (a primary and its standbys), each checked
        # as one: urlsplit reads 'h1:5432,h2:5432' as one host whose port is no number.
        hosts = [urlsplit(f"//{h}") for h in parts.netloc.rpartition("@")[2].split(",")]
        ports = [h.port for h in hosts]  # raises on a port that is not a number
    except ValueError as exc:
        if "port" not in str(exc).lower():  # an unclosed [IPv6 address: nothing secret
            raise ValueError(f"is not a valid PostgreSQL URL ({exc})") from None
        # urlsplit's message quotes what it took for the port: a password's first part,
        # cut at an unencoded '#', '/' or '?'.
        said = "is not a valid PostgreSQL URL: a host's port is no number"
        raise ValueError(said + _ENCODE) from None
    if parts.netloc.count("@") > 1:  # libpq cuts at the first: a DNS error blamed the host
        raise ValueError(f"is not a valid PostgreSQL URL: it holds '@' twice{_ENCODE}")
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"must start with postgresql://, got {parts.scheme or 'no'} scheme")
    if not all(h.hostname for h in hosts) and "host=" not in parts.query:
        raise ValueError("names no host (postgresql://user@host:5432/database)")
    for port in ports:
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"has port {port}, outside 1..65535")
    # Without one, libpq (and asyncpg) take the user's name for the database: the mirror's
    # tables landed in `postgres` (or `asyncsync`), unsaid. PGDATABASE names one as libpq
    # reads it, at connect time.
    named = unquote(parts.path.lstrip("/")) or any(
        v.strip() for k, v in parse_qsl(parts.query) if k in ("dbname", "database")
    )
    if not named and not os.environ.get("PGDATABASE", "").strip():
        raise ValueError("names no database (libpq would take the user's name for it): add "
                         "it after the host, as in postgresql://user@host:5432/tiny")  # fmt: skip
    return value


def status_codes(raw: str) -> tuple[int, ...]:
    try:
        codes = tuple(int(x) for x in raw.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"must be status codes like 0,1,2, got {raw!r}") from None
    if not codes or any(not 0 <= c <= 7 for c in codes):
        raise ValueError(f"must be status codes from 0 to 7, got {raw!r}")
    if len(set(codes)) < len(codes):  # a status listed twice at once never completes
        raise ValueError(f"must name each status code once, got {raw!r}")
    return codes


def month(raw: str) -> dt.date:
    """``"2014-01"`` → ``date(2014, 1, 1)``."""
    year, _, mon = raw.strip().partition("-")
    if not (len(year) == 4 and year.isdigit() and len(mon) == 2 and mon.isdigit()):
        raise ValueError(f"must be a month like 2014-01, got {raw!r}")
    if not 1 <= int(mon) <= 12 or int(year) < 1900:
        raise ValueError(f"must be a month like 2014-01, got {raw!r}")
    return dt.date(int(year), int(mon), 1)


def path(raw: str) -> Path:
    # Stripped like every other value: a CRLF env file's '\r' or a trailing space named
    # another file (node-exporter read no `asyncsync.prom `, exit 0).
    text = raw.strip()
    if not text:
        raise ValueError("must be a path, got nothing")
    try:
        return Path(text).expanduser()
    except RuntimeError:  # '~nosuchuser/x', or '~' with no home to expand it to
        raise ValueError(f"must be a path whose '~' names a home directory, got {raw!r}") from None


def writable_file(raw: str) -> Path:
    """A file to write at the end of a run ("-": standard output): checked now, so a bad
    path fails before the work, not after it."""
    where = path(raw)
    if raw.strip() == "-":
        return where
    folder = where.parent
    if where.is_dir():
        raise ValueError(f"must be a file, got the directory {raw!r}")
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"must be a file in a writable directory, got {raw!r}")
    return where


def textfile(raw: str) -> Path:
    """The metrics file a one-shot run writes at its end (its missing folders are made
    then): checked now, so a path that cannot be written fails before the work, not in a
    log line after an exit 0 that left node-exporter nothing to read."""
    where = path(raw)
    if where.is_dir():
        raise ValueError(f"must be a file, got the directory {raw!r}")
    folder = where.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the first folder that exists: the rest can be made
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"must be a file in a writable directory, got {raw!r}")
    return where


def order_ids(raw: str) -> tuple[int, ...]:
    """``"12,34"`` (or ``"12 34"``) → ``(12, 34)``."""
    parts = raw.replace(",", " ").split()
    try:
        ids = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"must be order ids like 123,456, got {raw!r}") from None
    for i in ids:  # bigint, negative for a record that came without an id
        if not -(2**63) <= i < 2**63:
            raise ValueError(f"must be order ids like 123,456; {i} is out of range")
    return ids


def account_key(raw: str) -> str:
    value = raw.strip()
    if not ACCOUNT_KEY.fullmatch(value):
        raise ValueError(f"must be 1 to 64 letters, digits, '.', '_' or '-', got {raw!r}")
    return value


def env_name(raw: str) -> str:
    """The name of an environment variable (``TINY_SECRET_ACME``), not its value."""
    value = raw.strip()
    if (
        not value
        or not (value[0].isalpha() or value[0] == "_")
        or not all(c.isalnum() or c == "_" for c in value)
    ):
        raise ValueError(f"must name an environment variable (LETTERS_DIGITS_), got {raw!r}")
    return value
