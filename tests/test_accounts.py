"""The accounts table as an operator meets it: ``asyncsync accounts``, secrets by reference,
one-shot runs of any account (``--account`` or ``--all-accounts``), and ``authorize``."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
import sys

import aiohttp
import pytest

from asyncsync.options import ServeOptions
from asyncsync.runtime.fleet import open_fleet
from asyncsync.simulator import TinySimulator
from asyncsync.status import Situacao
from asyncsync.work.worker import LEASE_CHECK_S, work

from .helpers import common_for, register
from .mirror import diff, mirror
from .test_cli import sim_env


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TINY_", "ASYNCSYNC_"))}
    clean.pop("DATABASE_URL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncsync", *args, env={**clean, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def add_args(key: str, sim: TinySimulator, database_url: str) -> list[str]:
    """``accounts add KEY`` pointed at ``sim``, its secrets named by reference."""
    var = key.upper().replace("-", "_")
    return [
        "accounts", "add", key, "--database-url", database_url,
        "--api-base-url", sim.base_url, "--token-url", sim.token_url,
        "--client-id", sim.config.client_id, "--client-secret-env", f"SECRET_{var}",
        "--refresh-token-env", f"REFRESH_{var}", "--json",
    ]  # fmt: skip


def secrets(key: str, sim: TinySimulator) -> dict[str, str]:
    var = key.upper().replace("-", "_")
    return {
        f"SECRET_{var}": sim.config.client_secret,
        f"REFRESH_{var}": sim.valid_refresh_token() or "",
    }


async def test_adding_an_account_whose_secret_is_unset_here_says_so(simulator, database_url):
    # Spaces only are unset to a worker (accounts._read); the reminder said nothing then.
    sim = await simulator(orders=10)
    env = {**secrets("acme", sim), "SECRET_ACME": "  "}
    code, out, err = await cli(*add_args("acme", sim, database_url)[:-1], "--log-format", "text",
                               env=env)  # fmt: skip
    assert code == 0 and "$SECRET_ACME is unset here" in out, (out, err)
    assert "REFRESH_ACME" not in out


async def test_accounts_are_added_listed_disabled_and_removed(simulator, database_url, db) -> None:
    sim = await simulator(orders=10)
    code, out, err = await cli(*add_args("acme", sim, database_url))
    assert code == 0, err
    assert json.loads(out) == {"account": "acme", "added": True}
    # The secret is stored by reference, never in clear; the first cycle is queued at once.
    row = await db.fetchrow("SELECT * FROM accounts WHERE key = 'acme'")
    assert row["client_secret_env"] == "SECRET_ACME" and row["client_secret"] is None
    queued = await db.fetch("SELECT entrypoint, dedupe_key FROM pgqueuer")
    assert [(r["entrypoint"], r["dedupe_key"]) for r in queued] == [
        ("asyncsync.cycle", "cycle:acme")
    ]
    # A backfill enqueued for a key the table lacks (mistyped) is refused: the workers
    # serve the table's accounts alone, and dropped each of its months unrun.
    typo = await cli("backfill", "--account", "acmee", "--enqueue", "--database-url",
                     database_url)  # fmt: skip
    assert typo[0] == 2 and "--account 'acmee' is not in the accounts table" in typo[2], typo
    assert await db.fetchval("SELECT count(*) FROM pgqueuer") == 1
    code, out, err = await cli("accounts", "list", "--database-url", database_url, "--json")
    assert code == 0, err
    (listed,) = json.loads(out)["accounts"]
    assert listed["account"] == "acme" and listed["client secret"] == "env SECRET_ACME"
    assert sim.config.client_secret not in out
    # A secret in clear needs the operator's explicit consent.
    refused = await cli("accounts", "add", "x", "--database-url", database_url,
                        "--client-id", "c", "--client-secret", "s3cret")  # fmt: skip
    assert refused[0] == 2 and "by reference" in refused[2] and "s3cret" not in refused[2]
    opted = await cli("accounts", "add", "x", "--database-url", database_url, "--client-id",
                      "c", "--client-secret", "s3cret", "--store-client-secret")  # fmt: skip
    assert opted[0] == 0, opted[2]
    assert await db.fetchval("SELECT client_secret FROM accounts WHERE key = 'x'") == "s3cret"
    for action, expected in (("disable", False), ("enable", True)):
        code, _, err = await cli("accounts", action, "acme", "--database-url", database_url)
        assert code == 0, err
        assert await db.fetchval("SELECT enabled FROM accounts WHERE key = 'acme'") is expected
    code, out, _ = await cli("accounts", "remove", "x", "--database-url", database_url,
                             "--log-format", "text")  # fmt: skip
    assert code == 0 and "account x removed" in out
    missing = await cli("accounts", "remove", "x", "--database-url", database_url, "--json")
    assert missing[0] == 2 and json.loads(missing[1]) == {
        "account": "x",
        "action": "remove",
        "found": False,
    }


@pytest.mark.parametrize("how", ["disable", "remove"])
async def test_an_account_disabled_or_removed_while_its_unit_runs_stops_within_seconds(
    how, simulator, database_url, db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its unit (a first sync: hours for a big account) stops at the worker's next lease
    check, merging what it has, instead of running to its end on the account's quota;
    the other account goes on."""
    big = await simulator(orders=3000, seed=7, latency_s=0.1, max_limit=10)
    small = await simulator(orders=20, seed=8)
    options = ServeOptions(interval_s=1, slots=4, heartbeat_s=10, integrity_interval_s=0)
    stop = asyncio.Event()
    async with open_fleet(common_for(big, database_url), options) as fleet:
        await register(fleet.database.registry, {"big": big, "small": small}, monkeypatch)
        worker = asyncio.create_task(work(fleet.database.queue, fleet, options, stop))
        try:
            while big.stats.requests_by_endpoint["list"] < 5:  # noqa: ASYNC110 (a counter)
                await asyncio.sleep(0.05)
            if how == "disable":
                assert await fleet.database.registry.set_enabled("big", False)
            else:
                assert await fleet.database.registry.remove("big")
            stopped_by = asyncio.get_running_loop().time() + LEASE_CHECK_S + 3
            while not await db.fetchval("SELECT count(*) FROM sync_runs WHERE account = 'big'"):
                assert asyncio.get_running_loop().time() < stopped_by, "big's unit still runs"
                await asyncio.sleep(0.1)
            asked = big.stats.requests_total
            cycles = await db.fetchval("SELECT count(*) FROM sync_runs WHERE account = 'small'")
            await asyncio.sleep(2)
        finally:
            stop.set()
            await asyncio.wait_for(worker, 30)
    assert big.stats.requests_total == asked  # nothing asked of it since
    assert await db.fetchval("SELECT outcome FROM sync_runs WHERE account = 'big'") == "interrupted"
    assert await db.fetchval("SELECT count(*) FROM ordens_servico WHERE account = 'big'") > 0
    assert cycles > 0 and set(await mirror(db, "small")) == set(small.snapshot())


