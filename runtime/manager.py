"""The module manager: runs each module under a supervisor and gives it its context.

A module whose `on_load` raises, or whose task crashes, is unloaded and retried with
capped exponential backoff; its `connected` state is false meanwhile and nothing else
is affected. Settings changes reach running modules through `on_update`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import msgspec

from runtime.clock import Clock
from runtime.driver import Driver, DriverMetrics, StateCallback, Transports
from runtime.errors import DriverError
from runtime.metrics import DriverCounters, Metrics
from runtime.plan import ModulePlan, Plan
from runtime.publisher import Publisher, Route, StateEntry
from runtime.registry import Registry
from runtime.scheduler import Scheduler
from runtime.shared import SharedServices

T = TypeVar("T")
_log = logging.getLogger("runtime.module")
CONNECTED = "connected"
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
        watchers = self.target.watchers.get(self.key)
        if watchers and self in watchers:
            watchers.remove(self)


class ModuleHost:
    """The runtime side of one module: its `ModuleContext`, state and supervisor."""

    def __init__(self, manager: Manager, plan: ModulePlan) -> None:
        self.manager = manager
        self.plan = plan
        self.module_id = plan.id
        self.driver_id = plan.driver_id
        self.name = plan.name
        self.prefixes = plan.prefixes
        self.routes: dict[str, list[Route]] = {}
        self.logger = logging.LoggerAdapter(_log, {"module_id": plan.id})
        self.clock: Clock = manager.clock
        self.timezone = ZoneInfo(plan.timezone)
        self.schedule = Scheduler(self.clock, self.timezone, self.logger, on_error=self._job_failed)
        self.state_dir = manager.state_dir / plan.id
        self.transports: Transports = manager.transports
        self.metrics: DriverMetrics = manager.driver_counters(plan.driver_id)
        self.states: dict[str, StateEntry] = {}
        self.watchers: dict[str, list[_Watch]] = {}
        self.status = Status.LOADING
        self.upstream_ok = False
        self.loads = 0
        self.failures = 0
        self.instance: Driver[Any] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._watches: list[_Watch] = []
        self._crash: BaseException | None = None  # a failure while an attempt is in progress
        self._delay = manager.backoff_initial
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None

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
        target.watchers.setdefault(state, []).append(watch)
        self._watches.append(watch)
        entry = target.states.get(state)
        if entry is not None:
            callback(state, entry.value)
        return watch

    # -- internals ---------------------------------------------------------------------------

    def _set(self, key: str, value: Any) -> None:
        if value is None:
            if self.states.pop(key, None) is not None:
                self.manager.publisher.state_changed(self, key)
            return
        raw = encode(value)
        entry = self.states.get(key)
        if entry is not None and entry.raw == raw:
            return
        entry = StateEntry(value, raw, int(self.clock.time() * 1000))
        self.states[key] = entry
        self.manager.publisher.state_changed(self, key)
        watchers = self.watchers.get(key)
        if watchers:
            for watch in list(watchers):
                try:
                    watch.callback(key, value)
                except Exception as exc:  # a follower's bug must not break the publisher
                    _log.error("state callback for %s.%s failed: %s", self.module_id, key, exc, exc_info=exc)

    def _update_connected(self) -> None:
        cls = self.manager.registry.get(self.plan.driver_key) if self.plan.driver_key in self.manager.registry else None
        needs_upstream = cls.has_upstream if cls is not None else True
        up = self.status is Status.RUNNING and (self.upstream_ok or not needs_upstream)
        self._set(CONNECTED, up)

    def _task_done(self, task: asyncio.Task[None]) -> None:
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
        await self.clock.sleep(delay)
        self._delay = min(self.manager.backoff_cap, delay * 2)

    async def _load(self) -> None:
        self.status = Status.LOADING
        self.upstream_ok = False
        cls = self.manager.registry.get(self.plan.driver_key)
        settings = msgspec.convert(self.plan.settings, cls.Settings, strict=False)
        self.instance = cls(self, settings)
        self.loads += 1
        async with asyncio.timeout(self.manager.load_timeout):
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
            self.schedule.timezone = self.timezone
        instance = self.instance
        if self.status is not Status.RUNNING or instance is None:
            return
        cls = self.manager.registry.get(plan.driver_key)
        instance.settings = msgspec.convert(plan.settings, cls.Settings, strict=False)
        try:
            async with asyncio.timeout(self.manager.load_timeout):
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
        self.schedule.clear()
        for watch in self._watches:
            watch.cancel()
        self._watches.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.manager.unload_timeout)
        await self.manager.shared.release_all(self.module_id)

    async def stop(self) -> None:
        """Stop the supervisor and unload."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
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
        self.transports = transports
        self.metrics = metrics
        self.state_dir = state_dir
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
        """Start, stop and update modules so that they match `plan`."""
        old = self.plan
        self.plan = plan
        removed = [h for mid, h in self.hosts.items() if mid not in plan.modules]
        await asyncio.gather(*(self._remove(h) for h in removed))
        for mid, module in plan.modules.items():
            host = self.hosts.get(mid)
            if host is None or (old is not None and old.modules[mid].driver_key != module.driver_key):
                if host is not None:
                    await self._remove(host)
                host = self.hosts[mid] = ModuleHost(self, module)
                self._first_load.add(host)
                self._first_loads_done.clear()
                host.start()
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
        """Stop every module (each with its unload timeout)."""
        await asyncio.gather(*(h.stop() for h in self.hosts.values()))
        self.hosts.clear()
