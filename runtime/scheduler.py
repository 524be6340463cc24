"""Per-module scheduling of work: every N seconds, daily at a local time, once after a delay."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
from collections.abc import Awaitable, Callable
from zoneinfo import ZoneInfo

from runtime.clock import Clock

Job = Callable[[], Awaitable[None] | None]


def next_daily(now: float, at: dt.time, tz: ZoneInfo) -> float:
    """Unix time of the next `at` wall-clock time in `tz` strictly after `now`.

    A time that does not exist on a spring-forward day runs at the equivalent
    instant after the jump; a time that occurs twice on a fall-back day runs once,
    at its first occurrence.
    """
    local_now = dt.datetime.fromtimestamp(now, tz)
    day = local_now.date()
    for offset in range(3):
        candidate = dt.datetime.combine(day + dt.timedelta(days=offset), at, tzinfo=tz)
        ts = candidate.replace(fold=0).timestamp()
        if ts > now:
            return ts
    raise AssertionError("unreachable: a daily time always occurs within three days")


class ScheduledJob:
    """A handle on one scheduled job; `cancel()` stops it."""

    def __init__(self, task: asyncio.Task[None]) -> None:
        self._task = task

    def cancel(self) -> None:
        """Stop the job."""
        self._task.cancel()

    @property
    def active(self) -> bool:
        """True while the job may still run."""
        return not self._task.done()


class Scheduler:
    """Runs a module's jobs on the runtime's clock; failures are logged and never stop a job."""

    def __init__(self, clock: Clock, tz: ZoneInfo, logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self._clock = clock
        self.timezone = tz
        self._log = logger
        self._on_error = on_error
        self._jobs: set[asyncio.Task[None]] = set()

    def every(self, seconds: float, job: Job, *, name: str = "every", immediately: bool = False) -> ScheduledJob:
        """Run `job` every `seconds` (first run after one period unless `immediately`)."""
        if seconds <= 0:
            raise ValueError("interval must be positive")

        async def loop() -> None:
            if immediately:
                await self._run(job, name)
            while True:
                await self._clock.sleep(seconds)
                await self._run(job, name)

        return self._start(loop(), name)

    def at(self, time_of_day: dt.time, job: Job, *, tz: ZoneInfo | None = None, name: str = "at") -> ScheduledJob:
        """Run `job` every day at `time_of_day` in `tz` (default: the module's site time zone)."""
        zone = tz or self.timezone

        async def loop() -> None:
            while True:
                now = self._clock.time()
                await self._clock.sleep(next_daily(now, time_of_day, zone) - now)
                await self._run(job, name)

        return self._start(loop(), name)

    def after(self, seconds: float, job: Job, *, name: str = "after") -> ScheduledJob:
        """Run `job` once after `seconds`."""

        async def once() -> None:
            await self._clock.sleep(seconds)
            await self._run(job, name)

        return self._start(once(), name)

    def clear(self) -> None:
        """Cancel every job (drivers call this at the top of `on_update`)."""
        for task in list(self._jobs):
            task.cancel()
        self._jobs.clear()

    def _start(self, coro: Awaitable[None], name: str) -> ScheduledJob:
        task = asyncio.ensure_future(coro)
        task.set_name(f"schedule:{name}")
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)
        return ScheduledJob(task)

    async def _run(self, job: Job, name: str) -> None:
        try:
            result = job()
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a job's failure is reported, the schedule goes on
            self._log.error("scheduled job %s failed: %s", name, exc, exc_info=exc)
            if self._on_error is not None:
                self._on_error(exc)
