"""The bridge: other modules' state forwarded as EB measurements in EB units."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from drivers.empathic_building.bridge import ForwardRule, SensorTrack, convert
from drivers.empathic_building.errors import SettingsProblem
from drivers.empathic_building.units import UnitError
from runtime.testing import FakeModuleContext
from tests.drivers.empathic_building.conftest import ContextFactory, DriverFactory, Eb, eventually

T = 1_767_225_600_000


def track(*states: str, capacity: int | None = None) -> SensorTrack:
    return SensorTrack(ForwardRule(module="Sensor_1", states=list(states)), "gw:Sensor_1", capacity)


def wire(items: list[Any]) -> list[dict[str, Any]]:
    return [msgspec.to_builtins(i) for i in items]


@pytest.mark.parametrize(("state", "value", "expected"), [
    ("temperature", 21.37, {"type": "temperature", "value": 21.37}),
    ("humidity", 45.5, {"type": "humidity", "value": 0.455}),
    ("co2", 640, {"type": "co2", "value": 640.0}),
    ("pressure", 1012.5, {"type": "airpressure", "value": 1012.5}),
    ("air_pressure", 1000, {"type": "airpressure", "value": 1000.0}),
    ("noise", 38.2, {"type": "noise", "value": 38.2}),
    ("illuminance", 420, {"type": "illuminance", "value": 420.0}),
    ("tvoc", 87.6, {"type": "tvoc", "value": 88}),
    ("distance", 1234.4, {"type": "distance", "value": 1234}),
    ("battery", 87, {"type": "sensorstatus", "battery_level": 0.87}),
    ("battery_voltage", 2.95, {"type": "sensorstatus", "battery_voltage": 2.95}),
    ("link_quality", 64, {"type": "sensorstatus", "link_quality": 0.64}),
    ("satisfaction", 75, {"type": "satisfaction", "value": 0.75}),
    ("stress", 12.5, {"type": "stress", "value": 0.125}),
    ("counter", 42, {"type": "counter", "value": 42}),
    ("occupied", True, {"type": "occupancy", "used": 1, "total": 1}),
    ("occupied", False, {"type": "occupancy", "used": 0, "total": 1}),
    ("position", {"x": 1.5, "y": 2.5, "floor_id": "f", "space_id": "dropped"},
     {"type": "location", "x": 1.5, "y": 2.5, "floor_id": "f"}),
])
def test_unit_conversion_for_each_mapped_state(state: str, value: Any, expected: dict[str, Any]) -> None:
    assert wire(convert(track(state), state, value, T)) == [{**expected, "vendor_id": "gw:Sensor_1", "time": T}]


def test_people_count_and_capacity_become_occupancy_used_and_total() -> None:
    t = track("people_count")
    assert convert(t, "capacity", 8, T) == []  # nothing to send before a count
    assert wire(convert(t, "people_count", 3, T)) == [
        {"type": "occupancy", "used": 3, "total": 8, "vendor_id": "gw:Sensor_1", "time": T}]
    assert wire(convert(t, "capacity", 10, T + 1))[0]["total"] == 10
    assert convert(t, "occupied", True, T + 2) == []  # people_count is the better source


def test_people_count_without_capacity_is_an_error_and_settings_capacity_helps() -> None:
    with pytest.raises(UnitError, match="capacity"):
        convert(track("people_count"), "people_count", 3, T)
    assert wire(convert(track("people_count", capacity=12), "people_count", 3, T))[0]["total"] == 12


def test_bad_values_are_errors() -> None:
    with pytest.raises(UnitError):
        convert(track("temperature"), "temperature", "warm", T)
    with pytest.raises(UnitError):
        convert(track("temperature"), "temperature", True, T)
    assert convert(track("temperature"), "temperature", None, T) == []


async def test_gateway_module_forwards_a_peer_modules_state(eb: Eb, load_driver: DriverFactory,
                                                            make_ctx: ContextFactory) -> None:
    ctx = make_ctx("mod-gw")
    sensor = FakeModuleContext("mod-haltian", name="Sensor")
    sensor.set_state("temperature", 22.5)
    sensor.set_state("capacity", 6)
    ctx.peers["Sensor_1"] = sensor
    driver = await load_driver(eb.gateway_settings(forward=[
        {"module": "Sensor_1", "states": ["temperature", "humidity", "people_count", "battery"]}]), ctx)
    sensor.set_state("humidity", 40.0)
    ctx.clock.set_time(ctx.clock.time() + 1)
    sensor.set_state("people_count", 4)
    sensor.set_state("battery", 55)
    await eventually(lambda: (driver.ctx.get_state("gateway") or {}).get("delivered") == 4)
    assert len(eb.server.stored()) == 3  # a sensorstatus only updates the sensor's last_status
    by_type = {m["type"]: m for m in eb.server.stored()}
    assert by_type["temperature"]["value"] == 22.5
    assert by_type["humidity"]["value"] == 0.4
    assert (by_type["occupancy"]["used"], by_type["occupancy"]["total"]) == (4, 6)
    assert {m["vendor_id"] for m in eb.server.stored()} == {"mod-gw:Sensor_1"}
    assert eb.server.sensors[next(iter(eb.server.sensors))]["location_id"] == "1"
    status = [s for s in eb.server.sensors.values() if s["type"] == "sensorstatus"]
    assert status[0]["last_status"]["battery_level"] == 0.55


async def test_forwarding_from_a_missing_module_is_a_settings_problem(eb: Eb, load_driver: DriverFactory) -> None:
    with pytest.raises(SettingsProblem, match="no module 'Nope_1'"):
        await load_driver(eb.gateway_settings(forward=[{"module": "Nope_1", "states": ["temperature"]}]))
