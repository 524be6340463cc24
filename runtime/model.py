"""The settings file as msgspec Structs: the integrator's contract (the JSON Schema is generated from these)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

# A topic level: not empty, no `/`, `+`, `#` or NUL.
TOPIC_LEVEL = r"^[^/+#\x00]+$"
Id = Annotated[str, msgspec.Meta(pattern=TOPIC_LEVEL, min_length=1, max_length=200,
                                 description="Unique id; used as an MQTT topic level")]
Tag = Annotated[str, msgspec.Meta(pattern=TOPIC_LEVEL)]
Settings = dict[str, Any]


class _Base(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class Org(_Base):
    """The organisation zone: the root of every topic."""

    id: Id
    name: str
    timezone: str = "UTC"
    description: str | None = None
    settings: Settings = {}


class Broker(_Base):
    """An MQTT destination for state and metadata."""

    name: Id
    url: Annotated[str, msgspec.Meta(pattern=r"^(mqtts?|embedded)://[^/]+$",
                                     description="mqtt://host:port, mqtts://host:port or embedded://host:port")]
    username: str | None = None
    password: str | None = None
    client_id: Annotated[str, msgspec.Meta(pattern=TOPIC_LEVEL)] | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    qos: Literal[0, 1] = 1
    payload: Literal["seed", "placeos-source"] = "seed"
    privacy: list[str] = []
    max_inflight: Annotated[int, msgspec.Meta(ge=1, le=60000)] = 1000


class PrivacyRule(_Base):
    """A privacy rule: what to find (regex or built-in) and what to do with it."""

    name: Id
    match: Annotated[str, msgspec.Meta(min_length=1, description="A regular expression, or email, uuid, phone")]
    action: Literal["hash", "mask", "drop"]
    states: list[str] | None = None
    drivers: list[str] | None = None
    modules: list[str] | None = None


class Privacy(_Base):
    """Privacy filters: an HMAC secret and the rules brokers refer to by name."""

    secret: str | None = None
    rules: list[PrivacyRule] = []


class Http(_Base):
    """The HTTP server for /metrics, /healthz, /readyz and /api."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9464
    api_keys: list[str] = []
    privacy: list[str] = []
    enabled: bool = True


class Zone(_Base):
    """A zone below the org: building, level, area (or any tag of the hierarchy)."""

    id: Id
    name: str
    tags: list[str] = []
    parent: str | None = None
    description: str | None = None
    settings: Settings = {}


class DriverRecord(_Base):
    """A configured driver: the code driver key plus settings shared by its modules."""

    id: Id
    name: str
    driver: str
    description: str | None = None
    settings: Settings = {}


class Module(_Base):
    """One instance of a driver."""

    id: Id
    driver: str
    name: Annotated[str, msgspec.Meta(pattern=TOPIC_LEVEL)] | None = None
    settings: Settings = {}


class System(_Base):
    """A system (usually a room): zones it sits in and its modules in order."""

    id: Id
    name: str
    zones: list[str] = []
    modules: list[str] = []
    description: str | None = None
    settings: Settings = {}


class Site(_Base):
    """A whole settings file."""

    org: Org
    brokers: Annotated[list[Broker], msgspec.Meta(min_length=1)]
    hierarchy: Annotated[list[Tag], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["building", "level", "area"])
    privacy: Privacy = msgspec.field(default_factory=Privacy)
    http: Http = msgspec.field(default_factory=Http)
    state_dir: str = "./state"
    zones: list[Zone] = []
    drivers: list[DriverRecord] = []
    modules: list[Module] = []
    systems: list[System] = []
