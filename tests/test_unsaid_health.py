"""A multi-account worker builds an account's runtime when it takes the account's lease
and drops it when the unit ends: what a cycle could not tell ``asyncsync health`` (the
database was away) belongs to the account, not to that runtime object. Before, it was
kept by ``id(runtime)``: the account's next cycle, on a new runtime, never said it
(health read the cycle before, healthy, until the next cycle ended), and another
account's runtime that happened to get the dropped one's address said it as its own."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import orjson

from asyncsync.clock import iso, utcnow
from asyncsync.errors import DatabaseUnavailable
from asyncsync.work.health import SERVE_HEALTH_KEY, say_health, say_unsaid


@dataclass
class Metadata:
    """An account's sync_metadata, the database away while ``away``."""

    values: dict[str, str] = field(default_factory=dict)
    away: bool = False

    async def set(self, key: str, value: str) -> None:
        if self.away:
            raise DatabaseUnavailable("the database is unreachable")
        self.values[key] = value

    async def get(self, key: str) -> str | None:
        if self.away:
            raise DatabaseUnavailable("the database is unreachable")
        return self.values.get(key)


@dataclass
class Store:
    metadata: Metadata


class Runtime:
    """One lease's runtime of an account (a new one for each lease)."""

    def __init__(self, account: str, metadata: Metadata) -> None:
        self.account = account
        self.store = Store(metadata)


def said(metadata: Metadata) -> dict[str, object] | None:
    value = metadata.values.get(SERVE_HEALTH_KEY)
    return None if value is None else dict(orjson.loads(value))


async def test_what_a_cycle_could_not_say_is_said_by_the_accounts_next_runtime() -> None:
    acme, globex = Metadata(), Metadata()
    first = Runtime("acme", acme)
    await say_health(first, None)  # the cycle before: healthy
    acme.away = True
    await say_health(first, "last cycle failed: the database is unreachable")
    acme.away = False
    # The next unit of globex, then acme's next cycle, each on a runtime of its own lease
    # (``first`` is still alive here, so no address is shared by chance).
    await say_unsaid(Runtime("globex", globex))
    assert said(globex) is None  # never another account's health
    await say_unsaid(Runtime("acme", acme))  # its start
    health = said(acme)
    assert health is not None and health["ok"] is False, health
    assert "database is unreachable" in str(health["problem"])


async def test_what_was_not_said_never_covers_what_another_worker_said_since() -> None:
    acme = Metadata()
    mine = Runtime("acme", acme)
    acme.away = True
    await say_health(mine, "last cycle failed: the database is unreachable")
    acme.away = False
    # Meanwhile another worker ran acme's next cycle, and said so.
    later = iso(utcnow() + dt.timedelta(seconds=5))
    acme.values[SERVE_HEALTH_KEY] = orjson.dumps({"ok": True, "problem": None,
                                                  "at": later}).decode()  # fmt: skip
    await say_unsaid(Runtime("acme", acme))
    assert said(acme) == {"ok": True, "problem": None, "at": later}
