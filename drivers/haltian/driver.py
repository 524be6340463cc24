"""The Haltian IoT driver: room modules fed by Haltian's MQTT stream, with local people counting."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec

from drivers.haltian.aggregate import MEASURED_KEYS, RoomState
from drivers.haltian.graphql import GraphQLError, ServiceApi
from drivers.haltian.models import (
    SPECS,
    KnownType,
    camel,
    canonical_type,
    iso,
    spellings_of,
)
from drivers.haltian.occupancy import LocalCounter, parse_time_of_day
from drivers.haltian.stream import Binding, HaltianStream
from runtime.driver import Driver, ModuleContext, command
from runtime.mqtt import MqttEndpoint
from runtime.scheduler import ScheduledJob, next_daily

TopicLevel = Annotated[str, msgspec.Meta(pattern=r"^[^/+#\x00]+$", min_length=1)]
TimeOfDay = Annotated[str, msgspec.Meta(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM, site time")]
Seconds = Annotated[float, msgspec.Meta(gt=0)]


class DeviceRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A bound device with a friendly label."""

    id: TopicLevel
    label: str | None = None


class HaltianSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of a Haltian module: connection keys (usually on the driver record) and module keys."""

    # Connection, shared by the modules of a driver record.
    url: Annotated[str, msgspec.Meta(pattern=r"^mqtts?://[^/]+$")] = "mqtts://mqtt.eu.haltian.io:8883"
    integration_id: TopicLevel
    api_key_id: TopicLevel
    api_key_token: str = ""
    qos: Literal[0, 1, 2] = 1
    client_id: str = ""
    ca_file: str | None = None
    tls_insecure: bool = False
    subscription_limit: Annotated[int, msgspec.Meta(ge=1)] = 100
    graphql_url: str | None = None
    graphql_email: str | None = None
    graphql_password: str | None = None
    graphql_organization: str | None = None
    graphql_refresh: Seconds = 3600.0
    # The module's devices and behaviour.
    devices: list[TopicLevel | DeviceRef] = []
    device_group: TopicLevel | None = None
    measurements: list[str] | None = None
    stale_after: Seconds = 900.0
    directional_mode: Literal["delta", "cumulative"] = "delta"
    capacity: Annotated[int, msgspec.Meta(ge=0)] | None = None
    reset_at: TimeOfDay | None = None
    reset_below: int | None = None
    reset_after_idle: Seconds | None = None


class HaltianDriver(Driver[HaltianSettings]):
    """Haltian IoT sensors and device groups of one room: environment, presence and people counts."""

    key: ClassVar[str] = "haltian"
    name: ClassVar[str] = "Haltian IoT"
    generic_name: ClassVar[str] = "Sensor"
    description: ClassVar[str] = ("Haltian IoT stream (MQTT): temperature, humidity, CO2, TVOC, pressure, light, "
                                  "presence, occupancy and people counting with scheduled, manual, threshold "
                                  "and idle resets.")
    Settings: ClassVar[type[msgspec.Struct]] = HaltianSettings
    has_upstream: ClassVar[bool] = True

    def __init__(self, ctx: ModuleContext, settings: HaltianSettings) -> None:
        super().__init__(ctx, settings)
        self.counter = LocalCounter(ctx)
        # A reloaded module still shows what its previous instance published: the first `publish_all` clears it.
        published = any(ctx.get_state(key) is not None for key in MEASURED_KEYS)
        self.room = RoomState(ctx.set_state, self.counter, published=published)
        self.stream: HaltianStream | None = None
        self._stream_key: tuple[str, ...] = ()
        self.api: ServiceApi | None = None
        self._connected: bool | None = None
        self._idle_job: ScheduledJob | None = None

    async def on_load(self) -> None:
        """Restore the local count and `last_reset` from the state directory."""
        if self.counter.load():
            self.ctx.logger.debug("restored people count %d", self.counter.count)

    async def on_update(self) -> None:
        """(Re)bind devices, share the upstream session, arm the resets and the staleness check."""
        s = self.settings
        ctx = self.ctx
        ctx.schedule.clear()
        self._idle_job = None
        labels = _labels(s)
        group = s.device_group.lower() if s.device_group else None
        self.room.configure(labels, group, _types(s.measurements), s.stale_after)
        self.counter.configure(s.directional_mode, s.capacity, s.reset_below)
        await self._bind_stream(s, labels, group)
        now = ctx.clock.time()
        self._catch_up_resets(s, now)
        self.room.publish_all(now)
        if s.reset_at is not None:
            ctx.schedule.at(parse_time_of_day(s.reset_at), self._scheduled_reset, name="haltian:reset_at")
        self._arm_idle(now)
        # Freshness (stale values leave the means, `connected` turns false) is checked on this one timer per
        # module, so it shows within a quarter of `stale_after` (at most a minute) after it is due.
        ctx.schedule.every(max(1.0, min(60.0, s.stale_after / 4)), self._tick, name="haltian:freshness")
        await self._bind_api(s)
        self._update_connected()

    async def on_unload(self) -> None:
        """Stop receiving and save the count (the runtime releases the shared session)."""
        if self.stream is not None:
            self.stream.unbind(self)
            self.stream = None
        if self.counter.active or self.counter.last_reset is not None:
            self.counter.save(self.ctx.clock.time())

    # -- commands ----------------------------------------------------------------------------

    @command(timeout=5.0)
    async def reset_count(self) -> dict[str, Any]:
        """Reset the local people count, in and out to 0 now (reason `manual`)."""
        self._reset("manual")
        last = self.counter.last_reset
        return {"people_count": self.counter.count, "last_reset": msgspec.to_builtins(last)}

    # -- wiring ------------------------------------------------------------------------------

    async def _bind_stream(self, s: HaltianSettings, labels: dict[str, str | None], group: str | None) -> None:
        endpoint = MqttEndpoint(url=s.url, username=s.api_key_id, password=s.api_key_token, client_id=s.client_id,
                                ca_file=s.ca_file, tls_insecure=s.tls_insecure, protocol="3.1.1")
        key = ("haltian", s.url, s.integration_id, s.api_key_id)
        ctx = self.ctx

        async def create() -> HaltianStream:
            return HaltianStream(ctx.transports, endpoint, s.integration_id, s.api_key_id, clock=ctx.clock,
                                 qos=s.qos, subscription_limit=s.subscription_limit)

        if self.stream is not None and self._stream_key != key:
            self.stream.unbind(self)  # before `shared` may close it (when this was its last module)
            self.stream = None
        stream = await ctx.shared("haltian-stream", key, create)
        self.stream = stream
        self._stream_key = key
        stream.configure(endpoint, qos=s.qos, subscription_limit=s.subscription_limit)
        devices = (*labels, group) if group and group not in labels else tuple(labels)
        stream.bind(self, Binding(devices, _spellings(s.measurements)), ctx.metrics)

    async def _bind_api(self, s: HaltianSettings) -> None:
        if not (s.graphql_url and s.graphql_email and s.graphql_password and s.graphql_organization):
            self.api = None
            return
        ctx = self.ctx
        url, email, password, org = s.graphql_url, s.graphql_email, s.graphql_password, s.graphql_organization

        async def create() -> ServiceApi:
            return ServiceApi(ctx.transports.http, url, email=email, password=password, organization=org,
                              clock=ctx.clock, refresh=s.graphql_refresh)

        self.api = await ctx.shared("haltian-graphql", (url, org, email), create)
        ctx.schedule.every(s.graphql_refresh, self.enrich, name="haltian:graphql", immediately=True)

    async def enrich(self) -> None:
        """Fill device labels and group members from the Service API; a failure is counted and logged."""
        api = self.api
        if api is None:
            return
        try:
            names = await api.device_names()
            self.room.set_labels(names)
            group_id = self.room.group
            if group_id is not None:
                group = await api.group(group_id)
                if group is not None:
                    if group.name:
                        self.room.set_labels({group_id: group.name})
                    members = sorted(e.node.id for e in group.childDevices.edges)
                    self.room.set_detail(group_id, "members", members)
        except GraphQLError as exc:
            self.ctx.metrics.dropped("graphql_error")
            self.ctx.logger.debug("enrichment failed: %s", exc)

    # -- stream handlers (called by the shared stream for this module's devices) -------------

    def on_measurement(self, device: str, known: KnownType | None, type_name: str, at: float, value: Any) -> None:
        """Apply a measurement; older ones are counted and ignored."""
        now = self.ctx.clock.time()
        before = self.counter.last_movement
        if not self.room.measurement(device, known, type_name, at, value, now):
            self.ctx.metrics.dropped("out_of_order")
        elif self.counter.last_movement != before:
            self._arm_idle(now)
        if self._connected is not True:
            self._update_connected()

    def on_notification(self, device: str, name: str, at: float, value: Any) -> None:
        """`deviceOffline` / `deviceOnline`; other notifications only count."""
        self.room.notification(device, name, at)

    def on_heard(self, device: str, at: float) -> None:
        """A message from a device: it is alive."""
        self.room.heard(device, at, self.ctx.clock.time())
        if self._connected is not True:
            self._update_connected()

    def on_session(self, up: bool) -> None:
        """The shared session went up or down."""
        self._update_connected()

    # -- resets and freshness ----------------------------------------------------------------

    def _reset(self, reason: Literal["scheduled", "manual", "threshold", "timeout"]) -> None:
        self.counter.reset(reason, self.ctx.clock.time())
        if self._idle_job is not None:
            self._idle_job.cancel()
            self._idle_job = None
        self.room.publish_counts()

    def _scheduled_reset(self) -> None:
        self._reset("scheduled")

    def _idle_reset(self) -> None:
        self._idle_job = None
        if not self.counter.idle:
            self._reset("timeout")

    def _arm_idle(self, now: float) -> None:
        idle = self.settings.reset_after_idle
        if self._idle_job is not None:
            self._idle_job.cancel()
            self._idle_job = None
        last = self.counter.last_movement
        if idle is None or last is None or self.counter.idle:
            return
        self._idle_job = self.ctx.schedule.after(max(0.0, last + idle - now), self._idle_reset,
                                                 name="haltian:reset_after_idle")

    def _catch_up_resets(self, s: HaltianSettings, now: float) -> None:
        """Apply a scheduled reset that fell while the runtime was down."""
        saved = self.counter.state.saved_at
        if s.reset_at is None or saved is None or not self.counter.active:
            return
        due = next_daily(saved, parse_time_of_day(s.reset_at), self.ctx.timezone)
        last = self.counter.state.last_reset_ts
        if due <= now and (last is None or last < due):
            self.counter.reset("scheduled", now)
            self.ctx.logger.info("applied the scheduled reset of %s missed while stopped", iso(due))

    def _tick(self) -> None:
        self.room.publish_all(self.ctx.clock.time())
        self._update_connected()

    def _update_connected(self) -> None:
        stream = self.stream
        left = self.room.fresh_for(self.ctx.clock.time())
        up = stream is not None and stream.up and left > 0
        if up != self._connected:
            self._connected = up
            self.ctx.set_connected(up)


def _labels(s: HaltianSettings) -> dict[str, str | None]:
    labels: dict[str, str | None] = {}
    for entry in s.devices:
        if isinstance(entry, DeviceRef):
            labels[entry.id.lower()] = entry.label
        else:
            labels[entry.lower()] = None
    return labels


def _types(measurements: list[str] | None) -> frozenset[str] | None:
    if measurements is None:
        return None
    return frozenset(canonical_type(m) for m in measurements)


def _spellings(measurements: list[str] | None) -> frozenset[str] | None:
    if measurements is None:
        return None
    found: set[str] = set()
    for name in measurements:
        canonical = canonical_type(name)
        if canonical in SPECS:
            found.update(spellings_of(canonical))
        else:
            found.update({name, canonical, camel(canonical)})
    return frozenset(found)