async def test_a_worker_whose_last_account_is_removed_serves_no_other(
    simulator, database_url, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table emptied, a worker took the flags' account (`default`, with whatever
    credentials its environment holds) for the single-account install and planned its
    units. Once the table has had rows, an emptied one serves nothing."""
    sim = await simulator(orders=20, seed=8)
    options = ServeOptions(interval_s=1, slots=4, heartbeat_s=10, integrity_interval_s=0)
    async with open_fleet(common_for(sim, database_url), options) as fleet:
        await register(fleet.database.registry, {"only": sim}, monkeypatch)
        assert [key for key, _ in await fleet.plan()] == ["only"]
        assert await fleet.database.registry.remove("only")
        assert await fleet.plan() == []
        assert not await fleet.serves("default") and not await fleet.single()


async def test_status_of_every_account_says_which_are_not_served(
    simulator, database_url, db
) -> None:
    """A disabled or removed account (its mirror and history kept) is no worker's to keep
    fresh: ``status --all-accounts`` says so, and does not exit 1 for ever once it is stale
    (it showed as any other account, in red, and every check of the command failed). On a
    terminal it prints a line an account (it printed each one's 35 lines: 2,000 at 60
    accounts); ``--full`` prints each one's tables."""
    sims = {
        key: await simulator(orders=20, seed=n) for n, key in enumerate(("east", "north", "south"))
    }
    env: dict[str, str] = {}
    for key, sim in sims.items():
        env.update(secrets(key, sim))
        assert (await cli(*add_args(key, sim, database_url)))[0] == 0
    assert (await cli("sync", "--all-accounts", "--database-url", database_url, env=env))[0] == 0
    assert (await cli("accounts", "disable", "north", "--database-url", database_url))[0] == 0
    assert (await cli("accounts", "remove", "south", "--database-url", database_url))[0] == 0
    await db.execute("UPDATE sync_metadata SET updated_at = now() - interval '2 days' "
                     "WHERE account <> 'east'")  # fmt: skip
    status = ("status", "--all-accounts", "--database-url", database_url)
    code, out, err = await cli(*status, "--json", "-")
    assert code == 0, (out, err)
    shown = {a["account"]: a for a in json.loads(out)["accounts"]}
    assert {k: (a["served"], a["freshness"]["fresh"]) for k, a in shown.items()} == {
        "east": (True, True), "north": (False, False), "south": (False, False),
    }  # fmt: skip
    assert (shown["north"]["not_served"], shown["south"]["not_served"]) == ("disabled", "removed")
    # On a terminal, a line an account (60 accounts printed 35 lines each), then the queue.
    code, out, _ = await cli(*status, "--log-format", "text")
    assert code == 0, out
    for key, state in (("east", "fresh"), ("north", "disabled"), ("south", "removed")):
        [line] = [line for line in out.splitlines() if key in line]
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        assert cells[:2] == [key, state] and cells[2].startswith("ok, "), out
        quota = f"{sims[key].config.rate_limit_per_minute:,}"
        assert cells[3:] == ["20", "0", "0", "0", quota, "free"], out  # orders ... lock
    assert "3 accounts: 1 fresh, 0 STALE, 2 not served" in out and "work queue" in out
    assert "account east —" not in out and "last run of each mode" not in out
    # Narrower than the table (COLUMNS, piped or not): a block an account, every cell of
    # its line there, nothing cut (below about 84 columns the table lost its last column).
    for width in (60, 80):
        code, out, _ = await cli(*status, "--log-format", "text", env={"COLUMNS": str(width)})
        assert code == 0 and max(map(len, out.splitlines())) <= width, out
        blocks = " ".join(out.split()).split(" work queue")[0]
        for key, state in (("east", "fresh"), ("north", "disabled"), ("south", "removed")):
            quota = f"{sims[key].config.rate_limit_per_minute:,}"
            said = f" {key} state {state} · last sync ok, "
            assert said in blocks, (key, out)
            block = blocks.split(said)[1].split("lock free")[0]
            assert "orders 20 · backlog 0 · retry 0 · review 0 · quota " + quota in block, out
    # COLUMNS of 0 or a word is no width: the table of a pipe, whole (0 gave a column a
    # character).
    for columns in ("0", "wide"):
        code, out, _ = await cli(*status, "--log-format", "text", env={"COLUMNS": columns})
        [line] = [line for line in out.splitlines() if "east" in line]
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        assert code == 0 and cells[:2] == ["east", "fresh"] and cells[-1] == "free", out
    # --full: each account's tables, as before.
    code, out, _ = await cli(*status, "--full", "--log-format", "text")
    assert code == 0 and "account north — disabled" in out and "account south — removed" in out
    assert out.count("last run of each mode") == 3
    await db.execute("UPDATE sync_metadata SET updated_at = now() - interval '2 days'")
    code, out, _ = await cli(*status, "--log-format", "text")
    assert code == 1, out  # a served account stale: exit 1, as before
    assert "3 accounts: 0 fresh, 1 STALE, 2 not served" in out
    [line] = [line for line in out.splitlines() if "east" in line]
    assert line.split("│")[2].strip() == "STALE", out


