"""The simulator: deterministic ids, Haltian's exact forms, and traffic a module turns into room state."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import msgspec
import yaml

from drivers.haltian.models import SPECS, canonical_type, parse_topic
from drivers.haltian.simulator import HaltianSimulator, device_id, group_id, main
from tests.drivers.haltian.conftest import API_KEY, INTEGRATION, Rig


def simulator(**kw: object) -> HaltianSimulator:
    """A simulator on the test integration."""
    args: dict[str, object] = {"integration": INTEGRATION, "api_key": API_KEY, "devices": 8, "rate": 100.0,
                               "seed": 7, "start": 1_767_258_000.0}
    args.update(kw)
    return HaltianSimulator(**args)  # type: ignore[arg-type]


def test_ids_are_deterministic() -> None:
    a, b = simulator(), simulator()
    assert [d.id for d in a.devices] == [device_id(7, i) for i in range(8)] == [d.id for d in b.devices]
    assert [g.id for g in a.groups] == [group_id(7, r) for r in range(2)]
    assert device_id(8, 0) != device_id(7, 0)
    assert a.settings(url="mqtt://x:1") == b.settings(url="mqtt://x:1")


def test_traffic_uses_every_type_both_spellings_and_both_timestamp_forms() -> None:
    sim = simulator()
    now = sim.start
    spellings: set[str] = set()
    kinds: set[str] = set()
    zulu = offset = 0
    for _ in range(5000):
        topic, body = sim.next_message(now)
        now += 0.05
        parsed = parse_topic(topic)
        assert parsed is not None
        kinds.add(parsed.kind)
        spellings.add(parsed.type)
        stamp = msgspec.json.decode(body)["measured_at"]
        zulu += stamp.endswith("Z")
        offset += stamp.endswith("+00:00")
    assert {canonical_type(s) for s in spellings} >= set(SPECS)
    assert {"ambientTemperature", "ambient_temperature", "CO2", "co2", "occupancyStatus", "occupancy_state",
            "movementDetections", "pir_count", "directionalMovement", "directional_movement"} <= spellings
    assert kinds == {"measurements", "messages", "notifications"}
    assert zulu > 1000 and offset > 1000


async def test_modules_from_the_simulator_settings_get_real_looking_rooms(rig: Rig) -> None:
    sim = simulator(malformed=0.05)
    settings = sim.settings(url="mqtt://127.0.0.1:1883")
    contexts = []
    for module in settings["modules"]:
        _, ctx = await rig.module(module["id"], **module["settings"])
        contexts.append(ctx)
    rig.session.go_up()
    rig.clock.set_time(sim.start)
    for _ in range(3000):
        topic, body = sim.next_message(rig.clock.time())
        rig.session.deliver(topic, body)
        await rig.clock.advance(0.2)
    assert sim.sent_malformed > 50
    for ctx in contexts:
        states = ctx.states
        assert {"temperature", "humidity", "co2", "tvoc", "pressure", "illuminance", "battery", "battery_voltage",
                "presence", "occupied", "people_count", "in", "out", "dwell_time", "devices",
                "offline_devices"} <= set(states)
        assert 15 < states["temperature"] < 30
        assert ctx.connected is True
        assert ("dropped", "handler_error") not in ctx.metrics.counts
    errors = sum(n for (what, _), n in contexts[0].metrics.counts.items() if what in ("decode_error", "dropped"))
    assert errors > 0


def test_print_settings() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["--integration", "sim-int", "--api-key", "sim-key", "--devices", "10", "--seed", "4",
                     "--print-settings"]) == 0
    data = yaml.safe_load(out.getvalue())
    assert data["drivers"][0]["driver"] == "haltian"
    assert len(data["modules"]) == 3
    assert data["modules"][0]["settings"]["devices"][0]["id"] == device_id(4, 0)
