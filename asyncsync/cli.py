"""The command line: parse, configure, run one mode, print the cause chain on failure.

``asyncsync MODE [options]`` (or ``--mode MODE`` / ``ASYNCSYNC_MODE``); every flag has an
environment twin, shown in ``--help``; flags win. Exit codes (:data:`EXIT_CODES`): 0 ok;
1 the run failed or found what it could not fix; 2 bad configuration; 3 another run of the
account holds the lock; 4 a person must authorize the app again; 5 Tiny is unavailable;
6 the database is unavailable; 130 interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import collector, flags, logs
from .errors import (
    ConfigError,
    DatabaseUnavailable,
    LockBusy,
    ReauthorizationRequired,
    TinyUnavailable,
)
from .tasks import Stopped, first_leaf

log = logging.getLogger("asyncsync")

#: Seconds the cleanup of a cut drain may take before the process exits without it (the
#: drain deadline and this stay under Kubernetes' 30 s grace at the defaults).
CUT_GRACE_S = 3.0


async def _run(invocation: flags.Invocation) -> int:
    from .modes import execute

    collector.tune()  # after the heavy imports: they are frozen, never walked again
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    options = invocation.options
    drain_s = getattr(options, "drain_s", invocation.common.run.drain_s)

    def cancel() -> None:
        task.cancel()
        # What the cancellation still waits for must not hold the process either: the
        # pool's close, the queue's last writes, each wait on a database that does not
        # answer (frozen, or cut off without a reset), and serve lived on until the
        # orchestrator's SIGKILL, its drain deadline passed.
        loop.call_later(CUT_GRACE_S, abandon)

    def cut() -> None:
        if not task.done():
            log.warning("still draining after %.0f s: stopping now; the next run resumes "
                        "from what was merged", drain_s)  # fmt: skip
            cancel()

    def abandon() -> None:
        if not task.done():
            log.error("still closing %.0f s after the drain was cut (a database that does "
                      "not answer?): exiting without waiting; the next run resumes from "
                      "what was merged", CUT_GRACE_S)  # fmt: skip
            logging.shutdown()
            print("asyncsync: interrupted", file=sys.stderr, flush=True)
            os._exit(130)

    def on_signal() -> None:
        if stop.is_set():  # second signal: stop draining
            cancel()
        else:  # requests in flight may hang (a slow Tiny, a spent quota): bound the drain
            loop.call_later(drain_s, cut)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal)
    return await execute(invocation.mode, invocation.common, invocation.options, stop)


def _runner() -> Callable[[Any], int]:
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    try:
        invocation = flags.parse(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as exc:
        return report_failure("asyncsync", exc)
    output = invocation.common.output
    logs.configure(output.log_level, output.log_format)
    try:
        return _runner()(_run(invocation))
    except BaseException as exc:  # every failure becomes a sentence and an exit code
        return report_failure(invocation.mode, exc)


#: What each exit code means (the README's table).
EXIT_CODES = {
    0: "done",
    1: "the run failed, or found what it could not fix (the report says what)",
    2: "bad configuration: one sentence says what to change",
    3: "another run of the same account holds its lock",
    4: "re-authorization required: Tiny refused the refresh token (run asyncsync authorize)",
    5: "Tiny is unavailable (5xx, timeouts or refused connections in a row)",
    6: "the database is unavailable (unreachable, restarting, or frozen past the timeouts)",
    130: "interrupted (SIGTERM/SIGINT): what arrived was merged; the next run resumes",
}


def cause_chain(exc: BaseException) -> str:
    """``message (caused by: ...)`` down the ``__cause__`` chain."""
    parts = [str(exc) or type(exc).__name__]
    cause = exc.__cause__
    while cause is not None and len(parts) < 5:
        parts.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__
    return parts[0] + "".join(f"\n  caused by {p}" for p in parts[1:])


def report_failure(mode: str, exc: BaseException) -> int:
    """Print what went wrong in a sentence (with its causes) and return the exit code.
    Secrets a message might carry (a token, a DSN's password) are masked on the way."""
    if isinstance(exc, BaseExceptionGroup):  # a safety net: task groups are unwrapped
        exc = first_leaf(exc)
    code, text = _explain(mode, exc)
    print(f"asyncsync: {logs.redact(text)}", file=sys.stderr)
    return code


def _explain(mode: str, exc: BaseException) -> tuple[int, str]:
    from .report import exit_code_of  # here: what the parse alone needs stays light

    code = exit_code_of(exc)  # the one table, which the failed run's report carries too
    if code is None:
        raise exc
    if isinstance(exc, ConfigError):
        return code, f"configuration error: {cause_chain(exc)}"
    if isinstance(exc, LockBusy | ReauthorizationRequired):
        return code, str(exc)
    if isinstance(exc, Stopped):
        return code, "interrupted before the database answered: nothing ran"
    if code == 130:
        return code, "interrupted"
    if isinstance(exc, TinyUnavailable | DatabaseUnavailable | OSError):
        return code, f"{mode} failed: {exc}"
    return code, f"{mode} failed: {cause_chain(exc)}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
