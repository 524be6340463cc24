"""Per-module scheduling of work: every N seconds, daily at a local time, once after a delay."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol
from zoneinfo import ZoneInfo

from runtime.clock import Clock, Timer

Job = Callable[[], Awaitable[None] | None]
LoggerLike = logging.Logger | logging.LoggerAdapter[logging.Logger]


class TimerSource(Protocol):
    """Where jobs wait: a clock, or the runtime's shared `TimerQueue`."""

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` after `seconds`."""
        ...


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

    A job waits on a timer, not in a task: a site of 10,000 modules keeps 10,000 small timer
    entries, not 10,000 sleeping coroutines. An async job runs in a task while it runs.
    """

    __slots__ = ("_job", "_name", "_period", "_scheduler", "_task", "_timer", "_tz", "_when", "active")

    def __init__(self, scheduler: Scheduler, job: Job, name: str, *, period: float | None = None,
                 when: float | dt.time | None = None) -> None:
        self._scheduler = scheduler
        self._job = job
        self._name = name
        self._period = period  # every `period` seconds
        self._when = when  # a daily wall-clock time, or the delay of a one-off run (None once it ran)
        self._tz: ZoneInfo | None = None  # a daily job's own time zone, when not the module's
        self._timer: Timer | None = None
        self._task: asyncio.Task[None] | None = None
        self.active = True
        """True while the job may still run."""

    def cancel(self) -> None:
        """Stop the job (and a run in progress)."""
        self.active = False
        with contextlib.suppress(ValueError):
            self._scheduler._jobs.remove(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _delay(self) -> float | None:
        """Seconds until the next run; None when the job is over."""
        if self._period is not None:
            return self._period
        when = self._when
        if isinstance(when, dt.time):
            clock = self._scheduler._clock
            now = clock.time()
            return next_daily(now, when, self._scheduler.timezone if self._tz is None else self._tz) - now
        self._when = None
        return when

    def _arm(self) -> None:
        delay = self._delay() if self.active else None
        if delay is None:
            self.cancel()
            return
        self._timer = self._scheduler._timers.call_later(delay, self._fire)

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

    __slots__ = ("_clock", "_jobs", "_log", "_on_error", "_timers", "timezone")

    def __init__(self, clock: Clock, tz: ZoneInfo, logger: LoggerLike | Callable[[], LoggerLike],
                 on_error: Callable[[BaseException], None] | None = None, *, timers: TimerSource | None = None) -> None:
        self._clock = clock
        self._timers: TimerSource = timers if timers is not None else clock
        self.timezone = tz
        """The module's site time zone (daily jobs without their own)."""
        self._log = logger
        self._on_error = on_error
        self._jobs: list[ScheduledJob] = []

    def every(self, seconds: float, job: Job, *, name: str = "every", immediately: bool = False) -> ScheduledJob:
        """Run `job` every `seconds` (first run after one period unless `immediately`); the period starts
        when the previous run ends."""
        if seconds <= 0:
            raise ValueError("interval must be positive")
        handle = self._add(ScheduledJob(self, job, name, period=seconds))
        if immediately:
            handle._timer = asyncio.get_running_loop().call_soon(handle._fire)
        else:
            handle._arm()
        return handle

    def at(self, time_of_day: dt.time, job: Job, *, tz: ZoneInfo | None = None, name: str = "at") -> ScheduledJob:
        """Run `job` every day at `time_of_day` in `tz` (default: the module's site time zone)."""
        handle = self._add(ScheduledJob(self, job, name, when=time_of_day))
        if tz is not None:
            handle._tz = tz
        handle._arm()
        return handle

    def after(self, seconds: float, job: Job, *, name: str = "after") -> ScheduledJob:
        """Run `job` once after `seconds`."""
        handle = self._add(ScheduledJob(self, job, name, when=float(seconds)))
        handle._arm()
        return handle

    def clear(self) -> None:
        """Cancel every job (drivers call this at the top of `on_update`)."""
        for job in list(self._jobs):
            job.cancel()
        self._jobs.clear()

    def _add(self, job: ScheduledJob) -> ScheduledJob:
        self._jobs.append(job)
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
        log = self._log if isinstance(self._log, logging.Logger | logging.LoggerAdapter) else self._log()
        log.error("scheduled job %s failed: %s", name, exc, exc_info=exc)
        if self._on_error is not None:
            self._on_error(exc)
