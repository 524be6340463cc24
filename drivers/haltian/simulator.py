"""A Haltian IoT stream simulator: realistic traffic in Haltian's exact topic and payload forms.

    python -m drivers.haltian.simulator --broker mqtt://127.0.0.1:1883 --integration sim-integration \\
        --api-key sim-key --devices 40 --rate 20 --malformed 0.01 --seed 7

Devices come in rooms of four: an environment sensor, a presence sensor, an entryway counter and a
tag, plus one device group per room publishing the occupancy engine's values. People enter and leave
following a working-day curve (`--speed` compresses the day). Types alternate between both spellings,
timestamps between both forms, and a few values come under the type's own name; devices now and then go
offline (a `deviceOffline` notification, then silence); `--malformed` is the fraction of broken
messages (bad JSON, non-UTF-8, wrong value types, wrong topic shapes, missing values).

Device ids are `uuid5` of the seed and the index (`device_id(seed, i)`, `group_id(seed, room)`), so a
settings file can list the same devices: `--print-settings` prints the driver record and one module
per room.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import random
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any, Literal

import msgspec
import yaml

from runtime.mqtt import MqttEndpoint, MqttSession, SessionListener

NAMESPACE = uuid.UUID("2f0d4c3e-6a51-4a8e-9a57-4c1f3b0a9d11")
ROOM_SIZE = 4
Kind = Literal["environment", "presence", "entryway", "tag", "group"]

# (camelCase or documented spelling, snake spelling) per type each kind of device sends.
ENVIRONMENT = [("ambientTemperature", "ambient_temperature"), ("humidity", "humidity"), ("CO2", "co2"),
               ("TVOC", "tvoc"), ("barometricPressure", "air_pressure"), ("ambientLight", "ambient_light"),
               ("batteryPercentage", "battery_level"), ("batteryVoltage", "battery_voltage"),
               ("systemTemperature", "device_temperature"), ("rssi", "rssi")]
PRESENCE = [("presence", "presence"), ("movementDetections", "pir_count"), ("occupancyStatus", "occupancy_state"),
            ("batteryPercentage", "battery_level"), ("distance", "distance"), ("radarDistance", "radar_distance")]
ENTRYWAY = [("directionalMovement", "directional_movement"), ("batteryVoltage", "battery_voltage"),
            ("hallEffect", "hall_effect")]
TAG = [("position", "position"), ("positionLocal", "position"), ("positionZone", "position_zone"),
       ("acceleration", "acceleration"), ("orientation", "orientation"), ("angle", "angle"),
       ("buttonPress", "button_press"), ("energyConsumption", "energy_consumption"),
       ("vendorExperimental", "vendor_experimental")]
GROUP = [("occupantsCount", "occupants_count"), ("directionalMovement", "directional_movement"),
         ("occupancyStatus", "occupancy_state"), ("dwellTime", "dwell_time")]
TYPES_BY_KIND: dict[Kind, list[tuple[str, str]]] = {"environment": ENVIRONMENT, "presence": PRESENCE,
                                                    "entryway": ENTRYWAY, "tag": TAG, "group": GROUP}
KIND_ORDER: tuple[Kind, ...] = ("environment", "presence", "entryway", "tag")
LABELS = {"environment": "Environment", "presence": "Presence", "entryway": "Door counter", "tag": "Tag"}


def device_id(seed: int, index: int) -> str:
    """The id of physical device `index` for a seed."""
    return str(uuid.uuid5(NAMESPACE, f"haltian-sim:{seed}:device:{index}"))


def group_id(seed: int, room: int) -> str:
    """The id of the device group of room `room` for a seed."""
    return str(uuid.uuid5(NAMESPACE, f"haltian-sim:{seed}:group:{room}"))


class SimDevice(msgspec.Struct):
    """One simulated device (or group) and its cursor through its types."""

    id: str
    kind: Kind
    room: int
    step: int = 0
    silent_until: float = 0.0


class Room(msgspec.Struct):
    """People in a simulated room and its totals since midnight."""

    capacity: int
    people: int = 0
    total_in: int = 0
    total_out: int = 0
    pending_in: int = 0
    pending_out: int = 0
    day: int = -1
    occupied_since: float | None = None


class HaltianSimulator:
    """Generates (and optionally publishes) the traffic of `devices` devices at `rate` messages per second."""

    def __init__(self, *, integration: str, api_key: str, devices: int, rate: float = 10.0, malformed: float = 0.0,
                 seed: int = 1, speed: float = 1.0, start: float | None = None) -> None:
        if devices < 1 or rate <= 0 or not 0.0 <= malformed <= 1.0:
            raise ValueError("need devices >= 1, rate > 0 and 0 <= malformed <= 1")
        self.integration = integration
        self.api_key = api_key
        self.prefix = f"haltian-iot/events/{integration}/{api_key}"
        self.rate = rate
        self.malformed = malformed
        self.seed = seed
        self.speed = speed
        self.rng = random.Random(seed)
        self.start = time.time() if start is None else start
        self.rooms = [Room(capacity=4 + (r % 4) * 4) for r in range(math.ceil(devices / ROOM_SIZE))]
        self.devices = [SimDevice(device_id(seed, i), KIND_ORDER[i % ROOM_SIZE], i // ROOM_SIZE)
                        for i in range(devices)]
        self.groups = [SimDevice(group_id(seed, r), "group", r) for r in range(len(self.rooms))]
        self._order = self.devices + self.groups
        self._cursor = 0
        self.sent = 0
        self.sent_malformed = 0

    # -- what a settings file needs ---------------------------------------------------------

    def room_devices(self, room: int) -> list[SimDevice]:
        """The physical devices of a room."""
        return [d for d in self.devices if d.room == room]

    def settings(self, *, url: str, driver_id: str = "drv-haltian") -> dict[str, Any]:
        """A settings fragment: the driver record and one module per room, listing this run's device ids."""
        record = {"id": driver_id, "name": "Haltian IoT", "driver": "haltian",
                  "settings": {"url": url, "integration_id": self.integration, "api_key_id": self.api_key,
                               "api_key_token": "simulator", "qos": 1}}
        modules = [{"id": f"mod-haltian-room-{r + 1}", "driver": driver_id,
                    "settings": {"device_group": self.groups[r].id, "capacity": room.capacity,
                                 "devices": [{"id": d.id, "label": f"{LABELS[d.kind]} {r + 1}"}
                                             for d in self.room_devices(r)]}}
                   for r, room in enumerate(self.rooms)]
        return {"drivers": [record], "modules": modules}

    # -- traffic -----------------------------------------------------------------------------

    def sim_time(self, now: float) -> float:
        """Simulated time of day source: real time since start, sped up."""
        return self.start + (now - self.start) * self.speed

    def messages(self, now: float | None = None) -> Iterator[tuple[str, bytes]]:
        """An endless, seed-deterministic stream of (topic, payload) at the given (or real) time."""
        while True:
            yield self.next_message(time.time() if now is None else now)

    def next_message(self, now: float) -> tuple[str, bytes]:
        """The next (topic, payload)."""
        self.sent += 1
        if self.malformed and self.rng.random() < self.malformed:
            self.sent_malformed += 1
            return self._malformed(now)
        for _ in range(len(self._order)):
            device = self._order[self._cursor % len(self._order)]
            self._cursor += 1
            if device.silent_until <= now:
                break
        else:
            device = self._order[self._cursor % len(self._order)]
        if device.kind != "group" and self.rng.random() < 0.005:
            device.silent_until = now + 120.0 / self.speed
            return (f"{self.prefix}/notifications/deviceOffline/{device.id}",
                    msgspec.json.encode({"measured_at": _stamp(now, self.rng.random() < 0.5)}))
        if device.kind != "group" and self.rng.random() < 0.01:
            raw = bytes(self.rng.randrange(256) for _ in range(12)).hex()
            return (f"{self.prefix}/messages/rawData/{device.id}",
                    msgspec.json.encode({"measured_at": _stamp(now, True), "value": raw}))
        types = TYPES_BY_KIND[device.kind]
        camel_name, snake_name = types[device.step % len(types)]
        device.step += 1
        spelling = camel_name if self.rng.random() < 0.5 else snake_name
        value = self._value(device, snake_name, now)
        body: dict[str, Any] = {"measured_at": _stamp(now, self.rng.random() < 0.5)}
        if not isinstance(value, dict) and self.rng.random() < 0.05:
            body[spelling] = value
        else:
            body["value"] = value
        if snake_name == "position" and isinstance(value, dict):
            body["space_id"] = value.get("space_id")
        return f"{self.prefix}/measurements/{spelling}/{device.id}", msgspec.json.encode(body)

    def _room(self, index: int, now: float) -> Room:
        room = self.rooms[index]
        local = dt.datetime.fromtimestamp(self.sim_time(now), dt.UTC)
        day = local.toordinal()
        if room.day != day:
            room.day = day
            room.total_in = room.total_out = 0
        hour = local.hour + local.minute / 60
        busy = max(0.0, math.sin(math.pi * (hour - 8) / 10)) if 8 <= hour <= 18 else 0.0
        target = round(room.capacity * busy * (0.6 + 0.4 * self.rng.random()))
        diff = target - room.people
        ins = self.rng.randint(0, max(0, diff)) + (self.rng.random() < 0.2)
        outs = min(room.people + ins, self.rng.randint(0, max(0, -diff)) + (self.rng.random() < 0.2))
        room.people += ins - outs
        room.total_in += ins
        room.total_out += outs
        room.pending_in += ins
        room.pending_out += outs
        if room.people and room.occupied_since is None:
            room.occupied_since = now
        elif not room.people:
            room.occupied_since = None
        return room

    def _value(self, device: SimDevice, kind: str, now: float) -> Any:
        rng = self.rng
        room = self._room(device.room, now)
        people = room.people
        if kind == "ambient_temperature":
            return round(20.5 + people * 0.3 + rng.uniform(-0.4, 0.4), 2)
        if kind == "humidity":
            return round(35 + people * 1.5 + rng.uniform(-2, 2), 1)
        if kind == "co2":
            return 420 + people * 60 + rng.randint(0, 40)
        if kind == "tvoc":
            return 80 + people * 15 + rng.randint(0, 20)
        if kind == "air_pressure":
            return round(1013.25 + rng.uniform(-8, 8), 2)
        if kind == "ambient_light":
            return 0 if people == 0 and rng.random() < 0.5 else rng.randint(250, 600)
        if kind == "battery_level":
            return 100 - (int(device.id[:2], 16) % 60)
        if kind == "battery_voltage":
            return round(3.0 + (int(device.id[2:4], 16) % 30) / 100, 2)
        if kind == "device_temperature":
            return round(24 + rng.uniform(-1, 1), 2)
        if kind == "rssi":
            return -rng.randint(45, 95)
        if kind == "presence":
            return people > 0
        if kind == "pir_count":
            return rng.randint(1, 12) if people else 0
        if kind == "occupancy_state":
            confidence = round(rng.uniform(0.7, 0.99), 2)
            return {"occupied": people > 0, "confidence": confidence} if rng.random() < 0.7 else people > 0
        if kind == "occupants_count":
            return people
        if kind == "directional_movement":
            if device.kind == "group":
                return {"in": room.total_in, "out": room.total_out, "net": room.total_in - room.total_out}
            ins, outs = room.pending_in, room.pending_out
            room.pending_in = room.pending_out = 0
            return {"in": ins, "out": outs, "net": ins - outs}
        if kind == "dwell_time":
            return 0 if room.occupied_since is None else round((now - room.occupied_since) * self.speed)
        if kind == "distance":
            return rng.randint(300, 4000)
        if kind == "radar_distance":
            return round(rng.uniform(0.3, 6.0), 2)
        if kind == "hall_effect":
            return rng.random() < 0.5
        if kind == "position":
            x, y = round(rng.uniform(0, 40), 2), round(rng.uniform(0, 20), 2)
            if rng.random() < 0.5:
                return {"type": "Point", "coordinates": [x, y]}
            return {"position_local": {"x": x, "y": y, "z": 0.0},
                    "position_global": {"type": "Point", "coordinates": [24.9384 + x / 1e5, 60.1699 + y / 1e5]},
                    "accuracy": round(rng.uniform(0.5, 3), 2), "space_id": str(uuid.UUID(int=device.room + 1))}
        if kind == "position_zone":
            return {"zone_id": f"zone-{device.room + 1}", "zone_name": f"Room {device.room + 1}",
                    "entered_at": _stamp(now - rng.randint(0, 3600), True)}
        if kind == "acceleration":
            return {"x": round(rng.gauss(0, 0.02), 3), "y": round(rng.gauss(0, 0.02), 3), "z": 1.0}
        if kind == "orientation":
            return {"roll": rng.randint(-5, 5), "pitch": rng.randint(-5, 5), "yaw": rng.randint(0, 359)}
        if kind == "angle":
            return rng.randint(0, 90)
        if kind == "button_press":
            return {"button_id": 1, "press_type": rng.choice(["single", "double", "long"])}
        if kind == "energy_consumption":
            return round(rng.uniform(0, 50), 1)
        return {"note": "a type the driver does not know", "level": rng.randint(0, 9)}

    def _malformed(self, now: float) -> tuple[str, bytes]:
        device = self.rng.choice(self.devices).id
        topic = f"{self.prefix}/measurements/ambientTemperature/{device}"
        stamp = _stamp(now, True)
        choice = self.rng.randrange(6)
        if choice == 0:
            return topic, b'{"measured_at": "' + stamp.encode() + b'", "value": '
        if choice == 1:
            return topic, b'{"measured_at": "\xff\xfe", "value": 21.5}'
        if choice == 2:
            return topic, msgspec.json.encode({"measured_at": stamp, "value": "warm"})
        if choice == 3:
            return topic, msgspec.json.encode({"measured_at": stamp})
        if choice == 4:
            return f"{self.prefix}/bogus/ambientTemperature/{device}", msgspec.json.encode({"value": 1})
        return f"{self.prefix}/measurements/ambientTemperature/{device}/extra", msgspec.json.encode({"value": 1})

    # -- publishing --------------------------------------------------------------------------

    async def run(self, session: MqttSession, *, duration: float | None = None, count: int | None = None,
                  qos: int = 0) -> int:
        """Publish at `rate` until `duration` seconds or `count` messages; returns how many were published."""
        await session.wait_connected()
        loop = asyncio.get_running_loop()
        began = loop.time()
        published = 0
        tick = 0.05
        while (count is None or published < count) and (duration is None or loop.time() - began < duration):
            due = int((loop.time() - began) * self.rate) + 1
            while published < due and (count is None or published < count):
                topic, payload = self.next_message(time.time())
                if not session.publish(topic, payload, qos=qos):
                    await session.wait_connected()
                    continue
                published += 1
            await asyncio.sleep(tick)
        return published