async def test_accounts_add_refuses_what_it_cannot_keep(database_url, db, tmp_path) -> None:
    base = ["accounts", "add", "k", "--database-url", database_url, "--client-id", "c"]
    secret = tmp_path / "secret"
    secret.write_text("s\n")
    cases = [
        (["--client-secret-env", "S", "--client-secret-file", str(secret)], "one way"),
        (
            [
                "--client-secret-env",
                "S",
                "--refresh-token-env",
                "R",
                "--refresh-token-file",
                str(secret),
            ],
            "not both",
        ),
        (["--client-secret-file", "relative/secret"], "must be an absolute path"),
    ]
    for extra, said in cases:
        code, _, err = await cli(*base, *extra)
        assert code == 2 and said in err, (extra, err)
        assert len(err.strip().splitlines()) == 1
    assert await db.fetchval("SELECT count(*) FROM accounts") == 0  # nothing half-added
    # A refresh token in clear is not kept, and the command says so.
    clear = ["--refresh-token", "tok-in-clear", "--log-format", "text"]
    code, out, err = await cli(*base, "--client-secret-env", "S", "--quota-share", "0.8", *clear)
    assert code == 0 and "refresh token given (--refresh-token" in out, out + err
    assert "tok-in-clear" not in out + err
    assert await db.fetchval("SELECT count(*) FROM tiny_tokens") == 0
    _, listed, _ = await cli("accounts", "list", "--database-url", database_url, "--json")
    assert json.loads(listed)["accounts"][0]["quota share"] == 0.8
    # Re-adding a disabled account replaces its definition and leaves it disabled; a flag
    # left out goes back to its default (the README: "so repeat every one").
    assert (await cli("accounts", "disable", "k", "--database-url", database_url))[0] == 0
    code, out, _ = await cli(*base, "--client-secret-env", "S2", "--log-format", "text")
    assert code == 0 and "updated" in out and "still disabled" in out, out
    row = await db.fetchrow(
        "SELECT enabled, client_secret_env, quota_share FROM accounts WHERE key = 'k'"
    )
    assert (row["enabled"], row["client_secret_env"], row["quota_share"]) == (False, "S2", 1.0)


