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
_NONE: dict[str, tuple[float, Any]] = {}
OFFLINE = "deviceOffline"
ONLINE = "deviceOnline"


def mean(values: list[float]) -> float | int:
    """Mean rounded to 2 decimals; an integral mean of integers stays an int."""
    result = round(sum(values) / len(values), 2)
    if result.is_integer() and all(isinstance(v, int) for v in values):
        return int(result)
    return result


class RoomState:
    """Combines one module's devices into its state keys."""

    __slots__ = ("_detail", "_group_count", "_group_moves", "_group_occupancy", "_held", "_numbers", "_occupancy",
                 "_offline", "_presence", "_seen", "_set", "counter", "group", "labels", "last_heard", "stale_after",
                 "types")

    def __init__(self, set_state: SetState, counter: LocalCounter) -> None:
        self._set = set_state
        self.counter = counter
        self.labels: dict[str, str | None] = {}
        self.group: str | None = None
        self.types: frozenset[str] | None = None
        self.stale_after = 900.0
        self.last_heard: float | None = None
        self._held: dict[tuple[str, str], float] = {}
        self._numbers: dict[str, dict[str, tuple[float, Any]]] = {}  # state key -> device -> (at, value)
        self._presence: dict[str, tuple[float, bool]] = {}
        self._occupancy: dict[str, tuple[bool, float | None]] = {}
        self._group_occupancy: tuple[bool, float | None] | None = None
        self._group_count: int | None = None
        self._group_moves: tuple[int, int] | None = None
        self._detail: dict[str, dict[str, Any]] = {}
        self._seen: dict[str, float] = {}
        self._offline: dict[str, float] = {}

    # -- configuration -----------------------------------------------------------------------

    def configure(self, labels: dict[str, str | None], group: str | None, types: frozenset[str] | None,
                  stale_after: float) -> None:
        """Bind devices (id -> label, a dict this takes over), a group and a type filter; values of devices no
        longer bound go."""
        gone = set(self.labels) - set(labels)
        if self.group is not None and self.group != group:
            gone.add(self.group)
            self._group_occupancy = None
            self._group_count = None
            self._group_moves = None
        self.labels = labels
        if group is not None:
            self.labels.setdefault(group, None)
        self.group = group
        self.types = types
        self.stale_after = stale_after
        for device in gone - set(self.labels):
            self._forget(device)
        for device, label in self.labels.items():
            entry = self._detail.get(device)
            if entry is None:
                self._detail[device] = {"label": label, "last_seen": None}
            elif entry["label"] != label:
                self._detail[device] = {**entry, "label": label}

    def set_labels(self, names: dict[str, str], *, overwrite: bool = False) -> None:
        """Fill labels from the service API (settings labels win unless `overwrite`)."""
        changed = False
        for device in self.labels:
            name = names.get(device)
            if name is not None and (overwrite or self.labels[device] is None) and self.labels[device] != name:
                self.labels[device] = name
                self._detail[device] = {**self._detail[device], "label": name}
                changed = True
        if changed:
            self._publish_devices()

    def set_detail(self, device: str, key: str, value: Any) -> None:
        """Add an enrichment field (e.g. group members) to a device's detail."""
        entry = self._detail.get(device)
        if entry is not None and entry.get(key) != value:
            self._detail[device] = {**entry, key: value}
            self._publish_devices()

    def _forget(self, device: str) -> None:
        self._detail.pop(device, None)
        self._seen.pop(device, None)
        self._offline.pop(device, None)
        self._presence.pop(device, None)
        self._occupancy.pop(device, None)
        for values in self._numbers.values():
            values.pop(device, None)
        for key in [k for k in self._held if k[0] == device]:
            del self._held[key]

    def publish_all(self, now: float) -> None:
        """Publish every key from what is held (after load, reconfiguration or a periodic check)."""
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
        """Apply one measurement; False when it was filtered out or older than the one held."""
        self.last_heard = now
        canonical = known.spec.name if known is not None else snake(type_name)
        if self.types is not None and canonical not in self.types:
            return False
        slot = (device, canonical)
        held = self._held.get(slot)
        if held is not None and at <= held:
            return False
        self._held[slot] = at
        self._heard(device, at, canonical, to_detail(value))
        self._publish_devices()
        if known is None:
            return True
        spec = known.spec
        combine = spec.combine
        is_group = device == self.group
        if combine == "mean" and spec.state:
            self._numbers.setdefault(spec.state, {})[device] = (at, value)
            self._publish_mean(spec.state, now)
        elif combine == "min" and spec.state:
            self._numbers.setdefault(spec.state, {})[device] = (at, value)
            self._publish_min(spec.state)
        elif combine == "presence":
            present = value if isinstance(value, bool) else value > 0
            current = self._presence.get(device)
            if current is None or at >= current[0]:
                self._presence[device] = (at, present)
            self._publish_presence()
        elif combine == "occupancy":
            state = occupancy(value)
            if state is not None:
                if is_group:
                    self._group_occupancy = state
                else:
                    self._occupancy[device] = state
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
        self._heard(device, at)
        self._publish_devices()

    def notification(self, device: str, name: str, at: float) -> None:
        """`deviceOffline` adds the device to `offline_devices` until it is heard from again."""
        if name == OFFLINE:
            self._offline[device] = at
            self._publish_offline()
        elif name == ONLINE and self._offline.pop(device, None) is not None:
            self._publish_offline()

    def _heard(self, device: str, at: float, key: str | None = None, value: Any = None) -> None:
        offline_at = self._offline.get(device)
        if offline_at is not None and at > offline_at:
            del self._offline[device]
            self._publish_offline()
        newer = at > self._seen.get(device, float("-inf"))
        if newer:
            self._seen[device] = at
        entry = self._detail.get(device)
        if entry is not None and (newer or key is not None):
            entry = dict(entry)  # a new dict: published values are never changed in place
            if newer:
                entry["last_seen"] = iso(at)
            if key is not None:
                entry[key] = value
            self._detail[device] = entry

    # -- publishing --------------------------------------------------------------------------

    def _publish_mean(self, key: str, now: float) -> None:
        values = self._numbers.get(key, _NONE)
        stale_after = self.stale_after
        if len(values) == 1:  # one device: its value, as mean() would give it, without building a list
            for at, v in values.values():
                self._set(key, None if now - at > stale_after else v if type(v) is int else round(v, 2))
            return
        fresh = [v for at, v in values.values() if now - at <= stale_after]
        self._set(key, mean(fresh) if fresh else None)

    def _publish_min(self, key: str) -> None:
        values = [v for _, v in self._numbers.get(key, _NONE).values()]
        self._set(key, min(values) if values else None)

    def _publish_presence(self) -> None:
        values = [p for _, p in self._presence.values()]
        self._set("presence", any(values) if values else None)

    def _publish_occupancy(self) -> None:
        if self._group_occupancy is not None:
            occupied, confidence = self._group_occupancy
        elif self._occupancy:
            occupied = any(o for o, _ in self._occupancy.values())
            agreeing = [c for o, c in self._occupancy.values() if o == occupied and c is not None]
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
        self._set("devices", dict(self._detail))

    def _publish_offline(self) -> None:
        self._set("offline_devices", sorted(self._offline))

    def fresh_for(self, now: float) -> float:
        """Seconds until no bound device has reported within `stale_after` (0 when that is already so)."""
        if self.last_heard is None:
            return 0.0
        return max(0.0, self.last_heard + self.stale_after - now)

    def bound(self) -> Iterable[str]:
        """Every bound device id (the group included)."""
        return self.labels.keys()
