"""The live hub: one Pusher socket per account and endpoint, events dispatched to modules in O(1).

Modules register what they present (organization, location, sensors by EB id or vendor id). The
hub subscribes the union of their channels, decodes each event once, and finds the modules of a
sensor through an index keyed by (location, EB id) and (location, vendor id). `sensor-modified`
carries only the id and the changes, so the hub remembers each sensor's vendor id and type from
`sensor-created` events and from the location's sensor list, fetched on every new subscription.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from drivers.empathic_building.api import EbAccount
from drivers.empathic_building.errors import ApiError, CorruptEvent, EmpathicBuildingError, PusherClosed
from drivers.empathic_building.models import PusherAuthResponse, SensorObject, decode_event_data
from drivers.empathic_building.pusher import PusherClient, PusherEndpoint
from runtime.clock import Clock
from runtime.driver import DriverMetrics
from runtime.tasks import STOP_TIMEOUT, cancel_and_wait, raise_if_cancelled

ORG_PREFIX = "private-organization-"
LOCATION_PREFIX = "private-location-"
NOTIFICATIONS = "notifications"
# Not in the vendor documents (see the README): a failure is logged and counted, and mapping goes on
# from EB ids and `sensor-created` events.
SENSOR_LIST_PATH = "/v1/locations/{location}/sensors"
Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]
_auth_decoder = msgspec.json.Decoder(PusherAuthResponse)


@dataclass(frozen=True)
class Interest:
    """What one module wants from live updates."""

    organization_id: str | None
    location_id: str | None
    sensors: frozenset[str]

    @property
    def channels(self) -> set[str]:
        """The channels this interest needs."""
        out = {NOTIFICATIONS}
        if self.organization_id:
            out.add(ORG_PREFIX + self.organization_id)
        if self.location_id:
            out.add(LOCATION_PREFIX + self.location_id)
        return out


@dataclass
class SensorInfo:
    """What the hub knows of a sensor between events."""

    id: str
    vendor_id: str | None = None
    type: str | None = None
    name: str | None = None


class LiveSink(Protocol):
    """The module side of the hub."""

    def on_sensor(self, event: str, info: SensorInfo, sensor: SensorObject) -> None:
        """A sensor the module presents was created, modified, deleted or listed (`sensor-listed`)."""
        ...

    def on_named(self, key: str, event: str, value: dict[str, Any]) -> None:
        """The module's organization or location changed (`key` is `organization` or `location`)."""
        ...

    def on_notification(self, event: str, notification: dict[str, Any]) -> None:
        """A notification was created, modified or deleted."""
        ...

    def on_live_status(self) -> None:
        """Subscription status changed: recompute `connected`."""
        ...

    def on_live_fatal(self, error: PusherClosed) -> None:
        """The Pusher server refused the configuration; live updates stopped."""
        ...


