"""Logging setup: JSON lines for machines, plain text for people; tokens never printed.

Figures travel as fields (``log.info("...", extra={"fields": {...}})``), not inside the
message: JSON lines carry them as keys, text lines append them as ``key=value``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sys
from typing import Any

import orjson

# Bearer tokens and form fields (a DSN's ``password=`` parameter too) that carry secrets,
# wherever they appear in a message.
_SECRET = re.compile(
    r"(Bearer\s+|(?:access_token|refresh_token|client_secret|password)[\"']?\s*[:=]\s*[\"']?)"
    r"[^\s\"'&,}]+"
)


def redact(text: str) -> str:
    """``text`` with bearer tokens and secret form fields replaced by ``***``."""
    return _SECRET.sub(r"\1***", text)


def timestamp(created: float) -> str:
    """RFC 3339, UTC, with milliseconds: ``2026-11-29T20:03:02.123Z``."""
    moment = dt.datetime.fromtimestamp(created, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in _fields(record).items():
            entry.setdefault(key, redact(value) if isinstance(value, str) else value)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


def _text(value: object) -> str:
    """A field's value in a text line: nested figures as compact JSON, not Python reprs."""
    if isinstance(value, dict | list | tuple):
        return orjson.dumps(value, default=str).decode()
    return str(value)


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger: message key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{timestamp(record.created)} {record.levelname} {record.name}: "
        line += record.getMessage()
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{k}={_text(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the moment: while a live progress display
    is on, rich points it at a proxy that prints log lines above the bars instead of
    through them."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


_format = "text"


def json_mode() -> bool:
    """Whether logs are JSON lines: then nothing else (tables, bars) goes to the screen."""
    return _format == "json"


def configure(level: str = "INFO", fmt: str = "auto") -> None:
    """Log to stderr; ``fmt`` is ``json``, ``text`` or ``auto`` (text on a terminal)."""
    global _format
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    _format = fmt
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    # One line per retried attempt drowns the log in a bad hour; every run report counts
    # its retries and 429s instead, and a request that gives up still says so (ERROR).
    # Imported first: importing backoff sets its logger to INFO, and the modes (and the
    # token manager with them) are imported after this runs.
    import backoff  # noqa: F401

    logging.getLogger("backoff").setLevel(logging.WARNING)