async def test_one_shot_runs_reach_every_account_by_its_row(
    simulator, database_url, db, tmp_path
) -> None:
    sims = {"north": await simulator(orders=150, seed=3), "south": await simulator(orders=90)}
    env: dict[str, str] = {}
    for key, sim in sims.items():
        args = add_args(key, sim, database_url)
        if key == "south":  # its secrets in files, as a container's secrets are mounted
            values = secrets(key, sim)
            for flag, var in (("--client-secret", "SECRET_SOUTH"),
                              ("--refresh-token", "REFRESH_SOUTH")):  # fmt: skip
                file = tmp_path / var.lower()
                file.write_text(values[var] + "\n", encoding="utf-8")
                at = args.index(f"{flag}-env")
                args[at : at + 2] = [f"{flag}-file", str(file)]
        else:
            env.update(secrets(key, sim))
        code, _, err = await cli(*args)
        assert code == 0, err
    # One account, by its key: no Tiny flag or TINY_* variable, only what its row names.
    code, _, err = await cli("sync", "--account", "south", "--database-url", database_url,
                             "--json", env=env)  # fmt: skip
    assert code == 0, err
    assert diff(sims["south"].snapshot(), await mirror(db, "south")) == []
    # Every enabled account, one after the other.
    code, out, err = await cli("sync", "--all-accounts", "--database-url", database_url,
                               "--json", env=env)  # fmt: skip
    assert code == 0, err
    reports = [json.loads(line) for line in out.splitlines()]
    assert [(r["account"], r["outcome"]) for r in reports] == [("north", "ok"), ("south", "ok")]
    for key, sim in sims.items():
        assert diff(sim.snapshot(), await mirror(db, key)) == []
    # Health and import failures too, for every account: each answer names its account.
    code, out, err = await cli("health", "--all-accounts", "--database-url", database_url)
    assert code == 0, err
    assert [line.split(": ", 2)[:2] for line in out.splitlines()] == [
        ["account north", "healthy"],
        ["account south", "healthy"],
    ]
    code, out, err = await cli("failures", "list", "--all-accounts", "--database-url",
                               database_url, "--json", env=env)  # fmt: skip
    assert code == 0, err
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(f["account"], len(f["failures"])) for f in listed] == [
        (key, await db.fetchval("SELECT count(*) FROM import_failures WHERE account = $1", key))
        for key in ("north", "south")
    ]
    # The other one-shot modes, every account in turn, each report naming its account.
    north_orders = sorted(sims["north"].orders)
    sims["north"].set_status(north_orders[0], Situacao.CANCELADA)  # integrity has work
    await db.execute("UPDATE ordens_servico SET situacao = 0 WHERE account = 'north' AND id = $1",
                     north_orders[1])  # fmt: skip
    month = f"{dt.date.today():%Y-%m}"
    for mode, extra in (("integrity", ["--deep"]), ("retry", []),
                        ("backfill", ["--from", month, "--detail-budget", "0"])):  # fmt: skip
        code, out, err = await cli(mode, "--all-accounts", "--database-url", database_url,
                                   "--json", *extra, env=env)  # fmt: skip
        assert code == 0, (mode, err)
        reports = [json.loads(line) for line in out.splitlines()]
        assert [(r["mode"], r["account"]) for r in reports] == [
            (mode, "north"), (mode, "south"),
        ], (mode, reports)  # fmt: skip
    for key, sim in sims.items():
        assert diff(sim.snapshot(), await mirror(db, key)) == []  # integrity fixed north
    rows = await db.fetch("SELECT account, mode FROM sync_runs WHERE mode <> 'sync' ORDER BY id")
    assert [(r["account"], r["mode"]) for r in rows] == [
        (a, m) for m in ("integrity", "retry", "backfill") for a in ("north", "south")
    ]
    code, out, err = await cli("status", "--all-accounts", "--database-url", database_url,
                               "--json")  # fmt: skip
    assert code == 0, err
    shown = json.loads(out)
    assert [a["account"] for a in shown["accounts"]] == ["north", "south"]
    assert all(a["last_runs"]["backfill"]["outcome"] == "ok" for a in shown["accounts"])
    # An enabled account that never synced makes the whole answer unhealthy, and says which.
    code, _, err = await cli(*add_args("west", sims["south"], database_url))
    assert code == 0, err
    code, out, _ = await cli("health", "--all-accounts", "--database-url", database_url)
    assert code == 1 and "account west: unhealthy: account 'west' has never been synced" in out
    # The first authorization is one account's, by a person: not a loop.
    code, _, err = await cli("authorize", "--all-accounts", "--database-url", database_url)
    assert code == 2 and "--all-accounts" in err.splitlines()[-1]
    # A referenced variable that is unset is named, with its account.
    code, _, err = await cli("integrity", "--account", "north", "--database-url", database_url)
    assert code == 2 and "account 'north': its client secret is read from $SECRET_NORTH" in err


