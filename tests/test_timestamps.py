"""The pool's ``timestamptz`` codec means what asyncpg's own does, both ways."""

from __future__ import annotations

import datetime as dt

import asyncpg

from asyncsync.store import timestamps

NOW = dt.datetime.now(dt.UTC)
VALUES = [
    NOW,
    NOW,  # the same object again: answered from the last value encoded
    NOW.replace(microsecond=999_999) + dt.timedelta(days=1),
    dt.datetime(2026, 3, 5, 9, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
    dt.datetime(2026, 3, 5, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    dt.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),  # before the epoch
    dt.datetime(1900, 1, 1, tzinfo=dt.UTC),
    dt.datetime(2200, 7, 1, 12, tzinfo=dt.UTC),
    dt.datetime(2026, 12, 6, 8, 0),  # naive: local time, as asyncpg takes it
    dt.date(2026, 12, 6),  # a date: local midnight
    dt.datetime.max,  # infinity
    dt.datetime.min,  # -infinity
]
TEXTS = ["2026-12-06 03:04:05.678901+00", "1970-01-01 00:00:00+00", "infinity", "-infinity"]


async def test_the_codec_writes_and_reads_what_asyncpgs_own_does(db, database_url) -> None:
    plain = await asyncpg.connect(database_url, server_settings={"timezone": "UTC"})
    try:
        ours = [await db.fetchval("SELECT $1::timestamptz::text", v) for v in VALUES]
        theirs = [await plain.fetchval("SELECT $1::timestamptz::text", v) for v in VALUES]
        assert ours == theirs
        assert await db.fetchval("SELECT $1::timestamptz[]::text", VALUES) == (
            await plain.fetchval("SELECT $1::timestamptz[]::text", VALUES)
        )
        for text in TEXTS + theirs:
            got = await db.fetchval("SELECT $1::text::timestamptz", text)
            expected = await plain.fetchval("SELECT $1::text::timestamptz", text)
            assert (got, got.tzinfo) == (expected, expected.tzinfo), text
    finally:
        await plain.close()
    assert timestamps.decode(timestamps.encode(NOW)) == NOW
