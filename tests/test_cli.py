"""The command line as a user meets it: one clear sentence for bad configuration."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from asyncsync.cli import build_parser


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TINY_", "ASYNCSYNC_"))}
    clean.pop("DATABASE_URL", None)
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "asyncsync", *args],
        capture_output=True,
        text=True,
        env=clean,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {}, "no Tiny credentials: set TINY_CLIENT_ID"),
        ((), {"TINY_CLIENT_ID": "x"}, "also set TINY_CLIENT_SECRET, TINY_REFRESH_TOKEN"),
        (("--api-base-url", "ftp://nope"), {}, "api_base_url must be an http(s) URL"),
        (("--database-url", "mysql://x"), {}, "DATABASE_URL must start with postgresql://"),
        (("--rate-limit", "0"), {}, "rate_limit_per_minute must be at least 1"),
        (("--token-file", "/nonexistent/tiny_token.json"), {}, "does not exist"),
    ],
)
def test_bad_configuration_is_one_sentence_and_exit_2(args, env, message, tmp_path) -> None:
    result = run_cli(
        "--mode", "sync", "--database-url", "postgresql://u@127.0.0.1:1/x", *args, env=env
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_database_is_reported_without_traceback() -> None:
    env = {"TINY_CLIENT_ID": "a", "TINY_CLIENT_SECRET": "b", "TINY_REFRESH_TOKEN": "c"}
    result = run_cli("--database-url", "postgresql://u@127.0.0.1:1/x", env=env)
    assert result.returncode == 1
    assert "cannot connect to PostgreSQL at postgresql://u@127.0.0.1:1/x" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_flag_shows_its_environment_variable() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    flat = " ".join(result.stdout.split())
    for action in build_parser()._actions:
        if action.dest != "help":
            assert "[env: " in (action.help or ""), action.dest
    issue_vars = ["DATABASE_URL", "TINY_API_BASE_URL", "TINY_TOKEN_URL", "TINY_CLIENT_ID"]
    issue_vars += ["TINY_RATE_LIMIT_PER_MINUTE", "TINY_MAX_CONCURRENCY", "ASYNCSYNC_MODE"]
    for env in issue_vars:
        assert f"[env: {env}]" in flat


def test_sync_against_the_bundled_simulator(database_url: str) -> None:
    result = run_cli(
        "--mode", "sync", "--simulator", "400", "--rate-limit", "60000",
        "--database-url", database_url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "│ total" in result.stdout and "400" in result.stdout
    assert "orders listed 400: 400 new" in result.stdout


def test_token_file_bootstraps_credentials(tmp_path, database_url: str) -> None:
    (tmp_path / "tiny_token.json").write_text('{"refresh_token": "r"}')
    result = run_cli(
        "--database-url", database_url, "--token-file", str(tmp_path / "tiny_token.json")
    )
    assert result.returncode == 2
    assert "has no client_id/client_secret" in result.stderr


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
