"""``--simulator N`` is a demo: it must never write into a real account's mirror or tokens.

The README tells an operator to ``export DATABASE_URL=...`` for the real account, and in the
same breath shows ``asyncsync --mode backfill --simulator 5000 ...`` as a way to try any
mode. With the variable still exported, the demo ran against account ``default`` of the
production database: it replaced the stored refresh token (only a person can authorize the
app again) and flagged every open order it could not find in its simulated world as
``possibly_deleted``.
"""

from __future__ import annotations

import asyncio

from .test_cli import run_cli


async def test_a_simulator_demo_leaves_a_real_accounts_tokens_and_mirror_alone(
    simulator, database_url, db
) -> None:
    real = await simulator(orders=200, seed=7)  # "Tiny": the account the mirror belongs to
    env = {
        "DATABASE_URL": database_url,
        "TINY_CLIENT_ID": real.config.client_id, "TINY_CLIENT_SECRET": real.config.client_secret,
        "TINY_REFRESH_TOKEN": real.valid_refresh_token(), "TINY_API_BASE_URL": real.base_url,
        "TINY_TOKEN_URL": real.token_url, "TINY_RATE_LIMIT_PER_MINUTE": "60000",
    }  # fmt: skip
    first = await asyncio.to_thread(run_cli, "sync", env=env)
    assert first.returncode == 0, first.stderr
    token_before = await db.fetchval("SELECT refresh_token FROM tiny_tokens")
    open_before = await db.fetchval(
        "SELECT count(*) FROM ordens_servico WHERE situacao IN (0,1,2,5,6) AND NOT possibly_deleted"
    )
    assert open_before > 0

    # The README's demo, DATABASE_URL (and the real credentials) still exported.
    demo = await asyncio.to_thread(
        run_cli, "sync", "--simulator", "5", "--rate-limit", "6000", env=env
    )

    token_after = await db.fetchval("SELECT refresh_token FROM tiny_tokens")
    open_after = await db.fetchval(
        "SELECT count(*) FROM ordens_servico WHERE situacao IN (0,1,2,5,6) AND NOT possibly_deleted"
    )
    # Refusing (exit 2, one sentence) or keeping the demo apart are both fine; touching the
    # real account is not.
    assert token_after == token_before, (demo.returncode, demo.stderr[-500:])
    assert open_after == open_before, (demo.returncode, open_before, open_after)
