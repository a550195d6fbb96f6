"""Readiness of the service as named reasons: ready while there are none.

Whoever notices a problem names it (``readiness.set("database", "unreachable: ...")``) and
clears it when it is gone (``readiness.clear("database")``); ``/readyz`` answers 200
``{"ready": true}``, or 503 with the reasons. Each concern owns its name, so a new check
(Tiny unavailable, say) adds a reason without touching the others.
"""

from __future__ import annotations

from . import metrics


class Readiness:
    """Named reasons the service is not ready. Starts ready; one process, one instance."""

    def __init__(self) -> None:
        self._reasons: dict[str, str] = {}
        metrics.READY.set(1)

    def set(self, name: str, reason: str) -> None:
        """``name`` is a reason not to be ready, described by ``reason``."""
        self._reasons[name] = reason
        metrics.READY.set(0)

    def clear(self, name: str) -> None:
        """``name`` is no longer a reason."""
        self._reasons.pop(name, None)
        metrics.READY.set(0 if self._reasons else 1)

    def reasons(self) -> dict[str, str]:
        """A copy of the current reasons, name → sentence."""
        return dict(self._reasons)

    @property
    def ready(self) -> bool:
        return not self._reasons