async def test_authorize_stores_the_first_token_of_an_account(simulator, database_url, db) -> None:
    sim = await simulator(orders=20, redirect_uris=("https://app.example.com/cb",))
    args = add_args("acme", sim, database_url)
    refresh = args.index("--refresh-token-env")
    del args[refresh : refresh + 2]  # no bootstrap token: a person authorizes
    code, _, err = await cli(*args)
    assert code == 0, err
    env = {"SECRET_ACME": sim.config.client_secret}
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TINY_", "ASYNCSYNC_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncsync", "authorize", "--account", "acme",
        "--database-url", database_url, "--redirect-uri", "https://app.example.com/cb",
        env={**clean, **env}, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    while "response_type=code" not in (line := (await proc.stdout.readline()).decode()):
        assert line, "authorize ended before printing the address"
    async with (
        aiohttp.ClientSession() as browser,
        browser.get(line.strip(), allow_redirects=False) as page,
    ):
        landed = page.headers["Location"]
    _out, err = await asyncio.wait_for(proc.communicate((landed + "\n").encode()), 30)
    assert proc.returncode == 0, err.decode()
    stored = await db.fetchval("SELECT refresh_token FROM tiny_tokens WHERE account = 'acme'")
    assert stored == sim.valid_refresh_token() and sim.stats.code_exchanges == 1


