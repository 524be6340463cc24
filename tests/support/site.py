"""Run a runtime in-process against the test broker, with test drivers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from drivers.demo import DemoDriver
from runtime.app import Runtime
from runtime.driver import Driver, command
from runtime.registry import Registry


class ProbeSettings(msgspec.Struct):
    """Settings of the probe driver."""

    label: str = ""


class ProbeDriver(Driver[ProbeSettings]):
    """A driver whose state the tests set through its module host."""

    key = "probe"
    name = "Probe"
    generic_name = "Probe"
    description = "test probe"
    Settings = ProbeSettings
    has_upstream = False
    loads: ClassVar[dict[str, int]] = {}
    updates: ClassVar[dict[str, int]] = {}

    async def on_load(self) -> None:
        """Count loads per module."""
        ProbeDriver.loads[self.ctx.module_id] = ProbeDriver.loads.get(self.ctx.module_id, 0) + 1

    async def on_update(self) -> None:
        """Count updates per module."""
        ProbeDriver.updates[self.ctx.module_id] = ProbeDriver.updates.get(self.ctx.module_id, 0) + 1

    @command(timeout=0.2)
    async def echo(self, text: str, times: int = 1) -> dict[str, str]:
        """Return the text repeated."""
        return {"text": text * times}

    @command(timeout=0.1)
    async def slow(self) -> None:
        """Take longer than the command timeout."""
        await asyncio.sleep(5)

    @command(timeout=1.0)
    async def crash(self) -> None:
        """Start a module task that fails (the runtime restarts the module)."""

        async def fail() -> None:
            raise RuntimeError("task fails on purpose")

        self.ctx.spawn(fail(), name="doomed")


class FlakySettings(msgspec.Struct):
    """Settings of the flaky driver."""

    failures: int = 2
    hang: bool = False
    """Fail by never finishing `on_load` rather than by raising."""


class FlakyDriver(Driver[FlakySettings]):
    """Fails `failures` times in on_load (raising, or hanging when told), then works."""

    key = "flaky"
    name = "Flaky"
    generic_name = "Flaky"
    Settings = FlakySettings
    has_upstream = False
    attempts: ClassVar[dict[str, int]] = {}

    async def on_load(self) -> None:
        """Raise until enough attempts were made."""
        n = FlakyDriver.attempts[self.ctx.module_id] = FlakyDriver.attempts.get(self.ctx.module_id, 0) + 1
        if n <= self.settings.failures:
            if self.settings.hang:
                await asyncio.Event().wait()
            raise RuntimeError(f"load attempt {n} fails on purpose")
        self.ctx.set_state("ok", True)


def registry() -> Registry:
    """The drivers tests run."""
    return Registry([DemoDriver, ProbeDriver, FlakyDriver])


def write_settings(path: Path, doc: dict[str, Any]) -> Path:
    """Write a settings document as JSON (or YAML for a .yaml path)."""
    if path.suffix == ".json":
        path.write_bytes(msgspec.json.encode(doc))
    else:
        import yaml

        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def site(broker_url: str, **overrides: Any) -> dict[str, Any]:
    """A small site: one building, one level, one room, a probe in it."""
    doc: dict[str, Any] = {
        "org": {"id": "org-t", "name": "Test Org", "timezone": "Europe/Helsinki"},
        "brokers": [{"name": "local", "url": broker_url, "client_id": "rt-test", "qos": 1}],
        "http": {"host": "127.0.0.1", "port": 0, "api_keys": ["test-key"]},
        "zones": [
            {"id": "bld-1", "name": "HQ", "tags": ["building"], "parent": "org-t"},
            {"id": "lvl-2", "name": "Level 2", "tags": ["level"], "parent": "bld-1"},
            {"id": "area-201", "name": "Room 2.01", "tags": ["area"], "parent": "lvl-2"},
        ],
        "drivers": [{"id": "drv-p", "name": "Probe driver", "driver": "probe"}],
        "modules": [{"id": "mod-a", "driver": "drv-p", "name": "Sensor"}],
        "systems": [{"id": "sys-201", "name": "Room 2.01", "zones": ["area-201"], "modules": ["mod-a"]}],
    }
    doc.update(overrides)
    return doc


@contextlib.asynccontextmanager
async def running(path: Path) -> AsyncIterator[Runtime]:
    """Start a runtime on a settings file and stop it afterwards."""
    rt = Runtime(path, registry=registry(), backoff_initial=0.05)
    await rt.start()
    try:
        assert rt.publisher is not None and rt.manager is not None
        assert await rt.publisher.wait_connected(10)
        assert await rt.publisher.wait_swept(10)
        await rt.manager.wait_loaded(10)
        yield rt
    finally:
        await rt.stop()
