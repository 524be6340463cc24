"""Fakes for driver unit tests: a module context with a fake clock, in-memory state and fake transports."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import aiohttp

from runtime.clock import FakeClock
from runtime.driver import StateCallback
from runtime.mqtt import MqttEndpoint, SessionListener
from runtime.scheduler import Scheduler
from runtime.shared import SharedServices

T = TypeVar("T")


class FakeMqttSession:
    """Stands in for `MqttSession`: records what a driver does, lets the test deliver messages."""

    def __init__(self, endpoint: MqttEndpoint, listener: SessionListener, name: str) -> None:
        self.endpoint = endpoint
        self.listener = listener
        self.name = name
        self.connected = False
        self.started = False
        self.stopped = False
        self.subscriptions: dict[str, int] = {}
        self.published: list[tuple[str, bytes, int, bool]] = []
        self.inflight = 0

    def start(self) -> None:
        """Mark started (connect with `go_up`)."""
        self.started = True

    async def stop(self, *, graceful: bool = True) -> None:
        """Mark stopped."""
        self.stopped = True
        self.connected = False

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Connected now?"""
        return self.connected

    def update_endpoint(self, endpoint: MqttEndpoint) -> None:
        """Record the new endpoint."""
        self.endpoint = endpoint

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        """Record a publish."""
        if not self.connected:
            return False
        self.published.append((topic, payload, qos, retain))
        return True

    def subscribe(self, filters: dict[str, int]) -> None:
        """Record subscriptions."""
        self.subscriptions.update(filters)

    def unsubscribe(self, filters: Iterable[str]) -> None:
        """Forget subscriptions."""
        for f in filters:
            self.subscriptions.pop(f, None)

    def go_up(self) -> None:
        """Simulate a successful connection."""
        self.connected = True
        self.listener.on_connected(self)  # type: ignore[arg-type]

    def go_down(self, reason: str = "test") -> None:
        """Simulate a lost connection."""
        self.connected = False
        self.listener.on_disconnected(self, reason)  # type: ignore[arg-type]

    def deliver(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Simulate an incoming message."""
        self.listener.on_message(topic, payload, qos, retain)


class FakeTransports:
    """Transports that hand out `FakeMqttSession`s and an optional real HTTP session."""

    def __init__(self) -> None:
        self.sessions: list[FakeMqttSession] = []
        self._http: aiohttp.ClientSession | None = None

    def mqtt(self, endpoint: MqttEndpoint, listener: SessionListener, *, name: str) -> FakeMqttSession:
        """A new fake session."""
        session = FakeMqttSession(endpoint, listener, name)
        self.sessions.append(session)
        return session

    @property
    def http(self) -> aiohttp.ClientSession:
        """A real aiohttp session (tests point it at loopback fakes)."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def close(self) -> None:
        """Close the HTTP session if one was made."""
        if self._http is not None:
            await self._http.close()


class FakeMetrics:
    """Counts what a driver reports."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def received(self, kind: str, count: int = 1) -> None:
        """Count received."""
        self.counts[("received", kind)] += count

    def decode_error(self, kind: str, count: int = 1) -> None:
        """Count decode errors."""
        self.counts[("decode_error", kind)] += count

    def dropped(self, reason: str, count: int = 1) -> None:
        """Count drops."""
        self.counts[("dropped", reason)] += count


class _FakeSubscription:
    def __init__(self, owner: list[tuple[str, str, StateCallback]], item: tuple[str, str, StateCallback]) -> None:
        self._owner = owner
        self._item = item

    def cancel(self) -> None:
        if self._item in self._owner:
            self._owner.remove(self._item)


class FakeModuleContext:
    """A `ModuleContext` for unit tests: state in a dict, a fake clock, fake transports."""

    def __init__(self, module_id: str = "mod-test", *, driver_id: str = "drv-test", name: str = "Test",
                 clock: FakeClock | None = None, timezone: str = "UTC", state_dir: Path | None = None,
                 transports: FakeTransports | None = None, shared: SharedServices | None = None) -> None:
        self.module_id = module_id
        self.driver_id = driver_id
        self.name = name
        self.logger = logging.LoggerAdapter(logging.getLogger(f"test.{module_id}"), {"module_id": module_id})
        self.clock = clock or FakeClock()
        self.timezone = ZoneInfo(timezone)
        self.schedule = Scheduler(self.clock, self.timezone, self.logger)
        self.state_dir = state_dir or Path("/nonexistent-state-dir")
        self.transports = transports or FakeTransports()
        self.metrics = FakeMetrics()
        self.states: dict[str, Any] = {}
        self.history: list[tuple[str, Any]] = []
        self.connected: bool | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.peers: dict[str, FakeModuleContext] = {}
        self.watchers: list[tuple[str, str, StateCallback]] = []
        self._shared = shared if shared is not None else SharedServices()

    def set_state(self, key: str, value: Any) -> None:
        """Record a state change (a value equal to the current one is ignored, as in the runtime)."""
        if value is None:
            if key in self.states:
                del self.states[key]
                self.history.append((key, None))
            return
        if key in self.states and self.states[key] == value:
            return
        self.states[key] = value
        self.history.append((key, value))
        for _ref, state, callback in list(self.watchers):
            if state == key:
                callback(key, value)

    def get_state(self, key: str) -> Any:
        """Current value of a state key."""
        return self.states.get(key)

    def read_state(self, name: str) -> bytes | None:
        """A file of the state directory, or None."""
        try:
            return (self.state_dir / name).read_bytes()
        except FileNotFoundError:
            return None

    def set_connected(self, up: bool) -> None:
        """Record the upstream status."""
        self.connected = up

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        """Run a task and keep it for cleanup."""
        task = asyncio.create_task(coro, name=name)
        self.tasks.append(task)
        return task

    async def shared(self, slot: str, key: Hashable, factory: Callable[[], Awaitable[T]]) -> T:
        """Shared services, reference counted across fake contexts that share `shared`."""
        return await self._shared.acquire(self.module_id, slot, key, factory)

    async def release(self, slot: str) -> None:
        """Let go of the shared service in `slot`."""
        await self._shared.release(self.module_id, slot)

    def subscribe(self, module: str, state: str, callback: StateCallback) -> _FakeSubscription:
        """Follow a peer's state (peers are registered in `self.peers` by `Name_idx`)."""
        ref = module if "_" in module and module.rsplit("_", 1)[1].isdigit() else f"{module}_1"
        peer = self.peers.get(ref)
        if peer is None:
            raise KeyError(ref)
        item = (ref, state, callback)
        peer.watchers.append(item)
        if state in peer.states:
            callback(state, peer.states[state])
        return _FakeSubscription(peer.watchers, item)

    async def teardown(self) -> None:
        """Cancel tasks and jobs and release shared services, as the runtime does on unload."""
        self.schedule.clear()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self._shared.release_all(self.module_id)
