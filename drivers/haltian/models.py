"""Haltian stream wire formats: topic parsing, the measurement type table and prebuilt payload decoders.

Haltian's documents spell most types two ways (`ambientTemperature` / `ambient_temperature`), and one
device page puts the value under the type's own name instead of `value`. Every spelling maps to one
canonical snake_case type, and every spelling has its own decoder built once at import, typed so a wrong
value type is a validation error rather than a surprise further down.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any, Final, Literal

import msgspec

TOPIC_ROOT: Final = "haltian-iot"
TOPIC_EVENTS: Final = "events"
KINDS: Final = frozenset({"measurements", "messages", "notifications"})
# Larger payloads are dropped before decoding: no Haltian measurement comes near this.
MAX_PAYLOAD: Final = 64 * 1024

Combine = Literal["mean", "presence", "occupancy", "count", "directional", "dwell", "min", "detail"]


class OccupancyValue(msgspec.Struct, frozen=True):
    """`occupancy_state` as an object: `{occupied, confidence}`."""

    occupied: bool
    confidence: float | None = None


class DirectionalValue(msgspec.Struct, frozen=True):
    """`directional_movement`: people in and out (and their difference)."""

    in_: int = msgspec.field(name="in")
    out: int
    net: int | None = None


Number = int | float
# occupancy_state is documented as "Boolean or enum"; the enum strings map through OCCUPANCY_WORDS.
OccupancyWire = bool | OccupancyValue | str
OCCUPANCY_WORDS: Final = {"occupied": True, "busy": True, "vacant": False, "free": False, "unoccupied": False,
                          "empty": False}


class TypeSpec(msgspec.Struct, frozen=True):
    """One canonical measurement type: its module state key, how devices combine, unit and value type."""

    name: str
    state: str | None
    combine: Combine
    unit: str | None
    wire: Any


def _spec(name: str, state: str | None, combine: Combine, unit: str | None, wire: Any) -> TypeSpec:
    return TypeSpec(name, state, combine, unit, wire)


# The contract from the reference: canonical type -> state key, combination, unit, wire value type.
SPECS: Final[dict[str, TypeSpec]] = {s.name: s for s in (
    _spec("ambient_temperature", "temperature", "mean", "°C", Number),
    _spec("humidity", "humidity", "mean", "%", Number),
    _spec("co2", "co2", "mean", "ppm", Number),
    _spec("tvoc", "tvoc", "mean", "ppb", Number),
    _spec("air_pressure", "pressure", "mean", "hPa", Number),
    _spec("ambient_light", "illuminance", "mean", "lux", Number),
    _spec("presence", "presence", "presence", None, bool),
    _spec("pir_count", "presence", "presence", None, int),
    _spec("occupancy_state", "occupied", "occupancy", None, OccupancyWire),
    _spec("occupants_count", "people_count", "count", None, int),
    _spec("directional_movement", "in", "directional", None, DirectionalValue),
    _spec("dwell_time", "dwell_time", "dwell", "s", Number),
    _spec("battery_level", "battery", "min", "%", Number),
    _spec("battery_voltage", "battery_voltage", "min", "V", Number),
    _spec("device_temperature", None, "detail", "°C", Number),
    _spec("position", None, "detail", "m", dict[str, Any]),
    _spec("position_zone", None, "detail", None, dict[str, Any]),
    _spec("acceleration", None, "detail", None, dict[str, Any]),
    _spec("orientation", None, "detail", "°", dict[str, Any]),
    _spec("angle", None, "detail", "°", Number),
    _spec("rssi", None, "detail", "dBm", Number),
    _spec("distance", None, "detail", "mm", Number),
    _spec("radar_distance", None, "detail", "m", Number),
    _spec("hall_effect", None, "detail", None, bool),
    _spec("button_press", None, "detail", None, dict[str, Any] | bool),
    _spec("energy_consumption", None, "detail", "Wh", Number),
)}

# Spellings seen in Haltian's documents that are not the camelCase of the canonical name.
_EXTRA_SPELLINGS: Final = {
    "systemTemperature": "device_temperature",
    "barometricPressure": "air_pressure",
    "CO2": "co2",
    "TVOC": "tvoc",
    "batteryPercentage": "battery_level",
    "occupancyStatus": "occupancy_state",
    "movementDetections": "pir_count",
    "positionLocal": "position",
    "ambientLight": "ambient_light",
}

_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


def camel(snake: str) -> str:
    """`ambient_temperature` -> `ambientTemperature`."""
    head, *rest = snake.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def snake(name: str) -> str:
    """`movementDetections` -> `movement_detections` (for unknown types kept in the `devices` detail)."""
    return _CAMEL.sub(r"_\1", name).lower()


def _spellings() -> dict[str, str]:
    table = {name: name for name in SPECS}
    table.update({camel(name): name for name in SPECS})
    table.update(_EXTRA_SPELLINGS)
    return table


SPELLINGS: Final[dict[str, str]] = _spellings()


def spellings_of(canonical: str) -> list[str]:
    """Every spelling that maps to `canonical`, sorted."""
    return sorted(s for s, c in SPELLINGS.items() if c == canonical)


def canonical_type(name: str) -> str:
    """The canonical snake_case name of a type in any spelling (unknown types are snake-cased)."""
    return SPELLINGS.get(name) or snake(name)


def _payload_decoder(spelling: str, wire: Any) -> msgspec.json.Decoder[Any]:
    fields: list[tuple[str, Any, Any]] = [
        ("measured_at", dt.datetime | None, None),
        ("value", wire | msgspec.UnsetType, msgspec.UNSET),
        ("own", wire | msgspec.UnsetType, msgspec.field(default=msgspec.UNSET, name=spelling)),
        ("space_id", str | None, None),
    ]
    struct = msgspec.defstruct(f"Payload_{spelling}", fields, frozen=True)
    return msgspec.json.Decoder(struct)


class KnownType(msgspec.Struct, frozen=True):
    """A spelling's canonical spec and the decoder of its payloads."""

    spelling: str
    spec: TypeSpec
    decoder: msgspec.json.Decoder[Any]


