"""Per-module scheduling of work: every N seconds, daily at a local time, once after a delay."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
from collections.abc import Awaitable, Callable
from zoneinfo import ZoneInfo

from runtime.clock import Clock, Timer

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
    """A handle on one scheduled job; `cancel()` stops it.

    A job waits on a clock timer, not in a task: a site of 10,000 modules keeps 10,000 timers,
    not 10,000 sleeping coroutines. An async job runs in a task while it runs.
    """

    __slots__ = ("_delay", "_job", "_name", "_scheduler", "_task", "_timer", "active")

    def __init__(self, scheduler: Scheduler, job: Job, name: str, delay: Callable[[], float | None]) -> None:
        self._scheduler = scheduler
        self._job = job
        self._name = name
        self._delay = delay  # seconds until the next run, None when the job is over
        self._timer: Timer | None = None
        self._task: asyncio.Task[None] | None = None
        self.active = True
        """True while the job may still run."""

    def cancel(self) -> None:
        """Stop the job (and a run in progress)."""
        self.active = False
        self._scheduler._jobs.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _arm(self) -> None:
        delay = self._delay() if self.active else None
        if delay is None:
            self.cancel()
            return
        self._timer = self._scheduler._clock.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if not self.active:
            return
        result = self._scheduler._call(self._job, self._name)
        if result is None:
            self._arm()
            return
        self._task = asyncio.ensure_future(self._scheduler._wait(result, self._name))
        self._task.set_name(f"schedule:{self._name}")
        self._task.add_done_callback(self._ran)

    def _ran(self, task: asyncio.Task[None]) -> None:
        if task is self._task:
            self._task = None
            if not task.cancelled():
                self._arm()


class Scheduler:
    """Runs a module's jobs on the runtime's clock; failures are logged and never stop a job."""

    def __init__(self, clock: Clock, tz: ZoneInfo, logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self._clock = clock
        self.timezone = tz
        self._log = logger
        self._on_error = on_error
        self._jobs: set[ScheduledJob] = set()

    def every(self, seconds: float, job: Job, *, name: str = "every", immediately: bool = False) -> ScheduledJob:
        """Run `job` every `seconds` (first run after one period unless `immediately`); the period starts
        when the previous run ends."""
        if seconds <= 0:
            raise ValueError("interval must be positive")
        handle = self._add(ScheduledJob(self, job, name, lambda: seconds))
        if immediately:
            handle._timer = asyncio.get_running_loop().call_soon(handle._fire)
        else:
            handle._arm()
        return handle

    def at(self, time_of_day: dt.time, job: Job, *, tz: ZoneInfo | None = None, name: str = "at") -> ScheduledJob:
        """Run `job` every day at `time_of_day` in `tz` (default: the module's site time zone)."""
        zone = tz or self.timezone
        clock = self._clock

        def delay() -> float:
            now = clock.time()
            return next_daily(now, time_of_day, zone) - now

        handle = self._add(ScheduledJob(self, job, name, delay))
        handle._arm()
        return handle

    def after(self, seconds: float, job: Job, *, name: str = "after") -> ScheduledJob:
        """Run `job` once after `seconds`."""
        pending = [seconds]

        def delay() -> float | None:
            return pending.pop() if pending else None

        handle = self._add(ScheduledJob(self, job, name, delay))
        handle._arm()
        return handle

    def clear(self) -> None:
        """Cancel every job (drivers call this at the top of `on_update`)."""
        for job in list(self._jobs):
            job.cancel()
        self._jobs.clear()

    def _add(self, job: ScheduledJob) -> ScheduledJob:
        self._jobs.add(job)
        return job

    def _call(self, job: Job, name: str) -> Awaitable[None] | None:
        """Run a job; an awaitable result is returned for the caller to await."""
        try:
            result = job()
        except Exception as exc:  # a job's failure is reported, the schedule goes on
            self._failed(name, exc)
            return None
        return result if inspect.isawaitable(result) else None

    async def _wait(self, result: Awaitable[None], name: str) -> None:
        try:
            await result
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a job's failure is reported, the schedule goes on
            self._failed(name, exc)

    def _failed(self, name: str, exc: BaseException) -> None:
        self._log.error("scheduled job %s failed: %s", name, exc, exc_info=exc)
        if self._on_error is not None:
            self._on_error(exc)
