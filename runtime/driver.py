"""The driver API: what a driver declares and what the runtime gives each of its modules.

A driver is a subclass of `Driver` with its metadata and a msgspec settings Struct
at the top (the single source of its defaults), then `on_load`, `on_update` (safe to
repeat) and `on_unload`, then its handlers. Everything that touches the outside world
(transports, clock, scheduler, logger, state) comes from the `ModuleContext`, so tests
can hand a driver fakes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar, get_type_hints
from zoneinfo import ZoneInfo

import msgspec

from runtime.clock import Clock
from runtime.errors import CommandArgumentsError, UnknownCommand
from runtime.mqtt import MqttEndpoint, SessionListener
from runtime.scheduler import Scheduler

if TYPE_CHECKING:
    import aiohttp

S = TypeVar("S", bound=msgspec.Struct)
T = TypeVar("T")
StateCallback = Callable[[str, Any], None]
ModuleLogger = logging.LoggerAdapter[logging.Logger]


class SharedService(Protocol):
    """An upstream connection shared by the modules of a driver record with equal credentials."""

    async def close(self) -> None:
        """Release the connection; called when the last module using it lets go."""
        ...


class DriverMetrics(Protocol):
    """Counters a driver moves; labelled with the driver record, never with device ids."""

    def received(self, kind: str, count: int = 1) -> None:
        """Count messages received from upstream, by kind."""
        ...

    def decode_error(self, kind: str, count: int = 1) -> None:
        """Count messages that could not be decoded, by kind."""
        ...

    def dropped(self, reason: str, count: int = 1) -> None:
        """Count messages dropped on purpose (unknown topic shape, stale value...)."""
        ...


class MqttSessionHandle(Protocol):
    """What a driver may do with an MQTT session lent by `Transports` (`MqttSession` or a test fake)."""

    @property
    def connected(self) -> bool:
        """True while the connection is up."""
        ...

    @property
    def inflight(self) -> int:
        """QoS 1 publishes sent and not yet acknowledged on the current connection."""
        ...

    @property
    def subscriptions(self) -> dict[str, int]:
        """The desired subscriptions (topic filter to QoS)."""
        ...

    def start(self) -> None:
        """Start connecting in the background."""
        ...

    async def stop(self, *, graceful: bool = True) -> None:
        """Stop and disconnect."""
        ...

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until connected; False on timeout."""
        ...

    def update_endpoint(self, endpoint: MqttEndpoint) -> None:
        """Use new settings: reconnects when they differ."""
        ...

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        """Send a message; False when not connected."""
        ...

    def subscribe(self, filters: dict[str, int]) -> None:
        """Add subscriptions (topic filter to QoS); kept across reconnects."""
        ...

    def unsubscribe(self, filters: Iterable[str]) -> None:
        """Remove subscriptions."""
        ...


class Transports(Protocol):
    """Network access the runtime lends to drivers; drivers never open sockets themselves."""

    def mqtt(self, endpoint: MqttEndpoint, listener: SessionListener, *, name: str) -> MqttSessionHandle:
        """A supervised MQTT session (reconnects with backoff, renews subscriptions)."""
        ...

    @property
    def http(self) -> aiohttp.ClientSession:
        """The runtime's shared HTTP client session (REST, GraphQL, WebSocket)."""
        ...


class Subscription(Protocol):
    """A handle on a subscription to another module's state."""

    def cancel(self) -> None:
        """Stop receiving updates."""
        ...


