"""asyncsync: a PostgreSQL mirror of Tiny ERP (Olist) service orders."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("asyncsync")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
