"""No request goes out once its run is told to stop.

A run's stop (SIGTERM, a worker's lost lease) reaches each request as the ``stop`` event
its caller passes. A request still waiting to be sent then, at the account's limiter,
for the circuit's probe or for its retry, is withheld: the wait ends at once and
:class:`~asyncsync.errors.RequestWithheld` is raised. A request already sent is never
cancelled here: what it brings is merged as usual.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable
from typing import TypeVar

from ..errors import RequestWithheld
from ..tasks import Stopped, until_stopped

T = TypeVar("T")


#: What a withheld request says.
_WITHHELD = "the run is stopping: a request not sent yet was withheld"


def withhold(stop: asyncio.Event | None) -> None:
    """Raise RequestWithheld if ``stop`` is set: the request must not go out."""
    if stop is not None and stop.is_set():
        raise RequestWithheld(_WITHHELD)


async def waiting(awaitable: Awaitable[T], stop: asyncio.Event | None) -> T:
    """``awaitable`` (a wait before a request is sent), ended by ``stop``: RequestWithheld
    if it is set before or while it waits."""
    if stop is None:
        return await awaitable
    if stop.is_set():
        if inspect.iscoroutine(awaitable):
            awaitable.close()  # never started: nothing to undo
        raise RequestWithheld(_WITHHELD)
    try:
        return await until_stopped(awaitable, stop)
    except Stopped:
        raise RequestWithheld(_WITHHELD) from None