def _stamp(ts: float, zulu: bool) -> str:
    """Both of Haltian's timestamp forms: `...45.123Z` and `...46.059000+00:00`."""
    moment = dt.datetime.fromtimestamp(ts, dt.UTC)
    if zulu:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return moment.isoformat(timespec="microseconds")


class _Quiet(SessionListener):
    pass


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m drivers.haltian.simulator", description=__doc__.split("\n")[0])
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host:port or mqtts://host:port")
    parser.add_argument("--integration", required=True, help="integration id (topic level 3)")
    parser.add_argument("--api-key", required=True, help="API key id (topic level 4 and MQTT username)")
    parser.add_argument("--token", default=None, help="MQTT password (the API key token)")
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--rate", type=float, default=10.0, help="messages per second")
    parser.add_argument("--malformed", type=float, default=0.0, help="fraction of malformed messages (0..1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--speed", type=float, default=1.0, help="simulated day speed-up (60: a day in 24 min)")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--count", type=int, default=None, help="stop after this many messages")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=0)
    parser.add_argument("--ca-file", default=None)
    parser.add_argument("--tls-insecure", action="store_true")
    parser.add_argument("--print-settings", action="store_true",
                        help="print the driver record and modules for these devices (YAML) and exit")
    args = parser.parse_args(argv)
    try:
        sim = HaltianSimulator(integration=args.integration, api_key=args.api_key, devices=args.devices,
                               rate=args.rate, malformed=args.malformed, seed=args.seed, speed=args.speed)
    except ValueError as exc:
        parser.error(str(exc))
    if args.print_settings:
        sys.stdout.write(yaml.safe_dump(sim.settings(url=args.broker), sort_keys=False))
        return 0

    async def go() -> int:
        endpoint = MqttEndpoint(url=args.broker, username=args.api_key, password=args.token,
                                client_id=f"haltian-sim-{args.seed}", ca_file=args.ca_file,
                                tls_insecure=args.tls_insecure, protocol="3.1.1")
        session = MqttSession(endpoint, _Quiet(), name="haltian-simulator")
        session.start()
        try:
            return await sim.run(session, duration=args.duration, count=args.count, qos=args.qos)
        finally:
            await session.stop()

    with contextlib.suppress(KeyboardInterrupt):
        sent = asyncio.run(go())
        sys.stderr.write(f"published {sent} messages ({sim.sent_malformed} malformed)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
