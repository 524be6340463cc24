"""The bridge: forward other modules' state (e.g. a Haltian room sensor) as EB measurements.

A gateway module lists `forward: [{module: "Sensor_1", states: [temperature, humidity, ...]}]`.
Each followed state becomes a measurement of the matching EB type, in EB units, with `vendor_id`
`<gateway module id>:<module ref>` unless the rule names one and `time` the moment of the change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from drivers.empathic_building.errors import EmpathicBuildingError, InvalidMeasurement, SettingsProblem
from drivers.empathic_building.models import (
    AirPressure,
    Co2,
    Counter,
    Distance,
    Humidity,
    Illuminance,
    Location,
    Measurement,
    Noise,
    Occupancy,
    Satisfaction,
    SensorStatus,
    Stress,
    Temperature,
    Tvoc,
    validate_measurement,
)
from drivers.empathic_building.units import UnitError, to_fraction
from runtime.driver import ModuleContext, Subscription

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]
Submit = Callable[[list[Measurement]], Awaitable[Any]]


class ForwardRule(msgspec.Struct, forbid_unknown_fields=True):
    """One followed module: its PlaceOS-style reference, the states to forward, and the EB sensor identity."""

    module: str
    states: list[str]
    vendor_id: str | None = None
    name: str | None = None


# Runtime state key -> EB measurement type it becomes (documentation; `occupied` only without people_count).
FORWARDABLE: dict[str, str] = {
    "temperature": "temperature (°C)",
    "humidity": "humidity (% -> 0-1)",
    "co2": "co2 (ppm)",
    "pressure": "airpressure (hPa)",
    "air_pressure": "airpressure (hPa)",
    "noise": "noise (dB)",
    "illuminance": "illuminance (lux)",
    "tvoc": "tvoc (ppb, rounded)",
    "distance": "distance (mm, rounded)",
    "people_count": "occupancy used (total from capacity)",
    "capacity": "occupancy total",
    "occupied": "occupancy used 0/1 of total 1",
    "battery": "sensorstatus battery_level (% -> 0-1)",
    "battery_voltage": "sensorstatus battery_voltage (V)",
    "link_quality": "sensorstatus link_quality (% -> 0-1)",
    "satisfaction": "satisfaction (% -> 0-1)",
    "stress": "stress (% -> 0-1)",
    "counter": "counter value",
    "position": "location (x, y, z, lon, lat, accuracy, floor_id, group)",
}


def check_rules(rules: list[ForwardRule]) -> None:
    """Raise `SettingsProblem` for a state the bridge cannot forward."""
    for i, rule in enumerate(rules):
        unknown = [s for s in rule.states if s not in FORWARDABLE]
        if unknown:
            raise SettingsProblem(f"forward[{i}] ({rule.module}): cannot forward {unknown}; "
                                  f"supported states: {sorted(FORWARDABLE)}")
        if not rule.states:
            raise SettingsProblem(f"forward[{i}] ({rule.module}): no states listed")


def _number(state: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnitError(f"{state}: expected a number, got {type(value).__name__}")
    return float(value)


class SensorTrack:
    """What the bridge remembers of one followed module (for occupancy's two halves)."""

    def __init__(self, rule: ForwardRule, vendor_id: str, capacity: int | None) -> None:
        self.rule = rule
        self.vendor_id = vendor_id
        self.people: int | None = None
        self.capacity = capacity
        self.counts_people = "people_count" in rule.states


def convert(track: SensorTrack, state: str, value: Any, time_ms: int) -> list[Measurement]:
    """The EB measurements for one state change of a followed module (empty when nothing to send yet)."""
    common: dict[str, Any] = {"vendor_id": track.vendor_id, "time": time_ms}
    if track.rule.name:
        common["name"] = track.rule.name
    if value is None:
        return []
    if state == "temperature":
        return [Temperature(value=_number(state, value), **common)]
    if state == "humidity":
        return [Humidity(value=to_fraction(_number(state, value)), **common)]
    if state == "co2":
        return [Co2(value=_number(state, value), **common)]
    if state in ("pressure", "air_pressure"):
        return [AirPressure(value=_number(state, value), **common)]
    if state == "noise":
        return [Noise(value=_number(state, value), **common)]
    if state == "illuminance":
        return [Illuminance(value=_number(state, value), **common)]
    if state == "tvoc":
        return [Tvoc(value=round(_number(state, value)), **common)]
    if state == "distance":
        return [Distance(value=round(_number(state, value)), **common)]
    if state in ("people_count", "capacity"):
        if state == "people_count":
            track.people = round(_number(state, value))
        else:
            track.capacity = round(_number(state, value))
        if track.people is None:
            return []
        if track.capacity is None:
            raise UnitError("people_count: no capacity (set `capacity` in settings or forward it)")
        return [Occupancy(used=max(0, track.people), total=track.capacity, **common)]
    if state == "occupied":
        if track.counts_people:
            return []
        if not isinstance(value, bool):
            raise UnitError(f"occupied: expected a boolean, got {type(value).__name__}")
        return [Occupancy(used=int(value), total=1, **common)]
    if state == "battery":
        return [SensorStatus(battery_level=to_fraction(_number(state, value)), **common)]
    if state == "battery_voltage":
        return [SensorStatus(battery_voltage=_number(state, value), **common)]
    if state == "link_quality":
        return [SensorStatus(link_quality=to_fraction(_number(state, value)), **common)]
    if state == "satisfaction":
        return [Satisfaction(value=to_fraction(_number(state, value)), **common)]
    if state == "stress":
        return [Stress(value=to_fraction(_number(state, value)), **common)]
    if state == "counter":
        return [Counter(value=round(_number(state, value)), **common)]
    if state == "position":
        if not isinstance(value, dict):
            raise UnitError(f"position: expected an object, got {type(value).__name__}")
        fields = {k: value[k] for k in ("x", "y", "z", "lon", "lat", "accuracy", "floor_id", "group") if k in value}
        return [msgspec.convert({**fields, **common, "type": "location"}, Location)]
    raise UnitError(f"{state}: not forwardable")


class Bridge:
    """Follows the configured states and hands their measurements to the gateway."""

    def __init__(self, ctx: ModuleContext, rules: list[ForwardRule], submit: Submit, *,
                 capacity: int | None) -> None:
        self._ctx = ctx
        self._rules = rules
        self._submit = submit
        self._capacity = capacity
        self._subs: list[Subscription] = []
        self._queue: asyncio.Queue[list[Measurement]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Subscribe to every forwarded state and start the submitting task."""
        self._task = self._ctx.spawn(self._pump(), name="eb-bridge")
        for i, rule in enumerate(self._rules):
            vendor_id = rule.vendor_id or f"{self._ctx.module_id}:{rule.module}"
            track = SensorTrack(rule, vendor_id, self._capacity)
            states = list(dict.fromkeys(rule.states))
            if track.counts_people and "capacity" not in states:
                states.append("capacity")  # the followed module's capacity beats the settings default
            for state in states:
                try:
                    self._subs.append(self._ctx.subscribe(rule.module, state, self._callback(track)))
                except LookupError as exc:
                    self.stop()
                    raise SettingsProblem(f"forward[{i}]: no module {rule.module!r} in this system") from exc

    def stop(self) -> None:
        """Cancel the subscriptions and the task."""
        for sub in self._subs:
            sub.cancel()
        self._subs.clear()
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _callback(self, track: SensorTrack) -> Callable[[str, Any], None]:
        def on_change(state: str, value: Any) -> None:
            time_ms = int(self._ctx.clock.time() * 1000)
            try:
                items = [validate_measurement(m)[0] for m in convert(track, state, value, time_ms)]
            except (UnitError, InvalidMeasurement, msgspec.ValidationError) as exc:
                self._ctx.metrics.dropped("bridge_unconvertible")
                self._ctx.logger.warning("not forwarding %s of %s: %s", state, track.rule.module, exc)
                return
            if items:
                self._queue.put_nowait(items)

        return on_change

    async def _pump(self) -> None:
        while True:
            items = await self._queue.get()
            while not self._queue.empty():
                items.extend(self._queue.get_nowait())
            try:
                await self._submit(items)
            except EmpathicBuildingError as exc:
                self._ctx.metrics.dropped("bridge_rejected", len(items))
                self._ctx.logger.error("forwarded measurements not accepted: %s", exc)
