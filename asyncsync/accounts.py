"""One Tiny account of the ``accounts`` table, as a value: how to reach it, and where its
secrets are (by reference: an environment variable every worker reads, or a file such as
a container secret; in clear only when the operator opted in).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .options import ACCOUNT_KEY, DEFAULT_API_BASE_URL, DEFAULT_TOKEN_URL, Credentials


@dataclass(frozen=True)
class AccountConfig:
    """One row of the ``accounts`` table: how to reach a Tiny account, its secrets named by
    reference (an environment variable every worker reads, or a file such as a container
    secret) unless the operator chose to store the client secret in the database."""

    key: str
    api_base_url: str = DEFAULT_API_BASE_URL
    token_url: str = DEFAULT_TOKEN_URL
    client_id: str = ""
    client_secret_env: str | None = None
    client_secret_file: Path | None = None
    client_secret: str | None = field(default=None, repr=False)  # only when opted in
    refresh_token_env: str | None = None  # a bootstrap refresh token, by reference
    refresh_token_file: Path | None = None
    quota_share: float = 1.0
    enabled: bool = True

    def __post_init__(self) -> None:
        if not ACCOUNT_KEY.fullmatch(self.key):
            raise ConfigError(
                f"account must be 1 to 64 letters, digits, '.', '_' or '-', got {self.key!r}"
            )

    def secret_source(self) -> str:
        """Where the client secret comes from, for ``accounts list`` (never the secret)."""
        if self.client_secret_env:
            return f"env {self.client_secret_env}"
        if self.client_secret_file:
            return f"file {self.client_secret_file}"
        return "database" if self.client_secret else "-"

    def credentials(self, environ: Mapping[str, str]) -> Credentials:
        """The credentials, reading the referenced variables and files now (ConfigError
        naming the account and the reference when one is missing)."""
        secret = self.client_secret or _read(self.key, "client secret", self.client_secret_env,
                                             self.client_secret_file, environ)  # fmt: skip
        if not secret:
            raise ConfigError(f"account {self.key!r} has no client secret: see accounts add")
        refresh = None
        if self.refresh_token_env or self.refresh_token_file:
            refresh = _read(self.key, "refresh token", self.refresh_token_env,
                            self.refresh_token_file, environ)  # fmt: skip
        return Credentials(self.client_id, secret, refresh)


def not_served(accounts: Iterable[str], configs: Iterable[AccountConfig]) -> dict[str, str]:
    """Which of ``accounts`` no worker serves, and why: ``disabled``, or ``removed`` from
    a table that has rows (its mirror and history stay). With no row at all (the
    single-account install) the flags' account is served."""
    enabled = {c.key: c.enabled for c in configs}
    if not enabled:
        return {}
    return {
        account: "removed" if account not in enabled else "disabled"
        for account in accounts
        if not enabled.get(account, False)
    }


def _read(
    key: str, what: str, env: str | None, path: Path | None, environ: Mapping[str, str]
) -> str | None:
    if env:
        value = environ.get(env, "").strip()
        if not value:
            raise ConfigError(f"account {key!r}: its {what} is read from ${env}, which is unset")
        return value
    if path:
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"account {key!r}: cannot read its {what} from {path}: "
                              f"{exc.strerror}") from None  # fmt: skip
    return None
