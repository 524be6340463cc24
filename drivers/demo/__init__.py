"""A simulated room sensor: temperature, humidity, people count and occupancy at a configurable rate."""

from __future__ import annotations

import random

import msgspec

from runtime.driver import Driver, command
from runtime.payloads import round2

_MAX_BURST = 100_000  # the most state keys one `burst` call may set


class DemoSettings(msgspec.Struct):
    """Settings of a demo room sensor."""

    interval: float = 2.0
    temperature: float = 21.5
    humidity: float = 40.0
    capacity: int = 8
    seed: int | None = None


class DemoDriver(Driver[DemoSettings]):
    """A room sensor that makes up plausible readings."""

    key = "demo"
    name = "Demo room sensor"
    generic_name = "Sensor"
    description = "Simulated temperature, humidity, people count and occupancy"
    Settings = DemoSettings
    has_upstream = False

    async def on_load(self) -> None:
        """Start from the configured baseline."""
        self._random = random.Random(self.settings.seed)
        self._temperature = self.settings.temperature
        self._humidity = self.settings.humidity
        self._people = 0

    async def on_update(self) -> None:
        """(Re)start the reading loop at the configured interval."""
        self.ctx.schedule.clear()
        self.ctx.set_state("capacity", self.settings.capacity)
        self.tick()
        self.ctx.schedule.every(self.settings.interval, self.tick, name="tick")

    async def on_unload(self) -> None:
        """Nothing to release: the runtime cancels the schedule."""

    def tick(self) -> None:
        """Take one simulated reading."""
        rnd = self._random
        self._temperature += rnd.uniform(-0.2, 0.2)
        self._humidity = min(100.0, max(0.0, self._humidity + rnd.uniform(-0.5, 0.5)))
        self._people = min(self.settings.capacity, max(0, self._people + rnd.choice((-1, 0, 0, 1))))
        self.ctx.set_state("temperature", round2(self._temperature))
        self.ctx.set_state("humidity", round2(self._humidity))
        self.ctx.set_state("people_count", self._people)
        self.ctx.set_state("occupied", self._people > 0)

    @command(timeout=5)
    async def set_people(self, count: int) -> dict[str, int]:
        """Force the people count (for trying the command API)."""
        if count < 0:
            raise ValueError("count must not be negative")
        self._people = min(count, self.settings.capacity)
        self.ctx.set_state("people_count", self._people)
        self.ctx.set_state("occupied", self._people > 0)
        return {"people_count": self._people}

    @command(timeout=30)
    async def burst(self, count: int, value: int = 1) -> dict[str, int]:
        """Set state keys `burst_0` .. `burst_<count-1>` to `value` at once (for trying a burst of changes)."""
        if not 0 <= count <= _MAX_BURST:
            raise ValueError(f"count must be between 0 and {_MAX_BURST}")
        for i in range(count):
            self.ctx.set_state(f"burst_{i}", value)
        return {"set": count}
