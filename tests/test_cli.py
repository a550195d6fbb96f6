"""The command line as a user meets it: one clear sentence for bad configuration."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web

from asyncsync.errors import ConfigError
from asyncsync.flags import FLAGS, MODES, build_parser
from asyncsync.simulator import TinySimulator
from asyncsync.store.database import with_database


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without asyncsync's and Tiny's settings, plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TINY_", "ASYNCSYNC_"))}
    clean.pop("DATABASE_URL", None)
    clean.pop("PGDATABASE", None)  # libpq's: it would name the database a URL leaves out
    return {**clean, **(env or {})}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncsync", *args],
        capture_output=True,
        text=True,
        env=cli_env(env),
        timeout=120,
    )


async def spawn_cli(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    """``asyncsync *args`` started in the background, its stderr piped (stdout dropped)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncsync", *args, env=cli_env(env),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


def sim_env(sim: TinySimulator, **extra: str) -> dict[str, str]:
    """The environment of a run against ``sim``: its URLs and the app's credentials."""
    return {
        "TINY_CLIENT_ID": sim.config.client_id, "TINY_CLIENT_SECRET": sim.config.client_secret,
        "TINY_REFRESH_TOKEN": sim.valid_refresh_token() or "", "TINY_API_BASE_URL": sim.base_url,
        "TINY_TOKEN_URL": sim.token_url, **extra,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {}, "no Tiny credentials: set TINY_CLIENT_ID"),
        ((), {"TINY_CLIENT_ID": "x"}, "incomplete Tiny credentials: also set TINY_CLIENT_SECRET"),
        (("--api-base-url", "ftp://nope"), {}, "--api-base-url must be an http(s) URL"),
        (("--database-url", "mysql://x"), {}, "--database-url must start with postgresql://"),
        (("--rate-limit", "0"), {}, "--rate-limit must be ≥ 1, got 0"),
        (
            ("--token-file", "/nonexistent/tiny_token.json"),
            {},
            "(--token-file, TINY_TOKEN_FILE) does not exist",
        ),
        ((), {"TINY_TOKEN_FILE": "/"}, "the token file / (--token-file, TINY_TOKEN_FILE) cannot "),
        (("--account", "a b"), {}, "--account must be 1 to 64 letters"),
    ],
)
def test_bad_configuration_is_one_sentence_and_exit_2(args, env, message, tmp_path) -> None:
    result = run_cli(
        "--mode", "sync", "--database-url", "postgresql://u@127.0.0.1:1/x", *args, env=env
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # no "caused by"


def test_unreachable_database_is_reported_without_traceback() -> None:
    env = {"TINY_CLIENT_ID": "a", "TINY_CLIENT_SECRET": "b", "TINY_REFRESH_TOKEN": "c"}
    result = run_cli("--database-url", "postgresql://u:s3cret@127.0.0.1:1/x", env=env)
    assert result.returncode == 6  # the database is unavailable
    assert len(result.stderr.strip().splitlines()) == 1 and "s3cret" not in result.stderr
    assert "cannot connect to PostgreSQL at postgresql://u@127.0.0.1:1/x" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_dsn_the_driver_refuses_is_configuration_and_no_password_shows() -> None:
    bad = run_cli("sync", "--simulator", "5", "--database-url",
                  "postgresql://u:s3cret@127.0.0.1:1/db?sslmode=bogus")  # fmt: skip
    assert bad.returncode == 2, bad.stderr
    assert "DATABASE_URL" in bad.stderr and "sslmode" in bad.stderr
    said = [line for line in bad.stderr.splitlines() if not line.startswith("{")]  # not logs
    assert len(said) == 1 and "Traceback" not in bad.stderr, said
    # A password given as a parameter of the DSN is as secret as one before the @.
    away = run_cli("sync", "--simulator", "5", "--db-reconnect", "0", "--database-url",
                   "postgresql://u@127.0.0.1:1/db?password=s3cret&sslmode=disable")  # fmt: skip
    assert away.returncode == 6, away.stderr
    assert "s3cret" not in away.stderr + away.stdout
    assert "postgresql://u@127.0.0.1:1/db?sslmode=disable" in away.stderr


def test_every_flag_shows_its_environment_variable() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    flat = " ".join(result.stdout.split())
    for action in build_parser(None)._actions:
        if action.dest not in ("help", "version"):
            assert "[env: " in (action.help or ""), action.dest
    issue_vars = ["DATABASE_URL", "TINY_API_BASE_URL", "TINY_TOKEN_URL", "TINY_CLIENT_ID"]
    issue_vars += ["TINY_RATE_LIMIT_PER_MINUTE", "TINY_MAX_CONCURRENCY", "ASYNCSYNC_MODE"]
    for env in issue_vars:
        assert f"[env: {env}]" in flat


def test_sync_against_the_bundled_simulator(database_url: str) -> None:
    result = run_cli(
        "--mode", "sync", "--simulator", "400", "--rate-limit", "60000",
        "--database-url", database_url, "--log-format", "text",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "│ total" in result.stdout and "400" in result.stdout
    assert re.search(r"│ new orders +│ +400 │", result.stdout), result.stdout


def test_token_file_bootstraps_credentials(tmp_path, database_url: str) -> None:
    (tmp_path / "tiny_token.json").write_text('{"refresh_token": "r"}')
    result = run_cli(
        "--database-url", database_url, "--token-file", str(tmp_path / "tiny_token.json")
    )
    assert result.returncode == 2
    assert "has no client_id/client_secret; set TINY_CLIENT_ID and" in result.stderr
    # An expiry in milliseconds (JavaScript's Date.now()) is a bad file, not a traceback.
    (tmp_path / "tiny_token.json").write_text(
        '{"refresh_token": "r", "client_id": "a", "client_secret": "b", '
        '"access_token": "t", "expires_at": 1796000000000}'
    )
    millis = run_cli(
        "--database-url", database_url, "--token-file", str(tmp_path / "tiny_token.json")
    )
    assert millis.returncode == 2, millis.stderr
    assert "expires_at 1796000000000 is no epoch time in seconds" in millis.stderr
    assert "Traceback" not in millis.stderr


async def test_a_token_file_whose_expiry_is_gos_zero_time_bootstraps(
    simulator, database_url, tmp_path
) -> None:
    """A tiny_token.json written by a Go tool says an unknown expiry as 0001-01-01: the
    sync ended in a traceback (its renewal, 5 minutes earlier, is no date); now the
    refresh token bootstraps and the access token is not used."""
    sim = await simulator(orders=20)
    path = tmp_path / "tiny_token.json"
    path.write_text(
        '{"client_id": "sim-client", "client_secret": "sim-secret", '
        f'"refresh_token": "{sim.valid_refresh_token()}", "access_token": "t", '
        '"expires_at": "0001-01-01T00:00:00Z"}'
    )
    env = {"TINY_API_BASE_URL": sim.base_url, "TINY_TOKEN_URL": sim.token_url,
           "TINY_TOKEN_FILE": str(path), "TINY_RATE_LIMIT_PER_MINUTE": "60000"}  # fmt: skip
    result = await asyncio.to_thread(run_cli, "sync", "--database-url", database_url, env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_health_says_whether_the_mirror_is_fresh(database_url: str) -> None:
    never = run_cli("--mode", "health", "--database-url", database_url)
    assert never.returncode == 1 and "never been synced" in never.stdout
    synced = run_cli(
        "--mode", "sync", "--simulator", "100", "--rate-limit", "60000",
        "--database-url", database_url,
    )  # fmt: skip
    assert synced.returncode == 0, synced.stderr
    fresh = run_cli("--mode", "health", "--database-url", database_url)
    assert fresh.returncode == 0 and fresh.stdout.startswith("healthy: last sync 0 min ago")
    # The limit in minutes, as status says it (it said "limit 1:00:00").
    assert fresh.stdout.strip().endswith("(limit 60 min)"), fresh.stdout


@pytest.mark.parametrize("skew_h", [3, -3])
async def test_health_judges_freshness_by_the_databases_clock(
    database_url: str, skew_h: int, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The last sync is stamped by the database; set against this host's clock, a host 3 h
    ahead of the database was never healthy (and one 3 h behind said stale 3 h late)."""
    import asyncio
    import datetime as dt

    from asyncsync.clock import utcnow
    from asyncsync.modes import execute
    from asyncsync.options import CommonOptions, DatabaseOptions, HealthOptions

    synced = await asyncio.to_thread(
        run_cli, "sync", "--simulator", "50", "--rate-limit", "60000", "--database-url",
        database_url,
    )  # fmt: skip
    assert synced.returncode == 0, synced.stderr
    capsys.readouterr()

    def skewed() -> dt.datetime:
        return utcnow() + dt.timedelta(hours=skew_h)

    for module in ("asyncsync.modes.health", "asyncsync.store.metadata"):
        monkeypatch.setattr(f"{module}.utcnow", skewed)
    common = CommonOptions(database=DatabaseOptions(database_url=database_url))
    code = await execute("health", common, HealthOptions(), asyncio.Event())
    said = capsys.readouterr().out
    assert code == 0 and said.startswith("healthy: last sync 0 min ago"), said


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ASYNCSYNC_MODE": "server"}, "ASYNCSYNC_MODE must be one of sync, serve"),
        ({"ASYNCSYNC_LOG_LEVEL": "verbose"}, "ASYNCSYNC_LOG_LEVEL must be one of DEBUG"),
        ({"ASYNCSYNC_LOG_FORMAT": "yaml"}, "ASYNCSYNC_LOG_FORMAT must be one of auto, json, text"),
        ({"ASYNCSYNC_FULL": "ture"}, "ASYNCSYNC_FULL must be true or false"),
        ({"TINY_RATE_LIMIT_PER_MINUTE": "fast"}, "TINY_RATE_LIMIT_PER_MINUTE must be a whole"),
        ({"ASYNCSYNC_OPEN_STATUSES": "0,9"}, "ASYNCSYNC_OPEN_STATUSES must be status codes"),
        # A status named twice was listed twice at once: every run and every serve cycle
        # ended 'interrupted' (exit 130), never ok.
        ({"ASYNCSYNC_OPEN_STATUSES": "0,1,2,5,6,6"},
         "ASYNCSYNC_OPEN_STATUSES must name each status code once, got '0,1,2,5,6,6'"),
        ({"DATABASE_URL": "postgresql://u:s3cret@h:notaport/db"}, "DATABASE_URL is not a valid"),
        ({"DATABASE_URL": "postgresql://u:s3cret@[::1/db"}, "DATABASE_URL is not a valid"),
        ({"DATABASE_URL": "mysql://u:s3cret@h/db"}, "DATABASE_URL must start with postgresql://"),
        ({"DATABASE_URL": "postgresql://u:s3cret@h:5432"}, "DATABASE_URL names no database"),
        ({"ASYNCSYNC_MODE": "serve", "ASYNCSYNC_METRICS_PORT": "99999"},
         "ASYNCSYNC_METRICS_PORT must be from 0 to 65535, got 99999"),
        ({"ASYNCSYNC_MODE": "serve", "ASYNCSYNC_INTERVAL_S": "0"},
         "ASYNCSYNC_INTERVAL_S must be ≥ 1"),
        ({"ASYNCSYNC_MODE": "backfill", "ASYNCSYNC_FROM": "2014-13"},
         "ASYNCSYNC_FROM must be a month like 2014-01"),
        ({"ASYNCSYNC_MODE": "serve", "ASYNCSYNC_INTERVAL_S": "inf"},
         "ASYNCSYNC_INTERVAL_S must be at most 100,000,000, got 'inf'"),
        ({"ASYNCSYNC_STATEMENT_TIMEOUT_S": "3000000"},
         "ASYNCSYNC_STATEMENT_TIMEOUT_S must be at most 2,147,483"),
    ],
)  # fmt: skip
def test_a_bad_environment_value_names_its_variable(env, message) -> None:
    result = run_cli(env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one sentence


def test_a_database_url_that_names_no_database_is_refused(monkeypatch) -> None:
    """libpq took the user's name for it: the mirror's tables landed, unsaid, in the
    `postgres` database of `postgresql://postgres@db:5432`."""
    from asyncsync.flags import parse

    monkeypatch.delenv("PGDATABASE", raising=False)
    for url in ("postgresql://u:s3cret@db:5432", "postgresql://u:s3cret@db/",
                "postgresql://u:s3cret@db/?sslmode=disable&dbname=",
                "postgresql://postgres@127.0.0.1:5432"):  # fmt: skip
        for argv, env, name in ((["sync", "--database-url", url], {}, "--database-url"),
                                (["status"], {"DATABASE_URL": url}, "DATABASE_URL")):  # fmt: skip
            with pytest.raises(ConfigError) as said:
                parse(argv, env)
            # Why, so that one who meant the user's own database knows to name it.
            said_so = (
                f"{name} names no database (libpq would take the user's name for "
                "it): add it after the host, as in postgresql://user@host:5432/tiny ("
            )
            assert str(said.value).startswith(said_so), url
    for url in ("postgresql://u@db/tiny", "postgresql://u@db?dbname=tiny",
                "postgresql://u@db/?database=tiny", "postgresql://u@db/ti%20ny",
                "postgresql://postgres@127.0.0.1:5432/postgres"):  # fmt: skip
        assert parse(["status", "--database-url", url], {}).common.database.database_url == url
    monkeypatch.setenv("PGDATABASE", "tiny")  # libpq's own variable names it
    assert parse(["status", "--database-url", "postgresql://u@db"], {}).common.database


def test_a_database_url_may_list_hosts_to_try_in_turn() -> None:
    """libpq's (and asyncpg's) list of hosts, a primary and its standbys: refused before,
    the port check reading '5432,standby:5433' as one port."""
    from asyncsync.flags import parse

    url = "postgresql://u:s3cret@primary:5432,standby:5433/tiny?target_session_attrs=read-write"
    assert parse(["status", "--database-url", url], {}).common.database.database_url == url
    refused_for = {
        "postgresql://u@primary:5432,standby:0/tiny": "has port 0, outside",
        "postgresql://u@primary,:5433/tiny": "names no host",
        "postgresql://u@primary,standby:x/tiny": "not a valid PostgreSQL URL",
    }
    for bad, said in refused_for.items():
        with pytest.raises(ConfigError, match=said) as refused:
            parse(["status", "--database-url", bad], {})
        assert "s3cret" not in str(refused.value)


def test_flags_are_never_abbreviated_and_words_may_follow_options() -> None:
    """``--mod status`` ran a sync: argparse took it for an abbreviation of --mode, which
    the mode's choice had not seen (sweep I). And ``failures retry --account acme 123``
    called the ids "unrecognized arguments"."""
    from asyncsync.flags import parse

    db = ["--database-url", "postgresql://u@db/tiny"]
    for argv in (["--mod", "status"], ["--mo=status"], ["status", "--mod", "sync"]):
        with pytest.raises(ConfigError, match="did you mean --mode"):
            parse([*argv, *db], {})
    with pytest.raises(ConfigError, match=r"unrecognized arguments: --simul 20$"):
        parse(["sync", "--simul", "20", *db], {})
    retried = parse(["failures", "retry", "--account", "acme", "123", "456", *db], {})
    assert retried.options.ids == (123, 456) and retried.common.account == "acme"
    added = parse(["accounts", "add", "--client-id", "c", "acme", *db], {})
    assert added.options.key == "acme"
    # Both: every account was listed, the key unread.
    for mode in (["status"], ["health"], ["sync"], ["failures", "list"]):
        with pytest.raises(ConfigError, match="--account and --all-accounts: give one"):
            parse([*mode, "--all-accounts", "--account", "x", *db], {})
    chosen = parse(["status", "--account", "x", *db], {"ASYNCSYNC_ALL_ACCOUNTS": "true"})
    assert chosen.common.account == "x"  # the environment's is not the flags' conflict


def test_what_a_deployer_mistypes_is_said_in_one_sentence_no_secret_in_it(
    monkeypatch, tmp_path
) -> None:
    """Sweep I: a password holding an unencoded '#', '/' or '?' had its first part quoted
    in the message ("as 'Sup3rS'"), one holding '@' was a DNS error blamed on the host; a
    base URL with user:password@ a traceback at the first request; '~nosuchuser/x', or no
    home at all, a traceback in every mode; a path's trailing space or CRLF '\r' another
    file, exit 0; a value quoted in a docker --env-file file a refused refresh token."""
    from asyncsync.flags import parse
    from asyncsync.options import default_data_dir

    for secret in ("Sup3rS#cret", "Sup3r/Secret", "Sup3r?Secret", "Sup3r@Secret"):
        url = f"postgresql://postgres:{secret}@127.0.0.1:5432/tiny"
        with pytest.raises(ConfigError, match="must be percent-encoded") as said:
            parse(["status", "--database-url", url], {})
        assert "Sup3r" not in str(said.value), said.value
    db = ["--database-url", "postgresql://u@db/tiny"]
    with pytest.raises(ConfigError, match="must not carry a user or password"):
        parse(["sync", *db], {"TINY_API_BASE_URL": "https://u:pw@api.tiny.com.br/v3"})
    with pytest.raises(ConfigError, match="names a home directory"):
        parse(["status", *db, "--data-dir", "~nosuchuser-asyncsync/x"], {})
    textfile = tmp_path / "asyncsync.prom"
    sync = parse(["sync", *db], {"ASYNCSYNC_METRICS_TEXTFILE": f"{textfile} \r"})
    assert sync.common.run.metrics_textfile == textfile
    for env in ({"TINY_REFRESH_TOKEN": "'r-0'"}, {"DATABASE_URL": '"postgresql://u@db/t"'}):
        with pytest.raises(ConfigError, match="is quoted: an env file") as quoted:
            parse(["sync"], env)
        assert "r-0" not in str(quoted.value)

    # Values no one means: each every answer taken for an outage (exit 5), a MemoryError's
    # traceback, or a wait for ever on a database that never answers.
    nonsense = {"--timeout": ("0.001", "--timeout must be ≥ 1"),
                "--simulator": ("2000000000", "--simulator must be from 1 to")}  # fmt: skip
    for flag, (value, said) in nonsense.items():
        with pytest.raises(ConfigError, match=said):
            parse(["sync", *db, flag, value], {})
    from asyncsync.store.database import _connect_timeout_s

    with pytest.raises(ConfigError, match="connect_timeout='inf': it must be a number"):
        _connect_timeout_s("postgresql://u@db/tiny?connect_timeout=inf")

    def homeless() -> None:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setattr("pathlib.Path.home", homeless)
    assert default_data_dir() == Path(".local/share/asyncsync")
    assert parse(["status", *db], {}).common.database.data_dir == Path(".local/share/asyncsync")


def test_a_bad_number_for_any_flag_names_the_flag_and_its_variable() -> None:
    """Empty, negative, not a number, past any range, with a unit: one sentence naming where
    the value came from and the other way to set it (exit 2: ConfigError)."""
    from asyncsync.flags import parse

    numeric = [f for f in FLAGS if f.metavar in ("N", "S", "MS", "DAYS", "PORT", "MB", "FRACTION")]
    assert len(numeric) > 30
    for flag in numeric:
        mode = next(m for m, spec in MODES.items()
                    if flag.target in spec.groups and flag.flag not in spec.unread)  # fmt: skip
        for bad in ("", "-1", "abc", "1e400", "5s", "30 min"):
            ways = [([mode, flag.flag, bad], {}, flag.flag, f"(env {flag.env})")]
            if bad:  # an empty variable is unset: the default
                ways.append(([mode], {flag.env: bad}, flag.env, f"(flag {flag.flag})"))
            for argv, environ, source, twin in ways:
                with pytest.raises(ConfigError) as said:
                    parse(argv, environ)
                text = str(said.value)
                assert text.startswith(f"{source} must ") and text.endswith(twin), text
                assert "\n" not in text


def test_a_heartbeat_timeout_postgresql_cannot_hold_is_refused() -> None:
    from asyncsync.flags import parse

    # It is the lease session's idle_session_timeout, int32 milliseconds: past that the
    # session could not be set up, and the worker ran no unit at all.
    assert parse(["serve", "--heartbeat-timeout", "2147483"], {}).options.heartbeat_s == 2147483
    with pytest.raises(ConfigError, match="--heartbeat-timeout must be at most 2,147,483"):
        parse(["serve", "--heartbeat-timeout", "3000000"], {})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # The run went through, then its report's JSON could not hold the quota: traceback.
        (["sync", "--rate-limit", "1" + "0" * 22], "--rate-limit must be at most 2,147,483,647"),
        (["sync", "--sim-quota", "1" + "0" * 22], "--sim-quota must be at most 2,147,483,647"),
        # Then the run history's integer column refused it: a run left unrecorded.
        (["sync", "--rate-limit", "3000000000"], "--rate-limit must be at most 2,147,483,647"),
        # The cycle's window began before the year 1: a traceback at every cycle.
        (["serve", "--recent-days", "800000"], "--recent-days must be from 1 to 36500"),
        # LIMIT past bigint: 'failures failed', exit 1.
        (["failures", "--limit", "1" + "0" * 20], "--limit must be at most 2,147,483,647"),
    ],
)
def test_a_whole_number_past_what_it_can_mean_is_refused(argv, message) -> None:
    from asyncsync.flags import parse

    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(argv, {})
    assert parse(["sync", "--rate-limit", "2147483647"], {}).common.tiny.rate_limit_per_minute


@pytest.mark.parametrize("port", ["99999", "abc", "0"])
def test_an_http_url_with_a_port_no_socket_has_is_refused(port) -> None:
    """authorize ended in a traceback listening on such a redirect URI; a sync sent its
    requests to such an API and exited 5, Tiny 'unavailable'."""
    from asyncsync.flags import parse

    url = f"http://127.0.0.1:{port}/x"
    for argv, env in (
        (["authorize"], {"TINY_REDIRECT_URI": url}),
        (["sync", "--api-base-url", url], {}),
        (["sync"], {"TINY_TOKEN_URL": url}),
    ):
        with pytest.raises(ConfigError, match=r"must be an http\(s\) URL with a port from 1 to"):
            parse(argv, env)
    with pytest.raises(ConfigError, match=r"^--auth-url must be an http\(s\) URL, got"):
        parse(["authorize", "--auth-url", "http://[::1/auth"], {})  # was 'Invalid IPv6 URL'
    assert parse(["sync", "--api-base-url", "http://[::1]:8080/v3"], {}).common.tiny.api_base_url


def test_flags_win_over_the_environment_and_are_checked_alike() -> None:
    bad_flag = run_cli("--log-format", "yaml", env={"ASYNCSYNC_LOG_FORMAT": "json"})
    assert bad_flag.returncode == 2 and "--log-format must be one of" in bad_flag.stderr
    # A good flag overrides a bad env value: the env value is never read.
    ok = run_cli("--log-format", "text", "--mode", "health", "--database-url",
                 "postgresql://u@127.0.0.1:1/x", env={"ASYNCSYNC_LOG_FORMAT": "yaml"})  # fmt: skip
    assert "ASYNCSYNC_LOG_FORMAT" not in ok.stderr and ok.returncode == 1, ok.stderr
    assert ok.stdout.startswith("unhealthy: cannot connect to PostgreSQL")


def test_help_is_grouped_by_mode_and_version_is_shown() -> None:
    everything = " ".join(run_cli("--help").stdout.split())
    for title in ("sync:", "serve:", "backfill:", "integrity:", "database:", "Tiny API:"):
        assert title in everything
    # A flag several modes have is shown once, saying whose wording it shows and who else
    # has it (--all-accounts: health's, and one-shot runs' and status's).
    assert "health: every enabled account of the accounts table" in everything
    assert "also for one-shot runs, status (see MODE --help)" in everything
    # --full: status's has a variable of its own (sync's would force a full sync), named.
    assert "also for status (its variable ASYNCSYNC_STATUS_FULL)" in everything
    backfill = run_cli("backfill", "--help").stdout
    assert "--from" in backfill and "--full" not in backfill and "--deep" not in backfill
    assert "(default: 5)" in " ".join(backfill.split())  # --partitions: stated once, shown
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("asyncsync ")
    for asked in ("--version", "--help"):  # a bad ASYNCSYNC_MODE hid them (exit 2)
        shown = run_cli(asked, env={"ASYNCSYNC_MODE": "bogus"})
        assert shown.returncode == 0 and shown.stdout.startswith(("asyncsync", "usage")), shown
    # A mode-specific flag given to another mode is refused.
    wrong = run_cli("sync", "--from", "2014-01")
    assert wrong.returncode == 2 and "unrecognized arguments: --from" in wrong.stderr
    # One sentence (argparse's usage came first, 19 lines), naming who reads the flag.
    assert len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    assert "(--from is read by backfill)" in wrong.stderr, wrong.stderr
    # The mode word after options is named, not taken for an unknown argument of sync.
    late = run_cli("--database-url", "postgresql://u@127.0.0.1:1/x", "status")
    assert late.returncode == 2 and "the mode comes first: asyncsync status" in late.stderr
    assert len(late.stderr.strip().splitlines()) == 1, late.stderr


def test_no_mode_shares_a_flag_twice() -> None:
    for name, mode in MODES.items():
        given = [f.flag for f in FLAGS if f.target in mode.groups]
        assert len(given) == len(set(given)), name


def _offered(mode: str | None) -> set[str]:
    """The flags ``asyncsync MODE --help`` lists (positionals by their table name)."""
    names = {f"{f.target.__name__}.{f.field}": f.flag for f in FLAGS if f.positional}
    offered = set()
    for action in build_parser(mode)._actions:
        if action.option_strings:
            offered.add(action.option_strings[0])  # not --no-full
        else:
            offered.add(names.get(action.dest, action.dest))
    return offered - {"-h", "--version", "--mode"}


def _readers() -> dict[str, set[str]]:
    """Attribute name → the package's modules that read an attribute of that name (the
    flag table and its parsers excepted: they declare, they do not use)."""
    import ast

    package = Path(__file__).resolve().parent.parent / "asyncsync"
    readers: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        module = path.relative_to(package).as_posix()
        if module.startswith("flags/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                readers.setdefault(node.attr, set()).add(module)
    return readers


def test_each_modes_help_lists_only_flags_the_mode_reads() -> None:
    # Found offered and never read (its variable was not read either: one file serves all).
    unread = {"status": ["--run-history-days"], "serve": ["--sim-port"],
              "sync": ["--sim-port"], "health": ["--statement-timeout", "--db-reconnect"],
              "migrate": ["--account", "--run-history-days"],
              "accounts": ["--account", "--max-retries", "--rate-limit", "--token-file"],
              "authorize": ["--api-base-url", "--rate-limit", "--breaker-failures",
                            "--refresh-token"],
              "simulate": ["--client-id", "--api-base-url", "--max-concurrency"]}  # fmt: skip
    for mode, flags in unread.items():
        assert _offered(mode).isdisjoint(flags), (mode, _offered(mode) & set(flags))
    # A flag whose field is read only in some modes' own modules is offered by those
    # modes alone: a new flag put in a group every mode shares fails here.
    readers = _readers()
    for flag in FLAGS:
        where = readers.get(flag.field, set())
        assert where, f"{flag.flag}: no module reads {flag.field}"
        own = {m.removeprefix("modes/").removesuffix(".py") for m in where}
        if all(m.startswith("modes/") and m != "modes/__init__.py" for m in where):
            offering = {mode for mode in MODES if flag.flag in _offered(mode)}
            assert offering <= own, f"{flag.flag} offered by {sorted(offering - own)} unread"
    # Every mode's own flags are still offered (and the global --help lists them all).
    for name, mode in MODES.items():
        offered = _offered(name)
        assert offered == {f.flag for f in FLAGS if f.target in mode.groups} - set(mode.unread)
        assert offered <= _offered(None)


def test_a_bad_word_after_the_mode_is_named_as_the_user_typed_it() -> None:
    for mode, said in (("accounts", "the action"), ("failures", "the action")):
        result = run_cli(mode, "bogus")
        assert result.returncode == 2, result.stderr
        assert f"{said} must be one of list, " in result.stderr, result.stderr
    result = run_cli("failures", "retry", "12x")
    assert result.returncode == 2 and "the ids " in result.stderr, result.stderr


def test_modes_that_print_no_report_refuse_json_instead_of_ignoring_it() -> None:
    from asyncsync.flags import parse

    for mode in ("health", "migrate", "serve"):
        result = run_cli(mode, "--json", "/tmp/never-written.json")
        assert result.returncode == 2, (mode, result.stderr)
        assert "unrecognized arguments: --json" in result.stderr, result.stderr
    # The variable is not read there: one environment file serves every mode.
    environ = {"ASYNCSYNC_JSON_REPORT": "/tmp/r.json"}
    assert parse(["health"], environ).common.output.json_path is None
    assert parse(["status"], environ).common.output.json_path == Path("/tmp/r.json")


def test_authorize_refuses_a_refresh_token_it_would_never_spend() -> None:
    # authorize trades the person's code for the account's first tokens; a bootstrap
    # refresh token given to it was read and never sent anywhere.
    from asyncsync.flags import parse

    result = run_cli("authorize", "--refresh-token", "r")
    assert result.returncode == 2, result.stderr
    assert "unrecognized arguments: --refresh-token" in result.stderr, result.stderr
    # Its variable is not read there: one environment file serves every mode.
    environ = {"TINY_REFRESH_TOKEN": "r"}
    assert parse(["authorize"], environ).common.tiny.refresh_token is None
    assert parse(["sync"], environ).common.tiny.refresh_token == "r"


def test_a_mode_word_and_another_mode_flag_are_refused() -> None:
    from asyncsync.errors import ConfigError
    from asyncsync.flags import parse

    with pytest.raises(ConfigError, match=r"two modes given: status \(the mode word\) and sync"):
        parse(["status", "--mode", "sync"], {})  # it ran a sync
    assert parse(["status", "--mode=status"], {}).mode == "status"
    assert parse(["status"], {"ASYNCSYNC_MODE": "sync"}).mode == "status"  # the word wins
    assert parse(["--mode", "migrate"], {}).mode == "migrate"
    for argv in (["--mode", "--database-url", "x"], ["sync", "--mode"]):  # a flag is no mode
        with pytest.raises(ConfigError, match="--mode needs a mode: one of sync"):
            parse(argv, {})


def test_a_refused_secret_flag_never_shows_its_value() -> None:
    # A mode that does not read a secret flag refuses it, naming what it did not take:
    # the secret itself landed on stderr, in the container's log.
    for argv in (
        ("status", "--client-secret", "s3cr3tTok"),
        ("health", "--client-secret=s3cr3tTok", "--bogus"),
        ("authorize", "--refresh-token", "s3cr3tTok"),
        ("migrate", "--client-sec", "s3cr3tTok"),  # what argparse takes for an abbreviation
    ):
        refused = run_cli(*argv)
        assert refused.returncode == 2, refused.stderr
        assert "unrecognized arguments: --" in refused.stderr and "***" in refused.stderr
        assert "s3cr3tTok" not in refused.stderr + refused.stdout, argv


def test_words_a_listing_does_not_take_are_refused_not_ignored() -> None:
    nowhere = ("--database-url", "postgresql://u@127.0.0.1:1/x")
    for argv, message in [
        (("failures", "list", "5"), "failures list takes no order ids (--limit N"),
        (("accounts", "list", "acme"), "accounts list takes no key"),
        (("sync", "--max-answer-mb", "1e-9"), "--max-answer-mb must be ≥ 0.01"),
    ]:  # each listed everything (or said 'over the 0-byte cap'), exit 0
        result = run_cli(*argv, *nowhere)
        assert result.returncode == 2 and message in result.stderr, (argv, result.stderr)


def test_metrics_listen_on_loopback_unless_told() -> None:
    from asyncsync.flags import parse

    assert parse(["serve"], {}).options.metrics_host == "127.0.0.1"
    assert parse(["serve"], {"ASYNCSYNC_METRICS_HOST": "0.0.0.0"}).options.metrics_host == "0.0.0.0"
    # An empty flag is no host (aiohttp took it for every interface, IPv4 and IPv6),
    # as an empty variable is the default.
    assert parse(["serve"], {"ASYNCSYNC_METRICS_HOST": ""}).options.metrics_host == "127.0.0.1"
    with pytest.raises(ConfigError, match="--metrics-host must be a host name or address"):
        parse(["serve", "--metrics-host", ""], {})


def test_spaces_around_an_environment_value_are_no_part_of_it() -> None:
    from asyncsync.flags import parse

    # A secret mounted from a file or a Kubernetes secret ends with a newline; Tiny
    # refuses the client with it. Spaces only are unset, as an empty variable is (they
    # were an error for a number, and a client id for TINY_CLIENT_ID); so is the mode.
    environ = {"TINY_CLIENT_ID": " app ", "TINY_CLIENT_SECRET": "s3cret\n",
               "TINY_REFRESH_TOKEN": "  ", "ASYNCSYNC_INTERVAL_S": " ",
               "ASYNCSYNC_MODE": " serve\n"}  # fmt: skip
    invocation = parse([], environ)
    tiny = invocation.common.tiny
    assert invocation.mode == "serve" and invocation.options.interval_s == 900.0
    assert (tiny.client_id, tiny.client_secret, tiny.refresh_token) == ("app", "s3cret", None)
    with pytest.raises(ConfigError, match="--client-secret must not be empty"):
        parse(["sync", "--client-secret", " "], {})


def test_the_image_refuses_an_embedded_database() -> None:
    from asyncsync.store.embedded import embedded_refusal

    result = run_cli("migrate", env={"ASYNCSYNC_IN_CONTAINER": "1"})
    assert result.returncode == 2, result.stderr
    assert "inside a container the embedded PostgreSQL would vanish" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    allowed = {"ASYNCSYNC_IN_CONTAINER": "1", "ASYNCSYNC_ALLOW_EMBEDDED": "1"}
    assert embedded_refusal(allowed) is None and embedded_refusal({}) is None


async def test_wait_lock_waits_for_the_holder_then_gives_up(simulator, database_url) -> None:
    import asyncio
    import time

    from asyncsync.store import open_database

    sim = await simulator(orders=50)
    env = sim_env(sim, TINY_RATE_LIMIT_PER_MINUTE="60000")
    args = ("integrity", "--database-url", database_url, "--log-format", "text")
    async with open_database(database_url, Path("/nonexistent")) as database:
        async with database.account("default").lock("serve"):
            started = time.monotonic()
            refused = await asyncio.to_thread(run_cli, *args, "--wait-lock", "1", env=env)
            waited = time.monotonic() - started
        assert refused.returncode == 3, refused.stderr
        assert "asyncsync serve is already running; not starting integrity (waited 1 s)" in (
            refused.stderr
        )
        assert waited >= 1
        lock = database.account("default").lock("serve")
        await lock.__aenter__()  # held again; released while the next run waits
        waiting = asyncio.create_task(
            asyncio.to_thread(run_cli, *args, "--wait-lock", "60", env=env)
        )
        await asyncio.sleep(2)
        await lock.__aexit__(None, None, None)
        done = await waiting
        # SIGTERM while it waits: nothing ran, nothing to drain, so it stops at once (it
        # waited out the 25-s drain deadline before, then said it was "still draining").
        async with database.account("default").lock("serve"):
            proc = await spawn_cli(*args, "--wait-lock", "60", env=env)
            assert proc.stderr is not None
            while b"waiting up to" not in await proc.stderr.readline():
                pass
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            said = await asyncio.wait_for(proc.stderr.read(), 60)
            stopped_in = time.monotonic() - started
            assert await proc.wait() == 130, said
    assert done.returncode == 0, done.stderr
    assert "waiting up to" in done.stderr and "took the run lock" in done.stderr
    assert stopped_in < 5 and b"still draining" not in said, (stopped_in, said)


async def test_a_frozen_one_shot_run_lets_its_account_go(simulator, database_url, db) -> None:
    """A one-shot run frozen (SIGSTOP, a Ctrl-Z in a terminal) kept its account's run lock
    for as long as the freeze lasted: every other run, and every worker, was refused. The
    server now ends its lock session once it is silent past the run's statement timeout
    (10 s at least), and another run takes the account. Woken to a lock another holds, the
    frozen run stops (exit 3) and writes nothing more: its merges check the lock first."""
    import dataclasses
    import time

    from asyncsync.store import open_database
    from asyncsync.store.locks import lock_holder

    from .mirror import diff, mirror

    sim = await simulator(orders=300, latency_s=0.1)
    env = sim_env(sim, TINY_RATE_LIMIT_PER_MINUTE="60000", TINY_MAX_CONCURRENCY="2")
    args = ("sync", "--database-url", database_url, "--statement-timeout", "3",
            "--log-format", "text")  # fmt: skip
    frozen = await spawn_cli(*args, env=env)
    try:
        deadline = time.monotonic() + 30
        while not await db.fetchval("SELECT count(*) FROM ordens_servico"):
            assert time.monotonic() < deadline, "the run merged nothing in 30 s"
            await asyncio.sleep(0.05)
        assert await lock_holder(db, "default") == "asyncsync sync"
        os.kill(frozen.pid, signal.SIGSTOP)  # mid-run, holding the account
        # The slow answers kept the frozen run mid-run; the run that takes the account
        # over need not wait 0.1 s on each of its 300 details (15 s at 2 at a time).
        sim.config = dataclasses.replace(sim.config, latency_s=0.0)
        started = time.monotonic()
        other = await asyncio.to_thread(run_cli, *args, "--wait-lock", "40", env=env)
        took = time.monotonic() - started
        assert other.returncode == 0, other.stderr  # before: exit 3 after waiting 40 s
        # The lock session silent 10 s (its last ping up to 5 s before), then a quick sync.
        assert took < 25, took
        async with (
            open_database(database_url, Path("/nonexistent")) as database,
            database.account("default").lock("serve"),
        ):
            woke = await db.fetchval("SELECT txid_current()")
            os.kill(frozen.pid, signal.SIGCONT)
            said = await asyncio.wait_for(frozen.stderr.read(), 60)  # type: ignore[union-attr]
            code = await frozen.wait()
            written = await db.fetchval(
                "SELECT (SELECT count(*) FROM ordens_servico WHERE xmin::text::bigint > $1)"
                " + (SELECT count(*) FROM ordem_status_history WHERE xmin::text::bigint > $1)",
                woke,
            )
    finally:
        if frozen.returncode is None:
            frozen.send_signal(signal.SIGCONT)
            frozen.kill()
            await frozen.wait()
    assert code == 3, said.decode()
    assert b"lost its run lock mid-sync to asyncsync serve" in said, said.decode()
    assert written == 0, "the woken run merged beside the lock's new holder"
    assert diff(sim.snapshot(), await mirror(db)) == []


async def test_a_second_signal_cuts_the_drain_at_once(
    simulator, database_url, db, tmp_path
) -> None:
    """SIGTERM drains for up to --drain-timeout (requests in flight, merging what
    arrived); a second SIGTERM (or Ctrl-C) cuts it at once: exit 130, and what was merged
    stays merged. Its --json report says so (it wrote none: an earlier one stayed)."""
    import time

    sim = await simulator(orders=400, latency_s=0.05)
    env = sim_env(sim, TINY_RATE_LIMIT_PER_MINUTE="60000", TINY_MAX_CONCURRENCY="2")
    path = tmp_path / "report.json"
    path.write_text('{"outcome": "ok"}\n')  # an earlier run's
    proc = await spawn_cli("sync", "--database-url", database_url, "--log-format", "text",
                           "--drain-timeout", "120", "--json", str(path), env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not await db.fetchval("SELECT count(*) FROM ordens_servico"):
            assert time.monotonic() < deadline, "the run merged nothing in 30 s"
            await asyncio.sleep(0.05)
        sim.set_outage("hang")  # the requests in flight now hang past the first signal
        await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert proc.returncode is None  # draining: the hanging requests hold it
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        said = await asyncio.wait_for(proc.stderr.read(), 60)  # type: ignore[union-attr]
        code = await proc.wait()
        took = time.monotonic() - started
    finally:
        sim.set_outage(None)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 130, said.decode()
    assert took < 10, took  # not the 120-s drain deadline, nor the hanging requests
    assert await db.fetchval("SELECT count(*) FROM ordens_servico") > 0
    report = json.loads(path.read_text())
    assert (report["outcome"], report["exit_code"]) == ("interrupted", 130), report


async def test_a_drain_sends_no_request_that_was_waiting_at_the_limiter(
    simulator, database_url, db
) -> None:
    """SIGTERM drains what is in flight and sends nothing that was still waiting at the
    account's limiter. At a slow pace the listing's fetchers (up to 16 a status) all wait
    there: they went out one by one after the signal, and a full sync stopped at 9 s listed
    everything and ended at the drain's 25-s cut. Now the requests the simulator receives
    after the signal are those already on their way, the run ends at once (exit 130), its
    mirror holds exactly the pages Tiny answered, and the next run completes it."""
    import dataclasses
    import time

    from .mirror import diff, mirror

    sim = await simulator(orders=2000, latency_s=0.3)
    answered: list[dict[str, str]] = []
    sim.on_list_page = lambda _sim, params: answered.append(params)
    env = sim_env(sim, TINY_RATE_LIMIT_PER_MINUTE="60")
    args = ("sync", "--database-url", database_url, "--log-format", "text")
    proc = await spawn_cli(*args, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            merged = await db.fetchval("SELECT count(*) FROM ordens_servico")
            if merged >= 200 and sim.stats.requests_total > len(answered):
                break  # some pages merged, and a request on its way (Tiny takes 0.3 s)
            assert time.monotonic() < deadline, "no 200 orders merged in 30 s"
            await asyncio.sleep(0.01)
        received = sim.stats.requests_total
        in_flight = received - len(answered)  # received, not answered yet
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        said = await asyncio.wait_for(proc.stderr.read(), 60)  # type: ignore[union-attr]
        code = await proc.wait()
        took = time.monotonic() - started
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    after = sim.stats.requests_total - received
    # What left the limiter before the signal may reach the simulator just after it: one
    # request a second at this pace.
    assert after <= in_flight + 1, (after, in_flight, said.decode())
    assert code == 130, said.decode()
    assert took < 5, took  # one request's latency and the merges in flight
    snapshot = sim.snapshot()
    by_status: dict[int, list[int]] = {}
    for order_id in sorted(snapshot):
        by_status.setdefault(int(snapshot[order_id]["situacao"]), []).append(order_id)
    pages = {
        order_id
        for p in answered
        for order_id in by_status.get(int(p["situacao"]), [])[
            int(p["offset"]) : int(p["offset"]) + int(p["limit"])
        ]
    }

    def listed(rows: dict[int, dict[str, object]]) -> dict[int, dict[str, object]]:
        """The rows without data_conclusao, which only details bring."""
        return {
            i: {k: v for k, v in row.items() if k != "data_conclusao"} for i, row in rows.items()
        }

    # Exactly the orders of the pages answered, row by row.
    assert diff(listed({i: snapshot[i] for i in pages}), listed(await mirror(db))) == []
    run = await db.fetchrow("SELECT outcome FROM sync_runs ORDER BY started_at DESC LIMIT 1")
    assert run["outcome"] == "interrupted"
    assert await db.fetchval("SELECT count(*) FROM import_failures") == 0
    sim.config = dataclasses.replace(sim.config, latency_s=0.0)
    fast = sim_env(sim, TINY_RATE_LIMIT_PER_MINUTE="60000")
    again = await asyncio.to_thread(run_cli, *args, env=fast)
    assert again.returncode == 0, again.stderr
    assert diff(sim.snapshot(), await mirror(db)) == []


def test_the_readme_lists_every_flag_and_its_variable() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    config = readme[readme.index("## Configuration") : readme.index("## How it works")]
    missing = [
        f"{f.flag} {f.env}"
        for f in FLAGS
        if (not f.positional and f"`{f.flag}" not in config) or f"`{f.env}`" not in config
    ]
    assert missing == []  # fmt: skip


async def test_a_sync_leaves_the_queue_alone_and_migrate_installs_it(simulator, database_url, db):
    """A one-shot sync does not create (or load) the work queue; ``--mode migrate`` does."""
    import asyncio

    sim = await simulator(orders=30)
    env = sim_env(sim, DATABASE_URL=database_url)
    synced = await asyncio.to_thread(run_cli, "sync", "--detail-budget", "0", env=env)
    assert synced.returncode == 0, synced.stderr
    assert await db.fetchval("SELECT count(*) FROM ordens_servico") == 30
    assert await db.fetchval("SELECT to_regclass('pgqueuer')") is None
    migrated = run_cli("migrate", env={"DATABASE_URL": database_url})
    assert migrated.returncode == 0, migrated.stderr
    assert await db.fetchval("SELECT to_regclass('pgqueuer')::text") == "pgqueuer"
    again = run_cli("migrate", env={"DATABASE_URL": database_url})  # idempotent
    assert again.returncode == 0, again.stderr


def test_order_ids_past_bigint_are_a_configuration_error_not_a_database_one() -> None:
    from asyncsync import parsers

    assert parsers.order_ids("12, -1017971185") == (12, -1017971185)  # negative: no id
    with pytest.raises(ValueError, match="out of range"):
        parsers.order_ids("99999999999999999999999")


async def test_a_database_url_the_server_refuses_is_configuration(database_url) -> None:
    # A database that does not exist, a role the server does not know: the URL is wrong,
    # no amount of waiting fixes it (exit 2, one sentence, the password never shown).
    from urllib.parse import urlsplit, urlunsplit

    from asyncsync.store.database import with_database

    parts = urlsplit(database_url)
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    unknown_role = urlunsplit(parts._replace(netloc=f"nobody:s3cret@{host}"))
    no_such_db = with_database(database_url, "no_such_db")
    for dsn, said in ((no_such_db, '"no_such_db" does not exist'), (unknown_role, '"nobody"')):
        result = run_cli("migrate", "--database-url", dsn)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and said in result.stderr, result.stderr
        assert "DATABASE_URL" in result.stderr and "s3cret" not in result.stderr


def test_a_bad_value_that_bites_late_is_still_exit_2_before_any_work(tmp_path) -> None:
    # Each of these used to surface only after the work had started (or finished): a
    # traceback, exit 1, or a report lost after a run that went well.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    unreachable = ("--database-url", "postgresql://u@127.0.0.1:1/x", "--db-reconnect", "1")
    creds = ("--client-id", "a", "--client-secret", "b", "--refresh-token", "c")
    cases = [
        (("sync", *unreachable, *creds, "--json", "/nonexistent/r.json"),
         "--json must be a file in a writable directory"),
        (("backfill", *unreachable, *creds, "--from", "2016-01", "--to", "2015-01"),
         "--from (ASYNCSYNC_FROM) 2016-01 is after --to (ASYNCSYNC_TO) 2015-01"),
        # A side the user did not give is not blamed by its default's value.
        (("backfill", *unreachable, *creds, "--from", "9999-12"),
         "--from (ASYNCSYNC_FROM) 9999-12 is after the current month"),
        (("backfill", *unreachable, *creds, "--to", "1900-01"),
         "--to (ASYNCSYNC_TO) 1900-01 is before the first month backfilled by default, "
         "2014-01: give --from too"),
        (("migrate", "--data-dir", str(a_file)), "--data-dir (ASYNCSYNC_DATA_DIR)"),
        (("serve", *unreachable, *creds, "--metrics-port", str(taken.getsockname()[1])),
         "cannot listen on 127.0.0.1:"),
        (("sync", *unreachable, *creds, "--timeout", "inf"), "--timeout must be at most"),
    ]  # fmt: skip
    try:
        for args, message in cases:
            result = run_cli(*args, env={"HOME": str(tmp_path)})
            assert result.returncode == 2, (args, result.stderr)
            assert message in result.stderr, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    finally:
        taken.close()


async def test_status_of_a_database_nothing_ran_in_says_so(admin_dsn, tmp_path) -> None:
    """Also where --json sends a status: an earlier healthy document there was left as it
    was (the sentence went to stdout alone)."""
    name = f"asyncsync_empty_{os.getpid()}"
    doc = tmp_path / "status.json"
    doc.write_text('{"accounts": [{"account": "default", "fresh": true}]}\n')
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        url = with_database(admin_dsn, name)
        result = run_cli("status", "--database-url", url, "--log-format", "text")
        written = run_cli("status", "--database-url", url, "--json", str(doc))
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("the database has no asyncsync schema yet")
    assert "Traceback" not in result.stderr and "UndefinedTable" not in result.stderr
    assert written.returncode == 1, written.stderr
    said = json.loads(doc.read_text())
    assert "accounts" not in said and said["error"].startswith("the database has no asyncsync")


async def test_migrate_says_what_it_found(admin_dsn) -> None:
    """An empty database's tables are created, an older release's schema updated, this
    release's applied again: three sentences, not "up to date" for all three."""
    name = f"asyncsync_migrate_{os.getpid()}"
    url = with_database(admin_dsn, name)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        said = []
        for step in ("empty", "current", "older", "older, by a mode that writes"):
            if step.startswith("older"):
                older = await asyncpg.connect(url)
                await older.execute("UPDATE asyncsync_schema SET fingerprint = 'older'")
                await older.close()
            mode = "accounts" if step.endswith("writes") else "migrate"
            result = await asyncio.to_thread(run_cli, mode, "--database-url", url,
                                             "--log-format", "text")  # fmt: skip
            assert result.returncode == 0, result.stderr
            said.append(result.stdout.strip() if mode == "migrate" else result.stderr)
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()
    assert said[0].startswith("schema created"), said
    assert said[1].startswith("schema is up to date"), said
    assert said[2].startswith("schema updated from an earlier release"), said
    # A start that applied it said nothing of it (sweep G): an upgrade leaves its line.
    assert "schema updated from an earlier release's" in said[3], said


async def test_tables_of_asyncsyncs_names_it_did_not_create_are_refused_untouched(
    admin_dsn,
) -> None:
    """The database of the old scripts: their ordens_servico, the planning document's
    import_failures (no account column). migrate failed half-way with "column account does
    not exist" and status called it an older release's schema; now: exit 2, the tables
    named, nothing of theirs altered, and a schema of its own (the hint) works."""
    name = f"asyncsync_foreign_{os.getpid()}"
    url = with_database(admin_dsn, name)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        theirs = await asyncpg.connect(url)
        await theirs.execute(
            "CREATE TABLE ordens_servico (id_ordem integer PRIMARY KEY, situacao text);"
            "CREATE TABLE import_failures (id_ordem integer PRIMARY KEY, erro text,"
            " tentativas integer DEFAULT 1, resolvido boolean DEFAULT false, dados_api jsonb);"
            "CREATE SCHEMA mirror"
        )
        columns = "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public'"
        before = await theirs.fetchval(columns)
        refused = await asyncio.to_thread(run_cli, "migrate", "--database-url", url)
        status = await asyncio.to_thread(run_cli, "status", "--database-url", url)
        after = await theirs.fetchval(columns)
        await theirs.close()
        own = url + ("&" if "?" in url else "?") + "search_path=mirror"
        migrated = await asyncio.to_thread(run_cli, "migrate", "--database-url", own)
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()
    assert refused.returncode == 2, refused.stderr
    said = refused.stderr.strip()
    assert "the database already holds import_failures, ordens_servico, which asyncsync" in said
    assert "?search_path=mirror in DATABASE_URL" in said and "\n" not in said, said
    assert status.returncode == 1, status.stderr
    assert "which asyncsync did not create" in status.stdout, status.stdout
    assert after == before
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.startswith("schema created"), migrated.stdout


async def test_status_and_health_of_an_older_install_not_yet_migrated_say_so(
    database_url, db
) -> None:
    """An install of 2026-11-29's morning had neither the run history nor the accounts
    table; status and health, which read only, said "nothing has run here" of its mirror."""
    await db.execute("DROP TABLE sync_runs, accounts, asyncsync_schema")
    await db.execute(
        "INSERT INTO ordens_servico (id, situacao, payload, list_hash, observed_at)"
        " VALUES (1, 0, '{}', '', now())"
    )
    for mode in ("status", "health"):
        args = (mode, "--database-url", database_url, "--log-format", "text")
        result = await asyncio.to_thread(run_cli, *args)
        assert result.returncode == 1, result.stderr
        assert "an older release's: `asyncsync migrate` brings it up to date" in result.stdout
        assert "nothing has run here" not in result.stdout, result.stdout


async def test_tiny_refusing_the_app_itself_is_configuration(simulator, database_url) -> None:
    # A wrong client secret or token address is not an outage nor a lapsed token: exit 2,
    # so the service units (RestartPreventExitStatus=2 4) stop restarting into it.
    sim = await simulator(orders=20)
    base = {"TINY_CLIENT_ID": sim.config.client_id, "TINY_CLIENT_SECRET": "wrong",
            "TINY_REFRESH_TOKEN": sim.valid_refresh_token() or "",
            "TINY_API_BASE_URL": sim.base_url, "TINY_TOKEN_URL": sim.token_url}  # fmt: skip
    wrong_url = {**base, "TINY_CLIENT_SECRET": sim.config.client_secret,
                 "TINY_TOKEN_URL": sim.token_url.replace("/token", "/nowhere")}  # fmt: skip

    # The address of a web page: it answers 200, with HTML.
    async def login(_: web.Request) -> web.Response:
        return web.Response(text="<html>Entrar</html>", content_type="text/html")

    page = web.Application()
    page.router.add_post("/login", login)
    runner = web.AppRunner(page)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    html = {**wrong_url, "TINY_TOKEN_URL": f"http://127.0.0.1:{port}/login"}
    try:
        for env, message in (
            (base, "refused the app's credentials (invalid_client) for account 'default': "
                   "check TINY_CLIENT_ID and TINY_CLIENT_SECRET"),
            (wrong_url, "answered 404: check TINY_TOKEN_URL (--token-url), or the account's "
                        "token_url in the accounts table"),
            (html, "answered 200 with no OAuth JSON ('<html>Entrar</html>'): check "
                   "TINY_TOKEN_URL (--token-url), or the account's token_url"),
        ):  # fmt: skip
            result = await asyncio.to_thread(
                run_cli, "sync", "--database-url", database_url, env=env
            )
            assert result.returncode == 2, result.stderr
            assert message in result.stderr and "Traceback" not in result.stderr
    finally:
        await runner.cleanup()
    assert sim.valid_refresh_token() == base["TINY_REFRESH_TOKEN"]  # nothing was spent
    # Runs that began and failed: both in the history, for status and health to show.
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT outcome, errors FROM sync_runs ORDER BY id")
    finally:
        await conn.close()
    assert [r["outcome"] for r in rows] == ["failed", "failed", "failed"]
    assert "invalid_client" in rows[0]["errors"][0] and "TINY_TOKEN_URL" in rows[1]["errors"][0]
    assert "no OAuth JSON" in rows[2]["errors"][0]


def test_a_database_urls_libpq_parameters_are_honoured_or_named(database_url: str) -> None:
    # ``?connect_timeout=10`` is libpq's, in many a DATABASE_URL; asyncpg does not know it
    # and passed it to the server as a setting, which refused it: every run exited 1
    # ("sync failed: ... unrecognized configuration parameter"), a systemd unit restarting
    # for ever. It is honoured now; a parameter the server refuses is the URL's fault: exit
    # 2, one sentence naming the variable.
    joined = "&" if "?" in database_url else "?"  # the embedded server's has ?host=...
    ok = run_cli("migrate", env={"DATABASE_URL": f"{database_url}{joined}connect_timeout=10"})
    assert ok.returncode == 0 and "schema is up to date" in ok.stdout, ok.stderr
    for query, said in (
        ("connect_timeout=soon", "connect_timeout='soon'"),
        ("fallback_application_name=x", "unrecognized configuration parameter"),
        ("options=-c%20statement_timeout%3Dabc", "invalid value for parameter"),
    ):
        bad = run_cli("migrate", env={"DATABASE_URL": f"{database_url}{joined}{query}"})
        assert bad.returncode == 2, bad.stderr
        assert "DATABASE_URL" in bad.stderr and said in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_serve_refuses_a_pool_too_small_to_work_with(database_url: str) -> None:
    # ASYNCSYNC_DB_POOL_SIZE=2 (one environment file serves every mode, and a one-shot run
    # works with 2) left serve up for ever with no cycle run: the queue's listener and the
    # lease session held both connections, every unit waited for a third, and /readyz said
    # the database was frozen. Now: exit 2, one sentence, at once.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TINY_", "ASYNCSYNC_"))}
    clean.update({"DATABASE_URL": database_url, "ASYNCSYNC_DB_POOL_SIZE": "2"})
    process = subprocess.Popen(
        [sys.executable, "-m", "asyncsync", "serve", "--simulator", "50", "--interval", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean,
    )  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail("serve with a pool of 2 neither worked nor said why in 20 s")
    assert process.returncode == 2, stderr
    assert "ASYNCSYNC_DB_POOL_SIZE" in stderr and "too small for serve" in stderr, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_a_worker_whose_slots_background_units_can_fill_says_so() -> None:
    taken = socket.socket()  # a metrics port in use: serve exits 2 once it has started
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    base = ("serve", "--database-url", "postgresql://u@127.0.0.1:1/x", "--metrics-port", port)
    try:
        warned = run_cli(*base, "--slots", "4", "--background-slots", "2")
        quiet = run_cli(*base, "--slots", "5", "--background-slots", "2")
    finally:
        taken.close()
    assert warned.returncode == quiet.returncode == 2, (warned.stderr, quiet.stderr)
    assert warned.stderr.count("--slots 4 is not above twice --background-slots 2") == 1
    assert "twice --background-slots" not in quiet.stderr, quiet.stderr


def test_a_metrics_textfile_that_cannot_be_written_is_refused_before_the_run(tmp_path) -> None:
    # --textfile /var/lib/node_exporter (the collector's folder, not a file in it): the
    # run went on, exited 0, and only a log line said the metrics were never written.
    # Checked like --json now: exit 2 before anything starts, naming the flag or variable.
    nowhere = {"DATABASE_URL": "postgresql://u@127.0.0.1:1/x"}  # never the embedded one
    folder = run_cli("sync", "--textfile", str(tmp_path), env=nowhere)
    assert folder.returncode == 2, folder.stderr
    assert "--textfile must be a file, got the directory" in folder.stderr
    assert len(folder.stderr.strip().splitlines()) == 1, folder.stderr
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):  # root writes anywhere: nothing to refuse then
        by_env = run_cli(
            "sync", env={**nowhere, "ASYNCSYNC_METRICS_TEXTFILE": str(locked / "a.prom")}
        )
        assert by_env.returncode == 2, by_env.stderr
        assert "ASYNCSYNC_METRICS_TEXTFILE must be a file in a writable directory" in (
            by_env.stderr
        )
    # A run that cannot reach the database leaves the file as it was: its gauges could not
    # be read, and a file without them would hide the last success the stale alert ages.
    kept = tmp_path / "asyncsync.prom"
    kept.write_text('asyncsync_last_success_timestamp_seconds{mode="sync"} 1.0\n')
    down = run_cli(
        "sync", "--textfile", str(kept), env={**nowhere, "TINY_CLIENT_ID": "a",
                                              "TINY_CLIENT_SECRET": "b"},
    )  # fmt: skip
    assert down.returncode == 6, down.stderr
    assert kept.read_text() == 'asyncsync_last_success_timestamp_seconds{mode="sync"} 1.0\n'
    deeper = tmp_path / "new" / "folder" / "asyncsync.prom"  # folders still to make: fine
    from asyncsync.parsers import textfile

    assert textfile(str(deeper)) == deeper


def test_authorize_of_an_account_of_the_table_names_it_in_what_to_run_next() -> None:
    from asyncsync.jobs.authorize import next_steps

    assert all("--account" not in step for step in next_steps("default"))
    assert "asyncsync backfill --account acme --enqueue" in next_steps("acme")[0]


async def test_failures_retry_of_an_id_that_is_no_failure_says_so(simulator, database_url) -> None:
    """``failures ignore 789`` says 789 was not an open failure; ``failures retry 789``
    (a typo'd id, one already resolved) ran a retry of nothing, exit 0, and never said so."""
    import asyncio

    sim = await simulator(orders=20)
    env = sim_env(sim, DATABASE_URL=database_url, ASYNCSYNC_LOG_FORMAT="text")
    ignored = await asyncio.to_thread(run_cli, "failures", "ignore", "789", env=env)
    assert "not open, left as they were: 789" in ignored.stdout
    retried = await asyncio.to_thread(run_cli, "failures", "retry", "789", env=env)
    assert "not open, left as they were: 789" in retried.stdout, retried.stdout
    # Its count is a figure of the table a person reads, named as the others are.
    assert "not_open" not in retried.stdout, retried.stdout


def test_simulate_on_a_port_in_use_names_the_flag_and_exits_2() -> None:
    """As serve's --metrics-port does; it was exit 1 and the bare errno text."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("simulate", "--sim-port", str(port))
    assert result.returncode == 2, result.stderr
    assert "--sim-port (ASYNCSYNC_SIM_PORT): cannot listen" in result.stderr


# ``--simulator N`` is a demo: it must never write into a real account's mirror or tokens.
# The README tells an operator to ``export DATABASE_URL=...`` for the real account, and
# shows ``asyncsync --mode backfill --simulator 5000 ...`` as a way to try any mode. With
# the variable still exported, the demo ran against account ``default`` of the production
# database: it replaced the stored refresh token (only a person can authorize the app
# again) and flagged every open order absent from its simulated world possibly deleted.
async def test_a_simulator_demo_leaves_a_real_accounts_tokens_and_mirror_alone(
    simulator, database_url, db
) -> None:
    real = await simulator(orders=200, seed=7)  # "Tiny": the account the mirror belongs to
    env = sim_env(real, DATABASE_URL=database_url, TINY_RATE_LIMIT_PER_MINUTE="60000")
    # The Quickstart's demo first, twice (a demo's account takes a demo again) ...
    for _ in range(2):
        quickstart = await asyncio.to_thread(
            run_cli, "sync", "--simulator", "5", "--rate-limit", "6000", env=env
        )
        assert quickstart.returncode == 0, quickstart.stderr
    # ... then the real account set up in the same database.
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
    assert demo.returncode == 2, demo.stderr[-500:]
    assert "is a real Tiny account's" in demo.stderr and "Traceback" not in demo.stderr
    assert token_after == token_before
    served = await asyncio.to_thread(  # serve's demo (deploy/compose.yaml) refuses it too
        run_cli, "serve", "--simulator", "5", "--interval", "1", env=env
    )
    assert served.returncode == 2 and "is a real Tiny account's" in served.stderr, served.stderr
    assert open_after == open_before, (demo.returncode, open_before, open_after)


async def test_a_demo_stored_before_the_demo_mark_takes_a_demo_again_after_the_upgrade(
    database_url, db
) -> None:
    """Installs made before 2026-12-06 stored a demo's tokens and marked nothing: after the
    upgrade the Quickstart's demo refused its own earlier demo as a real Tiny account's,
    exit 2. The first schema.sql applied over such an install marks the accounts whose
    refresh token the simulator issued; one holding Tiny's token is still refused."""
    await db.execute("DROP TABLE asyncsync_schema")  # an install older than the fingerprint
    await db.execute(
        "INSERT INTO tiny_tokens (account, refresh_token) VALUES"
        " ('default', 'sim-refresh-1-RhgXC7CIz3xLJSop'), ('acme', 'eyJhbGciOiJSUzI1NiJ9.real')"
    )
    env = {"DATABASE_URL": database_url}
    demo = await asyncio.to_thread(
        run_cli, "sync", "--simulator", "5", "--rate-limit", "6000", env=env
    )
    assert demo.returncode == 0, demo.stderr[-500:]
    real = await asyncio.to_thread(
        run_cli, "sync", "--simulator", "5", "--account", "acme", "--rate-limit", "6000", env=env
    )
    assert real.returncode == 2 and "is a real Tiny account's" in real.stderr, real.stderr
    tokens = "SELECT refresh_token FROM tiny_tokens WHERE account = 'acme'"
    assert await db.fetchval(tokens) == "eyJhbGciOiJSUzI1NiJ9.real"


async def test_a_simulator_demo_refuses_an_account_of_the_accounts_table(
    simulator, database_url
) -> None:
    """``--simulator`` with ``--account`` naming a row of the accounts table went where
    the row said — the real Tiny account, its bootstrap refresh token spent — while it
    logged the bundled simulator; the account was marked a demo's."""
    import asyncio

    real = await simulator(orders=20)
    env = {"REAL_SECRET": real.config.client_secret,
           "REAL_REFRESH": real.valid_refresh_token() or ""}  # fmt: skip
    added = await asyncio.to_thread(
        run_cli, "accounts", "add", "acme", "--database-url", database_url,
        "--client-id", real.config.client_id, "--client-secret-env", "REAL_SECRET",
        "--refresh-token-env", "REAL_REFRESH", "--api-base-url", real.base_url,
        "--token-url", real.token_url, env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    demo = await asyncio.to_thread(
        run_cli, "sync", "--account", "acme", "--simulator", "10", "--database-url",
        database_url, env=env,
    )  # fmt: skip
    assert demo.returncode == 2, demo.stderr
    assert "--simulator: account 'acme' is one of the accounts table" in demo.stderr
    served = await asyncio.to_thread(  # serve's demo served the table's accounts so
        run_cli, "serve", "--simulator", "10", "--interval", "1", "--database-url",
        database_url, env=env,
    )  # fmt: skip
    assert served.returncode == 2, served.stderr
    assert "--simulator: the accounts table has rows" in served.stderr
    assert real.stats.requests_total == 0 and real.stats.token_refreshes == 0
    conn = await asyncpg.connect(database_url)
    try:  # not marked a demo's
        assert await conn.fetchval("SELECT count(*) FROM sync_metadata") == 0
    finally:
        await conn.close()


async def test_a_role_that_may_not_apply_the_schema_is_a_configuration_error(
    simulator, database_url, db
) -> None:
    """A role without CREATE on ``public`` (none by default since PostgreSQL 15) failed
    every start with exit 1 ('permission denied'), which a supervisor restarts every 30 s
    for ever: exit 2, saying what to grant. Once the owner applied this schema.sql, such
    a role with rights on the tables runs: a start that finds it applied changes nothing."""
    import asyncio
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    role = f"asyncsync_r_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(database_url)
    host = parts.netloc.rsplit("@", 1)[-1]  # empty for a socket directory (?host=...)
    as_role = urlunsplit(parts._replace(netloc=f"{role}@{host}"))
    assert role in as_role
    await db.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        await db.execute("UPDATE asyncsync_schema SET fingerprint = 'an older schema.sql'")
        sim = await simulator(orders=30)
        env = sim_env(sim, DATABASE_URL=as_role, TINY_RATE_LIMIT_PER_MINUTE="60000")
        for mode in ("migrate", "sync"):
            refused = await asyncio.to_thread(run_cli, mode, env=env)
            assert refused.returncode == 2, (mode, refused.stderr)
            assert "may not create or alter asyncsync's tables" in refused.stderr, refused.stderr
            assert "Traceback" not in refused.stderr
        await db.execute(
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}";'
            f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "{role}";'
            # Granted before asyncsync_schema existed (an install older than it): ON ALL
            # TABLES did not cover it. The owner's migrate of this release made it; the
            # role could not read the fingerprint, and every start was refused (exit 2,
            # 'run asyncsync migrate once as the owner', which had been done).
            f'REVOKE ALL ON asyncsync_schema FROM "{role}"'
        )
        await db.execute("UPDATE asyncsync_schema SET fingerprint = 'an older schema.sql'")
        owner = run_cli("migrate", env={"DATABASE_URL": database_url})
        assert owner.returncode == 0, owner.stderr
        synced = await asyncio.to_thread(run_cli, "sync", "--detail-budget", "0", env=env)
        assert synced.returncode == 0, synced.stderr
        assert await db.fetchval("SELECT count(*) FROM ordens_servico") == 30
    finally:
        await db.execute(f'DROP OWNED BY "{role}"')
        await db.execute(f'DROP ROLE "{role}"')


async def test_a_one_shot_retry_tiny_answers_nothing_of_fails_with_exit_5(
    simulator, database_url, db
) -> None:
    """One or two due failures through a wrong base URL (or a short outage) are too few
    requests to open the circuit: the retry ended exit 0, "finished ok", with every one
    left unavailable. A one-shot run that fetched nothing is Tiny being unavailable."""
    sim = await simulator(orders=30, seed=5)
    victim = sorted(sim.orders)[3]
    sim.fail_detail[victim] = "malformed"
    env = sim_env(sim, DATABASE_URL=database_url)
    synced = await asyncio.to_thread(run_cli, "sync", env=env)
    assert synced.returncode == 0, synced.stderr
    sim.fail_detail.clear()
    await db.execute("UPDATE import_failures SET ultima_tentativa = now() - interval '1 hour'")
    wrong = {**env, "TINY_API_BASE_URL": sim.origin + "/wrong/v3"}
    for args in (("retry",), ("failures", "retry", str(victim))):
        result = await asyncio.to_thread(run_cli, *args, env=wrong)
        assert result.returncode == 5, (args, result.stdout, result.stderr)
        said = result.stderr.strip().splitlines()[-1]
        assert "Tiny is unavailable: none of the 1 due detail(s) was answered" in said, said
        assert "check TINY_API_BASE_URL" in said, said
    row = await db.fetchrow("SELECT tentativas, resolvido FROM import_failures")
    assert (row["tentativas"], row["resolvido"]) == (1, False)  # no attempt counted
    fixed = await asyncio.to_thread(run_cli, "failures", "retry", str(victim), env=env)
    assert fixed.returncode == 0, fixed.stderr
    assert await db.fetchval("SELECT resolvido FROM import_failures") is True


def refused_port() -> socket.socket:
    """A socket bound and not listening: a connection to its port is refused (a Tiny or a
    database that is down), and no other test can take the port meanwhile."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    return held


async def test_a_run_that_fails_leaves_its_own_report_with_its_exit_code(
    simulator, database_url, db, tmp_path
) -> None:
    """A run an error ended wrote no JSON: an earlier run's "ok" stayed in the --json file
    (stdout got nothing with --json -), and its row in sync_runs said exit code 1 whatever
    the process returned."""
    sim = await simulator(orders=30)
    env = sim_env(sim, DATABASE_URL=database_url)
    path = tmp_path / "report.json"
    synced = await asyncio.to_thread(run_cli, "sync", "--json", str(path), env=env)
    assert synced.returncode == 0, synced.stderr
    assert json.loads(path.read_text())["outcome"] == "ok"
    with refused_port() as dead:
        down = {**env, "TINY_API_BASE_URL": f"http://127.0.0.1:{dead.getsockname()[1]}/v3"}
        fast = ("--breaker-failures", "2", "--timeout", "2")
        failed = await asyncio.to_thread(run_cli, "sync", *fast, "--json", str(path), env=down)
        piped = await asyncio.to_thread(run_cli, "sync", *fast, "--json", env=down)
    for result in (failed, piped):
        assert result.returncode == 5, result.stderr
        said = result.stderr.strip().splitlines()[-1]  # the one sentence, as it was
        assert said.startswith("asyncsync: sync failed: Tiny is unavailable"), said
    for text in (path.read_text(), piped.stdout):
        assert len(text.splitlines()) == 1, text
        report = json.loads(text)
        assert (report["mode"], report["outcome"], report["exit_code"]) == ("sync", "failed", 5)
        assert "Tiny is unavailable" in report["errors"][0], report
    rows = await db.fetch("SELECT outcome, report FROM sync_runs ORDER BY id")
    stored = [(r["outcome"], json.loads(r["report"])["exit_code"]) for r in rows]
    assert stored == [("ok", 0), ("failed", 5), ("failed", 5)]


async def test_status_with_the_database_down_leaves_no_healthy_report(
    database_url, tmp_path
) -> None:
    """status --json PATH with the database down (exit 6) left the last healthy document
    in PATH for a monitoring script to read."""
    path = tmp_path / "status.json"
    shown = await asyncio.to_thread(run_cli, "status", "--database-url", database_url,
                                    "--json", str(path))  # fmt: skip
    assert "accounts" in json.loads(path.read_text()), shown.stderr
    with refused_port() as dead:
        down = f"postgresql://u@127.0.0.1:{dead.getsockname()[1]}/x"
        result = await asyncio.to_thread(run_cli, "status", "--database-url", down,
                                         "--db-reconnect", "0", "--json", str(path))  # fmt: skip
    assert result.returncode == 6, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    report = json.loads(path.read_text())
    assert (report["mode"], report["outcome"], report["exit_code"]) == ("status", "failed", 6)
    assert "accounts" not in report and "DatabaseUnavailable" in report["errors"][0], report


def test_a_flag_given_where_its_mode_would_ignore_it_is_refused() -> None:
    # Each was accepted and silently ignored: `failures retry --state review 5` retried
    # order 5 whatever its state, `backfill --enqueue --partitions 9` enqueued months a
    # worker runs with its own settings, `accounts disable acme --quota-share 0.5` disabled
    # and kept the old share, `status --full` showed what status shows without it.
    from asyncsync.errors import ConfigError
    from asyncsync.flags import MODES, parse

    refused = {
        ("failures", "retry", "--state", "review", "5"): ("--state", "failures list"),
        ("failures", "ignore", "--all", "--limit", "3"): ("--limit", "failures list"),
        ("failures", "list", "--all"): ("--all", "failures retry and failures ignore"),
        ("failures", "--no-all"): ("--all", "failures retry"),  # list, the default action
        ("backfill", "--enqueue", "--partitions", "9"): ("--partitions", "without --enqueue"),
        ("backfill", "--enqueue", "--detail-budget", "0"): ("--detail-budget", "without"),
        ("status", "--full"): ("--full", "status --all-accounts"),
        ("accounts", "disable", "acme", "--quota-share", "0.5"): ("--quota-share", "add"),
        ("accounts", "list", "--client-secret-env", "S"): ("--client-secret-env", "add"),
        ("accounts", "remove", "acme", "--refresh-token", "r"): ("--refresh-token", "add"),
    }
    for argv, (flag, case) in refused.items():
        with pytest.raises(ConfigError, match=f"^{flag} is read only by [^:]*{case}"):
            parse(list(argv), {})
    # Where they are read, they are; and their variables are never refused (one
    # environment file serves every case).
    assert parse(["failures", "list", "--state", "review", "--limit", "3"], {}).options.limit == 3
    assert parse(["failures", "retry", "--all"], {}).options.every
    assert parse(["backfill", "--partitions", "9"], {}).options.partitions == 9
    assert parse(["status", "--all-accounts", "--full"], {}).options.full
    added = parse(["accounts", "add", "acme", "--quota-share", "0.5", "--client-id", "c"], {})
    assert added.common.tiny.quota_share == 0.5
    environ = {"ASYNCSYNC_FAILURES_STATE": "review", "ASYNCSYNC_PARTITIONS": "9",
               "ASYNCSYNC_STATUS_FULL": "true", "TINY_QUOTA_SHARE": "0.5"}  # fmt: skip
    assert parse(["failures", "retry", "5"], environ).options.ids == (5,)
    assert parse(["backfill", "--enqueue"], environ).options.enqueue
    assert not parse(["status"], environ).options.all_accounts
    assert parse(["accounts", "disable", "acme"], environ).options.key == "acme"
    # Every rule names flags its mode offers, and a case a field can take.
    for name, mode in MODES.items():
        for rule in mode.only:
            for flag in rule.flags:
                assert flag not in mode.unread and any(
                    f.flag == flag and f.target in mode.groups for f in FLAGS
                ), (name, flag)
