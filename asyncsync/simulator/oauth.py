"""OAuth2 as Tiny's Keycloak realm answers it: authorization codes, opaque access tokens and
(optionally rotating) refresh tokens, and the token endpoint's two grants.

Everything here uses :func:`time.monotonic`, so changing the simulator's wall ``clock``
expires nothing; tests use short TTLs or ``expire_access_tokens()``. The authorization
endpoint itself (the person's browser) is in :mod:`.consent`.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .data import SimConfig

Clock = Callable[[], float]

#: :attr:`Grant.outcome` values.
REFRESHED, EXCHANGED, STALE, REFUSED = "refreshed", "exchanged", "stale", "refused"


@dataclass(frozen=True)
class Grant:
    """The answer of the token endpoint: HTTP status, JSON body, and what happened."""

    status: int
    body: dict[str, Any]
    #: ``refreshed`` / ``exchanged`` (success), ``stale`` (a rotated-away refresh token
    #: presented again) or ``refused``; the simulator counts them.
    outcome: str = REFUSED

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass(frozen=True)
class AuthCode:
    """One issued authorization code: where it was sent and until when it works."""

    redirect_uri: str
    expires_at: float


def _oauth_error(status: int, error: str, description: str, outcome: str = REFUSED) -> Grant:
    return Grant(status, {"error": error, "error_description": description}, outcome)


#: The one body the token endpoint reads (RFC 6749 section 4.1.3; Tiny's realm too).
FORM = "application/x-www-form-urlencoded"


def not_a_form(content_type: str) -> Grant | None:
    """The answer to a token request whose body is not ``FORM`` (a multipart or JSON
    one), None for a form. TINY_API.md says what the endpoint takes, not how it refuses
    the rest: a 400 ``invalid_request``, as the endpoint answers a request it cannot read."""
    if content_type == FORM:
        return None
    return _oauth_error(
        400, "invalid_request", f"Token requests must be {FORM}, not {content_type}"
    )


def seconds(value: float) -> int | float:
    """A TTL as JSON: ``4.0`` -> ``4`` (what Keycloak sends), ``0.5`` stays ``0.5``.

    Sub-second TTLs exist only in tests; rounding them to an int would tell the client
    the token is dead on arrival.
    """
    return int(value) if float(value).is_integer() else value


class TokenStore:
    """Issues codes and tokens, and answers grants."""

    def __init__(self, config: SimConfig, clock: Clock = time.monotonic) -> None:
        self._config, self._clock = config, clock
        self._access: dict[str, float] = {}
        self._refresh: dict[str, float] = {config.refresh_token: clock() + config.refresh_ttl_s}
        #: Refresh tokens replaced by rotation (presenting one is a "stale use").
        self._rotated: set[str] = set()
        self._revoked: set[str] = set()
        self._latest: str | None = config.refresh_token
        self._codes: dict[str, AuthCode] = {}
        self._spent_codes: set[str] = set()
        self._serial = itertools.count(1)

    # --- control -----------------------------------------------------------------------

    def check_access(self, token: str) -> bool:
        expiry = self._access.get(token)
        return expiry is not None and self._clock() < expiry

    def expire_access(self) -> None:
        self._access.clear()

    def revoke_refresh(self) -> None:
        self._revoked.update(self._refresh)
        self._refresh.clear()
        self._latest = None

    def valid_refresh(self) -> str | None:
        token = self._latest
        if token is None or self._refresh.get(token, 0.0) <= self._clock():
            return None
        return token

    def issue_code(self, redirect_uri: str) -> str:
        """A fresh single-use code bound to ``redirect_uri``, valid ``code_ttl_s``."""
        now = self._clock()
        # Forget long-dead codes so a long-running simulator does not grow without bound.
        for code in [c for c, a in self._codes.items() if a.expires_at <= now - 3600]:
            del self._codes[code]
        code = f"sim-code-{next(self._serial)}-{secrets.token_urlsafe(16)}"
        self._codes[code] = AuthCode(redirect_uri, now + self._config.code_ttl_s)
        return code

    # --- the token endpoint ------------------------------------------------------------

    def grant(self, form: Mapping[str, str]) -> Grant:
        """Answer one POST to the token endpoint."""
        cfg = self._config
        if form.get("client_id") != cfg.client_id or form.get("client_secret") != cfg.client_secret:
            return _oauth_error(
                401, "invalid_client", "Invalid client or Invalid client credentials"
            )
        grant_type = form.get("grant_type")
        if grant_type == "refresh_token":
            return self._refresh_grant(form.get("refresh_token", ""))
        if grant_type == "authorization_code":
            return self._code_grant(form.get("code", ""), form.get("redirect_uri", ""))
        return _oauth_error(400, "unsupported_grant_type", "Unsupported grant_type")

    def _refresh_grant(self, old: str) -> Grant:
        expiry = self._refresh.get(old)
        now = self._clock()
        if expiry is None:
            if old in self._rotated:
                return _oauth_error(400, "invalid_grant", "Stale token", STALE)
            reason = "Stale token" if old in self._revoked else "Invalid refresh token"
            return _oauth_error(400, "invalid_grant", reason)
        if expiry <= now:
            return _oauth_error(400, "invalid_grant", "Token is not active")
        if not self._config.rotate_refresh_tokens:
            return self._tokens(now, old, round(expiry - now), REFRESHED)
        del self._refresh[old]
        self._rotated.add(old)
        return self._tokens(now, self._new_refresh(now), None, REFRESHED)

    def _code_grant(self, code: str, redirect_uri: str) -> Grant:
        """Keycloak removes a code on its first presentation, before checking anything
        else: a code sent with the wrong ``redirect_uri`` is spent all the same."""
        entry = self._codes.pop(code, None)
        now = self._clock()
        if entry is None:
            reason = "Code already used" if code in self._spent_codes else "Code not valid"
            return _oauth_error(400, "invalid_grant", reason)
        self._spent_codes.add(code)
        if entry.expires_at <= now:
            return _oauth_error(400, "invalid_grant", "Code is expired")
        if redirect_uri != entry.redirect_uri:
            return _oauth_error(400, "invalid_grant", "Incorrect redirect_uri")
        if self._config.rotate_refresh_tokens:  # only the newest refresh token works
            self._rotated.update(self._refresh)
            self._refresh.clear()
        return self._tokens(now, self._new_refresh(now), None, EXCHANGED)

    def _new_refresh(self, now: float) -> str:
        # The prefix tells a demo's stored token from Tiny's (schema.sql marks the demos
        # of installs older than the demo mark by it): keep it.
        token = f"sim-refresh-{next(self._serial)}-{secrets.token_urlsafe(12)}"
        self._refresh[token] = now + self._config.refresh_ttl_s
        self._latest = token
        return token

    def _tokens(self, now: float, refresh: str, refresh_left: int | None, outcome: str) -> Grant:
        """A 200 with a fresh access token; ``refresh_left`` None means a new refresh
        token (its full TTL)."""
        cfg = self._config
        access = secrets.token_urlsafe(32)
        self._access[access] = now + cfg.access_ttl_s
        left = seconds(cfg.refresh_ttl_s) if refresh_left is None else refresh_left
        body = {
            "access_token": access,
            "expires_in": seconds(cfg.access_ttl_s),
            "refresh_expires_in": left,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "session_state": "sim-session",
            "scope": "openid email offline_access",
        }
        return Grant(200, body, outcome)
