"""The shared upstream: one MQTT 3.1.1 session per (url, integration id, API key id), fanned out to modules.

Subscriptions follow what the bound modules need. While the specific filters fit under the driver
record's `subscription_limit` (default 100), each device gets its own: `{prefix}/+/+/{device}` (every
kind and type of that device), or, when every module bound to the device filters measurement types,
`{prefix}/measurements/{spelling}/{device}` per spelling plus `{prefix}/notifications/+/{device}`; one
`{prefix}/notifications/+` catches notifications that name no device in the topic. Haltian recommends
specific topics, and they keep unrelated traffic off the wire for small sites. Past the limit, one
wildcard `{prefix}/#` replaces them all: a site with thousands of devices would otherwise send
thousands of filters on every reconnect, and the device dictionary drops what nobody bound in O(1).
The new set is subscribed before the old one is unsubscribed, so a switch loses nothing; a message
that arrives twice meanwhile carries the same `measured_at` and is ignored by the modules.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from typing import Any, Protocol

import msgspec

from drivers.haltian.models import (
    DECODE_ERRORS,
    GENERIC_DECODER,
    MAX_PAYLOAD,
    RAW_DECODER,
    TYPES,
    KnownType,
    parse_topic,
    stream_prefix,
    timestamp,
)
from runtime.clock import Clock
from runtime.driver import DriverMetrics, Transports
from runtime.errors import ConnectionRefused
from runtime.mqtt import MqttEndpoint, MqttSession, SessionListener
from runtime.tasks import finish_within

_log = logging.getLogger("drivers.haltian.stream")
# A graceful stop may spend 5 s on DISCONNECT and 2 s closing the socket before it cancels the supervisor.
CLOSE_TIMEOUT = 10.0


class StreamSink(Protocol):
    """What a module gives the stream: handlers called for its bound devices."""

    def on_measurement(self, device: str, known: KnownType | None, type_name: str, at: float, value: Any) -> None:
        """A decoded measurement of a bound device (`known` is None for an unknown type)."""
        ...

    def on_notification(self, device: str, name: str, at: float, value: Any) -> None:
        """A notification about a bound device (e.g. `deviceOffline`)."""
        ...

    def on_heard(self, device: str, at: float) -> None:
        """A message (e.g. `rawData`) from a bound device: it is alive."""
        ...

    def on_session(self, up: bool) -> None:
        """The upstream session went up or down."""
        ...


class Binding(msgspec.Struct, frozen=True):
    """A module's interest: its devices and, optionally, the type spellings it wants."""

    devices: tuple[str, ...]  # a module binds a handful: a tuple is a quarter of a frozenset's size
    spellings: frozenset[str] | None = None


class StreamHandle(Protocol):
    """The parts of `MqttSession` the stream uses (the real one or a test fake)."""

    connected: bool

    def start(self) -> None:
        """Start connecting."""
        ...

    async def stop(self, *, graceful: bool = True) -> None:
        """Disconnect."""
        ...

    def update_endpoint(self, endpoint: MqttEndpoint) -> None:
        """Reconnect with new settings when they differ."""
        ...

    def subscribe(self, filters: dict[str, int]) -> None:
        """Add subscriptions."""
        ...

    def unsubscribe(self, filters: Iterable[str]) -> None:
        """Remove subscriptions."""
        ...


