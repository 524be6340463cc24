"""Fixtures for Haltian driver tests: modules on fake contexts sharing one fake transport."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from drivers.haltian import HaltianDriver, HaltianSettings
from runtime.clock import FakeClock
from runtime.shared import SharedServices
from runtime.testing import FakeModuleContext, FakeMqttSession, FakeTransports

INTEGRATION = "31efcae6-39ff-45f2-b732-2090e2ed54c4"
API_KEY = "c6f7b103-81df-4e73-8218-4f671056aee2"
PREFIX = f"haltian-iot/events/{INTEGRATION}/{API_KEY}"
DEV_A = "6e5f8ac6-a099-44e5-bb28-25fd3d1f47a6"
DEV_B = "7c8d9e0f-1a2b-3c4d-5e6f-7a8b9c0d1e2f"
DEV_C = "0b7a5d2e-4c1f-4e8a-9d3b-2f6e8a1c5b7d"
GROUP = "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
BASE = {"url": "mqtt://127.0.0.1:1883", "integration_id": INTEGRATION, "api_key_id": API_KEY,
        "api_key_token": "token-1"}


def stamp(ts: float, zulu: bool = True) -> str:
    """Haltian's two timestamp forms."""
    moment = dt.datetime.fromtimestamp(ts, dt.UTC)
    if zulu:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return moment.isoformat(timespec="microseconds")


def payload(value: Any, at: float, *, zulu: bool = True, own: str | None = None) -> bytes:
    """A measurement payload, the value under `value` or under the type's own name."""
    return msgspec.json.encode({"measured_at": stamp(at, zulu), own or "value": value})


class Shared(SharedServices):
    """`SharedServices` that stays truthy when empty (`FakeModuleContext` tests `shared or SharedServices()`)."""

    def __bool__(self) -> bool:
        return True


class Rig:
    """Modules of one driver record on fake contexts that share services, transports and a clock."""

    def __init__(self, state_root: Path, *, timezone: str = "UTC", start: float = 1_767_225_600.0) -> None:
        self.clock = FakeClock(start)
        self.transports = FakeTransports()
        self.shared = Shared()
        self.state_root = state_root
        self.timezone = timezone
        self.contexts: list[FakeModuleContext] = []

    async def module(self, module_id: str = "mod-1", **settings: Any) -> tuple[HaltianDriver, FakeModuleContext]:
        """Load a module with `settings` on top of the connection settings."""
        state_dir = self.state_root / module_id
        state_dir.mkdir(parents=True, exist_ok=True)
        ctx = FakeModuleContext(module_id, driver_id="drv-haltian", clock=self.clock, timezone=self.timezone,
                                state_dir=state_dir, transports=self.transports, shared=self.shared)
        driver = HaltianDriver(ctx, msgspec.convert({**BASE, **settings}, HaltianSettings))
        await driver.on_load()
        await driver.on_update()
        self.contexts.append(ctx)
        return driver, ctx

    async def update(self, driver: HaltianDriver, **settings: Any) -> None:
        """Replace a module's settings and call on_update, as the runtime does on reload."""
        driver.settings = msgspec.convert({**BASE, **settings}, HaltianSettings)
        await driver.on_update()

    async def unload(self, driver: HaltianDriver, ctx: FakeModuleContext) -> None:
        """Unload a module as the runtime does."""
        await driver.on_unload()
        await ctx.teardown()
        self.contexts.remove(ctx)

    @property
    def session(self) -> FakeMqttSession:
        """The one upstream session."""
        assert len(self.transports.sessions) == 1
        return self.transports.sessions[0]

    def send(self, type_name: str, device: str, value: Any, *, at: float | None = None, zulu: bool = True,
             own: bool = False, kind: str = "measurements") -> None:
        """Deliver a measurement through the fake session."""
        when = self.clock.time() if at is None else at
        self.session.deliver(f"{PREFIX}/{kind}/{type_name}/{device}",
                             payload(value, when, zulu=zulu, own=type_name if own else None))

    async def close(self) -> None:
        """Release every module."""
        for ctx in list(self.contexts):
            await ctx.teardown()
        self.contexts.clear()
        await self.transports.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """A rig in UTC."""
    r = Rig(tmp_path)
    yield r
    await r.close()


@pytest.fixture
async def helsinki(tmp_path: Path) -> AsyncIterator[Rig]:
    """A rig in Europe/Helsinki starting 2026-03-28 12:00 local (the day before spring forward)."""
    start = dt.datetime(2026, 3, 28, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))).timestamp()
    r = Rig(tmp_path, timezone="Europe/Helsinki", start=start)
    yield r
    await r.close()
