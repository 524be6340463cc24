"""A module's room state: measurements of its devices combined into state keys per the reference contract.

Each (device, type) keeps its newest `measured_at`; an older or equal one is ignored (so a duplicate
delivery is never counted twice). Means use values measured within `stale_after` of now and are
rounded to 2 decimals; `battery` and `battery_voltage` are the lowest latest value; `presence` is true
when any device's latest presence (or movement count > 0) is; the group's occupancy values win over
the devices' ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from drivers.haltian.models import SPECS, DirectionalValue, KnownType, iso, occupancy, snake, to_detail
from drivers.haltian.occupancy import LocalCounter

SetState = Callable[[str, Any], None]
MEAN_KEYS = tuple(s.state for s in SPECS.values() if s.combine == "mean" and s.state)
MIN_KEYS = tuple(s.state for s in SPECS.values() if s.combine == "min" and s.state)
MEASURED_KEYS = (*MEAN_KEYS, *MIN_KEYS, "presence", "occupied", "occupancy_confidence")
"""The keys `publish_all` derives from held measurements (a module without any leaves them unset)."""
_TYPE_OF = {s.state: s.name for s in SPECS.values() if s.combine in ("mean", "min") and s.state}
"""State key -> the one measurement type it combines."""
OFFLINE = "deviceOffline"
ONLINE = "deviceOnline"


def mean(values: list[float]) -> float | int:
    """Mean rounded to 2 decimals; an integral mean of integers stays an int."""
    result = round(sum(values) / len(values), 2)
    if result.is_integer() and all(isinstance(v, int) for v in values):
        return int(result)
    return result


class Device:
    """What a room holds of one bound device (a site may bind 10,000 devices: one slotted record each)."""

    __slots__ = ("held", "label", "occupancy", "offline_at", "presence", "seen")

    def __init__(self, label: str | None) -> None:
        self.label = label
        self.seen: float | None = None
        self.held: dict[str, tuple[float, Any]] = {}  # canonical type -> (newest measured_at, its value)
        self.presence: tuple[float, bool] | None = None
        self.occupancy: tuple[bool, float | None] | None = None
        self.offline_at: float | None = None


class RoomState:
    """Combines one module's devices into its state keys."""

    __slots__ = ("_detail", "_devices", "_group_count", "_group_moves", "_group_occupancy", "_measured", "_set",
                 "counter", "group", "last_heard", "stale_after", "types")

    def __init__(self, set_state: SetState, counter: LocalCounter, *, published: bool = True) -> None:
        """`published`: whether measured keys may be set already (by an earlier load of the module)."""
        self._set = set_state
        self.counter = counter
        self.group: str | None = None
        self.types: frozenset[str] | None = None
        self.stale_after = 900.0
        self.last_heard: float | None = None
        self._devices: dict[str, Device] = {}
        # device -> its detail: the published `devices` value itself, so it is replaced, never changed in place.
        self._detail: dict[str, dict[str, Any]] = {}
        self._group_occupancy: tuple[bool, float | None] | None = None
        self._group_count: int | None = None
        self._group_moves: tuple[int, int] | None = None
        # Whether a measured key may be set: until then `publish_all` has none to compute or clear.
        self._measured = published

    # -- configuration -----------------------------------------------------------------------

    def configure(self, labels: dict[str, str | None], group: str | None, types: frozenset[str] | None,
                  stale_after: float) -> None:
        """Bind devices (id -> label), a group and a type filter; what devices no longer bound held goes."""
        if self.group is not None and self.group != group:
            self._group_occupancy = None
            self._group_count = None
            self._group_moves = None
        wanted = dict(labels)
        if group is not None:
            wanted.setdefault(group, None)
        self.group = group
        self.types = types
        self.stale_after = stale_after
        devices = self._devices
        detail = dict(self._detail)
        for device in [d for d in devices if d not in wanted]:
            del devices[device]
            detail.pop(device, None)
        for device, label in wanted.items():
            found = devices.get(device)
            if found is None:
                devices[device] = Device(label)
                detail[device] = {"label": label, "last_seen": None}
            elif found.label != label or detail[device]["label"] != label:
                found.label = label
                detail[device] = {**detail[device], "label": label}
        self._detail = detail

    def set_labels(self, names: dict[str, str], *, overwrite: bool = False) -> None:
        """Fill labels from the service API (settings labels win unless `overwrite`)."""
        changed = False
        for device, found in self._devices.items():
            name = names.get(device)
            if name is not None and (overwrite or found.label is None) and found.label != name:
                found.label = name
                self._detail = {**self._detail, device: {**self._detail[device], "label": name}}
                changed = True
        if changed:
            self._publish_devices()

    def set_detail(self, device: str, key: str, value: Any) -> None:
        """Add an enrichment field (e.g. group members) to a device's detail."""
        entry = self._detail.get(device)
        if entry is not None and entry.get(key) != value:
            self._detail = {**self._detail, device: {**entry, key: value}}
            self._publish_devices()

    def publish_all(self, now: float) -> None:
        """Publish every key from what is held (after load, reconfiguration or a periodic check)."""
        if self._measured:
            for key in MEAN_KEYS:
                self._publish_mean(key, now)
            for key in MIN_KEYS:
                self._publish_min(key)
            self._publish_presence()
            self._publish_occupancy()
        self.publish_counts()
        self._publish_devices()
        self._publish_offline()

    # -- incoming ----------------------------------------------------------------------------

    def measurement(self, device: str, known: KnownType | None, type_name: str, at: float, value: Any,
                    now: float) -> bool:
        """Apply one measurement; False when it was filtered out, is of a device not bound, or is older than the
        one held."""
        self.last_heard = now
        canonical = known.spec.name if known is not None else snake(type_name)
        if self.types is not None and canonical not in self.types:
            return False
        found = self._devices.get(device)
        if found is None:
            return False
        held = found.held.get(canonical)
        if held is not None and at <= held[0]:
            return False
        found.held[canonical] = (at, value)
        self._measured = True
        self._heard(device, found, at, canonical, to_detail(value))
        self._publish_devices()
        if known is None:
            return True
        spec = known.spec
        combine = spec.combine
        is_group = device == self.group
        if combine == "mean" and spec.state:
            self._publish_mean(spec.state, now)
        elif combine == "min" and spec.state:
            self._publish_min(spec.state)
        elif combine == "presence":
            present = value if isinstance(value, bool) else value > 0
            current = found.presence
            if current is None or at >= current[0]:
                found.presence = (at, present)
            self._publish_presence()
        elif combine == "occupancy":
            state = occupancy(value)
            if state is not None:
                if is_group:
                    self._group_occupancy = state
                else:
                    found.occupancy = state
                self._publish_occupancy()
        elif combine == "count" and is_group:
            self._group_count = value
            self.publish_counts()
        elif combine == "directional" and isinstance(value, DirectionalValue):
            if is_group:
                self._group_moves = (value.in_, value.out)
                self.publish_counts()
            else:
                self.counter.movement(device, value, now)
                self.publish_counts()
        elif combine == "dwell" and is_group:
            self._set("dwell_time", value)
        return True

    def heard(self, device: str, at: float, now: float) -> None:
        """A message that carries no measurement: the device is alive."""
        self.last_heard = now
        found = self._devices.get(device)
        if found is not None:
            self._heard(device, found, at)
            self._publish_devices()

    def notification(self, device: str, name: str, at: float) -> None:
        """`deviceOffline` adds the device to `offline_devices` until it is heard from again."""
        found = self._devices.get(device)
        if found is None:
            return
        if name == OFFLINE:
            found.offline_at = at
            self._publish_offline()
        elif name == ONLINE and found.offline_at is not None:
            found.offline_at = None
            self._publish_offline()

    def _heard(self, device: str, found: Device, at: float, key: str | None = None, value: Any = None) -> None:
        if found.offline_at is not None and at > found.offline_at:
            found.offline_at = None
            self._publish_offline()
        newer = found.seen is None or at > found.seen
        if newer:
            found.seen = at
        if newer or key is not None:
            entry = dict(self._detail[device])  # a new dict: published values are never changed in place
            if newer:
                entry["last_seen"] = iso(at)
            if key is not None:
                entry[key] = value
            self._detail = {**self._detail, device: entry}

    # -- publishing --------------------------------------------------------------------------

    def _held_values(self, key: str) -> list[tuple[float, Any]]:
        canonical = _TYPE_OF[key]
        return [held for found in self._devices.values() if (held := found.held.get(canonical)) is not None]

    def _publish_mean(self, key: str, now: float) -> None:
        stale_after = self.stale_after
        if len(self._devices) == 1:  # one device: its value, as mean() would give it, without building lists
            for found in self._devices.values():
                held = found.held.get(_TYPE_OF[key])
                if held is None:
                    self._set(key, None)
                else:
                    at, v = held
                    self._set(key, None if now - at > stale_after else v if type(v) is int else round(v, 2))
            return
        fresh = [v for at, v in self._held_values(key) if now - at <= stale_after]
        self._set(key, mean(fresh) if fresh else None)

    def _publish_min(self, key: str) -> None:
        values = [v for _, v in self._held_values(key)]
        self._set(key, min(values) if values else None)

    def _publish_presence(self) -> None:
        values = [found.presence[1] for found in self._devices.values() if found.presence is not None]
        self._set("presence", any(values) if values else None)

    def _publish_occupancy(self) -> None:
        states = [found.occupancy for found in self._devices.values() if found.occupancy is not None]
        if self._group_occupancy is not None:
            occupied, confidence = self._group_occupancy
        elif states:
            occupied = any(o for o, _ in states)
            agreeing = [c for o, c in states if o == occupied and c is not None]
            confidence = max(agreeing) if agreeing else None
        else:
            self._set("occupied", None)
            self._set("occupancy_confidence", None)
            return
        self._set("occupied", occupied)
        self._set("occupancy_confidence", confidence)

    def publish_counts(self) -> None:
        """Publish `people_count`, `in`, `out` and `last_reset` (the group's values win)."""
        counter = self.counter
        if self._group_count is not None:
            self._set("people_count", self._group_count)
        elif counter.active:
            self._set("people_count", counter.count)
        if self._group_moves is not None:
            self._set("in", self._group_moves[0])
            self._set("out", self._group_moves[1])
        elif counter.active:
            self._set("in", counter.totals[0])
            self._set("out", counter.totals[1])
        last = counter.last_reset
        if last is not None:
            self._set("last_reset", {"at": last.at, "reason": last.reason})

    def _publish_devices(self) -> None:
        self._set("devices", self._detail)

    def _publish_offline(self) -> None:
        self._set("offline_devices", sorted(d for d, found in self._devices.items() if found.offline_at is not None))

    def fresh_for(self, now: float) -> float:
        """Seconds until no bound device has reported within `stale_after` (0 when that is already so)."""
        if self.last_heard is None:
            return 0.0
        return max(0.0, self.last_heard + self.stale_after - now)

    def bound(self) -> Iterable[str]:
        """Every bound device id (the group included)."""
        return self._devices.keys()
