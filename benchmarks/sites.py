"""Generated sites (settings files in JSON and YAML), the load's message sequence, and the final state it implies.

Message `seq` goes to device `seq % devices`; its type cycles per round over temperature, humidity and CO2
(both Haltian spellings), and its value encodes `seq` (`seq/100` °C, `seq/10` %, `seq` ppm), so every value
is new (the worst case for change detection) and a subscriber can tell which message a state came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import yaml

from drivers.haltian.aggregate import mean
from drivers.haltian.simulator import device_id
from runtime import topics

ORG = "zone-bench"
INTEGRATION = "bench-integration"
API_KEY = "bench-key"
DRIVER_ID = "drv-haltian"
RELAY_DRIVER_ID = "drv-relay"
CLIENT_ID = "runtime-bench"
SEED = 11
LEVEL_SIZE = 500
STREAM_PREFIX = f"haltian-iot/events/{INTEGRATION}/{API_KEY}"
PRIVACY_RULES: list[dict[str, Any]] = [
    {"name": "emails", "match": "email", "action": "hash"},
    {"name": "guests", "match": r"(?i)guest-\d+", "action": "mask", "states": ["booking*"]},
    {"name": "visitors", "match": "visitor", "action": "drop"},
]
_encode = msgspec.json.Encoder().encode


class MeasureType(NamedTuple):
    """A measurement type the load sends: its two spellings, module state key and value scale."""

    camel: str
    snake: str
    key: str
    scale: int


TYPES = (MeasureType("ambientTemperature", "ambient_temperature", "temperature", 100),
         MeasureType("humidity", "humidity", "humidity", 10),
         MeasureType("CO2", "co2", "co2", 1))
SPELLINGS = {spelling: t.key for t in TYPES for spelling in (t.camel, t.snake)}


def value_of(seq: int, type_index: int) -> int | float:
    """The value message `seq` carries for its type."""
    scale = TYPES[type_index].scale
    return seq if scale == 1 else round(seq / scale, 2)


def seq_of(key: str, value: float) -> int:
    """Inverse of `value_of` for a state key."""
    for t in TYPES:
        if t.key == key:
            return round(value * t.scale)
    raise KeyError(key)


def slot(seq: int, devices: int) -> tuple[int, int, int]:
    """(device index, type index, spelling index) of message `seq`."""
    rnd = seq // devices
    return seq % devices, rnd % len(TYPES), (rnd // len(TYPES)) % 2


def suffix(value: Any) -> bytes:
    """How a seed-format state payload carrying `value` ends."""
    return b',"value":' + _encode(_encode(value).decode()) + b"}"


@dataclass
class Site:
    """A site of `devices` Haltian devices, `per_module` per module, one module per system and area."""

    devices: int
    per_module: int
    device_ids: list[str] = field(init=False)
    prefixes: list[str] = field(init=False)
    relay_prefixes: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.device_ids = [device_id(SEED, i) for i in range(self.devices)]
        self.prefixes = [topics.state_prefix(ORG, self._levels(m), _sys(m), DRIVER_ID, "Sensor", 1)
                         for m in range(self.modules)]
        if self.per_module == 1:
            self.relay_prefixes = list(self.prefixes)
        else:
            self.relay_prefixes = [topics.state_prefix(ORG, self._levels(d // self.per_module),
                                                       _sys(d // self.per_module), RELAY_DRIVER_ID, "Device",
                                                       d % self.per_module + 1) for d in range(self.devices)]

    @property
    def modules(self) -> int:
        """Number of modules (and systems, and area zones)."""
        return -(-self.devices // self.per_module)

    @staticmethod
    def _levels(module: int) -> list[str]:
        return ["zone-hq", f"zone-l{module // LEVEL_SIZE + 1:02d}", f"zone-a{module + 1:05d}"]

    # -- settings files ------------------------------------------------------------------------

    def settings(self, url: str, *, qos: int, privacy: bool) -> dict[str, Any]:
        """The settings document of the site, fed by the Haltian stream at `url` and publishing to `url`."""
        levels = -(-self.modules // LEVEL_SIZE)
        zones: list[dict[str, Any]] = [{"id": "zone-hq", "name": "Benchmark HQ", "tags": ["building"],
                                        "parent": ORG}]
        zones += [{"id": f"zone-l{lv + 1:02d}", "name": f"Level {lv + 1}", "tags": ["level"], "parent": "zone-hq"}
                  for lv in range(levels)]
        modules: list[dict[str, Any]] = []
        systems: list[dict[str, Any]] = []
        for m in range(self.modules):
            area, system, module = f"zone-a{m + 1:05d}", _sys(m), f"mod-{m + 1:05d}"
            zones.append({"id": area, "name": f"Room {m + 1}", "tags": ["area"],
                          "parent": f"zone-l{m // LEVEL_SIZE + 1:02d}", "settings": {"capacity": 8}})
            first = m * self.per_module
            devices = [{"id": self.device_ids[d], "label": f"Sensor {d + 1}"}
                       for d in range(first, min(first + self.per_module, self.devices))]
            modules.append({"id": module, "driver": DRIVER_ID, "settings": {"devices": devices}})
            systems.append({"id": system, "name": f"Room {m + 1}", "zones": [area], "modules": [module]})
        broker: dict[str, Any] = {"name": "bench", "url": url, "client_id": CLIENT_ID, "qos": qos}
        doc: dict[str, Any] = {
            "org": {"id": ORG, "name": "Benchmark Corp", "timezone": "Europe/Helsinki"},
            "hierarchy": ["building", "level", "area"],
            "brokers": [broker],
            "http": {"enabled": False},
            "state_dir": "./state",
            "zones": zones,
            "drivers": [{"id": DRIVER_ID, "name": "Haltian IoT", "driver": "haltian",
                         "settings": {"url": url, "integration_id": INTEGRATION, "api_key_id": API_KEY,
                                      "api_key_token": "bench", "qos": qos}}],
            "modules": modules,
            "systems": systems,
        }
        if privacy:
            doc["privacy"] = {"secret": "bench-secret", "rules": PRIVACY_RULES}
            broker["privacy"] = [r["name"] for r in PRIVACY_RULES]
        return doc

    def write(self, path: Path, url: str, *, qos: int, privacy: bool = False) -> Path:
        """Write the settings as JSON or YAML (by the file suffix)."""
        doc = self.settings(url, qos=qos, privacy=privacy)
        if path.suffix == ".json":
            path.write_bytes(msgspec.json.format(_encode(doc), indent=1))
        else:
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def relay_map(self) -> dict[str, Any]:
        """What the baseline relay needs: its subscription, device -> topic prefix, spelling -> state key."""
        return {"filter": STREAM_PREFIX + "/#", "devices": dict(zip(self.device_ids, self.relay_prefixes, strict=True)),
                "types": SPELLINGS}

    # -- what subscribers see at start-up -------------------------------------------------------

    def startup_topics(self) -> list[str]:
        """Every metadata topic, the presence topic and every module's `connected` topic."""
        levels = -(-self.modules // LEVEL_SIZE)
        ids = [ORG, "zone-hq", DRIVER_ID, *(f"zone-l{lv + 1:02d}" for lv in range(levels))]
        ids += [f"zone-a{m + 1:05d}" for m in range(self.modules)] + [_sys(m) for m in range(self.modules)]
        found = [topics.metadata_topic(ORG, i) for i in ids] + [topics.presence_topic(ORG, CLIENT_ID)]
        return found + [topics.state_topic(p, "connected") for p in self.prefixes]


def _sys(module: int) -> str:
    return f"sys-{module + 1:05d}"


class FinalState:
    """The retained state a target must end with, accumulated over the phases a target process sees."""

    def __init__(self, site: Site, *, relay: bool) -> None:
        self.site = site
        self.relay = relay
        self.last: dict[tuple[int, int], int | float] = {}

    def apply(self, seq_start: int, count: int) -> dict[str, bytes]:
        """Record messages `seq_start..+count`; returns topic -> expected payload suffix for each topic touched."""
        site = self.site
        touched: set[tuple[int, int]] = set()
        for seq in range(seq_start, seq_start + count):
            device, type_index, _ = slot(seq, site.devices)
            self.last[(device, type_index)] = value_of(seq, type_index)
            touched.add((device, type_index))
        expected: dict[str, bytes] = {}
        for device, type_index in touched:
            key = TYPES[type_index].key
            if self.relay:
                expected[f"{site.relay_prefixes[device]}/{key}"] = suffix(self.last[(device, type_index)])
                continue
            module = device // site.per_module
            topic = f"{site.prefixes[module]}/{key}"
            if topic in expected:
                continue
            first = module * site.per_module
            values = [self.last[(d, type_index)] for d in range(first, min(first + site.per_module, site.devices))
                      if (d, type_index) in self.last]
            expected[topic] = suffix(mean(values))
        return expected