class ModuleContext(Protocol):
    """Everything the runtime gives one module."""

    @property
    def module_id(self) -> str:
        """The module's id."""
        ...

    @property
    def driver_id(self) -> str:
        """The driver record's id."""
        ...

    @property
    def name(self) -> str:
        """The module's resolved name (custom, else the driver's generic name)."""
        ...

    @property
    def logger(self) -> ModuleLogger:
        """A logger that puts the module id on every line."""
        ...

    @property
    def clock(self) -> Clock:
        """The runtime's clock."""
        ...

    @property
    def schedule(self) -> Scheduler:
        """The module's scheduler (cleared on unload)."""
        ...

    @property
    def timezone(self) -> ZoneInfo:
        """The site time zone of this module (org, overridable by zone settings)."""
        ...

    @property
    def state_dir(self) -> Path:
        """A per-module directory for small persistent state; it is created by the driver's first write, not before."""
        ...

    def read_state(self, name: str) -> bytes | None:
        """The contents of file `name` in `state_dir`, or None when there is none (other failures raise OSError)."""
        ...

    @property
    def transports(self) -> Transports:
        """Network access lent by the runtime."""
        ...

    @property
    def metrics(self) -> DriverMetrics:
        """Counters of the module's driver record."""
        ...

    def set_state(self, key: str, value: Any) -> None:
        """Set a state key; published only when its encoded value changed, `None` clears it."""
        ...

    def get_state(self, key: str) -> Any:
        """The current value of a state key of this module, or None."""
        ...

    def set_connected(self, up: bool) -> None:
        """Report whether this module's upstream works (the runtime owns `connected`)."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        """Run a task owned by the module: cancelled on unload; its crash restarts the module."""
        ...

    async def shared(self, slot: str, key: Hashable, factory: Callable[[], Awaitable[T]]) -> T:
        """The shared service for `key` in `slot`, created by `factory` for the first module.

        A module holds one service per slot: asking again with another key lets go of
        the previous one (closed when its last module lets go). All are released on unload.
        """
        ...

    async def release(self, slot: str) -> None:
        """Let go of the shared service held in `slot` (closed when its last module lets go)."""
        ...

    def subscribe(self, module: str, state: str, callback: StateCallback) -> Subscription:
        """Follow `state` of the module addressed `Name` or `Name_idx` in this module's systems.

        The callback gets `(state, value)` now if a value is present and on every change.
        Raises `LookupError` when no such module is in the module's systems.
        """
        ...


class CommandSpec(msgspec.Struct, frozen=True):
    """A command a driver exposes to the HTTP API."""

    name: str
    doc: str
    timeout: float
    arguments: type[msgspec.Struct]


def command(*, timeout: float = 10.0) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Mark an async method of a driver as a command callable through the HTTP API."""

    def mark(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"command {fn.__name__} must be async")
        fn.__placeos_command__ = timeout  # type: ignore[attr-defined]
        return fn

    return mark


def _arguments_struct(owner: type, fn: Callable[..., Any]) -> type[msgspec.Struct]:
    hints = get_type_hints(fn)
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for param in list(inspect.signature(fn).parameters.values())[1:]:
        kind = hints.get(param.name, Any)
        if param.default is inspect.Parameter.empty:
            fields.append((param.name, kind))
        else:
            fields.append((param.name, kind, param.default))
    return msgspec.defstruct(f"{owner.__name__}_{fn.__name__}_args", fields, forbid_unknown_fields=True)


class Driver(Generic[S]):
    """Base class of every driver; subclasses set the class attributes and override the hooks."""

    key: ClassVar[str]
    name: ClassVar[str]
    generic_name: ClassVar[str]
    description: ClassVar[str] = ""
    Settings: ClassVar[type[msgspec.Struct]]
    has_upstream: ClassVar[bool] = True
    commands: ClassVar[dict[str, CommandSpec]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        specs = dict(cls.commands)
        for attr, fn in vars(cls).items():
            timeout = getattr(fn, "__placeos_command__", None)
            if timeout is not None:
                specs[attr] = CommandSpec(attr, (inspect.getdoc(fn) or "").split("\n")[0], float(timeout),
                                          _arguments_struct(cls, fn))
        cls.commands = specs

    def __init__(self, ctx: ModuleContext, settings: S) -> None:
        self.ctx = ctx
        self.settings = settings

    @classmethod
    def settings_schema(cls) -> dict[str, Any]:
        """The JSON Schema of this driver's settings, generated from its Struct."""
        return msgspec.json.schema(cls.Settings)

    async def on_load(self) -> None:
        """Called once when the module starts, before the first `on_update`."""

    async def on_update(self) -> None:
        """Called after `on_load` and whenever `self.settings` changed; must be safe to repeat."""

    async def on_unload(self) -> None:
        """Called once when the module stops."""

    async def execute(self, command_name: str, arguments: Any) -> Any:
        """Run a declared command with JSON arguments, validated against its signature."""
        spec = self.commands.get(command_name)
        if spec is None:
            raise UnknownCommand(f"{self.key} has no command {command_name!r}")
        try:
            args = msgspec.convert(arguments if arguments is not None else {}, spec.arguments)
        except msgspec.ValidationError as exc:
            raise CommandArgumentsError(str(exc)) from exc
        values = {f: getattr(args, f) for f in spec.arguments.__struct_fields__}
        async with asyncio.timeout(spec.timeout):
            return await getattr(self, command_name)(**values)
