"""The circuit breaker: an outage is an outage, not a flood of retries.

Every HTTP attempt that ends in a transport failure, a 5xx or a page that is not JSON nor
announced as JSON (a proxy's maintenance page) counts, and so does a refresh the token
endpoint failed; a 401 or 403 that sends the client to renew its token leaves the count
as it is (Tiny neither served the request nor failed it); any other answer resets it.
After ``threshold`` failures in a row the circuit opens: no request is sent for
``cooldown_s`` and every caller gets :class:`~asyncsync.errors.TinyOutage` at once, so a
pass stops asking and its run ends as failed instead of writing every order it meets to
``import_failures``. After the cool-down one probe request is let through
(half-open) while the others wait for it: it closes the circuit if it succeeds and
reopens it if it fails.

One warning with the counts is logged when the circuit opens, instead of a line per retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import logging
import time
from collections import Counter
from collections.abc import Callable

from .. import metrics
from ..clock import utcnow
from ..errors import TinyOutage
from .withhold import waiting, withhold

log = logging.getLogger(__name__)


class State(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive failures of one account's requests; opens after ``threshold``."""

    def __init__(
        self,
        threshold: int = 5,
        cooldown_s: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        account: str = "default",
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._account = account
        self.state = State.CLOSED
        self._streak = 0
        self._kinds: Counter[str] = Counter()  # what the current streak was made of
        self._hints: list[str] = []  # what to check should the streak's failures persist
        self._streak_started = 0.0
        self._reopen_at = 0.0
        self._probing = False
        self._probe_started = 0.0
        self._settled = asyncio.Event()  # set when a probe's answer came back
        self.opened = 0  # times the circuit opened
        self.reason = ""  # why it is open, for health and reports
        metrics.CIRCUIT_OPEN.labels(account).set(0)

    @property
    def retry_at(self) -> float:
        """Monotonic time when requests may go again (0 when they may now)."""
        return self._reopen_at if self.state is not State.CLOSED else 0.0

    def refuse_if_open(self) -> None:
        """Raise TinyOutage while the cool-down runs (a cheap test before queueing)."""
        if self.state is State.OPEN and self._clock() < self._reopen_at:
            raise self._outage()

    def _outage(self) -> TinyOutage:
        left = max(self._reopen_at - self._clock(), 0)
        # The moment too: health and status read this sentence back minutes later, when
        # "for another 60 s" is long past.
        until = (utcnow() + dt.timedelta(seconds=left)).strftime("%H:%M:%S UTC")
        # "This process": a one-shot run's sentence promised a quiet period that the next
        # run, a new process, did not keep (sweep K).
        return TinyOutage(
            f"Tiny is unavailable ({self.reason}); this process sends it no request for "
            f"another {left:.0f} s (until {until})",
            retry_at_s=self._reopen_at,
        )

    async def admit(self, stop: asyncio.Event | None = None) -> None:
        """Return when a request may be sent now; raise TinyOutage while the circuit is open.

        After the cool-down one request goes as the probe; the others wait for its answer
        and follow it (the circuit closed) or get TinyOutage (it reopened). ``stop`` set
        while one waits: :class:`~asyncsync.errors.RequestWithheld`, never the probe."""
        while self.state is not State.CLOSED:
            withhold(stop)
            now = self._clock()
            if self.state is State.OPEN:
                if now < self._reopen_at:
                    raise self._outage()
                self.state, self._probing = State.HALF_OPEN, False
            # A probe that never reported (cancelled on the way) must not block forever.
            stuck = self._probing and now >= self._probe_started + self.cooldown_s
            if not self._probing or stuck:
                self._probing, self._probe_started = True, now  # this request is the probe
                self._settled.clear()
                return
            with contextlib.suppress(TimeoutError):
                await waiting(asyncio.wait_for(self._settled.wait(), self.cooldown_s), stop)
        withhold(stop)  # closed as the stop came: this request still goes nowhere

    def success(self) -> None:
        """An answer of the API's that is not a 5xx: the API is up."""
        if self.state is not State.CLOSED:
            log.warning(
                "Tiny answers again: requests resume",
                extra={"fields": {"account": self._account, "event": "circuit_closed"}},
            )
            metrics.CIRCUIT_OPEN.labels(self._account).set(0)
        self.state, self._probing, self._streak, self.reason = State.CLOSED, False, 0, ""
        self._kinds.clear()
        self._hints.clear()
        self._settled.set()

    def no_verdict(self) -> None:
        """An answer that says nothing of the API's health: a 401 or 403 that sends the
        client to renew its token. Counted a success, it reset the count between the
        failed refreshes of a token endpoint down while the API dropped tokens early, and
        the circuit never opened. The count stands; a probe that got it gives its place to
        the next request (its own next try included), which waits for none."""
        if self.state is State.HALF_OPEN and self._probing:
            self._probing = False
            self._settled.set()

    def failure(self, kind: str, *, hint: str = "") -> None:
        """A transport failure, a 5xx or a proxy's page (``kind`` says which: ``http_503``,
        ``timeout``, ``not_json``); ``hint``: what to check should it persist, said with
        the reason."""
        now = self._clock()
        if self._streak == 0:
            self._streak_started = now
        self._streak += 1
        self._kinds[kind] += 1
        if hint and hint not in self._hints:
            self._hints.append(hint)
        if self.state is State.HALF_OPEN or (
            self.state is State.CLOSED and self._streak >= self.threshold
        ):
            self._open(now)

    def _open(self, now: float) -> None:
        self.state, self._probing = State.OPEN, False
        self._settled.set()
        self._reopen_at = now + self.cooldown_s
        self.opened += 1
        kinds = ", ".join(f"{n} × {k}" for k, n in self._kinds.most_common())
        hints = "".join(f"; {hint}" for hint in self._hints)
        self.reason = f"{self._streak} failures in a row: {kinds}{hints}"
        metrics.CIRCUIT_OPEN.labels(self._account).set(1)
        metrics.CIRCUIT_OPENINGS.labels(self._account).inc()
        fields: dict[str, object] = {
            "account": self._account, "event": "circuit_open", "failures": self._streak,
            "cooldown_s": self.cooldown_s,
        }  # fmt: skip
        fields.update({f"failures_{k}": n for k, n in self._kinds.items()})
        # The span before the hints: "... accounts table in 16 s" read as the hint's.
        log.warning(
            "Tiny is unavailable: %d failures in a row in %.0f s: %s%s; no request for %.0f s",
            self._streak, now - self._streak_started, kinds, hints, self.cooldown_s,
            extra={"fields": fields},
        )  # fmt: skip
