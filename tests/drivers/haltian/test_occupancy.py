"""Local people counting, the four resets (with daylight-saving days) and persistence across restarts."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from drivers.haltian import HaltianDriver
from drivers.haltian.models import DirectionalValue, iso
from drivers.haltian.occupancy import STATE_FILE, LocalCounter
from runtime.testing import FakeModuleContext
from tests.drivers.haltian.conftest import DEV_A, DEV_B, GROUP, Rig

HELSINKI = ZoneInfo("Europe/Helsinki")


def moves(rig: Rig, device: str, ins: int, outs: int, **kw: object) -> None:
    """One directional_movement message (in the delta sense by default)."""
    rig.send("directionalMovement", device, {"in": ins, "out": outs, "net": ins - outs}, **kw)  # type: ignore[arg-type]


def counts(ctx: FakeModuleContext) -> tuple[int, int, int]:
    """(people_count, in, out)."""
    return ctx.states["people_count"], ctx.states["in"], ctx.states["out"]


def resets(ctx: FakeModuleContext) -> list[dict[str, str]]:
    """Every `last_reset` value published, in order."""
    return [v for k, v in ctx.history if k == "last_reset"]


def local(year: int, month: int, day: int, hour: int, minute: int = 0) -> float:
    """Unix time of a Helsinki wall-clock time."""
    return dt.datetime(year, month, day, hour, minute, tzinfo=HELSINKI).timestamp()


async def test_local_count_from_deltas_summed_over_devices(rig: Rig) -> None:
    _, ctx = await rig.module(devices=[DEV_A, DEV_B])
    rig.session.go_up()
    assert "people_count" not in ctx.states  # no entry/exit device has spoken yet
    moves(rig, DEV_A, 3, 0)
    await rig.clock.advance(1)
    moves(rig, DEV_B, 2, 1)
    assert counts(ctx) == (4, 5, 1)
    await rig.clock.advance(1)
    moves(rig, DEV_A, 0, 9)
    assert counts(ctx) == (0, 5, 10)  # never negative


async def test_capacity_clamps(rig: Rig) -> None:
    _, ctx = await rig.module(devices=[DEV_A], capacity=8)
    rig.session.go_up()
    moves(rig, DEV_A, 12, 1)
    assert counts(ctx) == (8, 12, 1)


async def test_cumulative_mode(rig: Rig) -> None:
    _, ctx = await rig.module(devices=[DEV_A], directional_mode="cumulative")
    rig.session.go_up()
    moves(rig, DEV_A, 100, 90)  # the first total is a baseline only
    assert counts(ctx) == (0, 0, 0)
    await rig.clock.advance(1)
    moves(rig, DEV_A, 104, 91)
    assert counts(ctx) == (3, 4, 1)
    await rig.clock.advance(1)
    moves(rig, DEV_A, 2, 0)  # the device's counter was reset: its totals are new movements
    assert counts(ctx) == (5, 6, 1)


async def test_group_count_wins_over_local(rig: Rig) -> None:
    _, ctx = await rig.module(devices=[DEV_A], device_group=GROUP)
    rig.session.go_up()
    moves(rig, DEV_A, 3, 0)
    assert ctx.states["people_count"] == 3
    rig.send("occupantsCount", GROUP, 11)
    assert ctx.states["people_count"] == 11
    await rig.clock.advance(1)
    moves(rig, DEV_A, 1, 0)
    assert ctx.states["people_count"] == 11


async def test_manual_reset_through_the_command_mechanism(rig: Rig) -> None:
    driver, ctx = await rig.module(devices=[DEV_A])
    assert "reset_count" in HaltianDriver.commands
    rig.session.go_up()
    moves(rig, DEV_A, 5, 1)
    await rig.clock.advance(30)
    result = await driver.execute("reset_count", {})
    assert result["people_count"] == 0
    assert counts(ctx) == (0, 0, 0)
    assert ctx.states["last_reset"] == {"at": iso(rig.clock.time()), "reason": "manual"}


async def test_threshold_reset(rig: Rig) -> None:
    _, ctx = await rig.module(devices=[DEV_A], reset_below=0)
    rig.session.go_up()
    moves(rig, DEV_A, 2, 0)
    await rig.clock.advance(1)
    moves(rig, DEV_A, 0, 2)
    assert counts(ctx) == (0, 2, 2)
    assert "last_reset" not in ctx.states
    await rig.clock.advance(1)
    moves(rig, DEV_A, 0, 1)  # in - out = -1 < 0: the drift is cleared
    assert counts(ctx) == (0, 0, 0)
    assert ctx.states["last_reset"] == {"at": iso(rig.clock.time()), "reason": "threshold"}
    await rig.clock.advance(1)
    moves(rig, DEV_A, 1, 0)
    assert counts(ctx) == (1, 1, 0)


async def test_timeout_reset(rig: Rig) -> None:
    _, ctx = await rig.module(devices=[DEV_A], reset_after_idle=600)
    rig.session.go_up()
    moves(rig, DEV_A, 4, 0)
    await rig.clock.advance(599)
    moves(rig, DEV_A, 1, 0)  # activity re-arms the timeout
    await rig.clock.advance(599)
    assert counts(ctx) == (5, 5, 0)
    rig.send("humidity", DEV_A, 40.0)  # not a movement
    await rig.clock.advance(1)
    assert counts(ctx) == (0, 0, 0)
    assert ctx.states["last_reset"] == {"at": iso(rig.clock.time()), "reason": "timeout"}
    await rig.clock.advance(3600)
    assert len(resets(ctx)) == 1  # nothing left to reset: no further timeouts


async def test_scheduled_reset_across_spring_forward(helsinki: Rig) -> None:
    rig = helsinki
    _, ctx = await rig.module(devices=[DEV_A], reset_at="00:00")
    rig.session.go_up()
    moves(rig, DEV_A, 3, 0)
    await rig.clock.advance(local(2026, 3, 29, 0) - rig.clock.time() - 1)
    assert counts(ctx) == (3, 3, 0)
    await rig.clock.advance(1)
    assert counts(ctx) == (0, 0, 0)
    assert ctx.states["last_reset"] == {"at": "2026-03-28T22:00:00.000Z", "reason": "scheduled"}
    moves(rig, DEV_A, 2, 0)
    # 2026-03-29 has 23 hours in Helsinki: the next local midnight is 23 h later, at 21:00 UTC.
    await rig.clock.advance(23 * 3600 - 1)
    assert counts(ctx) == (2, 2, 0)
    await rig.clock.advance(1)
    assert ctx.states["last_reset"] == {"at": "2026-03-29T21:00:00.000Z", "reason": "scheduled"}
    assert counts(ctx) == (0, 0, 0)


async def test_scheduled_reset_in_the_spring_gap_runs_once_after_the_jump(helsinki: Rig) -> None:
    rig = helsinki
    _, ctx = await rig.module(devices=[DEV_A], reset_at="03:30")  # 03:30 does not exist on 2026-03-29
    rig.session.go_up()
    await rig.clock.advance(local(2026, 3, 30, 12) - rig.clock.time())
    assert [r["at"] for r in resets(ctx)] == ["2026-03-29T01:30:00.000Z", "2026-03-30T00:30:00.000Z"]


async def test_scheduled_reset_on_fall_back_day_runs_once(helsinki: Rig) -> None:
    rig = helsinki
    rig.clock.set_time(local(2026, 10, 24, 12))
    _, ctx = await rig.module(devices=[DEV_A], reset_at="03:30")  # 03:30 happens twice on 2026-10-25
    rig.session.go_up()
    await rig.clock.advance(local(2026, 10, 26, 12) - rig.clock.time())
    assert [r["at"] for r in resets(ctx)] == ["2026-10-25T00:30:00.000Z", "2026-10-26T01:30:00.000Z"]


async def test_count_and_last_reset_survive_a_restart(rig: Rig) -> None:
    driver, ctx = await rig.module("mod-door", devices=[DEV_A], reset_below=-5)
    rig.session.go_up()
    moves(rig, DEV_A, 4, 0)
    await driver.execute("reset_count", {})
    last = ctx.states["last_reset"]
    await rig.clock.advance(10)
    moves(rig, DEV_A, 6, 2)
    await rig.unload(driver, ctx)
    assert rig.session.stopped  # the last module let go of the shared session

    _, again = await rig.module("mod-door", devices=[DEV_A], reset_below=-5)
    assert counts(again) == (4, 6, 2)
    assert again.states["last_reset"] == last
    rig.transports.sessions[-1].go_up()
    await rig.clock.advance(1)
    rig.transports.sessions[-1].deliver(
        f"haltian-iot/events/{driver.settings.integration_id}/{driver.settings.api_key_id}/measurements/"
        f"directionalMovement/{DEV_A}", b'{"value": {"in": 1, "out": 0}}')
    assert counts(again) == (5, 7, 2)


async def test_count_survives_a_crash_without_unload(rig: Rig) -> None:
    _, ctx = await rig.module("mod-door", devices=[DEV_A])
    rig.session.go_up()
    moves(rig, DEV_A, 3, 1)
    await ctx.teardown()  # no on_unload: the runtime crashed
    rig.contexts.remove(ctx)
    _, again = await rig.module("mod-door", devices=[DEV_A])
    assert counts(again) == (2, 3, 1)


async def test_a_scheduled_reset_missed_while_stopped_is_applied_at_load(helsinki: Rig) -> None:
    rig = helsinki
    driver, ctx = await rig.module("mod-door", devices=[DEV_A], reset_at="00:00")
    rig.session.go_up()
    moves(rig, DEV_A, 3, 0)
    await rig.unload(driver, ctx)
    rig.clock.set_time(local(2026, 3, 29, 2))
    _, again = await rig.module("mod-door", devices=[DEV_A], reset_at="00:00")
    assert counts(again) == (0, 0, 0)
    assert again.states["last_reset"] == {"at": iso(rig.clock.time()), "reason": "scheduled"}


async def test_idle_timeout_runs_across_a_restart(rig: Rig) -> None:
    driver, ctx = await rig.module("mod-door", devices=[DEV_A], reset_after_idle=600)
    rig.session.go_up()
    moves(rig, DEV_A, 3, 0)
    await rig.clock.advance(300)
    await rig.unload(driver, ctx)
    _, again = await rig.module("mod-door", devices=[DEV_A], reset_after_idle=600)
    assert again.states["people_count"] == 3
    await rig.clock.advance(300)
    assert again.states["people_count"] == 0
    assert again.states["last_reset"]["reason"] == "timeout"


def test_the_first_save_makes_the_state_directory(tmp_path: Path) -> None:
    home = FakeModuleContext("mod-door", state_dir=tmp_path / "state" / "mod-door")
    path = home.state_dir / STATE_FILE
    counter = LocalCounter(home)
    assert counter.load() is False  # nothing saved yet, and nothing made by looking
    assert not path.parent.exists()
    counter.movement(DEV_A, DirectionalValue(in_=2, out=0), 100.0)
    counter.save(100.0)
    assert not counter.save_failed
    again = LocalCounter(home)
    assert again.load() is True
    assert again.totals == (2, 0)


@pytest.mark.parametrize("damage", ["corrupt", "a directory"])
def test_a_damaged_state_file_is_reported_and_the_count_starts_from_zero(
        tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    home = FakeModuleContext("mod-door", state_dir=tmp_path / "mod-door")
    path = home.state_dir / STATE_FILE
    home.state_dir.mkdir()
    if damage == "corrupt":
        path.write_bytes(b'{"in_": 3, "out": ')
    else:
        path.mkdir()
    counter = LocalCounter(home)
    with caplog.at_level(logging.WARNING):
        assert counter.load() is False
    assert counter.totals == (0, 0) and not counter.active
    assert STATE_FILE in caplog.text
