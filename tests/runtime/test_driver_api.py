"""Driver API pieces: commands with validated arguments, shared services, the runtime-owned `connected`."""

from __future__ import annotations

import pytest

from drivers.demo import DemoDriver, DemoSettings
from runtime.errors import CommandArgumentsError, DriverError, UnknownCommand
from runtime.shared import SharedServices
from runtime.testing import FakeModuleContext
from tests.support.site import ProbeDriver


async def test_command_arguments_are_validated() -> None:
    ctx = FakeModuleContext()
    driver = DemoDriver(ctx, DemoSettings(capacity=5))
    await driver.on_load()
    assert await driver.execute("set_people", {"count": 9}) == {"people_count": 5}
    assert ctx.states["people_count"] == 5
    with pytest.raises(CommandArgumentsError, match="Expected `int`"):
        await driver.execute("set_people", {"count": "many"})
    with pytest.raises(CommandArgumentsError, match="unknown field"):
        await driver.execute("set_people", {"count": 1, "extra": 2})
    with pytest.raises(UnknownCommand):
        await driver.execute("explode", {})
    assert "set_people" in DemoDriver.commands and "set_people" not in ProbeDriver.commands


class Service:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


async def test_shared_service_created_once_and_closed_with_last_user() -> None:
    shared = SharedServices()
    made: list[Service] = []

    async def factory() -> Service:
        made.append(Service())
        return made[-1]

    services = [await shared.acquire(f"m{i}", "stream", ("url", "key"), factory) for i in range(50)]
    assert len(made) == 1 and all(s is made[0] for s in services)
    for i in range(49):
        await shared.release_all(f"m{i}")
    assert not made[0].closed
    other = await shared.acquire("m49", "stream", ("url", "other-key"), factory)  # switching keys releases
    assert made[0].closed and other is made[1]
    await shared.release_all("m49")
    assert made[1].closed and len(shared) == 0


def test_connected_is_owned_by_the_runtime() -> None:
    from runtime.manager import ModuleHost

    host = ModuleHost.__new__(ModuleHost)
    with pytest.raises(DriverError, match="owned by the runtime"):
        host.set_state("connected", True)
