"""The module manager: runs each module under a supervisor and gives it its context.

A module whose `on_load` raises, or whose task crashes, is unloaded and retried with
capped exponential backoff; its `connected` state is false meanwhile and nothing else
is affected. Settings changes reach running modules through `on_update`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import msgspec

from runtime.clock import Clock, Deadline, TimerQueue
from runtime.driver import Driver, DriverMetrics, StateCallback, Transports
from runtime.errors import DriverError
from runtime.metrics import DriverCounters, Metrics
from runtime.plan import ModulePlan, Plan
from runtime.publisher import Publisher, Routes, StateEntry
from runtime.registry import Registry
from runtime.scheduler import Scheduler
from runtime.shared import SharedServices
from runtime.tasks import cancel_and_wait, finish_within, raise_if_cancelled

T = TypeVar("T")
_log = logging.getLogger("runtime.module")
CONNECTED = "connected"
START_BATCH = 256
"""Modules started per event-loop turn: between batches the loop gets to the brokers, so metadata and the first
states go out (to a broker working on another core) while the rest of a large site is still loading."""
encode = msgspec.json.Encoder().encode


class Status(enum.StrEnum):
    """Lifecycle status of a module."""

    LOADING = "loading"
    RUNNING = "running"
    FAILED = "failed"
    STOPPED = "stopped"


class _Watch:
    """A subscription of one module to a state key of another."""

    def __init__(self, target: ModuleHost, key: str, callback: StateCallback) -> None:
        self.target = target
        self.key = key
        self.callback = callback

    def cancel(self) -> None:
        """Stop following."""
        watchers = self.target.watchers.get(self.key) if self.target.watchers else None
        if watchers and self in watchers:
            watchers.remove(self)


class ModuleHost:
    """The runtime side of one module: its `ModuleContext`, state and supervisor.

    A site may run 10,000 of these, so a host is slotted and builds its logger and scheduler
    only when first asked for, and its task and watch collections only when first used.
    """

    __slots__ = ("_crash", "_delay", "_logger", "_schedule", "_stopping", "_supervisor", "_tasks", "_watches",
                 "driver_id", "failures", "instance", "loads", "manager", "metrics", "module_id", "name",
                 "needs_upstream", "plan", "prefixes", "routes", "states", "status", "timezone", "upstream_ok",
                 "watchers")

    def __init__(self, manager: Manager, plan: ModulePlan) -> None:
        self.manager = manager
        self.plan = plan
        self.module_id = plan.id
        self.driver_id = plan.driver_id
        self.name = plan.name
        self.prefixes = plan.prefixes
        self.routes: dict[str, Routes] = {}
        self.timezone = ZoneInfo(plan.timezone)
        self.metrics: DriverMetrics = manager.driver_counters(plan.driver_id)
        self.states: dict[str, StateEntry] = {}
        self.watchers: dict[str, list[_Watch]] | None = None
        self.status = Status.LOADING
        self.upstream_ok = False
        self.needs_upstream = True
        """Whether `connected` waits for `set_connected(True)` (the driver's `has_upstream`, known once loaded)."""
        self.loads = 0
        self.failures = 0
        self.instance: Driver[Any] | None = None
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None
        self._schedule: Scheduler | None = None
        self._tasks: set[asyncio.Task[None]] | None = None
        self._watches: list[_Watch] | None = None
        self._crash: BaseException | None = None  # a failure while an attempt is in progress
        self._delay = manager.backoff_initial
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger that puts the module id on every line."""
        return self._get_logger()

    def _get_logger(self) -> logging.LoggerAdapter[logging.Logger]:
        if self._logger is None:
            self._logger = logging.LoggerAdapter(_log, {"module_id": self.module_id})
        return self._logger

    @property
    def schedule(self) -> Scheduler:
        """The module's scheduler (cleared on unload)."""
        if self._schedule is None:
            # The logger is passed as its getter: it is only needed if a job fails.
            self._schedule = Scheduler(self.manager.clock, self.timezone, self._get_logger,
                                       on_error=self._job_failed, timers=self.manager.timers)
        return self._schedule

    @property
    def clock(self) -> Clock:
        """The runtime's clock."""
        return self.manager.clock

    @property
    def transports(self) -> Transports:
        """Network access lent by the runtime."""
        return self.manager.transports

    @property
    def state_dir(self) -> Path:
        """The module's directory for small persistent state (made by the driver's first write)."""
        return self.manager.state_dir / self.module_id

    def read_state(self, name: str) -> bytes | None:
        """The contents of file `name` in `state_dir`, or None when there is none."""
        # Plain strings: 10,000 modules look for their file at start, most find none, and building a Path for
        # each cost more than the failed open.
        try:
            with open(os.path.join(self.manager.state_root, self.module_id, name), "rb") as file:
                return file.read()
        except FileNotFoundError:
            return None

    # -- ModuleContext --------------------------------------------------------------------

    def set_state(self, key: str, value: Any) -> None:
        """Set a state key; published only when the encoded value changed; None clears it."""
        if key == CONNECTED:
            raise DriverError("`connected` is owned by the runtime; report upstream health with set_connected()")
        self._set(key, value)

    def get_state(self, key: str) -> Any:
        """Current value of a state key."""
        entry = self.states.get(key)
        return entry.value if entry is not None else None

    def set_connected(self, up: bool) -> None:
        """Record whether the upstream works."""
        self.upstream_ok = up
        self._update_connected()

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        """Run a module-owned task; its crash restarts the module."""
        task = asyncio.create_task(coro, name=f"{self.module_id}:{name}")
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    async def shared(self, slot: str, key: Hashable, factory: Callable[[], Awaitable[T]]) -> T:
        """A shared service for `key` (see `ModuleContext.shared`)."""
        return await self.manager.shared.acquire(self.module_id, slot, key, factory)

    def subscribe(self, module: str, state: str, callback: StateCallback) -> _Watch:
        """Follow another module's state in this module's systems."""
        target = self.manager.resolve(self, module)
        watch = _Watch(target, state, callback)
        if target.watchers is None:
            target.watchers = {}
        target.watchers.setdefault(state, []).append(watch)
        if self._watches is None:
            self._watches = []
        self._watches.append(watch)
        entry = target.states.get(state)
        if entry is not None:
            callback(state, entry.value)
        return watch

    # -- internals ---------------------------------------------------------------------------

    def _set(self, key: str, value: Any) -> None:
        if value is None:
            gone = self.states.pop(key, None)
            if gone is not None:
                gone.supersede()
                self.manager.publisher.state_changed(self, key)
            return
        raw = encode(value)
        entry = self.states.get(key)
        if entry is not None:
            if entry.raw == raw:
                return
            # In a burst every key of a site may wait to be rendered: what the old entry held can go now.
            entry.supersede()
        entry = StateEntry(value, raw, int(self.manager.clock.time() * 1000))
        self.states[key] = entry
        self.manager.publisher.state_changed(self, key)
        watchers = self.watchers.get(key) if self.watchers else None
        if watchers:
            for watch in list(watchers):
                try:
                    watch.callback(key, value)
                except Exception as exc:  # a follower's bug must not break the publisher
                    _log.error("state callback for %s.%s failed: %s", self.module_id, key, exc, exc_info=exc)

    def _update_connected(self) -> None:
        up = self.status is Status.RUNNING and (self.upstream_ok or not self.needs_upstream)
        self._set(CONNECTED, up)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self._tasks is not None:
            self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        """A module task or `on_update` failed: unload and load again after the backoff."""
        if self._supervisor is not None:
            # Loading (or already recovering): the attempt in progress takes the failure into account.
            if self._crash is None:
                self._crash = exc
            return
        if self.status is not Status.RUNNING or self._stopping:
            return
        self._supervisor = asyncio.create_task(self._attempt(exc), name=f"module:{self.module_id}")

    def _job_failed(self, exc: BaseException) -> None:
        self.manager.metrics.job_errors.labels(self.driver_id).inc()

    def start(self) -> None:
        """Start loading; failures are retried with backoff."""
        self._supervisor = asyncio.create_task(self._attempt(None), name=f"module:{self.module_id}")

    async def _attempt(self, failure: BaseException | None) -> None:
        """Load until it works, backing off after each failure. No task is left while the module runs."""
        try:
            while True:
                if failure is not None:
                    await self._failed(failure)
                    failure = None
                self._crash = None
                try:
                    await self._load()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    raise_if_cancelled()  # a load cut short by a stop is not a failure to retry
                    failure = exc
                    continue
                self._delay = self.manager.backoff_initial
                if self._crash is None:
                    return
                failure = self._crash
        finally:
            if self._supervisor is asyncio.current_task():
                self._supervisor = None

    async def _failed(self, failure: BaseException) -> None:
        exc = failure
        if self.status is not Status.LOADING:
            exc = DriverError(f"task crashed: {failure!r}")
            exc.__cause__ = failure
        delay = self._delay
        self.failures += 1
        self.status = Status.FAILED
        self.manager.metrics.module_restarts.labels(self.driver_id).inc()
        self.logger.error("module failed: %s; retrying in %.1f s", exc, delay,
                          exc_info=exc if not isinstance(exc, DriverError) else None)
        self._update_connected()
        self.manager.first_attempt_done(self)
        await self._teardown()
        await self.manager.clock.sleep(delay)
        self._delay = min(self.manager.backoff_cap, delay * 2)

    async def _load(self) -> None:
        self.status = Status.LOADING
        self.upstream_ok = False
        cls = self.manager.registry.get(self.plan.driver_key)
        self.needs_upstream = cls.has_upstream
        settings = self.plan.driver_settings(cls.Settings)
        self.instance = cls(self, settings)
        self.loads += 1
        async with Deadline(self.manager.timers, self.manager.load_timeout):
            await self.instance.on_load()
            await self.instance.on_update()
        self.status = Status.RUNNING
        self._update_connected()
        self.manager.first_attempt_done(self)

    async def release(self, slot: str) -> None:
        """Let go of the shared service held in `slot`, if any."""
        await self.manager.shared.release(self.module_id, slot)

    async def update(self, plan: ModulePlan) -> None:
        """Apply changed merged settings with `on_update` (a failure restarts the module)."""
        self.plan = plan
        if plan.timezone != self.timezone.key:
            self.timezone = ZoneInfo(plan.timezone)
            if self._schedule is not None:
                self._schedule.timezone = self.timezone
        instance = self.instance
        if self.status is not Status.RUNNING or instance is None:
            return
        cls = self.manager.registry.get(plan.driver_key)
        instance.settings = plan.driver_settings(cls.Settings)
        try:
            async with Deadline(self.manager.timers, self.manager.load_timeout):
                await instance.on_update()
        except Exception as exc:
            self._fail(exc)

    async def _teardown(self) -> None:
        instance, self.instance = self.instance, None
        if instance is not None:
            try:
                async with asyncio.timeout(self.manager.unload_timeout):
                    await instance.on_unload()
            except Exception as exc:  # unloading a broken module is best effort
                self.logger.warning("on_unload failed: %s", exc)
        if self._schedule is not None:
            self._schedule.clear()
        for watch in self._watches or ():
            watch.cancel()
        self._watches = None
        timeout = self.manager.unload_timeout
        await cancel_and_wait(list(self._tasks or ()), timeout, self.logger, f"module {self.module_id}: its tasks")
        # Closing a shared service can hang on a vendor connection; shutdown and reloads must go on regardless.
        await finish_within(self.manager.shared.release_all(self.module_id), timeout, self.logger,
                            f"module {self.module_id}: releasing its shared services")

    async def stop(self) -> None:
        """Stop the supervisor and unload; a supervisor that ignores its cancellation is left behind."""
        self._stopping = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            await cancel_and_wait([supervisor], self.manager.unload_timeout, self.logger,
                                  f"module {self.module_id}: its load supervisor")
        await self._teardown()
        self.status = Status.STOPPED


class Manager:
    """All module hosts of a runtime."""

    def __init__(self, registry: Registry, publisher: Publisher, clock: Clock, transports: Transports,
                 metrics: Metrics, state_dir: Path, *, backoff_initial: float = 1.0, backoff_cap: float = 60.0,
                 load_timeout: float = 30.0, unload_timeout: float = 5.0) -> None:
        self.registry = registry
        self.publisher = publisher
        self.clock = clock
        self.timers = TimerQueue(clock)
        """Where every module's scheduled jobs wait (one clock timer for all of them)."""
        self.transports = transports
        self.metrics = metrics
        self.state_dir = state_dir
        self.state_root = str(state_dir)
        """`state_dir` as a string, made once: modules look for their files with plain strings."""
        self.shared = SharedServices()
        self.hosts: dict[str, ModuleHost] = {}
        self.plan: Plan | None = None
        self.backoff_initial = backoff_initial
        self.backoff_cap = backoff_cap
        self.load_timeout = load_timeout
        self.unload_timeout = unload_timeout
        self._counters: dict[str, DriverCounters] = {}
        self._first_load: set[ModuleHost] = set()  # hosts whose first load attempt has not finished
        self._first_loads_done = asyncio.Event()
        self._first_loads_done.set()
        self._applying = asyncio.Lock()

    def first_attempt_done(self, host: ModuleHost) -> None:
        """A module finished a load attempt (it runs, or it failed and will be retried)."""
        first = self._first_load
        if host in first:
            first.discard(host)
            if not first:
                self._first_loads_done.set()

    def driver_counters(self, driver_id: str) -> DriverCounters:
        """The metrics of one driver record."""
        counters = self._counters.get(driver_id)
        if counters is None:
            counters = self._counters[driver_id] = DriverCounters(self.metrics, driver_id)
        return counters

    def resolve(self, source: ModuleHost, ref: str) -> ModuleHost:
        """The module addressed `Name` or `Name_idx` in one of `source`'s systems."""
        plan = self.plan
        if plan is None:
            raise LookupError(ref)
        name, _, idx = ref.rpartition("_")
        key = ref if name and idx.isdigit() else f"{ref}_1"
        for binding in source.plan.bindings:
            target = plan.systems[binding.system].refs.get(key)
            if target is not None and target in self.hosts:
                return self.hosts[target]
        raise LookupError(f"no module {ref!r} in the systems of {source.module_id}")

    async def apply(self, plan: Plan) -> None:
        """Start, stop and update modules so that they match `plan` (one plan at a time)."""
        async with self._applying:
            await self._apply(plan)

    async def _apply(self, plan: Plan) -> None:
        old = self.plan
        self.plan = plan
        removed = [h for mid, h in self.hosts.items() if mid not in plan.modules]
        await asyncio.gather(*(self._remove(h) for h in removed))
        started = 0
        for mid, module in plan.modules.items():
            host = self.hosts.get(mid)
            if host is None or (old is not None and old.modules[mid].driver_key != module.driver_key):
                if host is not None:
                    await self._remove(host)
                host = self.hosts[mid] = ModuleHost(self, module)
                self._first_load.add(host)
                self._first_loads_done.clear()
                host.start()
                started += 1
                if started % START_BATCH == 0:
                    await asyncio.sleep(0)
                continue
            host.prefixes = module.prefixes
            host.name = module.name
            host.driver_id = module.driver_id
            if host.plan.settings != module.settings or host.plan.timezone != module.timezone:
                await host.update(module)
            else:
                host.plan = module
        if old is not None:
            # Whatever moved or disappeared is cleared before it is published anew.
            self.publisher.reconcile(self.hosts.values())
        self.update_gauges()

    async def _remove(self, host: ModuleHost) -> None:
        await host.stop()
        self.hosts.pop(host.module_id, None)
        self.first_attempt_done(host)

    async def wait_loaded(self, timeout: float) -> bool:
        """Wait until every module finished its first load attempt."""
        try:
            async with asyncio.timeout(timeout):
                await self._first_loads_done.wait()
        except TimeoutError:
            return False
        self.update_gauges()
        return True

    def update_gauges(self) -> None:
        """Refresh the modules-by-status gauge."""
        counts = dict.fromkeys(Status, 0)
        for host in self.hosts.values():
            counts[host.status] += 1
        for status, n in counts.items():
            self.metrics.modules.labels(status.value).set(n)

    async def stop(self) -> None:
        """Stop every module; one whose stop hangs is left behind with a warning, so this always returns."""
        hosts = list(self.hosts.values())
        # A host's stop gives the unload timeout to each of: supervisor, on_unload, module tasks, shared services.
        bound = 4 * self.unload_timeout + 1.0
        results = await asyncio.gather(
            *(finish_within(h.stop(), bound, h.logger, f"module {h.module_id}: stopping") for h in hosts),
            return_exceptions=True)
        for host, result in zip(hosts, results, strict=True):
            if isinstance(result, BaseException):
                host.logger.error("module %s: stop failed: %s", host.module_id, result, exc_info=result)
        self.hosts.clear()
