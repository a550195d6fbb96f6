"""``POST /_sim/control``: the synchronous control API over HTTP, for a test that drives a
simulator running in another process (``python -m asyncsync.simulator``).

The whole body is validated before anything is applied, so a bad request changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .faults import OUTAGE_MODES
from .state import SimState

Apply = Callable[[SimState], None]


class ControlError(ValueError):
    """A control body the simulator refuses (answered 400 with the message)."""


def _rate(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ControlError(f"{key} must be a number from 0 to 1")
    return float(value)


def _count(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ControlError(f"{key} must be a non-negative integer")
    return value


def _flag(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ControlError(f"{key} must be true or false")
    return value


def _outage(value: object) -> Apply:
    if value is not None and value not in OUTAGE_MODES:
        raise ControlError(f"outage must be null or one of {list(OUTAGE_MODES)}")
    mode = None if value is None else str(value)
    return lambda sim: sim.set_outage(mode)


def _setting(key: str, value: object) -> Apply:
    """One validated change, ready to apply."""
    if key == "outage":
        return _outage(value)
    if key == "rate_limit":
        limit = _count(value, key)
        return lambda sim: sim.set_rate_limit(limit)
    if key == "other_apps":
        requests = _count(value, key)
        return lambda sim: sim.set_other_apps(requests)
    if key in ("detail_error_rate", "list_error_rate"):
        rate = _rate(value, key)
        return lambda sim: setattr(sim, key, rate)
    if key in ("pad_list_bytes", "huge_detail_bytes"):
        size = _count(value, key)
        return lambda sim: setattr(sim, key, size)
    if key in ("deny_authorization", "token_page"):
        on = _flag(value, key)
        return lambda sim: setattr(sim, key, on)
    if key == "expire_access_tokens":
        return (lambda sim: sim.expire_access_tokens()) if _flag(value, key) else _nothing
    if key == "revoke_refresh_tokens":
        return (lambda sim: sim.revoke_refresh_tokens()) if _flag(value, key) else _nothing
    raise ControlError(f"unknown control {key!r}; known: {sorted(CONTROL_KEYS)}")


def _nothing(sim: SimState) -> None:
    return None


CONTROL_KEYS = frozenset(
    {
        "outage",
        "rate_limit",
        "other_apps",
        "detail_error_rate",
        "list_error_rate",
        "pad_list_bytes",
        "huge_detail_bytes",
        "deny_authorization",
        "token_page",
        "expire_access_tokens",
        "revoke_refresh_tokens",
    }
)


@dataclass(frozen=True)
class ControlChange:
    """A validated control body: the changes, in the order given."""

    changes: tuple[Apply, ...]

    @classmethod
    def parse(cls, body: object) -> ControlChange:
        if not isinstance(body, Mapping):
            raise ControlError("the body must be a JSON object")
        return cls(tuple(_setting(str(key), value) for key, value in body.items()))

    def apply(self, sim: SimState) -> None:
        for change in self.changes:
            change(sim)
