"""Measurement Structs: every documented type, field and range; event payload decoding."""

from __future__ import annotations

import base64
import gzip
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.empathic_building.errors import CorruptEvent, InvalidMeasurement
from drivers.empathic_building.models import (
    MEASUREMENT_TYPES,
    Humidity,
    decode_event_data,
    encode_event_data,
    validate_measurement,
)

COMMON = {"vendor_id": "ABC-123", "time": 1_700_000_000_000}

VALID: list[dict[str, Any]] = [
    {"type": "temperature", "value": 23.756},
    {"type": "humidity", "value": 0.45},
    {"type": "co2", "value": 612.0},
    {"type": "airpressure", "value": 1013.25},
    {"type": "occupancy", "used": 3, "total": 8},
    {"type": "noise", "value": 41.2},
    {"type": "location", "x": 1.0, "y": 2.0, "z": 0.5, "accuracy": 1.5, "floor_id": "floor-1", "group": "visitor"},
    {"type": "location", "lon": 24.94, "lat": 60.17},
    {"type": "reservation", "events": [{"start": 1, "end": 2, "subject": "Doe John", "user_id": "u1", "xo_id": "x",
                                        "confirmed": False, "reason": "no show"}]},
    {"type": "satisfaction", "value": 0.8, "raw_value": 4},
    {"type": "illuminance", "value": 350.0},
    {"type": "distance", "value": 1200},
    {"type": "stress", "value": 0.2},
    {"type": "tvoc", "value": 150},
    {"type": "generic_event", "value": "WASH_MACHINE_REQUEST", "metadata": {"field1": "value"}},
    {"type": "counter", "increment": -2},
    {"type": "counter", "value": 10},
    {"type": "sensorstatus"},
    {"type": "sensorstatus", "battery_voltage": 3.0, "battery_level": 0.9, "battery_model": "cr2032",
     "link_quality": 0.7, "mesh_neighbors": [{"vendor_id": "n1", "normalized_rssi": 0.5}], "mesh_role": "headnode",
     "mesh_flags": ["f"], "mesh_sink_address": "sink", "mesh_next_hop": "hop"},
]

INVALID: list[tuple[dict[str, Any], str]] = [
    ({"type": "humidity", "value": 45}, "<= 1.0"),
    ({"type": "humidity", "value": -0.1}, ">= 0.0"),
    ({"type": "stress", "value": 1.01}, "<= 1.0"),
    ({"type": "satisfaction", "value": 2}, "<= 1.0"),
    ({"type": "occupancy", "used": -1, "total": 8}, ">= 0"),
    ({"type": "occupancy", "used": 1.5, "total": 8}, "int"),
    ({"type": "distance", "value": 12.5}, "int"),
    ({"type": "tvoc", "value": 1.5}, "int"),
    ({"type": "location", "x": 1.0}, "needs (x, y) or (lon, lat)"),
    ({"type": "location", "x": 1.0, "y": 1.0, "group": "intruder"}, "Invalid enum value"),
    ({"type": "location", "lon": 200.0, "lat": 1.0}, "<= 180.0"),
    ({"type": "reservation", "events": [{"start": 5, "end": 1}]}, "ends before it starts"),
    ({"type": "counter"}, "increment or value"),
    ({"type": "sensorstatus", "battery_model": "aa"}, "Invalid enum value"),
    ({"type": "sensorstatus", "mesh_role": "leaf"}, "Invalid enum value"),
    ({"type": "sensorstatus", "battery_level": 90}, "<= 1.0"),
    ({"type": "sensorstatus", "link_quality": 1.5}, "<= 1.0"),
    ({"type": "sensorstatus", "mesh_neighbors": [{"vendor_id": "n", "normalized_rssi": 3}]}, "<= 1.0"),
    ({"type": "generic_event", "value": ""}, "length >= 1"),
    ({"type": "temperature"}, "missing required field `value`"),
    ({"type": "temperature", "value": 20, "extra": 1}, "unknown field"),
    ({"type": "teleport", "value": 1}, "Invalid value 'teleport'"),
    ({"type": "temperature", "value": 20, "valid_to": 5}, "valid_to is before time"),
]


def test_every_documented_type_has_a_struct() -> None:
    documented = {"temperature", "humidity", "co2", "airpressure", "occupancy", "noise", "location", "reservation",
                  "satisfaction", "illuminance", "distance", "stress", "tvoc", "generic_event", "counter",
                  "sensorstatus"}
    assert {t.__struct_config__.tag for t in MEASUREMENT_TYPES} == documented
    assert {v["type"] for v in VALID} == documented


@pytest.mark.parametrize("fields", VALID, ids=lambda f: f["type"])
def test_valid_measurements_round_trip(fields: dict[str, Any]) -> None:
    item, raw = validate_measurement({**COMMON, **fields})
    assert item.kind == fields["type"]
    assert msgspec.json.decode(raw) == {**COMMON, **fields}  # 1 == 1.0: ints read as floats compare equal


@pytest.mark.parametrize(("fields", "message"), INVALID, ids=lambda x: str(x)[:40])
def test_invalid_measurements_are_rejected_with_a_clear_error(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidMeasurement, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_measurement({**COMMON, **fields})


def test_structs_built_in_python_are_validated_too() -> None:
    with pytest.raises(InvalidMeasurement, match="humidity"):
        validate_measurement(Humidity(vendor_id="h", time=1, value=45.0))


@given(st.floats(min_value=0.0, max_value=1.0))
def test_any_fraction_is_accepted(value: float) -> None:
    item, _ = validate_measurement({**COMMON, "type": "humidity", "value": value})
    assert item.value == value  # type: ignore[attr-defined]


def test_event_data_round_trip_and_corruption() -> None:
    objects = [{"id": 1, "name": "Sensor"}]
    assert decode_event_data(encode_event_data(objects)) == objects
    for bad in ("!!!", base64.b64encode(b"plain").decode(), base64.b64encode(gzip.compress(b"{}")).decode(),
                base64.b64encode(gzip.compress(b"[1, 2]")).decode(), 42):
        with pytest.raises(CorruptEvent):
            decode_event_data(bad)
