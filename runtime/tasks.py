"""Helpers for retry loops and their owners: notice a lost cancellation, and stop a task with a bound.

A retry loop catches connection errors and timeouts to try again. A cancellation can reach it disguised
as one of those (a timeout helper racing the cancel, a library reporting the torn-down connection) or not
at all (a clean-up that suppressed it, `asyncio.wait_for` on Python 3.11 when the inner call finished at
the same moment). The task's `cancelling()` count still says it was asked to stop, so a loop that checks
it after every caught error ends as it should; and an owner that waits for the task with a bound never
hangs on one that does not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from typing import Any

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]
STOP_TIMEOUT = 5.0
"""Seconds an owner waits for a cancelled task of its own before going on without it."""
_left_behind: set[asyncio.Future[Any]] = set()  # strong references to work that outlived its bound


def cancel_requested() -> bool:
    """Whether the current task has been asked to stop, even if the `CancelledError` never reached it."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def raise_if_cancelled() -> None:
    """Raise `CancelledError` when the current task was cancelled and the cancellation got lost on the way."""
    if cancel_requested():
        raise asyncio.CancelledError


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], timeout: float, logger: Logger, what: str) -> bool:
    """Cancel `tasks` and wait at most `timeout` seconds for them to end; False (and a warning) if some did not.

    A task left behind keeps its cancellation and is not awaited again.
    """
    pending = set(tasks)
    for task in pending:
        task.cancel()
    if not pending:
        return True
    done, stuck = await asyncio.wait(pending, timeout=timeout)
    for task in done:
        _retrieve(task)
    if not stuck:
        return True
    for task in stuck:
        _leave(task)
    names = ", ".join(sorted(task.get_name() for task in stuck))
    logger.warning("%s did not stop within %.1f s of being cancelled; going on without waiting (%s)", what, timeout,
                   names)
    return False


async def finish_within(aw: Awaitable[Any], timeout: float, logger: Logger, what: str) -> bool:
    """Await `aw` for at most `timeout` seconds; past that, warn and leave it to finish in the background (False).

    Unlike `asyncio.timeout`, this returns on time even when `aw` ignores cancellation. What `aw` raises in
    time is raised here; if the caller is cancelled, so is `aw`.
    """
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if done:
        task.result()
        return True
    _leave(task)
    logger.warning("%s did not finish within %.1f s; going on without waiting for it", what, timeout)
    return False


def _leave(task: asyncio.Future[Any]) -> None:
    """Keep `task` referenced until it ends, then retrieve its error so it is not reported as never retrieved."""
    _left_behind.add(task)
    task.add_done_callback(_left_behind.discard)
    task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
