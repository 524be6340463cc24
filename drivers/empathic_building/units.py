"""Unit conversions between EB's wire units and the runtime's state units.

EB sends percentages as fractions 0.0-1.0 and occupancy as used/total; the runtime's state keys
(shared with the Haltian driver) use % and `people_count`/`capacity`. Computed values are rounded
to 2 decimals; values passed through unchanged keep their JSON type.
"""

from __future__ import annotations

from typing import Any

from drivers.empathic_building.models import LastMeasurement, LastStatus

# EB measurement type -> the state keys it produces (documentation and `check` support).
STATE_KEYS: dict[str, tuple[str, ...]] = {
    "temperature": ("temperature",),
    "humidity": ("humidity",),
    "co2": ("co2",),
    "airpressure": ("pressure",),
    "occupancy": ("people_count", "capacity"),
    "noise": ("noise",),
    "location": ("position",),
    "reservation": ("reservations",),
    "satisfaction": ("satisfaction",),
    "illuminance": ("illuminance",),
    "distance": ("distance",),
    "stress": ("stress",),
    "tvoc": ("tvoc",),
    "generic_event": ("last_event",),
    "counter": ("counter",),
    "sensorstatus": ("battery", "battery_voltage", "link_quality"),
}
_PASS_THROUGH = {"temperature": "temperature", "co2": "co2", "airpressure": "pressure", "noise": "noise",
                 "illuminance": "illuminance", "distance": "distance", "tvoc": "tvoc"}
_FRACTIONS = {"humidity": "humidity", "satisfaction": "satisfaction", "stress": "stress"}


class UnitError(ValueError):
    """A value cannot be converted (wrong type or missing field)."""


def to_percent(fraction: float) -> float:
    """0.0-1.0 to %, rounded to 2 decimals."""
    return round(fraction * 100.0, 2)


def to_fraction(percent: float) -> float:
    """% to 0.0-1.0, rounded to 4 decimals (2 decimals of %)."""
    return round(percent / 100.0, 4)


def _number(value: Any, kind: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnitError(f"{kind}: expected a number, got {value!r}")
    return value


def measurement_state(kind: str, m: LastMeasurement) -> dict[str, Any]:
    """The state keys and values (runtime units) for a sensor's last measurement of type `kind`."""
    if kind in _PASS_THROUGH:
        return {_PASS_THROUGH[kind]: _number(m.value, kind)}
    if kind in _FRACTIONS:
        return {_FRACTIONS[kind]: to_percent(_number(m.value, kind))}
    if kind == "occupancy":
        out: dict[str, Any] = {}
        if m.used is not None:
            out["people_count"] = m.used
        if m.total is not None:
            out["capacity"] = m.total
        if not out:
            raise UnitError("occupancy: neither used nor total")
        return out
    if kind == "location":
        fields = {"x": m.x, "y": m.y, "z": m.z, "lon": m.lon, "lat": m.lat, "accuracy": m.accuracy,
                  "floor_id": m.floor_id, "group": m.group}
        return {"position": {k: v for k, v in fields.items() if v is not None}}
    if kind == "reservation":
        return {"reservations": list(m.events or [])}
    if kind == "generic_event":
        event: dict[str, Any] = {"value": m.value, "time": m.time}
        if m.metadata:
            event["metadata"] = m.metadata
        return {"last_event": event}
    if kind == "counter":
        if m.value is not None:
            return {"counter": _number(m.value, kind)}
        raise UnitError("counter: no accumulated value")
    raise UnitError(f"unknown measurement type {kind!r}")


def status_state(status: LastStatus) -> dict[str, Any]:
    """State keys from a sensor's last_status: battery %, battery voltage, link quality %."""
    out: dict[str, Any] = {}
    if status.battery_level is not None:
        out["battery"] = to_percent(status.battery_level)
    if status.battery_voltage is not None:
        out["battery_voltage"] = status.battery_voltage
    if status.link_quality is not None:
        out["link_quality"] = to_percent(status.link_quality)
    return out
