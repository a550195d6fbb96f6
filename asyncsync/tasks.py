"""Structured concurrency that fails like sequential code.

``asyncio.TaskGroup`` wraps a child's error in an ``ExceptionGroup``; callers of this
package expect the error itself (a :class:`~asyncsync.errors.TinyAuthError`, say), so
every task group here is awaited through :func:`unwrap`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error of ``group``, depth first; cancellations only if nothing else."""
    leaves: list[BaseException] = []

    def walk(g: BaseExceptionGroup[BaseException]) -> None:
        for exc in g.exceptions:
            walk(exc) if isinstance(exc, BaseExceptionGroup) else leaves.append(exc)

    walk(group)
    return next((e for e in leaves if not isinstance(e, asyncio.CancelledError)), leaves[0])


async def unwrap(awaitable: Awaitable[T]) -> T:
    """Await; a failure inside a TaskGroup surfaces as itself, not as an ExceptionGroup."""
    try:
        return await awaitable
    except BaseExceptionGroup as group:
        raise first_leaf(group)  # noqa: B904 - the leaf keeps its own __cause__


async def run_all(coros: Iterable[Coroutine[Any, Any, object]]) -> None:
    """Run coroutines concurrently; the first failure cancels the others and is raised."""

    async def group() -> None:
        async with asyncio.TaskGroup() as tg:
            for coro in coros:
                tg.create_task(coro)

    await unwrap(group())


async def outlast_cancellation(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end even if the caller is cancelled meanwhile (a write that must
    follow a request already sent); the caller's cancellation is raised once it is done.

    ``asyncio.shield`` alone lets the caller leave at once, releasing the locks and the
    connection the shielded work still uses."""
    task = asyncio.ensure_future(coro)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if not (task.done() and task.cancelled()):
                cancelled = exc  # ours (even if the work ended in the same step): kept
        except BaseException:  # the work's own error: task.result() raises it
            pass
    if cancelled is not None:
        if not task.cancelled():
            task.exception()  # retrieved: the caller's cancellation is what goes on
        raise cancelled
    return task.result()


class Stopped(Exception):
    """Raised by :func:`until_stopped`: ``stop`` was set first, and the work cancelled."""


async def until_stopped(awaitable: Awaitable[T], stop: asyncio.Event, grace_s: float = 0.0) -> T:
    """Await ``awaitable`` in this task, cancelled once ``stop`` has been set for
    ``grace_s`` seconds (raising :class:`Stopped`): work that cannot check ``stop`` itself,
    a connection to a server that does not answer, ends at a SIGTERM rather than at its
    own timeout, while work that ends within the grace goes on to see ``stop`` itself."""
    task = asyncio.current_task()
    assert task is not None
    waiting = True

    def cancel(_: object) -> None:
        if waiting:  # not once the work ended: that cancellation would hit what follows
            task.cancel("stopped")

    async def stopped() -> None:
        await stop.wait()
        await asyncio.sleep(grace_s)

    watcher = asyncio.ensure_future(stopped())
    watcher.add_done_callback(cancel)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if not (watcher.done() and not watcher.cancelled()) or task.uncancel() > 0:
            raise  # a cancellation of the caller's, not (only) the stop's
        raise Stopped from None
    finally:
        waiting = False
        watcher.cancel()