class HaltianStream(SessionListener):
    """One upstream session shared by every module with the same (url, integration, API key id)."""

    def __init__(self, transports: Transports, endpoint: MqttEndpoint, integration_id: str, api_key_id: str,
                 *, clock: Clock, qos: int = 1, subscription_limit: int = 100) -> None:
        self.integration_id = integration_id
        self.api_key_id = api_key_id
        self.prefix = stream_prefix(integration_id, api_key_id)
        self.qos = qos
        self.subscription_limit = subscription_limit
        self._clock = clock
        self._bindings: dict[StreamSink, Binding] = {}
        self._metrics: dict[StreamSink, DriverMetrics] = {}
        self._routes: dict[str, tuple[StreamSink, ...]] = {}
        self._device_filters: dict[str, int] = {}  # device -> how many filters it needs (built when used)
        self._specific = 0
        self._subscribed: set[str] = set()
        self._up = False
        self.refusal: ConnectionRefused | None = None
        session: Any = transports.mqtt(endpoint, self, name=f"haltian:{integration_id}")
        self.session: StreamHandle = session
        self.session.start()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        """True while the upstream session is connected."""
        return self._up

    @property
    def subscriptions(self) -> frozenset[str]:
        """The filters currently asked for."""
        return frozenset(self._subscribed)

    @property
    def routes(self) -> int:
        """How many devices have at least one module bound."""
        return len(self._routes)

    def configure(self, endpoint: MqttEndpoint, *, qos: int, subscription_limit: int) -> None:
        """Apply a module's view of the connection settings: a new token reconnects at once."""
        self.session.update_endpoint(endpoint)
        if qos != self.qos or subscription_limit != self.subscription_limit:
            requalify = qos != self.qos
            self.qos = qos
            self.subscription_limit = subscription_limit
            self._apply(requalify=requalify)

    async def close(self) -> None:
        """Stop the session; called when the last module lets go. Waits at most `CLOSE_TIMEOUT` seconds."""
        await finish_within(self.session.stop(), CLOSE_TIMEOUT, _log,
                            f"stopping the Haltian session of integration {self.integration_id}")

    # -- bindings ----------------------------------------------------------------------------

    def bind(self, sink: StreamSink, binding: Binding, metrics: DriverMetrics) -> None:
        """Route `binding.devices` to `sink` (replacing what it had bound) and update subscriptions."""
        old = self._bindings.get(sink)
        self._bindings[sink] = binding
        self._metrics[sink] = metrics
        touched = set(binding.devices)
        if old is not None:
            touched.update(old.devices)
            for device in set(old.devices).difference(binding.devices):
                self._route_remove(device, sink)
        for device in binding.devices:
            sinks = self._routes.get(device, ())
            if sink not in sinks:
                self._routes[device] = (*sinks, sink)
        self._refilter(touched)
        self._apply()
        sink.on_session(self._up)

    def unbind(self, sink: StreamSink) -> None:
        """Stop routing to `sink`."""
        old = self._bindings.pop(sink, None)
        self._metrics.pop(sink, None)
        if old is None:
            return
        for device in old.devices:
            self._route_remove(device, sink)
        self._refilter(old.devices)
        self._apply()

    def _route_remove(self, device: str, sink: StreamSink) -> None:
        sinks = tuple(s for s in self._routes.get(device, ()) if s is not sink)
        if sinks:
            self._routes[device] = sinks
        else:
            self._routes.pop(device, None)

    def _refilter(self, devices: Iterable[str]) -> None:
        for device in devices:
            self._specific -= self._device_filters.pop(device, 0)
            sinks = self._routes.get(device)
            if not sinks:
                continue
            needed = len(self._filters_for(device, sinks))
            self._device_filters[device] = needed
            self._specific += needed

    def _filters_for(self, device: str, sinks: Iterable[StreamSink]) -> frozenset[str]:
        spellings: set[str] = set()
        for sink in sinks:
            binding = self._bindings[sink]
            if binding.spellings is None:
                return frozenset({f"{self.prefix}/+/+/{device}"})
            spellings |= binding.spellings
        return frozenset({f"{self.prefix}/measurements/{s}/{device}" for s in spellings}
                         | {f"{self.prefix}/notifications/+/{device}"})

    def desired(self) -> set[str]:
        """The filters the bound modules need right now (see the module docstring)."""
        if not self._routes:
            return set()
        if self._specific + 1 > self.subscription_limit:
            return {f"{self.prefix}/#"}
        wanted = {f"{self.prefix}/notifications/+"}
        for device, sinks in self._routes.items():
            wanted |= self._filters_for(device, sinks)
        return wanted

    def _apply(self, *, requalify: bool = False) -> None:
        wanted = self.desired()
        fresh = wanted if requalify else wanted - self._subscribed
        gone = self._subscribed - wanted
        if fresh:
            self.session.subscribe(dict.fromkeys(sorted(fresh), self.qos))
        if gone:
            self.session.unsubscribe(sorted(gone))
        self._subscribed = wanted

    # -- session events ----------------------------------------------------------------------

    def on_connected(self, session: MqttSession) -> None:
        """Upstream is up: tell every module."""
        self.refusal = None
        self._set_up(True)

    def on_disconnected(self, session: MqttSession, reason: str) -> None:
        """Upstream is down: tell every module."""
        self._set_up(False)

    def on_refused(self, session: MqttSession, error: ConnectionRefused) -> None:
        """Remember the refusal (the session logs it and retries slowly after a credential refusal)."""
        self.refusal = error
        self._set_up(False)

    def _set_up(self, up: bool) -> None:
        if up == self._up:
            return
        self._up = up
        for sink in list(self._bindings):
            sink.on_session(up)

    # -- the hot path ------------------------------------------------------------------------

    def _any_metrics(self) -> DriverMetrics | None:
        for metrics in self._metrics.values():
            return metrics
        return None

    def on_message(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Parse the topic, find the bound modules in O(1), decode once and hand the value to each."""
        metrics = self._any_metrics()
        if metrics is None:
            return
        t = parse_topic(topic)
        if t is None or t.integration != self.integration_id or t.api_key != self.api_key_id:
            metrics.dropped("topic_shape")
            return
        kind = t.kind
        if len(payload) > MAX_PAYLOAD:
            metrics.dropped("oversize")
            return
        if kind == "notifications":
            self._notification(t.type, t.device, payload, metrics)
            return
        device = t.device
        if device is None:
            metrics.dropped("topic_shape")
            return
        device, sinks = self._lookup(device)
        if sinks is None:
            metrics.dropped("unbound_device")
            return
        now = self._clock.time()
        if kind == "messages":
            try:
                at = timestamp(GENERIC_DECODER.decode(payload).measured_at, now)
            except DECODE_ERRORS:
                metrics.decode_error(kind)
                return
            metrics.received(kind)
            for sink in sinks:
                self._call(sink, "on_heard", device, at)
            return
        known = TYPES.get(t.type)
        try:
            if known is not None:
                decoded = known.decoder.decode(payload)
                value = decoded.value if decoded.value is not msgspec.UNSET else decoded.own
                at = timestamp(decoded.measured_at, now)
            else:
                value, at = self._decode_unknown(t.type, payload, now)
        except DECODE_ERRORS:
            metrics.decode_error(kind)
            return
        if value is msgspec.UNSET:
            metrics.decode_error(kind)
            return
        metrics.received(kind if known is not None else "unknown_type")
        type_name = t.type
        for sink in sinks:
            try:
                sink.on_measurement(device, known, type_name, at, value)
            except Exception as exc:  # one module's bug must not starve the other modules of this message
                self._failed(sink, "on_measurement", exc)

    @staticmethod
    def _decode_unknown(type_name: str, payload: bytes, now: float) -> tuple[Any, float]:
        raw = RAW_DECODER.decode(payload)
        value = raw.get("value", raw.get(type_name, msgspec.UNSET))
        measured = raw.get("measured_at")
        at = now if measured is None else timestamp(msgspec.convert(measured, dt.datetime), now)
        return value, at

    def _lookup(self, device: str) -> tuple[str, tuple[StreamSink, ...] | None]:
        sinks = self._routes.get(device)
        if sinks is None:
            device = device.lower()
            sinks = self._routes.get(device)
        return device, sinks

    def _notification(self, name: str, device: str | None, payload: bytes, metrics: DriverMetrics) -> None:
        now = self._clock.time()
        try:
            decoded = GENERIC_DECODER.decode(payload) if payload else None
        except DECODE_ERRORS:
            metrics.decode_error("notifications")
            return
        value: Any = None
        at = now
        if decoded is not None:
            at = timestamp(decoded.measured_at, now)
            value = None if decoded.value is msgspec.UNSET else decoded.value
            device = device or decoded.device_id or decoded.deviceId or _device_in(value)
        if device is None:
            metrics.dropped("notification_without_device")
            return
        device, sinks = self._lookup(device)
        if sinks is None:
            metrics.dropped("unbound_device")
            return
        metrics.received("notifications")
        for sink in sinks:
            self._call(sink, "on_notification", device, name, at, value)

    def _call(self, sink: StreamSink, method: str, *args: Any) -> None:
        try:
            getattr(sink, method)(*args)
        except Exception as exc:  # one module's bug must not starve the other modules of this message
            self._failed(sink, method, exc)

    def _failed(self, sink: StreamSink, method: str, exc: Exception) -> None:
        _log.error("haltian module handler %s failed: %s", method, exc, exc_info=exc)
        metrics = self._metrics.get(sink)
        if metrics is not None:
            metrics.dropped("handler_error")


def _device_in(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        found = value.get("device_id") or value.get("deviceId") or value.get("id")
        return found if isinstance(found, str) else None
    return None

