"""Measurements to module state: every type and spelling, ordering, combination, freshness, connected."""

from __future__ import annotations

import msgspec
import pytest

from drivers.haltian import HaltianDriver
from drivers.haltian.models import SPECS, TYPES, canonical_type, parse_topic
from tests.drivers.haltian.cases import CASES, GROUP_TYPES, Case, spelled
from tests.drivers.haltian.conftest import DEV_A, DEV_B, DEV_C, GROUP, PREFIX, Rig, payload, stamp


@pytest.mark.parametrize(("spelling", "case"), spelled(), ids=[f"{s}-{i}" for i, (s, _) in enumerate(spelled())])
@pytest.mark.parametrize("form", ["value", "own-name"])
async def test_every_type_and_spelling_reaches_its_key(rig: Rig, spelling: str, case: Case, form: str) -> None:
    _, ctx = await rig.module(devices=[DEV_A], device_group=GROUP)
    rig.session.go_up()
    device = GROUP if case.detail in GROUP_TYPES else DEV_A
    rig.send(spelling, device, case.value, own=form == "own-name", zulu=form == "value")
    detail = ctx.states["devices"][device]
    assert detail[case.detail] == case.value
    assert detail["last_seen"] == stamp(rig.clock.time())
    if case.state is not None:
        assert ctx.states[case.state] == case.expected
    assert ctx.metrics.counts[("received", "measurements")] == 1
    assert not any(k[0] == "decode_error" for k in ctx.metrics.counts)
    assert SPECS[canonical_type(spelling)].unit == case.unit


def test_type_table_covers_the_reference() -> None:
    reference = {s for case in CASES for s in case.spellings}
    assert reference <= set(TYPES)
    assert {canonical_type(s) for s in reference} == set(SPECS)


@pytest.mark.parametrize(("topic", "ok"), [
    (f"{PREFIX}/measurements/co2/{DEV_A}", True),
    (f"{PREFIX}/messages/rawData/{DEV_A}", True),
    (f"{PREFIX}/notifications/deviceOffline/{DEV_A}", True),
    (f"{PREFIX}/notifications/deviceOffline", True),
    (f"{PREFIX}/bogus/co2/{DEV_A}", False),
    (f"{PREFIX}/measurements/co2/{DEV_A}/extra", False),
    (f"{PREFIX}/measurements", False),
    (f"{PREFIX}/measurements/co2/", False),
    (f"other/events/{PREFIX[19:]}/measurements/co2/{DEV_A}", False),
])
def test_topic_shapes(topic: str, ok: bool) -> None:
    assert (parse_topic(topic) is not None) is ok


async def test_older_measurement_does_not_overwrite(rig: Rig) -> None:
    _, ctx = await rig.module(devices=[DEV_A])
    rig.session.go_up()
    now = rig.clock.time()
    rig.send("ambientTemperature", DEV_A, 22.0, at=now)
    rig.send("ambient_temperature", DEV_A, 30.0, at=now - 60, zulu=False)
    rig.send("ambientTemperature", DEV_A, 31.0, at=now)  # a duplicate delivery of the same instant
    assert ctx.states["temperature"] == 22.0
    assert ctx.states["devices"][DEV_A]["ambient_temperature"] == 22.0
    assert ctx.metrics.counts[("dropped", "out_of_order")] == 2
    rig.send("ambientTemperature", DEV_A, 23.0, at=now + 1)
    assert ctx.states["temperature"] == 23.0