async def test_a_json_report_file_of_every_account_keeps_every_accounts_report(
    simulator, database_url, tmp_path
) -> None:
    """``--json PATH`` with ``--all-accounts``: each account's report was written over the
    one before, so the file held the last account's alone (a timer's report of the
    integrity of every account said nothing of all but one)."""
    sims = {key: await simulator(orders=30, seed=n) for n, key in enumerate(("north", "south"))}
    env: dict[str, str] = {}
    for key, sim in sims.items():
        env.update(secrets(key, sim))
        code, _, err = await cli(*add_args(key, sim, database_url))
        assert code == 0, err
    path = tmp_path / "report.json"
    code, _, err = await cli("sync", "--all-accounts", "--database-url", database_url,
                             "--json", str(path), env=env)  # fmt: skip
    assert code == 0, err
    reports = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["account"] for r in reports] == ["north", "south"]
    # What is not a run is written to PATH too: it printed its tables and wrote nothing,
    # though --help says "write the report as JSON to this file".
    status = tmp_path / "status.json"
    code, out, err = await cli("status", "--all-accounts", "--database-url", database_url,
                               "--json", str(status), "--log-format", "text")  # fmt: skip
    assert code == 0, err
    assert "│ north " in out and "│ south " in out  # the table, for the person at the terminal
    shown = json.loads(status.read_text())
    assert [a["account"] for a in shown["accounts"]] == ["north", "south"]
    listed = tmp_path / "accounts.json"
    code, _, err = await cli("accounts", "list", "--database-url", database_url,
                             "--json", str(listed), "--log-format", "text")  # fmt: skip
    assert code == 0, err
    assert [a["account"] for a in json.loads(listed.read_text())["accounts"]] == [
        "north", "south",
    ]  # fmt: skip


async def test_a_mistyped_account_key_is_said_so_not_removed_or_uncredentialed(
    simulator, database_url
) -> None:
    """With rows in the accounts table, ``status --account nokey`` said "removed, not
    served" and exited 0 (a typo passed a status-based check), and ``sync --account nokey``
    asked for TINY_CLIENT_ID. A key removed from the table, whose mirror stays, is still
    shown as removed."""
    sim = await simulator(orders=10)
    for key in ("acme", "beta"):
        code, _, err = await cli(*add_args(key, sim, database_url))
        assert code == 0, err
    # health said "unhealthy: ... never been synced", exit 1, as for a real account
    for mode in ("status", "sync", "health"):
        code, out, err = await cli(mode, "--account", "nokey", "--database-url", database_url)
        assert code == 2, (mode, out, err)
        assert "--account 'nokey' is not in the accounts table" in err, (mode, err)
        assert "accounts list shows its keys" in err and "Traceback" not in err, err
    # ... and so with the flags' credentials in the environment (an install grown from a
    # single account keeps them): the typo ran, was recorded, and stayed in status.
    flags = sim_env(sim)
    for mode in (["sync"], ["retry"], ["integrity"], ["failures", "list"],
                 ["failures", "ignore", "5"]):  # fmt: skip
        code, out, err = await cli(*mode, "--account", "nokey", "--database-url", database_url,
                                   env=flags)  # fmt: skip
        assert code == 2 and "--account 'nokey' is not in the accounts table" in err, (
            mode, code, out, err)  # fmt: skip
    code, out, err = await cli("status", "--account", "nokey", "--database-url", database_url)
    assert code == 2, (out, err)  # nothing recorded for it
    # accounts disable/enable/remove of a key not in the table: exit 1, "the run failed"
    for action in ("disable", "enable", "remove"):
        code, out, err = await cli("accounts", action, "nokey", "--database-url", database_url,
                                   "--log-format", "text")  # fmt: skip
        assert code == 2 and "no account nokey in the accounts table" in out, (code, out, err)
    code, _, err = await cli("accounts", "disable", "beta", "--database-url", database_url)
    assert code == 0, err
    code, out, err = await cli("health", "--account", "beta", "--database-url", database_url)
    assert code == 1 and "account 'beta' is disabled" in out, (code, out, err)
    code, out, err = await cli("sync", "--account", "acme", "--database-url", database_url,
                               env=secrets("acme", sim))  # fmt: skip
    assert code == 0, err
    code, _, err = await cli("accounts", "remove", "acme", "--database-url", database_url)
    assert code == 0, err
    code, out, err = await cli("status", "--account", "acme", "--database-url", database_url)
    assert '"not_served":"removed"' in out and code == 0, (code, out, err)