TYPES: Final[dict[str, KnownType]] = {
    spelling: KnownType(spelling, SPECS[canonical], _payload_decoder(spelling, SPECS[canonical].wire))
    for spelling, canonical in SPELLINGS.items()
}


class GenericPayload(msgspec.Struct, frozen=True):
    """Payload of unknown types, messages and notifications: a timestamp and anything else."""

    measured_at: dt.datetime | None = None
    value: Any = msgspec.UNSET
    device_id: str | None = None
    deviceId: str | None = None  # noqa: N815 - the vendor's spelling


GENERIC_DECODER: Final = msgspec.json.Decoder(GenericPayload)
RAW_DECODER: Final = msgspec.json.Decoder(dict[str, Any])

# msgspec raises UnicodeDecodeError (a ValueError) for non-UTF-8 bytes inside JSON strings.
DECODE_ERRORS: Final = (msgspec.DecodeError, ValueError)


class Topic(msgspec.Struct, frozen=True):
    """A parsed stream topic."""

    integration: str
    api_key: str
    kind: str
    type: str
    device: str | None


def parse_topic(topic: str) -> Topic | None:
    """Split `haltian-iot/events/{integration}/{key}/{kind}/{type}[/{device}]`; None when it is not one."""
    parts = topic.split("/")
    n = len(parts)
    if n not in (6, 7) or parts[0] != TOPIC_ROOT or parts[1] != TOPIC_EVENTS or parts[4] not in KINDS:
        return None
    if not parts[5] or (n == 7 and not parts[6]):
        return None
    return Topic(parts[2], parts[3], parts[4], parts[5], parts[6] if n == 7 else None)


def stream_prefix(integration_id: str, api_key_id: str) -> str:
    """`haltian-iot/events/{integration}/{key}`."""
    return f"{TOPIC_ROOT}/{TOPIC_EVENTS}/{integration_id}/{api_key_id}"


def timestamp(value: dt.datetime | None, default: float) -> float:
    """Unix seconds of a decoded `measured_at` (naive means UTC), or `default` when absent."""
    if value is None:
        return default
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


_SECONDS: dict[int, str] = {}


def iso(ts: float) -> str:
    """Unix seconds as ISO-8601 UTC with milliseconds and a `Z`, the form Haltian sends."""
    # As datetime.fromtimestamp: round to microseconds (half even), then truncate to milliseconds.
    frac, whole = math.modf(ts)
    second, micros = int(whole), round(frac * 1e6)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    elif micros < 0:
        second, micros = second - 1, micros + 1_000_000
    prefix = _SECONDS.get(second)
    if prefix is None:
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        prefix = _SECONDS[second] = dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{prefix}.{micros // 1000:03d}Z"


def occupancy(value: Any) -> tuple[bool, float | None] | None:
    """Normalise an `occupancy_state` value to (occupied, confidence); None for an unknown word."""
    if isinstance(value, bool):
        return value, None
    if isinstance(value, OccupancyValue):
        return value.occupied, value.confidence
    if isinstance(value, str):
        word = OCCUPANCY_WORDS.get(value.lower())
        return None if word is None else (word, None)
    return None


def to_detail(value: Any) -> Any:
    """A decoded value as plain JSON-able builtins (for the `devices` detail)."""
    if isinstance(value, msgspec.Struct):
        return msgspec.to_builtins(value)
    return value
