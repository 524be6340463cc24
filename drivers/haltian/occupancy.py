"""Local people counting for entryways: in/out from `directional_movement`, resets, and their persistence.

The count is `in - out` since the last reset, shown never below 0 and at most `capacity`; the threshold
reset looks at the unclamped difference, so `reset_below: 0` clears the drift that exits missed by the
sensors leave behind. The counters, the last reset and the cumulative baselines are saved to a small
JSON file in the module's state directory after every change, so a restart of the runtime keeps them.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Literal, Protocol

import msgspec

from drivers.haltian.models import DirectionalValue, iso

ResetReason = Literal["scheduled", "manual", "threshold", "timeout"]
STATE_FILE = "haltian-occupancy.json"


class LastReset(msgspec.Struct, frozen=True):
    """The `last_reset` state: when (ISO-8601) and why."""

    at: str
    reason: ResetReason


class Saved(msgspec.Struct):
    """What survives a restart."""

    version: int = 1
    active: bool = False
    in_: int = msgspec.field(default=0, name="in")
    out: int = 0
    last_reset: LastReset | None = None
    last_reset_ts: float | None = None
    last_movement: float | None = None
    saved_at: float | None = None
    baselines: dict[str, tuple[int, int]] = {}


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Saved)


class Home(Protocol):
    """Where a counter keeps its file and reports problems: the module's context."""

    @property
    def state_dir(self) -> Path:
        """The module's state directory."""
        ...

    def read_state(self, name: str) -> bytes | None:
        """A file of the state directory, or None when there is none."""
        ...

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """The module's logger."""
        ...


class LocalCounter:
    """In/out counters of one module, with the four resets applied from outside and persistence."""

    __slots__ = ("_home", "capacity", "mode", "reset_below", "save_failed", "state")

    def __init__(self, home: Home) -> None:
        self._home = home  # asked for its directory and logger only when needed (10,000 modules)
        self.mode: Literal["delta", "cumulative"] = "delta"
        self.capacity: int | None = None
        self.reset_below: int | None = None
        self.state = Saved()
        self.save_failed = False

    def configure(self, mode: Literal["delta", "cumulative"], capacity: int | None, reset_below: int | None) -> None:
        """Apply module settings."""
        if mode != self.mode:
            self.state.baselines = {}
        self.mode = mode
        self.capacity = capacity
        self.reset_below = reset_below

    @property
    def path(self) -> Path:
        """The state file."""
        return self._home.state_dir / STATE_FILE

    @property
    def _log(self) -> logging.LoggerAdapter[logging.Logger]:
        return self._home.logger

    # -- the count ---------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """True once a directional movement was counted (or restored): the module shows a local count."""
        return self.state.active

    @property
    def raw(self) -> int:
        """`in - out` since the last reset, unclamped."""
        return self.state.in_ - self.state.out

    @property
    def count(self) -> int:
        """The people count: `in - out`, never below 0, at most `capacity` when set."""
        value = max(0, self.raw)
        return min(value, self.capacity) if self.capacity is not None else value

    @property
    def totals(self) -> tuple[int, int]:
        """(in, out) since the last reset."""
        return self.state.in_, self.state.out

    @property
    def last_reset(self) -> LastReset | None:
        """The last reset, if any."""
        return self.state.last_reset

    @property
    def last_movement(self) -> float | None:
        """Unix time of the last counted movement."""
        return self.state.last_movement

    @property
    def idle(self) -> bool:
        """True when there is nothing a reset would clear."""
        return self.state.in_ == 0 and self.state.out == 0

    def movement(self, device: str, value: DirectionalValue, now: float) -> bool:
        """Count a device's `directional_movement`; returns whether the threshold reset fired."""
        if self.mode == "delta":
            din, dout = max(0, value.in_), max(0, value.out)
        else:
            previous = self.state.baselines.get(device)
            self.state.baselines[device] = (value.in_, value.out)
            if previous is None:
                din = dout = 0  # the first total is only a baseline
            else:
                # A total lower than the previous one means the device's counter was reset.
                din = value.in_ - previous[0] if value.in_ >= previous[0] else value.in_
                dout = value.out - previous[1] if value.out >= previous[1] else value.out
        self.state.active = True
        self.state.in_ += din
        self.state.out += dout
        if din or dout:
            self.state.last_movement = now
        if self.reset_below is not None and self.raw < self.reset_below:
            self.reset("threshold", now)
            return True
        self.save(now)
        return False

    def reset(self, reason: ResetReason, now: float) -> LastReset:
        """Set in, out and the count to 0 and record why."""
        self.state.in_ = 0
        self.state.out = 0
        self.state.last_reset = LastReset(iso(now), reason)
        self.state.last_reset_ts = now
        self.save(now)
        return self.state.last_reset

    # -- persistence -------------------------------------------------------------------------

    def load(self) -> bool:
        """Restore from the state file; False when there is none (or it is unreadable)."""
        try:
            data = self._home.read_state(STATE_FILE)
        except OSError as exc:
            self._log.warning("cannot read %s: %s; starting from zero", self.path, exc)
            return False
        if data is None:
            return False
        try:
            self.state = _DECODER.decode(data)
        except msgspec.DecodeError as exc:
            self._log.warning("ignoring corrupt %s: %s", self.path, exc)
            return False
        return True

    def save(self, now: float) -> None:
        """Write the state file atomically (a failure is logged once per streak, never raised)."""
        self.state.saved_at = now
        path = self.path
        tmp = path.with_suffix(".tmp")
        data = _ENCODER.encode(self.state)
        try:
            try:
                tmp.write_bytes(data)
            except FileNotFoundError:  # the first save of this module: its directory is made now
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            if not self.save_failed:
                self._log.warning("cannot save the people count to %s: %s", path, exc)
            self.save_failed = True
            return
        self.save_failed = False


def parse_time_of_day(text: str) -> dt.time:
    """`"HH:MM"` as a time."""
    hours, minutes = text.split(":")
    return dt.time(int(hours), int(minutes))
