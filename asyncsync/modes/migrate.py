"""``--mode migrate``: apply ``schema.sql`` (idempotent) and exit."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from ..config import Settings
from ..database import open_database


async def run(settings: Settings, *, args: Any = None, stop: asyncio.Event) -> int:
    """Create or update the schema."""
    async with open_database(settings.database_url, settings.data_dir):
        pass
    print("schema is up to date", file=sys.stdout)
    return 0