class LiveHub:
    """Shared by the live modules of one account and Pusher endpoint."""

    def __init__(self, key: Hashable, account: EbAccount, endpoint: PusherEndpoint, *, clock: Clock,
                 logger: Logger, metrics: DriverMetrics, pong_timeout: float = 30.0,
                 close_timeout: float = STOP_TIMEOUT) -> None:
        self.key = key
        self.account = account
        self._log = logger
        self._metrics = metrics
        self._modules: dict[str, tuple[Interest, LiveSink]] = {}
        self._by_key: dict[tuple[str, str], set[str]] = {}
        self._by_org: dict[str, set[str]] = {}
        self._by_location: dict[str, set[str]] = {}
        self._sensors: dict[tuple[str, str], SensorInfo] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._close_timeout = close_timeout
        self.pusher = PusherClient(account.api.http, endpoint, self._authorize, self, clock=clock, logger=logger,
                                   metrics=metrics, pong_timeout=pong_timeout, close_timeout=close_timeout)

    # ---- modules ----------------------------------------------------------------------------

    def register(self, module_id: str, interest: Interest, sink: LiveSink) -> None:
        """Add or replace a module's interest."""
        previous = self._modules.get(module_id)
        self._drop_indexes(module_id)
        self._modules[module_id] = (interest, sink)
        loc = interest.location_id or ""
        for key in interest.sensors:
            self._by_key.setdefault((loc, key), set()).add(module_id)
        if interest.organization_id:
            self._by_org.setdefault(interest.organization_id, set()).add(module_id)
        if interest.location_id:
            self._by_location.setdefault(interest.location_id, set()).add(module_id)
        self._sync_channels()
        if previous is not None and previous[0] == interest:
            return
        if interest.location_id and self.pusher.is_subscribed(LOCATION_PREFIX + interest.location_id):
            self._spawn(self._list_sensors(interest.location_id), f"eb-sensors-{interest.location_id}")

    def unregister(self, module_id: str) -> None:
        """Forget a module."""
        self._drop_indexes(module_id)
        self._modules.pop(module_id, None)
        self._sync_channels()

    def module_ok(self, module_id: str) -> bool:
        """Whether every channel the module needs is subscribed."""
        entry = self._modules.get(module_id)
        if entry is None or self.pusher.fatal is not None:
            return False
        return all(self.pusher.is_subscribed(c) for c in entry[0].channels)

    def start(self) -> None:
        """Start the Pusher client."""
        self.pusher.start()

    async def close(self) -> None:
        """Stop the Pusher client and background fetches, waiting for neither longer than `close_timeout`."""
        await self.pusher.close()
        await cancel_and_wait(list(self._tasks), self._close_timeout, self._log, "EB sensor list fetches")

    def _drop_indexes(self, module_id: str) -> None:
        entry = self._modules.get(module_id)
        if entry is None:
            return
        interest = entry[0]
        loc = interest.location_id or ""
        for key in interest.sensors:
            _discard(self._by_key, (loc, key), module_id)
        if interest.organization_id:
            _discard(self._by_org, interest.organization_id, module_id)
        if interest.location_id:
            _discard(self._by_location, interest.location_id, module_id)

    def _sync_channels(self) -> None:
        wanted: set[str] = set()
        for interest, _ in self._modules.values():
            wanted |= interest.channels
        self.pusher.set_channels(wanted)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- PusherListener ---------------------------------------------------------------------

    async def _authorize(self, channel: str, socket_id: str) -> str:
        response = await self.account.api.request("POST", "/v1/pusher/auth",
                                                  form={"channel_name": channel, "socket_id": socket_id})
        if not response.ok:
            raise ApiError(response.status, f"Pusher auth for {channel}")
        try:
            return _auth_decoder.decode(response.body).auth
        except msgspec.DecodeError as exc:
            raise ApiError(response.status, f"Pusher auth for {channel}: unexpected answer") from exc

    def on_channel_status(self, channel: str, subscribed: bool) -> None:
        """Tell the modules; a freshly subscribed location channel re-reads the location's sensors."""
        if subscribed and channel.startswith(LOCATION_PREFIX):
            location = channel.removeprefix(LOCATION_PREFIX)
            self._spawn(self._list_sensors(location), f"eb-sensors-{location}")
        for _, sink in list(self._modules.values()):
            sink.on_live_status()

    def on_fatal(self, error: PusherClosed) -> None:
        """Tell every module that live updates stopped."""
        for _, sink in list(self._modules.values()):
            sink.on_live_fatal(error)
            sink.on_live_status()

    def on_event(self, channel: str, event: str, data: Any) -> None:
        """Decode an EB event once and hand its objects to the modules concerned."""
        try:
            objects = decode_event_data(_unquote(data))
        except CorruptEvent as exc:
            self._metrics.decode_error("eb_event")
            self._log.warning("dropped a corrupt %s event on %s: %s", event, channel, exc)
            return
        for obj in objects:
            try:
                if channel.startswith(LOCATION_PREFIX):
                    if event.startswith("sensor-"):
                        self._sensor_event(channel.removeprefix(LOCATION_PREFIX), event,
                                           msgspec.convert(obj, SensorObject))
                elif channel.startswith(ORG_PREFIX):
                    self._organization_event(channel.removeprefix(ORG_PREFIX), event, obj)
                elif channel == NOTIFICATIONS and event.startswith("notification-"):
                    for _, sink in list(self._modules.values()):
                        sink.on_notification(event, obj)
            except msgspec.ValidationError as exc:
                self._metrics.decode_error("eb_object")
                self._log.warning("dropped a malformed object in %s on %s: %s", event, channel, exc)

    # ---- dispatch -----------------------------------------------------------------------------

    def _sensor_event(self, location: str, event: str, sensor: SensorObject) -> None:
        sid = str(sensor.id)
        info = self._sensors.get((location, sid))
        if info is None:
            info = self._sensors[(location, sid)] = SensorInfo(sid)
        info.vendor_id = sensor.vendor_id or info.vendor_id
        info.type = sensor.type or info.type
        info.name = sensor.name or info.name
        targets = set(self._by_key.get((location, sid), ()))
        if info.vendor_id:
            targets |= self._by_key.get((location, info.vendor_id), set())
        if event == "sensor-deleted":
            self._sensors.pop((location, sid), None)
        if not targets:
            return
        for module_id in targets:
            entry = self._modules.get(module_id)
            if entry is not None:
                entry[1].on_sensor(event, info, sensor)

    def _organization_event(self, organization: str, event: str, obj: dict[str, Any]) -> None:
        kind, _, _ = event.rpartition("-")
        if kind == "organization":
            for module_id in set(self._by_org.get(organization, ())):
                self._modules[module_id][1].on_named("organization", event, obj)
        elif kind == "location":
            for module_id in set(self._by_location.get(str(obj.get("id")), ())):
                self._modules[module_id][1].on_named("location", event, obj)

    async def _list_sensors(self, location: str) -> None:
        try:
            sensors = await self.account.api.get(SENSOR_LIST_PATH.format(location=location), list[SensorObject])
        except EmpathicBuildingError as exc:
            raise_if_cancelled()  # close() cancelled the fetch: not a failure to count
            self._metrics.decode_error("eb_sensor_list")
            self._log.warning("could not list the sensors of location %s: %s", location, exc)
            return
        for sensor in sensors:
            self._sensor_event(location, "sensor-listed", sensor)


def _discard(index: dict[Any, set[str]], key: Any, module_id: str) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(module_id)
        if not members:
            del index[key]


def _unquote(data: Any) -> Any:
    """Some servers JSON-encode the string payload once more; accept both forms."""
    if isinstance(data, str) and data.startswith('"'):
        try:
            return msgspec.json.decode(data)
        except msgspec.DecodeError:
            return data
    return data
