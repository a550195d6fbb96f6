"""asyncsync: a PostgreSQL mirror of Tiny ERP (Olist) service orders."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # The installed version is read on first use: the package metadata lookup is not
    # paid by every command at start-up.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("asyncsync")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            return "0.0.0"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
