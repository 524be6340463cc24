"""Wire formats of Empathic Building: REST answers, Pusher frames, event objects and measurements.

Measurements follow seed 003 ("Measurement formats by type"): one Struct per type, tagged by
`type`, with the documented ranges (percentages are fractions 0.0-1.0) and enums validated on
decode. Structs built in Python are not validated by msgspec, so `validate_measurement` round-trips
them through the decoder, which also yields the exact bytes that go on the wire.
"""

from __future__ import annotations

import base64
import binascii
import enum
import gzip
import zlib
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

from drivers.empathic_building.errors import CorruptEvent, InvalidMeasurement

Ms = Annotated[int, msgspec.Meta(ge=0, description="Milliseconds since the Unix epoch")]
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0, description="A percentage as a fraction 0.0-1.0")]
NonNegative = Annotated[float, msgspec.Meta(ge=0.0)]
VendorId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


# ---------------------------------------------------------------------------------------------
# REST answers
# ---------------------------------------------------------------------------------------------


class TokenResponse(msgspec.Struct):
    """The answer of `/v1/login` and `/v1/token`."""

    access_token: str
    token_type: str = "Bearer"
    expires_in: float | None = None
    refresh_token: str | None = None


class PusherAuthResponse(msgspec.Struct):
    """The answer of `/v1/pusher/auth`: `<app key>:<hex HMAC-SHA256>`."""

    auth: str


class Named(msgspec.Struct):
    """An organization or location as the REST API and the organization channel give it."""

    id: int | str
    name: str | None = None


# ---------------------------------------------------------------------------------------------
# Pusher protocol 7 frames
# ---------------------------------------------------------------------------------------------


class PusherFrame(msgspec.Struct, omit_defaults=True):
    """One Pusher WebSocket message; `data` is a JSON string or (some servers) an object."""

    event: str
    data: Any = None
    channel: str | None = None


class ConnectionEstablished(msgspec.Struct):
    """Data of `pusher:connection_established`."""

    socket_id: str
    activity_timeout: Annotated[float, msgspec.Meta(gt=0)] = 120.0


class PusherErrorData(msgspec.Struct):
    """Data of `pusher:error`."""

    message: str | None = None
    code: int | None = None


class SubscribeData(msgspec.Struct, omit_defaults=True):
    """Data of a `pusher:subscribe` we send."""

    channel: str
    auth: str | None = None


# ---------------------------------------------------------------------------------------------
# Objects inside live events (base64(gzip(JSON array)))
# ---------------------------------------------------------------------------------------------


class LastMeasurement(msgspec.Struct):
    """A sensor's `last_measurement`: the fields of its measurement type (all optional)."""

    type: str | None = None
    time: int | None = None
    value: float | str | None = None
    used: int | None = None
    total: int | None = None
    raw_value: int | None = None
    increment: int | None = None
    x: float | None = None
    y: float | None = None
    z: float | None = None
    lon: float | None = None
    lat: float | None = None
    accuracy: float | None = None
    floor_id: str | None = None
    group: str | None = None
    events: list[dict[str, Any]] | None = None
    metadata: dict[str, Any] | None = None


class LastStatus(msgspec.Struct):
    """A sensor's `last_status` (from sensorstatus measurements)."""

    battery_voltage: float | None = None
    battery_level: float | None = None
    link_quality: float | None = None


class SensorObject(msgspec.Struct):
    """A sensor in a `sensor-*` event: all attributes when created, the id plus changes when modified."""

    id: int | str
    vendor_id: str | None = None
    type: str | None = None
    name: str | None = None
    last_measurement: LastMeasurement | None = None
    last_status: LastStatus | None = None


_event_array = msgspec.json.Decoder(list[dict[str, Any]])


def decode_event_data(data: Any) -> list[dict[str, Any]]:
    """Decode an EB event payload: base64 of gzip of a UTF-8 JSON array of objects."""
    if not isinstance(data, str | bytes):
        raise CorruptEvent(f"event data is {type(data).__name__}, not base64 text")
    try:
        packed = base64.b64decode(data, validate=True)
        raw = gzip.decompress(packed)
        return _event_array.decode(raw)
    except (binascii.Error, ValueError, OSError, EOFError, zlib.error, msgspec.DecodeError) as exc:
        raise CorruptEvent(f"undecodable event data: {exc}") from exc


def encode_event_data(objects: list[dict[str, Any]]) -> str:
    """Encode objects the way EB sends them (used by the fake server and tests)."""
    return base64.b64encode(gzip.compress(msgspec.json.encode(objects))).decode("ascii")


# ---------------------------------------------------------------------------------------------
# Measurements (POST /v2/measurements)
# ---------------------------------------------------------------------------------------------


class Group(enum.StrEnum):
    """Who or what a location measurement tracks."""

    EMPLOYEE = "employee"
    EXTERNAL = "external"
    VISITOR = "visitor"
    MAINTENANCE = "maintenance"
    CLEANING = "cleaning"
    ASSET = "asset"


class BatteryModel(enum.StrEnum):
    """Battery models EB knows how to turn a voltage into a charge level for."""

    CR2032 = "cr2032"
    CR17505 = "cr17505"


class MeshRole(enum.StrEnum):
    """A mesh device's role in its network."""

    SINK = "sink"
    HEADNODE = "headnode"
    SUBNODE = "subnode"


