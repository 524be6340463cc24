"""Fixtures: the fake Empathic Building on a loopback port, a fake clock, and driver contexts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from drivers.empathic_building import EmpathicBuildingDriver, EmpathicBuildingSettings
from drivers.empathic_building.fake_server import FakeEmpathicBuilding, serve
from runtime.clock import FakeClock
from runtime.shared import SharedServices
from runtime.testing import FakeModuleContext, FakeTransports

EMAIL = "integrator@example.com"
PASSWORD = "correct horse battery staple"
GATEWAY_TOKEN = "gw-static-token-0123456789"


class Eb:
    """A running fake server with its URL."""

    def __init__(self, server: FakeEmpathicBuilding, url: str, port: int) -> None:
        self.server = server
        self.url = url
        self.port = port

    def settings(self, **extra: Any) -> dict[str, Any]:
        """Driver-record settings for a user account against this fake."""
        base: dict[str, Any] = {"api_url": self.url, "email": EMAIL, "password": PASSWORD, "organization_id": "1",
                                "location_id": "1", "pusher_key": self.server.app_key, "pusher_host": "127.0.0.1",
                                "pusher_port": self.port, "pusher_tls": False}
        base.update(extra)
        return base

    def gateway_settings(self, **extra: Any) -> dict[str, Any]:
        """Settings for a gateway account against this fake."""
        base: dict[str, Any] = {"api_url": self.url, "token": GATEWAY_TOKEN, "location_id": "1", "gateway": True,
                                "batch_delay": 0}
        base.update(extra)
        return base


@pytest.fixture
def clock() -> FakeClock:
    """The controllable clock shared by the driver and the fake server."""
    return FakeClock()


@pytest.fixture
async def eb(clock: FakeClock) -> AsyncIterator[Eb]:
    """The fake on a free loopback port; the test fails if a refresh token was ever reused."""
    server = FakeEmpathicBuilding(clock=clock, token_lifetime=600)
    server.add_user(EMAIL, PASSWORD)
    server.add_gateway(GATEWAY_TOKEN)
    runner = await serve(server, "127.0.0.1", 0)
    port = runner.addresses[0][1]
    yield Eb(server, f"http://127.0.0.1:{port}", port)
    await server.disconnect_all(1001, "test over")
    await runner.cleanup()
    assert server.reuse_events == [], f"refresh token reuse: {server.reuse_events}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A loopback HTTP client session."""
    session = aiohttp.ClientSession()
    yield session
    await session.close()


@pytest.fixture
def shared() -> SharedServices:
    """Shared services common to the contexts of one test."""
    return SharedServices()


ContextFactory = Callable[..., FakeModuleContext]


@pytest.fixture
async def make_ctx(clock: FakeClock, shared: SharedServices, tmp_path: Path) -> AsyncIterator[ContextFactory]:
    """Build module contexts sharing the clock, shared services and one HTTP session; all released at the end."""
    transports = FakeTransports()
    made: list[FakeModuleContext] = []

    def factory(module_id: str = "mod-eb", name: str = "EmpathicBuilding") -> FakeModuleContext:
        state_dir = tmp_path / module_id
        state_dir.mkdir(exist_ok=True)
        ctx = FakeModuleContext(module_id, driver_id="drv-eb", name=name, clock=clock, state_dir=state_dir,
                                transports=transports, shared=shared)
        made.append(ctx)
        return ctx

    yield factory
    for ctx in made:
        await ctx.teardown()
    await transports.close()


DriverFactory = Callable[..., Awaitable[EmpathicBuildingDriver]]


@pytest.fixture
async def load_driver(make_ctx: ContextFactory) -> AsyncIterator[DriverFactory]:
    """Load a driver module as the runtime would: decode merged settings, on_load, on_update; unload at the end."""
    loaded: list[EmpathicBuildingDriver] = []

    async def load(settings: dict[str, Any], ctx: FakeModuleContext | None = None) -> EmpathicBuildingDriver:
        ctx = ctx or make_ctx()
        decoded = msgspec.convert(settings, EmpathicBuildingSettings)
        driver = EmpathicBuildingDriver(ctx, decoded)
        await driver.on_load()
        await driver.on_update()
        loaded.append(driver)
        return driver

    yield load
    for driver in loaded:
        await driver.on_unload()


async def eventually(condition: Callable[[], bool], *, clock: FakeClock | None = None, step: float = 0.0,
                     attempts: int = 500) -> None:
    """Wait for `condition`, letting real I/O run (and moving the fake clock by `step` each round)."""
    for _ in range(attempts):
        if condition():
            return
        if clock is not None and step:
            await clock.advance(step)
        await asyncio.sleep(0.01)
    assert condition(), "condition not reached"
