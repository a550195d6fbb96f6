"""The SQL files of the store, loaded by name (``asyncsync/store/sql/<name>.sql``)."""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def sql(name: str) -> str:
    """The text of ``asyncsync/store/sql/<name>.sql``."""
    return (resources.files("asyncsync.store") / "sql" / f"{name}.sql").read_text(encoding="utf-8")