class Measurement(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Fields common to every measurement; `valid_to` omitted means the server's 24 h default."""

    vendor_id: VendorId
    time: Ms
    valid_to: Ms | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.valid_to is not None and self.valid_to < self.time:
            raise ValueError("valid_to is before time")

    @property
    def kind(self) -> str:
        """The measurement type (the `type` tag)."""
        return str(type(self).__struct_config__.tag)


class Temperature(Measurement, tag="temperature"):
    """Temperature in °C."""

    value: Annotated[float, msgspec.Meta(ge=-273.15)]


class Humidity(Measurement, tag="humidity"):
    """Relative air humidity as a fraction."""

    value: Fraction


class Co2(Measurement, tag="co2"):
    """CO2 in ppm."""

    value: NonNegative


class AirPressure(Measurement, tag="airpressure"):
    """Air pressure in hPa."""

    value: Annotated[float, msgspec.Meta(gt=0.0)]


class Occupancy(Measurement, tag="occupancy"):
    """People (or things) occupying a space, out of its slots."""

    used: Annotated[int, msgspec.Meta(ge=0)]
    total: Annotated[int, msgspec.Meta(ge=0)]


class Noise(Measurement, tag="noise"):
    """Relative loudness in dB."""

    value: float


class Location(Measurement, tag="location"):
    """A position: floor-plan metres (x, y, z) and/or (lon, lat)."""

    x: float | None = None
    y: float | None = None
    z: float | None = None
    lon: Annotated[float, msgspec.Meta(ge=-180.0, le=180.0)] | None = None
    lat: Annotated[float, msgspec.Meta(ge=-90.0, le=90.0)] | None = None
    accuracy: NonNegative | None = None
    floor_id: str | None = None
    group: Group | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.x is None or self.y is None) and (self.lon is None or self.lat is None):
            raise ValueError("a location needs (x, y) or (lon, lat)")


class ReservationEvent(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """One ongoing or future reservation (subject and user_id are personal data)."""

    start: Ms
    end: Ms
    subject: str | None = None
    user_id: str | None = None
    xo_id: str | None = None
    confirmed: bool | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError("a reservation ends before it starts")


class Reservation(Measurement, tag="reservation"):
    """The ongoing and future reservations of a space."""

    events: list[ReservationEvent]


class Satisfaction(Measurement, tag="satisfaction"):
    """Satisfaction as a fraction, with the vendor's raw survey value."""

    value: Fraction
    raw_value: int | None = None


class Illuminance(Measurement, tag="illuminance"):
    """Illuminance in lux."""

    value: NonNegative


class Distance(Measurement, tag="distance"):
    """Distance in whole millimetres."""

    value: Annotated[int, msgspec.Meta(ge=0)]


class Stress(Measurement, tag="stress"):
    """Stress level as a fraction."""

    value: Fraction


class Tvoc(Measurement, tag="tvoc"):
    """Total volatile organic compounds in whole ppb."""

    value: Annotated[int, msgspec.Meta(ge=0)]


class GenericEvent(Measurement, tag="generic_event"):
    """A named event (e.g. WASH_MACHINE_REQUEST) with optional metadata."""

    value: Annotated[str, msgspec.Meta(min_length=1)]
    metadata: dict[str, Any] | None = None


class Counter(Measurement, tag="counter"):
    """A counter: an increment, or a total that resets it (`value` wins when both are set)."""

    increment: int | None = None
    value: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.increment is None and self.value is None:
            raise ValueError("a counter needs increment or value")


class MeshNeighbor(msgspec.Struct, forbid_unknown_fields=True):
    """A neighbour a mesh device sees, with the link quality as a fraction."""

    vendor_id: VendorId
    normalized_rssi: Fraction


class SensorStatus(Measurement, tag="sensorstatus"):
    """A sensor's status (updates its last_status only); every field is optional."""

    battery_voltage: NonNegative | None = None
    battery_level: Fraction | None = None
    battery_model: BatteryModel | None = None
    link_quality: Fraction | None = None
    mesh_neighbors: list[MeshNeighbor] | None = None
    mesh_role: MeshRole | None = None
    mesh_flags: list[str] | None = None
    mesh_sink_address: str | None = None
    mesh_next_hop: str | None = None


AnyMeasurement = (Temperature | Humidity | Co2 | AirPressure | Occupancy | Noise | Location | Reservation
                  | Satisfaction | Illuminance | Distance | Stress | Tvoc | GenericEvent | Counter | SensorStatus)
MEASUREMENT_TYPES: tuple[type[Measurement], ...] = (
    Temperature, Humidity, Co2, AirPressure, Occupancy, Noise, Location, Reservation,
    Satisfaction, Illuminance, Distance, Stress, Tvoc, GenericEvent, Counter, SensorStatus,
)

measurement_decoder = msgspec.json.Decoder(AnyMeasurement)
measurements_decoder = msgspec.json.Decoder(list[AnyMeasurement])
encoder = msgspec.json.Encoder()


def validate_measurement(item: Measurement | Mapping[str, Any]) -> tuple[Measurement, bytes]:
    """Check a measurement against its documented fields and ranges; return it and its wire bytes."""
    try:
        raw = encoder.encode(item)
        checked: Measurement = measurement_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.EncodeError, TypeError) as exc:
        kind = item.get("type") if isinstance(item, Mapping) else getattr(item, "kind", type(item).__name__)
        vendor = item.get("vendor_id") if isinstance(item, Mapping) else getattr(item, "vendor_id", None)
        raise InvalidMeasurement(f"invalid {kind} measurement for vendor_id {vendor!r}: {exc}") from exc
    return checked, encoder.encode(checked)


def dedupe_key(item: Measurement) -> tuple[str, str, int]:
    """The server's identity of a data point: sensor (vendor id and type) and timestamp."""
    return (item.vendor_id, item.kind, item.time)
