"""Logging setup: JSON lines for machines, plain text for people; tokens never printed."""

from __future__ import annotations

import logging
import re
import sys
import time

import orjson

# Bearer tokens and form fields that carry secrets, wherever they appear in a message.
_SECRET = re.compile(
    r"(Bearer\s+|(?:access_token|refresh_token|client_secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,}]+"
)


def redact(text: str) -> str:
    """``text`` with bearer tokens and secret form fields replaced by ``***``."""
    return _SECRET.sub(r"\1***", text)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure(level: str = "INFO", fmt: str = "auto") -> None:
    """Log to stderr; ``fmt`` is ``json``, ``text`` or ``auto`` (text on a terminal)."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter()
        if fmt == "json"
        else _TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("pgserver").setLevel(logging.WARNING)
