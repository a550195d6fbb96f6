"""``asyncsync accounts list|add|disable|enable|remove [KEY]``: the Tiny accounts of the
database, which every worker serves.

``add KEY`` takes the account's URLs, client id and quota share from the Tiny flags
(``--api-base-url``, ``--token-url``, ``--client-id``, ``--quota-share``) and its client
secret by reference: ``--client-secret-env VAR`` (every worker reads that variable) or
``--client-secret-file PATH`` (a container secret); ``--client-secret`` itself is kept in
the table only with ``--store-client-secret``. Adding a key that exists replaces its
definition (every field from this command's flags) and keeps whether it is enabled.
Adding (or enabling) an account puts its first cycle on the queue at once; its first
tokens come from ``asyncsync authorize --account KEY`` (or a bootstrap
``--refresh-token-env``).
"""

from __future__ import annotations

import asyncio
import os

from ..accounts import AccountConfig
from ..errors import ConfigError
from ..options import AccountsOptions, CommonOptions
from ..runtime import database_of
from ..seams import WorkQueue
from ..tables import table
from ..work.units import Kind, Unit
from . import show


def _config(key: str, common: CommonOptions, options: AccountsOptions) -> AccountConfig:
    tiny = common.tiny
    if not tiny.client_id:
        raise ConfigError("accounts add needs --client-id (the app's, from Tiny)")
    stored = tiny.client_secret if options.store_client_secret else None
    if options.store_client_secret and not stored:
        raise ConfigError("--store-client-secret keeps --client-secret: give it too")
    given = [options.client_secret_env, options.client_secret_file, stored]
    if sum(g is not None for g in given) > 1:
        raise ConfigError("accounts add: give the client secret one way: --client-secret-env, "
                          "--client-secret-file or --client-secret, not several")  # fmt: skip
    if not any(g is not None for g in given):
        raise ConfigError(
            "accounts add needs the client secret by reference: --client-secret-env VAR or "
            "--client-secret-file PATH (or --client-secret with --store-client-secret)"
        )
    if options.refresh_token_env and options.refresh_token_file:
        raise ConfigError("accounts add: give the bootstrap refresh token one way: "
                          "--refresh-token-env or --refresh-token-file, not both")  # fmt: skip
    for flag, path in (("--client-secret-file", options.client_secret_file),
                       ("--refresh-token-file", options.refresh_token_file)):  # fmt: skip
        if path is not None and not path.is_absolute():
            raise ConfigError(f"{flag} must be an absolute path (every worker reads it, "
                              f"from its own working directory), got {path}")  # fmt: skip
    return AccountConfig(
        key=key, api_base_url=tiny.api_base_url, token_url=tiny.token_url,
        client_id=tiny.client_id, client_secret_env=options.client_secret_env,
        client_secret_file=options.client_secret_file, client_secret=stored,
        refresh_token_env=options.refresh_token_env,
        refresh_token_file=options.refresh_token_file, quota_share=tiny.quota_share,
    )  # fmt: skip


async def _start(queue: WorkQueue, key: str) -> None:
    """The account's first cycle, due now (the planner would add it within a minute)."""
    await queue.enqueue([Unit(Kind.CYCLE, key).item()])


async def run(common: CommonOptions, options: AccountsOptions, stop: asyncio.Event) -> int:
    """Do what ``options.action`` says; exit 0, or 1 when the account does not exist."""
    key = options.key
    if options.action != "list" and key is None:
        raise ConfigError(f"accounts {options.action} needs the account's key")
    if options.action == "list" and key is not None:  # `accounts list acme` listed all
        raise ConfigError("accounts list takes no key: it lists every account")
    async with database_of(common, stop=stop) as database:
        registry = database.registry
        if options.action == "list":
            rows = await registry.all()
            headers = ["account", "enabled", "API", "client id", "client secret",
                       "bootstrap refresh token", "quota share"]  # fmt: skip
            cells = [[c.key, c.enabled, c.api_base_url, c.client_id, c.secret_source(),
                      _bootstrap(c), c.quota_share] for c in rows]  # fmt: skip
            data = {"accounts": [dict(zip(headers, row, strict=True)) for row in cells]}
            show(table(headers, cells) if rows else "no accounts yet", data, common)
            return 0
        assert key is not None
        if options.action == "add":
            config = _config(key, common, options)
            new, enabled = await registry.put(config)
            if enabled:
                await _start(database.queue, key)
            note = _unset_here(config) + _not_kept(common, options)
            if not new:
                note += " (its definition replaced" + ("" if enabled else "; still disabled") + ")"
            said = f"account {key} {'added' if new else 'updated'}" + note
            show(said, {"account": key, "added": new}, common)
            return 0
        if options.action in ("enable", "disable"):
            found = await registry.set_enabled(key, options.action == "enable")
            if found and options.action == "enable":
                await _start(database.queue, key)
        else:
            found = await registry.remove(key)
        # A key not in the table is a mistyped key, as for every command (exit 2).
        done = (
            f"account {key} {options.action}d"
            if found
            else f"no account {key} in the accounts table (asyncsync accounts list shows its keys)"
        )
        show(done, {"account": key, "action": options.action, "found": found}, common)
        return 0 if found else 2


def _bootstrap(config: AccountConfig) -> str:
    if config.refresh_token_env:
        return f"env {config.refresh_token_env}"
    return f"file {config.refresh_token_file}" if config.refresh_token_file else "-"


def _unset_here(config: AccountConfig) -> str:
    """A reminder when the named variable is not set where the command ran (the workers'
    environment is what counts)."""
    # Spaces only are unset, as a worker reads them (asyncsync.accounts._read).
    missing = [v for v in (config.client_secret_env, config.refresh_token_env)
               if v and not os.environ.get(v, "").strip()]  # fmt: skip
    if not missing:
        return ""
    return f" (note: {', '.join('$' + v for v in missing)} is unset here; every worker needs it)"


def _not_kept(common: CommonOptions, options: AccountsOptions) -> str:
    """Say which secrets given (as a flag or in the environment) the row does not keep: the
    table names secrets by reference."""
    notes = []
    if common.tiny.client_secret and not options.store_client_secret:
        notes.append("the client secret given (--client-secret / TINY_CLIENT_SECRET) is not "
                     "stored: the row names it by reference")  # fmt: skip
    if common.tiny.refresh_token:
        notes.append("the refresh token given (--refresh-token / TINY_REFRESH_TOKEN) is not "
                     "stored: name it with --refresh-token-env or --refresh-token-file, or "
                     "run asyncsync authorize --account KEY")  # fmt: skip
    return "".join(f" (note: {n})" for n in notes)
