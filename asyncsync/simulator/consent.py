"""The authorization endpoint: the simulator stands in for the person who logs in to Tiny
and consents, so a client's first-authorization helper can be tested end to end.

Validation follows Keycloak: a request it cannot trust to redirect (unknown client, bad or
unregistered ``redirect_uri``) gets an error *page* and no redirect; anything else wrong is
reported to the ``redirect_uri`` as ``error=...`` (RFC 6749 §4.1.2.1), with ``state``.
"""

from __future__ import annotations

import html
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .data import SimConfig

#: Hosts a redirect may point at when no redirect URI is registered.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
NO_RESPONSE_TYPE = "Missing parameter: response_type"
BAD_TYPE = "Client is not allowed to initiate browser login with given response_type."
DENIED = "The user denied consent"


@dataclass(frozen=True)
class Consent:
    """The answer to ``GET .../openid-connect/auth``: a redirect or an error page."""

    status: int
    #: Where the browser goes next (302), else None.
    location: str | None = None
    #: The HTML error page (400), else empty.
    page: str = ""


def error_page(message: str) -> Consent:
    """Keycloak's "We are sorry..." page: shown to the person, never sent to the app."""
    text = html.escape(message)
    page = (
        "<!DOCTYPE html><html><head><title>Sign in to tiny</title></head><body>"
        f'<h1>We are sorry...</h1><p id="kc-error-message">{text}</p></body></html>'
    )
    return Consent(400, page=page)


def redirect_allowed(uri: str, registered: tuple[str, ...]) -> bool:
    """An absolute http(s) URI without fragment; registered exactly, or any loopback
    ``http`` URI when nothing is registered (the usual CLI-helper callback)."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        return False
    if registered:
        return uri in registered
    return parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS


def with_query(uri: str, params: Mapping[str, str]) -> str:
    """``uri`` with ``params`` appended to whatever query it already has."""
    parts = urlsplit(uri)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


def authorize(
    params: Mapping[str, str],
    config: SimConfig,
    *,
    deny: bool,
    issue_code: Callable[[str], str],
) -> Consent:
    """Validate one authorization request and answer as if the person consented
    (or, with ``deny``, declined)."""
    if params.get("client_id") != config.client_id:
        return error_page("Invalid client: Client not found.")
    redirect_uri = params.get("redirect_uri", "")
    if not redirect_allowed(redirect_uri, config.redirect_uris):
        return error_page("Invalid parameter: redirect_uri")
    state = {"state": params["state"]} if "state" in params else {}

    def back(first: dict[str, str], last: dict[str, str] | None = None) -> Consent:
        answer = {**first, **state, **(last or {})}
        return Consent(302, location=with_query(redirect_uri, answer))

    response_type = params.get("response_type", "")
    if response_type != "code":
        if response_type == "":
            return back({"error": "invalid_request", "error_description": NO_RESPONSE_TYPE})
        return back({"error": "unsupported_response_type", "error_description": BAD_TYPE})
    if deny:
        return back({"error": "access_denied", "error_description": DENIED})
    code = issue_code(redirect_uri)
    return back({"code": code}, {"session_state": secrets.token_hex(16)})