async def test_a_backfill_enqueued_for_a_key_nothing_ran_for_is_refused_without_a_table(
    simulator, database_url, db
) -> None:
    """A single-account install (no row in the accounts table): ``backfill --enqueue
    --account nokey`` said "9 of 9 months … enqueued for the workers", exit 0, and each
    worker then dropped every month ("account nokey is disabled or removed"). A key
    nothing ran for, where other accounts ran, is a typo (exit 2); the worker's own is
    enqueued."""
    sim = await simulator(orders=10)
    env = sim_env(sim)
    months = ("--from", "2026-04", "--to", "2026-06", "--database-url", database_url)
    fresh = await cli("backfill", "--enqueue", "--account", "later", *months, env=env)
    assert fresh[0] == 0, fresh  # nothing ran here yet: no key to compare with
    await db.execute("DELETE FROM pgqueuer")
    code, _, err = await cli("sync", "--database-url", database_url, env=env)
    assert code == 0, err
    await db.execute("DELETE FROM pgqueuer")
    typo = await cli("backfill", "--enqueue", "--account", "nokey", *months, env=env)
    assert typo[0] == 2, typo
    assert "--account 'nokey'" in typo[2] and "nothing ran for it here" in typo[2], typo
    assert await db.fetchval("SELECT count(*) FROM pgqueuer") == 0
    own = await cli("backfill", "--enqueue", *months, env=env)
    assert own[0] == 0, own
    assert await db.fetchval("SELECT count(*) FROM pgqueuer") == 3


async def test_the_table_refuses_a_key_the_tool_would_refuse(db) -> None:
    """A row inserted by hand as 'bad key!' stopped accounts list, status, health and
    sync --all-accounts (exit 2), and accounts remove refused to name it."""
    import asyncpg

    insert = ("INSERT INTO accounts (key, api_base_url, token_url, client_id, "
              "client_secret_env) VALUES ($1, 'http://x', 'http://x', 'c', 'SEC')")  # fmt: skip
    with pytest.raises(asyncpg.CheckViolationError, match="accounts_key_rule"):
        await db.execute(insert, "bad key!")
    await db.execute(insert, "acme-2.b_c")
    assert await db.fetchval("SELECT count(*) FROM accounts") == 1


async def test_an_account_that_fails_in_all_accounts_has_its_line_in_the_json(
    simulator, database_url, tmp_path
) -> None:
    """``--all-accounts --json PATH`` writes a line an account: the one whose run an error
    ended had none (the command exiting 5 all the same), and without a run to name, the
    accounts unlisted, the file was left as an earlier run's."""
    sims = {"north": await simulator(orders=20), "south": await simulator(orders=10)}
    with socket.socket() as dead:  # bound, not listening: its Tiny refuses connections
        dead.bind(("127.0.0.1", 0))
        env: dict[str, str] = {}
        for key, sim in sims.items():
            args = add_args(key, sim, database_url)
            if key == "south":
                args[args.index(sim.base_url)] = f"http://127.0.0.1:{dead.getsockname()[1]}/v3"
            env.update(secrets(key, sim))
            code, _, err = await cli(*args)
            assert code == 0, err
        path = tmp_path / "runs.json"
        code, _, err = await cli("sync", "--all-accounts", "--database-url", database_url,
                                 "--breaker-failures", "2", "--timeout", "2",
                                 "--json", str(path), env=env)  # fmt: skip
    assert code == 5, err
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["account"], r["outcome"], r["exit_code"]) for r in lines] == [
        ("north", "ok", 0), ("south", "failed", 5),
    ], lines  # fmt: skip
    # The accounts cannot even be listed: one failed line for them all, not the last file.
    code, _, err = await cli("sync", "--all-accounts", "--database-url",
                             database_url.rsplit("/", 1)[0] + "/no_such_database_here",
                             "--json", str(path), env=env)  # fmt: skip
    assert code != 0, err
    (whole,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert (whole["account"], whole["outcome"], whole["exit_code"]) == ("*", "failed", code)