async def test_devices_combine_per_reference(rig: Rig) -> None:
    _, ctx = await rig.module(devices=[{"id": DEV_A, "label": "Window"}, DEV_B, DEV_C])
    rig.session.go_up()
    rig.send("ambientTemperature", DEV_A, 21.0)
    rig.send("ambientTemperature", DEV_B, 22.333)
    assert ctx.states["temperature"] == 21.67
    rig.send("co2", DEV_A, 400)
    rig.send("CO2", DEV_B, 600)
    assert ctx.states["co2"] == 500
    assert isinstance(ctx.states["co2"], int)
    rig.send("batteryPercentage", DEV_A, 80)
    rig.send("battery_level", DEV_B, 35)
    rig.send("batteryVoltage", DEV_C, 3.1)
    rig.send("battery_voltage", DEV_A, 2.9)
    assert ctx.states["battery"] == 35
    assert ctx.states["battery_voltage"] == 2.9
    rig.send("presence", DEV_A, False)
    assert ctx.states["presence"] is False
    rig.send("movementDetections", DEV_B, 3)
    assert ctx.states["presence"] is True
    rig.send("occupancyStatus", DEV_A, {"occupied": False, "confidence": 0.9})
    rig.send("occupancy_state", DEV_B, {"occupied": True, "confidence": 0.7})
    assert ctx.states["occupied"] is True
    assert ctx.states["occupancy_confidence"] == 0.7
    devices = ctx.states["devices"]
    assert devices[DEV_A]["label"] == "Window"
    assert devices[DEV_B]["label"] is None
    assert devices[DEV_C]["battery_voltage"] == 3.1


async def test_group_values_win_and_pass_through(rig: Rig) -> None:
    _, ctx = await rig.module(devices=[DEV_A], device_group=GROUP)
    rig.session.go_up()
    rig.send("occupancyStatus", DEV_A, True)
    rig.send("occupancy_state", GROUP, {"occupied": False, "confidence": 0.8})
    assert ctx.states["occupied"] is False
    assert ctx.states["occupancy_confidence"] == 0.8
    rig.send("directionalMovement", DEV_A, {"in": 2, "out": 0, "net": 2})
    assert ctx.states["people_count"] == 2
    rig.send("occupants_count", GROUP, 7)
    rig.send("directional_movement", GROUP, {"in": 10, "out": 3, "net": 7})
    rig.send("dwell_time", GROUP, 600)
    assert (ctx.states["people_count"], ctx.states["in"], ctx.states["out"]) == (7, 10, 3)
    assert ctx.states["dwell_time"] == 600
    rig.send("occupants_count", DEV_A, 99)  # not the group: kept in the detail only
    assert ctx.states["people_count"] == 7
    assert ctx.states["devices"][DEV_A]["occupants_count"] == 99


async def test_stale_values_leave_the_mean(rig: Rig) -> None:
    _, ctx = await rig.module(devices=[DEV_A, DEV_B], stale_after=600)
    rig.session.go_up()
    rig.send("humidity", DEV_A, 40.0)
    await rig.clock.advance(500)
    rig.send("humidity", DEV_B, 50.0)
    assert ctx.states["humidity"] == 45.0
    await rig.clock.advance(200)  # DEV_A's value is now 700 s old
    assert ctx.states["humidity"] == 50.0
    await rig.clock.advance(600)
    assert "humidity" not in ctx.states


async def test_unknown_types_are_kept_and_counted(rig: Rig) -> None:
    _, ctx = await rig.module(devices=[DEV_A])
    rig.session.go_up()
    rig.send("vendorExperimental", DEV_A, {"level": 3})
    rig.send("soundLevel", DEV_A, 41.5, own=True)
    devices = ctx.states["devices"][DEV_A]
    assert devices["vendor_experimental"] == {"level": 3}
    assert devices["sound_level"] == 41.5
    assert ctx.metrics.counts[("received", "unknown_type")] == 2


async def test_measurement_filter(rig: Rig) -> None:
    _, ctx = await rig.module(devices=[DEV_A], measurements=["ambient_temperature", "CO2"])
    rig.session.go_up()
    rig.send("ambientTemperature", DEV_A, 21.0)
    rig.send("humidity", DEV_A, 40.0)
    rig.send("co2", DEV_A, 500)
    assert ctx.states["temperature"] == 21.0
    assert ctx.states["co2"] == 500
    assert "humidity" not in ctx.states
    subs = set(rig.session.subscriptions)
    assert f"{PREFIX}/measurements/ambientTemperature/{DEV_A}" in subs
    assert f"{PREFIX}/measurements/CO2/{DEV_A}" in subs
    assert f"{PREFIX}/notifications/+/{DEV_A}" in subs
    assert not any(s.endswith(f"+/+/{DEV_A}") for s in subs)


