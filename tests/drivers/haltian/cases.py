"""Every measurement type of the reference table in both spellings, with the state it must produce."""

from __future__ import annotations

from typing import Any, NamedTuple


class Case(NamedTuple):
    """One type: its spellings, a value, the module state key and value it gives, and its detail key."""

    spellings: tuple[str, str]
    value: Any
    state: str | None
    expected: Any
    detail: str
    unit: str | None


POINT = {"type": "Point", "coordinates": [12.5, 8.3]}
POSITION = {"position_local": {"x": 12.5, "y": 8.3, "z": 0.0},
            "position_global": {"type": "Point", "coordinates": [24.9384, 60.1699]},
            "accuracy": 2.5, "space_id": "55a0a3d0-84b6-4ace-b131-0b2420053e91"}

CASES: list[Case] = [
    Case(("ambientTemperature", "ambient_temperature"), 23.5, "temperature", 23.5, "ambient_temperature", "°C"),
    Case(("systemTemperature", "device_temperature"), 31.25, None, None, "device_temperature", "°C"),
    Case(("humidity", "humidity"), 45.8, "humidity", 45.8, "humidity", "%"),
    Case(("barometricPressure", "air_pressure"), 1013.25, "pressure", 1013.25, "air_pressure", "hPa"),
    Case(("co2", "CO2"), 450, "co2", 450, "co2", "ppm"),
    Case(("tvoc", "TVOC"), 120, "tvoc", 120, "tvoc", "ppb"),
    Case(("ambient_light", "ambientLight"), 320, "illuminance", 320, "ambient_light", "lux"),
    Case(("batteryVoltage", "battery_voltage"), 3.12, "battery_voltage", 3.12, "battery_voltage", "V"),
    Case(("batteryPercentage", "battery_level"), 85, "battery", 85, "battery_level", "%"),
    Case(("presence", "presence"), True, "presence", True, "presence", None),
    Case(("occupancyStatus", "occupancy_state"), {"occupied": True, "confidence": 0.95}, "occupied", True,
         "occupancy_state", None),
    Case(("occupantsCount", "occupants_count"), 5, "people_count", 5, "occupants_count", None),
    Case(("directionalMovement", "directional_movement"), {"in": 3, "out": 1, "net": 2}, "people_count", 2,
         "directional_movement", None),
    Case(("dwell_time", "dwellTime"), 1800, "dwell_time", 1800, "dwell_time", "s"),
    Case(("pir_count", "movementDetections"), 7, "presence", True, "pir_count", None),
    Case(("position", "positionLocal"), POSITION, None, None, "position", "m"),
    Case(("position", "positionLocal"), POINT, None, None, "position", "m"),
    Case(("position_zone", "positionZone"), {"zone_id": "z1", "zone_name": "Lobby",
                                             "entered_at": "2026-02-05T10:30:45.123Z"},
         None, None, "position_zone", None),
    Case(("acceleration", "acceleration"), {"x": 0.01, "y": -0.02, "z": 0.98}, None, None, "acceleration", None),
    Case(("orientation", "orientation"), {"roll": 1, "pitch": -2, "yaw": 90}, None, None, "orientation", "°"),
    Case(("angle", "angle"), 42.5, None, None, "angle", "°"),
    Case(("rssi", "rssi"), -71, None, None, "rssi", "dBm"),
    Case(("distance", "distance"), 1250, None, None, "distance", "mm"),
    Case(("radar_distance", "radarDistance"), 2.4, None, None, "radar_distance", "m"),
    Case(("hall_effect", "hallEffect"), True, None, None, "hall_effect", None),
    Case(("button_press", "buttonPress"), {"button_id": 1, "press_type": "double"}, None, None, "button_press", None),
    Case(("button_press", "buttonPress"), True, None, None, "button_press", None),
    Case(("energy_consumption", "energyConsumption"), 12.5, None, None, "energy_consumption", "Wh"),
]

# Types whose state comes only from the module's device group.
GROUP_TYPES = {"occupants_count", "dwell_time"}


def spelled() -> list[tuple[str, Case]]:
    """(spelling, case) for every spelling of every case."""
    seen: list[tuple[str, Case]] = []
    for case in CASES:
        for spelling in dict.fromkeys(case.spellings):
            seen.append((spelling, case))
    return seen
