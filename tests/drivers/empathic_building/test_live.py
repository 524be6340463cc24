"""Live events become module state in runtime units."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.empathic_building import EmpathicBuildingDriver
from drivers.empathic_building.models import LastMeasurement, LastStatus
from drivers.empathic_building.units import UnitError, measurement_state, status_state
from tests.drivers.empathic_building.conftest import DriverFactory, Eb, eventually

LOC = "private-location-1"
ORG = "private-organization-1"


async def live(eb: Eb, load_driver: DriverFactory, sensors: list[Any]) -> EmpathicBuildingDriver:
    driver = await load_driver(eb.settings(live=True, sensors=sensors))
    await eventually(lambda: driver.ctx.connected is True)  # type: ignore[attr-defined]
    return driver


@pytest.mark.parametrize(("kind", "measurement", "expected"), [
    ("temperature", {"value": 21.55}, {"temperature": 21.55}),
    ("humidity", {"value": 0.4567}, {"humidity": 45.67}),
    ("co2", {"value": 612}, {"co2": 612}),
    ("airpressure", {"value": 1013.2}, {"pressure": 1013.2}),
    ("occupancy", {"used": 3, "total": 8}, {"people_count": 3, "capacity": 8}),
    ("noise", {"value": 41.5}, {"noise": 41.5}),
    ("illuminance", {"value": 300}, {"illuminance": 300}),
    ("distance", {"value": 1200}, {"distance": 1200}),
    ("tvoc", {"value": 120}, {"tvoc": 120}),
    ("satisfaction", {"value": 0.8, "raw_value": 4}, {"satisfaction": 80.0}),
    ("stress", {"value": 0.125}, {"stress": 12.5}),
    ("counter", {"value": 42}, {"counter": 42}),
    ("location", {"x": 1.5, "y": 2.0, "floor_id": "f1", "group": "employee"},
     {"position": {"x": 1.5, "y": 2.0, "floor_id": "f1", "group": "employee"}}),
    ("reservation", {"events": [{"start": 1, "end": 2}]}, {"reservations": [{"start": 1, "end": 2}]}),
    ("generic_event", {"value": "WASH", "time": 5}, {"last_event": {"value": "WASH", "time": 5}}),
])
def test_measurement_to_state_units(kind: str, measurement: dict[str, Any], expected: dict[str, Any]) -> None:
    import msgspec
    assert measurement_state(kind, msgspec.convert(measurement, LastMeasurement)) == expected


def test_status_to_state_units() -> None:
    assert status_state(LastStatus(battery_level=0.873, battery_voltage=2.9, link_quality=0.5)) == {
        "battery": 87.3, "battery_voltage": 2.9, "link_quality": 50.0}


def test_wrong_value_type_is_an_error() -> None:
    with pytest.raises(UnitError):
        measurement_state("temperature", LastMeasurement(value="warm"))
    with pytest.raises(UnitError):
        measurement_state("mystery", LastMeasurement(value=1))


async def test_sensor_events_update_mapped_modules_by_vendor_id_and_eb_id(eb: Eb, load_driver: DriverFactory,
                                                                          make_ctx: Any) -> None:
    by_vendor = await live(eb, load_driver, ["vendor-1"])
    by_id = await load_driver(eb.settings(live=True, sensors=[11]), make_ctx("mod-eb-2"))
    await eventually(lambda: by_id.ctx.connected is True)  # type: ignore[attr-defined]
    await eb.server.push(LOC, "sensor-created", [
        {"id": 10, "vendor_id": "vendor-1", "type": "humidity", "name": "Hum",
         "last_measurement": {"time": 1, "value": 0.41}},
        {"id": 11, "vendor_id": "vendor-9", "type": "occupancy",
         "last_measurement": {"time": 1, "used": 2, "total": 6}},
    ])
    await eventually(lambda: by_vendor.ctx.get_state("humidity") == 41.0 and by_id.ctx.get_state("people_count") == 2)
    assert by_id.ctx.get_state("capacity") == 6
    assert by_vendor.ctx.get_state("people_count") is None
    assert by_vendor.ctx.get_state("sensors") == {"10": {"vendor_id": "vendor-1", "type": "humidity", "name": "Hum"}}
    # -modified carries only the id and the change: the hub remembers the vendor id and type
    await eb.server.push(LOC, "sensor-modified", [{"id": 10, "last_measurement": {"time": 2, "value": 0.5}},
                                                  {"id": 10, "last_status": {"battery_level": 0.9}}])
    await eventually(lambda: by_vendor.ctx.get_state("humidity") == 50.0 and by_vendor.ctx.get_state("battery") == 90.0)
    await eb.server.push(LOC, "sensor-deleted", [{"id": 10}])
    await eventually(lambda: by_vendor.ctx.get_state("humidity") is None)
    assert by_vendor.ctx.get_state("sensors") is None


async def test_sensors_known_before_start_are_listed_and_mapped(eb: Eb, load_driver: DriverFactory) -> None:
    from drivers.empathic_building.models import measurements_decoder
    await eb.server._store("1", measurements_decoder.decode(
        b'[{"type":"temperature","vendor_id":"vendor-1","time":1000,"value":22.5}]')[0])
    driver = await live(eb, load_driver, ["vendor-1"])
    await eventually(lambda: driver.ctx.get_state("temperature") == 22.5)
    # a later -modified with only the id still reaches the module
    sensor_id = next(iter(eb.server.sensors))
    await eb.server.push(LOC, "sensor-modified", [{"id": sensor_id, "last_measurement": {"time": 2, "value": 23}}])
    await eventually(lambda: driver.ctx.get_state("temperature") == 23)


async def test_organization_and_location_state(eb: Eb, load_driver: DriverFactory) -> None:
    driver = await live(eb, load_driver, [])
    await eventually(lambda: driver.ctx.get_state("organization") == {"id": "1", "name": "Acme Corp"})
    await eventually(lambda: driver.ctx.get_state("location") == {"id": "1", "name": "HQ"})
    await eb.server.push(ORG, "organization-modified", [{"id": 1, "name": "Acme Oy"}])
    await eb.server.push(ORG, "location-modified", [{"id": 1, "name": "Head Office"}])
    await eb.server.push(ORG, "location-modified", [{"id": 2, "name": "Elsewhere"}])
    await eventually(lambda: driver.ctx.get_state("location") == {"id": "1", "name": "Head Office"})
    assert driver.ctx.get_state("organization") == {"id": "1", "name": "Acme Oy"}
    await eb.server.push(ORG, "location-deleted", [{"id": 1}])
    await eventually(lambda: driver.ctx.get_state("location") is None)


async def test_notifications_state(eb: Eb, load_driver: DriverFactory) -> None:
    driver = await live(eb, load_driver, [])
    await eb.server.push("notifications", "notification-created", [{"id": 1, "title": "Maintenance", "level": "info"}])
    await eb.server.push("notifications", "notification-created", [{"id": 2, "title": "Fire drill"}])
    await eb.server.push("notifications", "notification-modified", [{"id": 1, "level": "warning"}])
    await eventually(lambda: driver.ctx.get_state("notifications") == [
        {"id": 1, "title": "Maintenance", "level": "warning"}, {"id": 2, "title": "Fire drill"}])
    await eb.server.push("notifications", "notification-deleted", [{"id": 1}])
    await eventually(lambda: driver.ctx.get_state("notifications") == [{"id": 2, "title": "Fire drill"}])


async def test_malformed_objects_are_counted(eb: Eb, load_driver: DriverFactory) -> None:
    driver = await live(eb, load_driver, ["vendor-1"])
    await eb.server.push(LOC, "sensor-created", [{"no_id": True}, {"id": 5, "vendor_id": "vendor-1",
                                                                   "type": "co2", "last_measurement": {"value": 500}}])
    await eventually(lambda: driver.ctx.get_state("co2") == 500)
    assert driver.ctx.metrics.counts[("decode_error", "eb_object")] == 1  # type: ignore[attr-defined]


async def test_connected_follows_subscriptions(eb: Eb, load_driver: DriverFactory) -> None:
    driver = await live(eb, load_driver, [])
    ctx: Any = driver.ctx
    seen: list[bool] = []
    original = ctx.set_connected

    def record(up: bool) -> None:
        seen.append(up)
        original(up)

    ctx.set_connected = record
    await eb.server.disconnect_all(4200)
    await eventually(lambda: False in seen)
    await eventually(lambda: ctx.connected is True and eb.server.subscribed_sockets == 1)
    assert seen[-1] is True


async def test_a_missing_sensor_list_is_logged_and_counted_and_events_still_map(
        eb: Eb, load_driver: DriverFactory, caplog: pytest.LogCaptureFixture) -> None:
    # The sensor list path is not in the vendor documents: without it, mapping goes on from events.
    eb.server.canned_answers["/v1/locations/1/sensors"] = (404, "<html>Not Found</html>")
    driver = await live(eb, load_driver, ["vendor-1"])
    ctx: Any = driver.ctx
    await eventually(lambda: ctx.metrics.counts.get(("decode_error", "eb_sensor_list"), 0) >= 1)
    assert "could not list the sensors of location 1" in caplog.text
    await eb.server.push(LOC, "sensor-created", [{"id": 7, "vendor_id": "vendor-1", "type": "co2",
                                                  "last_measurement": {"time": 1, "value": 480}}])
    await eventually(lambda: ctx.get_state("co2") == 480)
    await eb.server.push(LOC, "sensor-modified", [{"id": 7, "last_measurement": {"time": 2, "value": 510}}])
    await eventually(lambda: ctx.get_state("co2") == 510)
    assert ctx.connected is True