async def test_offline_devices(rig: Rig) -> None:
    _, ctx = await rig.module(devices=[DEV_A, DEV_B])
    rig.session.go_up()
    assert ctx.states["offline_devices"] == []
    now = rig.clock.time()
    rig.session.deliver(f"{PREFIX}/notifications/deviceOffline/{DEV_B}", payload(None, now))
    rig.session.deliver(f"{PREFIX}/notifications/deviceOffline", msgspec.json.encode(
        {"measured_at": stamp(now), "device_id": DEV_A}))
    assert ctx.states["offline_devices"] == sorted([DEV_A, DEV_B])
    rig.send("humidity", DEV_A, 40.0, at=now - 10)  # measured before it went offline
    assert ctx.states["offline_devices"] == sorted([DEV_A, DEV_B])
    await rig.clock.advance(5)
    rig.send("humidity", DEV_A, 41.0)
    assert ctx.states["offline_devices"] == [DEV_B]
    rig.session.deliver(f"{PREFIX}/messages/rawData/{DEV_B}", payload("00ff", rig.clock.time()))
    assert ctx.states["offline_devices"] == []
    assert ctx.states["devices"][DEV_B]["last_seen"] == stamp(rig.clock.time())


async def test_a_reloaded_module_clears_what_its_previous_instance_measured(rig: Rig) -> None:
    driver, ctx = await rig.module(devices=[DEV_A, DEV_B])
    assert set(ctx.states) == {"devices", "offline_devices"}  # a fresh module has no measured key to clear
    rig.session.go_up()
    rig.send("ambientTemperature", DEV_A, 21.0)
    rig.send("occupancyStatus", DEV_B, {"occupied": True, "confidence": 0.95})
    assert ctx.states["temperature"] == 21.0
    assert ctx.states["occupied"] is True
    await driver.on_unload()
    # A crashed module is loaded again on the same context: its states are still there.
    again = HaltianDriver(ctx, driver.settings)
    await again.on_load()
    await again.on_update()
    assert set(ctx.states) == {"devices", "offline_devices"}
    assert ("temperature", None) in ctx.history
    assert ("occupied", None) in ctx.history


async def test_connected_follows_session_and_freshness(rig: Rig) -> None:
    _, ctx = await rig.module(devices=[DEV_A], stale_after=300)
    assert ctx.connected is False
    rig.session.go_up()
    assert ctx.connected is False  # up, but nothing reported yet
    rig.send("humidity", DEV_A, 40.0)
    assert ctx.connected is True
    await rig.clock.advance(301)
    assert ctx.connected is False
    rig.send("humidity", DEV_A, 41.0)
    assert ctx.connected is True
    rig.session.go_down()
    assert ctx.connected is False
    rig.session.go_up()
    assert ctx.connected is True
    assert "connected" not in ctx.states


