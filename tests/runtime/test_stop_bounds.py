"""Stopping the runtime always ends: a shared service that will not close is left behind with a warning."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import ClassVar

import msgspec
import pytest

from runtime.app import Runtime
from runtime.driver import Driver
from runtime.registry import Registry
from tests.support.broker import Mosquitto
from tests.support.site import site, write_settings

BOUND = 30.0  # seconds: a failure bound only, never a pass condition
MODULE = "mod-stuck"


class StuckService:
    """A shared upstream whose `close()` ignores every cancellation until the test releases it."""

    def __init__(self) -> None:
        self.closing = asyncio.Event()
        self.release = asyncio.Event()
        self.closed = asyncio.Event()

    async def close(self) -> None:
        """Wait for the release, whatever happens meanwhile."""
        self.closing.set()
        while not self.release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await self.release.wait()
        self.closed.set()


class StuckSettings(msgspec.Struct):
    """No settings."""


class StuckDriver(Driver[StuckSettings]):
    """Holds one `StuckService` as a shared service."""

    key = "stuck"
    name = "Stuck"
    generic_name = "Stuck"
    Settings = StuckSettings
    has_upstream = False
    services: ClassVar[list[StuckService]] = []

    async def on_update(self) -> None:
        """Acquire the shared service."""

        async def make() -> StuckService:
            StuckDriver.services.append(StuckService())
            return StuckDriver.services[-1]

        await self.ctx.shared("upstream", ("stuck", self.ctx.module_id), make)


async def test_stop_goes_on_when_a_shared_service_will_not_close(broker: Mosquitto, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    StuckDriver.services.clear()
    doc = site(broker.url, drivers=[{"id": "drv-s", "name": "Stuck driver", "driver": "stuck"}],
               modules=[{"id": MODULE, "driver": "drv-s", "name": "Sensor"}],
               systems=[{"id": "sys-1", "name": "Room", "modules": [MODULE]}])
    rt = Runtime(write_settings(tmp_path / "site.yaml", doc), registry=Registry([StuckDriver]))
    await rt.start()
    assert rt.manager is not None
    rt.manager.unload_timeout = 0.2
    assert await rt.manager.wait_loaded(BOUND)
    [service] = StuckDriver.services

    with caplog.at_level(logging.WARNING, logger="runtime.module"):
        stopping = asyncio.ensure_future(rt.stop())
        done, _ = await asyncio.wait({stopping}, timeout=BOUND)
    service.release.set()  # either way, let the service end so that nothing outlives the test
    assert stopping in done, "Runtime.stop() waited for a shared service that never closes"
    await stopping
    assert service.closing.is_set() and not service.closed.is_set()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(MODULE in w and "shared services did not finish" in w for w in warnings), warnings
    async with asyncio.timeout(BOUND):
        await service.closed.wait()  # it was left to finish in the background, not abandoned for good
