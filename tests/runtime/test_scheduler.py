"""The scheduler on a fake clock: intervals, one-shots, daily times across daylight-saving changes."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from zoneinfo import ZoneInfo

import pytest

from runtime.clock import TURN_MAX, Deadline, FakeClock, TimerQueue
from runtime.scheduler import Scheduler, next_daily

HEL = ZoneInfo("Europe/Helsinki")


def local(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, HEL)


async def test_every_and_after() -> None:
    clock = FakeClock()
    sched = Scheduler(clock, HEL, logging.getLogger("t"))
    ticks: list[float] = []
    once: list[float] = []
    sched.every(10, lambda: ticks.append(clock.monotonic()))
    sched.after(25, lambda: once.append(clock.monotonic()))
    await clock.advance(35)
    assert ticks == [10, 20, 30]
    assert once == [25]
    sched.clear()
    await clock.advance(30)
    assert ticks == [10, 20, 30]


async def test_a_failing_job_keeps_its_schedule() -> None:
    clock = FakeClock()
    errors: list[BaseException] = []
    sched = Scheduler(clock, HEL, logging.getLogger("t"), on_error=errors.append)
    runs: list[int] = []

    def job() -> None:
        runs.append(1)
        raise ValueError("boom")

    sched.every(5, job)
    await clock.advance(16)
    assert len(runs) == 3 and len(errors) == 3


def test_next_daily_across_spring_forward() -> None:
    # 2026-03-29: Helsinki jumps from 03:00 to 04:00.
    before = dt.datetime(2026, 3, 28, 12, 0, tzinfo=HEL).timestamp()
    first = next_daily(before, dt.time(0, 0), HEL)
    second = next_daily(first, dt.time(0, 0), HEL)
    assert local(first) == dt.datetime(2026, 3, 29, 0, 0, tzinfo=HEL)
    assert local(second) == dt.datetime(2026, 3, 30, 0, 0, tzinfo=HEL)
    assert second - first == 23 * 3600
    gap = next_daily(dt.datetime(2026, 3, 29, 1, 0, tzinfo=HEL).timestamp(), dt.time(3, 30), HEL)
    assert local(gap).hour == 4 and local(gap).minute == 30  # a time that does not exist runs after the jump


def test_next_daily_across_fall_back_runs_once() -> None:
    # 2026-10-25: Helsinki goes back from 04:00 to 03:00, so 03:30 happens twice.
    start = dt.datetime(2026, 10, 25, 1, 0, tzinfo=HEL).timestamp()
    first = next_daily(start, dt.time(3, 30), HEL)
    second = next_daily(first, dt.time(3, 30), HEL)
    assert local(first).utcoffset() == dt.timedelta(hours=3)
    assert second - first == 25 * 3600  # the second 03:30 of that day is skipped


async def test_daily_job_on_fake_clock_in_site_time_zone() -> None:
    clock = FakeClock(dt.datetime(2026, 3, 28, 23, 0, tzinfo=HEL).timestamp())
    sched = Scheduler(clock, HEL, logging.getLogger("t"))
    runs: list[dt.datetime] = []
    sched.at(dt.time(0, 0), lambda: runs.append(local(clock.time())))
    await clock.advance(72 * 3600 - 1)  # to 23:59:59 on the 31st (local time), across the jump
    assert [r.isoformat() for r in runs] == ["2026-03-29T00:00:00+02:00", "2026-03-30T00:00:00+03:00",
                                              "2026-03-31T00:00:00+03:00"]


async def test_async_jobs_and_cancelling() -> None:
    clock = FakeClock()
    sched = Scheduler(clock, HEL, logging.getLogger("t"))
    starts: list[float] = []

    async def slow() -> None:
        starts.append(clock.monotonic())
        await clock.sleep(4)

    sched.every(10, slow)
    once = sched.after(5, lambda: starts.append(-1.0))
    dropped = sched.after(7, lambda: starts.append(-2.0))
    dropped.cancel()
    await clock.advance(40)
    # The period starts when the previous run ends: 10, 24, 38.
    assert starts == [-1.0, 10, 24, 38]
    assert not once.active and not dropped.active
    sched.clear()  # cancels the run in progress too
    await clock.advance(40)
    assert starts == [-1.0, 10, 24, 38]
    assert clock.sleepers == 0


async def test_immediately_runs_without_the_clock_moving() -> None:
    clock = FakeClock()
    sched = Scheduler(clock, HEL, logging.getLogger("t"))
    runs: list[float] = []
    sched.every(60, lambda: runs.append(clock.monotonic()), immediately=True)
    await clock.advance(0)
    assert runs == [0]
    await clock.advance(60)
    assert runs == [0, 60]


async def test_many_schedulers_share_one_clock_timer() -> None:
    clock = FakeClock()
    timers = TimerQueue(clock)
    runs: list[tuple[int, float]] = []
    schedulers = [Scheduler(clock, HEL, logging.getLogger("t"), timers=timers) for _ in range(50)]
    for i, sched in enumerate(schedulers):
        sched.every(10 + i % 3, lambda i=i: runs.append((i, clock.monotonic())))  # type: ignore[misc]
        sched.after(5, lambda: None)
    assert clock.sleepers == 1  # one armed clock timer for 100 jobs
    assert len(timers) == 100
    await clock.advance(12)
    assert sorted(runs) == sorted([(i, 10 + i % 3) for i in range(50)])
    assert len(timers) == 50  # the one-off jobs are gone, the periodic ones wait again
    for sched in schedulers:
        sched.clear()
    assert len(timers) == 0
    runs.clear()
    await clock.advance(100)
    assert runs == []


async def test_timer_queue_order_failures_and_callbacks_added_while_firing() -> None:
    clock = FakeClock()
    timers = TimerQueue(clock)
    seen: list[str] = []

    def boom() -> None:
        seen.append("boom")
        raise RuntimeError("a broken callback")

    def chain() -> None:
        seen.append("chain")
        timers.call_later(0, lambda: seen.append("queued while firing"))

    timers.call_later(3, lambda: seen.append("c"))
    timers.call_later(1, boom)
    timers.call_later(1, lambda: seen.append("after boom"))
    timers.call_later(2, chain)
    timers.call_later(2, lambda: seen.append("cancelled")).cancel()
    errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
    await clock.advance(5)
    assert seen == ["boom", "after boom", "chain", "queued while firing", "c"]
    assert [str(e["exception"]) for e in errors] == ["a broken callback"]


async def test_timer_queue_drops_cancelled_entries() -> None:
    clock = FakeClock()
    timers = TimerQueue(clock)
    fired: list[int] = []
    handles = [timers.call_later(100 + i, lambda i=i: fired.append(i)) for i in range(3000)]  # type: ignore[misc]
    for handle in handles[:2900]:
        handle.cancel()
    assert len(timers) == 100
    timers.call_later(1, lambda: fired.append(-1))
    await clock.advance(2)
    assert fired == [-1]
    assert len(timers._heap) == 100  # compacted once most entries were cancelled
    await clock.advance(3200)  # the live ones are due at 3000..3099 s
    assert fired == [-1, *range(2900, 3000)]


async def test_timer_queue_lets_the_loop_run_between_large_batches() -> None:
    clock = FakeClock()
    timers = TimerQueue(clock)
    ran: list[int] = []
    seen_by_loop: list[int] = []

    def first() -> None:
        ran.append(0)
        asyncio.get_running_loop().call_soon(lambda: seen_by_loop.append(len(ran)))

    timers.call_later(10, first)
    for i in range(1, 1000):
        timers.call_later(10, lambda i=i: ran.append(i))  # type: ignore[misc]
    await clock.advance(10)
    assert ran == list(range(1000))
    assert seen_by_loop == [TURN_MAX]  # other work ran after the first batch, before the rest


# --- deadlines on the timer queue ------------------------------------------------------------------------


async def test_a_deadline_lets_a_block_that_finishes_in_time_through() -> None:
    clock = FakeClock()
    timers = TimerQueue(clock)

    async def work() -> str:
        async with Deadline(timers, 10):
            await clock.sleep(9)
        return "done"

    task = asyncio.create_task(work())
    await clock.advance(9.5)
    assert await task == "done"
    assert len(timers) == 0  # its timer went with the block
    await clock.advance(5)


async def test_a_deadline_turns_its_own_cancellation_into_timeout_error() -> None:
    clock = FakeClock()
    timers = TimerQueue(clock)
    outcome: list[str] = []

    async def work() -> None:
        try:
            async with Deadline(timers, 10):
                await asyncio.Event().wait()
        except TimeoutError as exc:
            outcome.append(str(exc))
            task = asyncio.current_task()
            assert task is not None and task.cancelling() == 0  # nothing left to cancel what follows
            await clock.sleep(1)
            outcome.append("went on")

    task = asyncio.create_task(work())
    await clock.advance(9.9)
    assert outcome == []
    await clock.advance(2)
    await task
    assert outcome == ["not done within 10 s", "went on"]


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    clock = FakeClock()
    timers = TimerQueue(clock)

    async def work() -> None:
        async with Deadline(timers, 10):
            await asyncio.Event().wait()

    task = asyncio.create_task(work())
    await clock.advance(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(timers) == 0