MALFORMED: list[tuple[str, bytes]] = [
    (f"{PREFIX}/measurements/ambientTemperature/{DEV_A}", b'{"measured_at": "2026-01-01T00:00:00Z", "value": '),
    (f"{PREFIX}/measurements/ambientTemperature/{DEV_A}", b'{"measured_at": "\xff\xfe", "value": 1}'),
    (f"{PREFIX}/measurements/ambientTemperature/{DEV_A}", b"\xff\xfe\xfd"),
    (f"{PREFIX}/measurements/ambientTemperature/{DEV_A}", b'{"value": "warm"}'),
    (f"{PREFIX}/measurements/ambientTemperature/{DEV_A}", b'{"value": true}'),
    (f"{PREFIX}/measurements/ambientTemperature/{DEV_A}", b'{"measured_at": "yesterday", "value": 1}'),
    (f"{PREFIX}/measurements/ambientTemperature/{DEV_A}", b'{"measured_at": "2026-01-01T00:00:00Z"}'),
    (f"{PREFIX}/measurements/ambientTemperature/{DEV_A}", b"[1, 2]"),
    (f"{PREFIX}/measurements/ambientTemperature/{DEV_A}", b""),
    (f"{PREFIX}/measurements/directionalMovement/{DEV_A}", b'{"value": {"in": "3", "out": 1}}'),
    (f"{PREFIX}/measurements/occupancyStatus/{DEV_A}", b'{"value": 3}'),
    (f"{PREFIX}/measurements/vendorThing/{DEV_A}", b'{"measured_at": 12, "value": 1}'),
    (f"{PREFIX}/measurements/vendorThing/{DEV_A}", b"nope"),
    (f"{PREFIX}/messages/rawData/{DEV_A}", b"{"),
    (f"{PREFIX}/notifications/deviceOffline/{DEV_A}", b"{{"),
    (f"{PREFIX}/measurements/ambientTemperature/{DEV_A}", b'{"value": "' + b"x" * (1024 * 1024) + b'"}'),
    (f"{PREFIX}/bogus/ambientTemperature/{DEV_A}", b'{"value": 1}'),
    (f"{PREFIX}/measurements/ambientTemperature/{DEV_A}/extra", b'{"value": 1}'),
    (f"{PREFIX}/measurements/ambientTemperature", b'{"value": 1}'),
    ("haltian-iot/events/other-integration/key/measurements/co2/x", b'{"value": 1}'),
    ("something/else", b'{"value": 1}'),
    (f"{PREFIX}/notifications/deviceOffline", b'{"measured_at": "2026-01-01T00:00:00Z"}'),
]


async def test_malformed_input_is_counted_and_harmless(rig: Rig) -> None:
    _, ctx = await rig.module(devices=[DEV_A, DEV_B])
    rig.session.go_up()
    rig.send("humidity", DEV_B, 40.0)
    for topic, body in MALFORMED:
        rig.session.deliver(topic, body)
    rig.send("humidity", DEV_B, 42.0, at=rig.clock.time() + 1)
    rig.send("humidity", DEV_A, 44.0)
    assert ctx.states["humidity"] == 43.0
    counts = ctx.metrics.counts
    problems = sum(n for (what, _), n in counts.items() if what in ("decode_error", "dropped"))
    assert problems == len(MALFORMED)
    assert counts[("dropped", "oversize")] == 1
    assert counts[("dropped", "topic_shape")] == 5
    assert "ambient_temperature" not in ctx.states["devices"][DEV_A]


async def test_messages_of_unbound_devices_are_dropped_without_decoding(rig: Rig) -> None:
    _, ctx = await rig.module(devices=[DEV_A])
    rig.session.go_up()
    rig.session.deliver(f"{PREFIX}/measurements/co2/{DEV_C}", b"not json at all")
    assert ctx.metrics.counts[("dropped", "unbound_device")] == 1
    assert not any(k[0] == "decode_error" for k in ctx.metrics.counts)


async def test_one_device_feeds_every_module_bound_to_it(rig: Rig) -> None:
    _, one = await rig.module("mod-1", devices=[DEV_A, DEV_B])
    _, two = await rig.module("mod-2", devices=[DEV_A.upper()])
    rig.session.go_up()
    rig.send("co2", DEV_A, 700)
    rig.send("co2", DEV_B, 500)
    assert one.states["co2"] == 600
    assert two.states["co2"] == 700


async def test_connected_turns_false_at_the_first_freshness_check_after_it_is_due(rig: Rig) -> None:
    _, ctx = await rig.module(devices=[DEV_A], stale_after=300)  # checked every 75 s
    rig.session.go_up()
    await rig.clock.advance(10)
    rig.send("humidity", DEV_A, 40.0)  # due at 310 s; the checks run at 75, 150, ... 375 s
    await rig.clock.advance(299)
    assert ctx.connected is True
    await rig.clock.advance(66)
    assert ctx.connected is False
    assert "humidity" not in ctx.states
