"""Clocks: the real one, and a controllable one for tests."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time as _time  # the class below has a method of that name
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol


class Timer(Protocol):
    """A pending callback; `cancel()` stops it."""

    def cancel(self) -> None:
        """Do not run the callback."""
        ...


class Clock(Protocol):
    """Time source given to drivers and the scheduler."""

    def time(self) -> float:
        """Wall-clock time as Unix seconds."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds for measuring intervals."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep for `seconds` of this clock's time."""
        ...

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` on the event loop after `seconds` of this clock's time."""
        ...


class SystemClock:
    """The real clock."""

    # The C functions themselves: `time` is read several times per message.
    time = staticmethod(_time.time)
    """Wall-clock time as Unix seconds."""
    monotonic = staticmethod(_time.monotonic)
    """Monotonic seconds."""

    async def sleep(self, seconds: float) -> None:
        """Sleep on the event loop."""
        await asyncio.sleep(max(0.0, seconds))

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        """A timer on the event loop (no task, no coroutine: cheap enough for one per module)."""
        return asyncio.get_running_loop().call_later(max(0.0, seconds), callback)


class _FakeTimer:
    """A callback due at a fake monotonic time."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run the callback."""
        self.cancelled = True


class FakeClock:
    """A clock that only moves when a test calls `advance`; sleepers wake in time order."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:
        self._now = start
        self._mono = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None] | _FakeTimer]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        """Fake wall-clock Unix seconds."""
        return self._now

    def monotonic(self) -> float:
        """Fake monotonic seconds."""
        return self._mono

    async def sleep(self, seconds: float) -> None:
        """Wait until the fake time has advanced by `seconds`."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + max(0.0, seconds), next(self._seq), fut))
        await fut

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` once the fake time has advanced by `seconds`."""
        timer = _FakeTimer(callback)
        heapq.heappush(self._sleepers, (self._mono + max(0.0, seconds), next(self._seq), timer))
        return timer

    @property
    def sleepers(self) -> int:
        """How many sleeps and timers are waiting."""
        return sum(1 for _, _, f in self._sleepers if not (f.cancelled if isinstance(f, _FakeTimer) else f.done()))

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each sleeper at its due time and letting it run."""
        target = self._mono + seconds
        await _settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            due, _, waiter = heapq.heappop(self._sleepers)
            if waiter.cancelled if isinstance(waiter, _FakeTimer) else waiter.done():
                continue
            self._now += due - self._mono
            self._mono = due
            if isinstance(waiter, _FakeTimer):
                waiter.callback()
            else:
                waiter.set_result(None)
            await _settle()
        self._now += target - self._mono
        self._mono = target
        await _settle()

    def set_time(self, unix_seconds: float) -> None:
        """Jump the wall clock without waking sleepers (the monotonic clock is unchanged)."""
        self._now = unix_seconds


async def _settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


TURN_MAX = 256
"""Callbacks a `TimerQueue` runs per event-loop turn: 10,000 modules' jobs falling due together must not
stall the loop (and every message waiting in it) for the whole batch."""


class _QueuedTimer:
    """One callback waiting in a `TimerQueue`."""

    __slots__ = ("callback", "queue")

    def __init__(self, callback: Callable[[], None], queue: TimerQueue) -> None:
        self.callback: Callable[[], None] | None = callback
        self.queue = queue

    def cancel(self) -> None:
        """Do not run the callback."""
        if self.callback is not None:
            self.callback = None
            self.queue._cancelled += 1


class TimerQueue:
    """Many timers on one clock timer: the callbacks of every module's scheduled jobs.

    An event-loop timer costs about half a kilobyte (its handle, a libuv timer, a context copy);
    a site of 10,000 modules with two jobs each would hold 20,000 of them. Here each waiting
    callback is one small entry in a heap, and only the earliest is armed on the clock.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, _QueuedTimer]] = []
        self._seq = itertools.count()
        self._timer: Timer | None = None
        self._armed_at: float | None = None
        self._cancelled = 0

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` on the event loop after `seconds` of the clock's time."""
        when = self._clock.monotonic() + max(0.0, seconds)
        entry = _QueuedTimer(callback, self)
        heapq.heappush(self._heap, (when, next(self._seq), entry))
        if self._armed_at is None or when < self._armed_at:
            self._arm(when)
        return entry

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = when
        self._timer = self._clock.call_later(when - self._clock.monotonic(), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed_at = None
        now = self._clock.monotonic()
        first_new = next(self._seq)  # callbacks queued while these run wait for the next turn
        heap = self._heap
        budget = TURN_MAX
        while heap and heap[0][0] <= now and heap[0][1] < first_new and budget:
            budget -= 1
            entry = heapq.heappop(heap)[2]
            callback = entry.callback
            if callback is None:
                self._cancelled -= 1
                continue
            entry.callback = None
            try:
                callback()
            except Exception as exc:  # one failing callback must not hold back the others
                asyncio.get_running_loop().call_exception_handler(
                    {"message": "timer callback failed", "exception": exc})
        if self._cancelled > 1024 and self._cancelled * 2 > len(heap):
            self._heap = heap = [item for item in heap if item[2].callback is not None]
            heapq.heapify(heap)
            self._cancelled = 0
        while heap and heap[0][2].callback is None:
            heapq.heappop(heap)
            self._cancelled -= 1
        if heap:
            self._arm(heap[0][0])


class Deadline:
    """`async with Deadline(timers, seconds):` bounds a block as `asyncio.timeout(seconds)` does, on a `TimerQueue`.

    When the time is up the task is cancelled and the block raises `TimeoutError`; a cancellation from
    elsewhere stays a cancellation. A site loads 10,000 modules, each load bounded: an event-loop timer per
    bound cost more than many a module's whole load, where this is one heap entry on the runtime's clock
    (which tests drive).
    """

    __slots__ = ("_cancelling", "_expired", "_seconds", "_task", "_timer", "_timers")

    def __init__(self, timers: TimerQueue, seconds: float) -> None:
        self._timers = timers
        self._seconds = seconds
        self._task: asyncio.Task[Any] | None = None
        self._timer: Timer | None = None
        self._cancelling = 0
        self._expired = False

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadline is used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._timer = self._timers.call_later(self._seconds, self._expire)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._expired and self._task is not None and self._task.uncancel() <= self._cancelling \
                and exc_type is asyncio.CancelledError:
            raise TimeoutError(f"not done within {self._seconds:g} s") from exc

    def _expire(self) -> None:
        self._timer = None
        if self._task is not None and not self._task.done():
            self._expired = True
            self._task.cancel()
