"""Smaller runtime promises: the embedded broker, following another module's state, check warnings."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

import msgspec

from runtime.app import Runtime
from runtime.clock import FakeClock
from runtime.errors import SettingsError
from runtime.manager import START_BATCH, Status
from runtime.plan import build_plan
from runtime.settings import load_document
from tests.support.broker import Mosquitto, free_port
from tests.support.site import FlakyDriver, ProbeSettings, registry, running, site, write_settings
from tests.support.subscriber import Subscriber

ROOM = "placeos/org-t/state/bld-1/lvl-2/area-201/sys-201"


async def test_embedded_broker_serves_the_site(tmp_path: Path) -> None:
    port = free_port()
    path = write_settings(tmp_path / "site.yaml", site(f"embedded://127.0.0.1:{port}"))
    async with running(path) as rt:
        rt.manager.hosts["mod-a"].set_state("temperature", 21)  # type: ignore[union-attr]
        # The broker runs on this event loop: the blocking subscriber must wait in another thread.
        sub = await asyncio.to_thread(Subscriber, port, f"{ROOM}/#", "placeos/org-t/metadata/sys-201")
        try:
            assert await asyncio.to_thread(sub.wait_for, lambda s: f"{ROOM}/drv-p/Sensor/1/temperature" in s.latest
                                           and "placeos/org-t/metadata/sys-201" in s.latest)
        finally:
            await asyncio.to_thread(sub.close)


async def test_a_module_follows_another_modules_state(broker: Mosquitto, tmp_path: Path) -> None:
    doc = site(broker.url)
    doc["modules"].append({"id": "mod-b", "driver": "drv-p", "name": "Bridge"})
    doc["systems"][0]["modules"].append("mod-b")
    async with running(write_settings(tmp_path / "site.yaml", doc)) as rt:
        hosts = rt.manager.hosts  # type: ignore[union-attr]
        hosts["mod-a"].set_state("temperature", 20)
        seen: list[tuple[str, Any]] = []
        watch = hosts["mod-b"].subscribe("Sensor_1", "temperature", lambda k, v: seen.append((k, v)))
        hosts["mod-a"].set_state("temperature", 21)
        hosts["mod-a"].set_state("temperature", 21)
        hosts["mod-a"].set_state("humidity", 50)
        watch.cancel()
        hosts["mod-a"].set_state("temperature", 22)
        assert seen == [("temperature", 20), ("temperature", 21)]
        try:
            hosts["mod-b"].subscribe("Missing_1", "x", lambda k, v: None)
        except LookupError as exc:
            assert "Missing_1" in str(exc)
        else:
            raise AssertionError("an unknown module must raise LookupError")


def test_check_warns_about_unused_module_keys_and_homeless_modules() -> None:
    doc = site("mqtt://127.0.0.1:1883")
    doc["modules"][0]["settings"] = {"label": "x", "colour": "red"}
    doc["modules"].append({"id": "mod-z", "driver": "drv-p"})
    plan = build_plan(load_document(doc, {}), registry())
    assert "modules[0].settings.colour: no setting 'colour' in driver 'probe'; ignored" in plan.warnings
    assert "modules[1]: module is in no system: it runs but publishes nothing" in plan.warnings


def test_a_module_gets_the_settings_its_plan_checked_when_they_cannot_change() -> None:
    doc = site("mqtt://127.0.0.1:1883")
    doc["modules"][0]["settings"] = {"label": "x"}
    module = build_plan(load_document(doc, {}), registry()).modules["mod-a"]

    class Frozen(msgspec.Struct, frozen=True):
        label: str = ""
        spare: int = 3

    checked = msgspec.convert(module.settings, Frozen, strict=False)
    plan = msgspec.structs.replace(module, checked=checked)
    assert plan.driver_settings(Frozen) is checked  # converted once, when the plan was checked
    mutable = module.driver_settings(ProbeSettings)
    assert mutable == ProbeSettings(label="x") and mutable is not module.checked  # a fresh one each time
    assert module.driver_settings(ProbeSettings) is not mutable
    assert module.driver_settings(Frozen) == Frozen(label="x")  # another type: converted now


async def test_module_state_directories_are_left_to_the_drivers(broker: Mosquitto, tmp_path: Path) -> None:
    # The runtime no longer makes a directory per module at load: 10,000 modules that never
    # write would mean 10,000 empty directories and seconds of start-up.
    state = tmp_path / "state"
    async with running(write_settings(tmp_path / "site.yaml", site(broker.url, state_dir=str(state)))) as rt:
        host = rt.manager.hosts["mod-a"]  # type: ignore[union-attr]
        assert host.state_dir == state / "mod-a"
        assert not host.state_dir.exists()
        assert host.read_state("count.json") is None  # and looking makes nothing either
        assert not host.state_dir.exists()
        host.state_dir.mkdir(parents=True)
        (host.state_dir / "count.json").write_bytes(b'{"in": 3}')
        assert host.read_state("count.json") == b'{"in": 3}'
        (host.state_dir / "sub").mkdir()
        try:
            host.read_state("sub")
        except OSError:
            pass  # not a file: the driver hears why
        else:
            raise AssertionError("reading a directory must raise OSError")


async def test_run_pauses_the_collector_while_loading_then_freezes_what_lives_long(
        broker: Mosquitto, tmp_path: Path) -> None:
    path = write_settings(tmp_path / "site.yaml", site(broker.url))
    rt = Runtime(path, registry=registry(), backoff_initial=0.05)
    assert gc.isenabled() and gc.get_freeze_count() == 0
    task = asyncio.create_task(rt.run())
    try:
        for _ in range(500):
            if rt.gc is not None and rt.gc.active:
                break
            await asyncio.sleep(0.01)
        policy = rt.gc
        assert policy is not None and policy.active
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0
        gc.unfreeze()
        gc.collect()  # whatever earlier tests left behind
        gc.collect()  # a full collection that finds nothing: its survivors get frozen
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert policy.freezes >= 1
        assert gc.get_freeze_count() > 0
        ok, _ = await rt.reload()
        assert ok
        assert policy.reclaims == 1  # what the reload replaced was collected, frozen or not
        assert gc.get_freeze_count() > 0
    finally:
        rt.request_stop()
        assert await asyncio.wait_for(task, 30) == 0
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0  # nothing stays frozen after the run
    assert rt.gc is not None and not rt.gc.active


def test_a_failed_start_leaves_the_collector_on(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("org: [not, a, mapping]\n")
    rt = Runtime(path, registry=registry())
    try:
        asyncio.run(rt.run())
    except SettingsError:
        pass
    else:
        raise AssertionError("an invalid settings file must fail the start")
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


async def test_a_load_that_hangs_times_out_on_the_runtime_clock_and_is_retried(broker: Mosquitto,
                                                                             tmp_path: Path) -> None:
    FlakyDriver.attempts.pop("mod-h", None)
    doc = site(broker.url, drivers=[{"id": "drv-h", "name": "Hanging driver", "driver": "flaky",
                                     "settings": {"failures": 1, "hang": True}}],
               modules=[{"id": "mod-h", "driver": "drv-h"}],
               systems=[{"id": "sys-1", "name": "Room", "modules": ["mod-h"]}])
    clock = FakeClock()
    rt = Runtime(write_settings(tmp_path / "site.yaml", doc), registry=registry(), clock=clock)
    await rt.start()
    try:
        assert rt.manager is not None
        host = rt.manager.hosts["mod-h"]
        statuses: list[Status] = []
        await clock.advance(rt.manager.load_timeout - 1)
        statuses.append(host.status)
        await clock.advance(1.5)  # the load's bound has passed: a failure, retried after a second's backoff
        statuses.append(host.status)
        assert host.failures == 1
        assert await rt.manager.wait_loaded(5)  # its first attempt is over
        await clock.advance(1)
        statuses.append(host.status)
        assert statuses == [Status.LOADING, Status.FAILED, Status.RUNNING]
        assert host.get_state("ok") is True
        assert FlakyDriver.attempts["mod-h"] == 2
        assert rt.metrics.registry.get_sample_value("placeos_runtime_module_restarts_total",
                                                    {"driver": "drv-h"}) == 1
    finally:
        await rt.stop()


def many_probes(broker_url: str, count: int) -> dict[str, Any]:
    """A site of `count` probe modules, one system each."""
    return site(broker_url, modules=[{"id": f"mod-{i}", "driver": "drv-p"} for i in range(count)],
                systems=[{"id": f"sys-{i}", "name": f"Room {i}", "modules": [f"mod-{i}"]} for i in range(count)])


async def test_a_large_site_starts_in_batches_the_event_loop_runs_between(broker: Mosquitto,
                                                                         tmp_path: Path) -> None:
    count = 2 * START_BATCH + 1
    rt = Runtime(write_settings(tmp_path / "site.json", many_probes(broker.url, count)), registry=registry())
    seen: list[int] = []
    # Runs at the first turn of the loop that start() gives away.
    asyncio.get_running_loop().call_soon(lambda: seen.append(len(rt.manager.hosts) if rt.manager else -1))
    await rt.start()
    try:
        assert rt.manager is not None
        assert seen == [START_BATCH]  # the first batch was started, the rest waited for the next turns
        assert len(rt.manager.hosts) == count
        assert await rt.manager.wait_loaded(10)
        assert all(host.status is Status.RUNNING for host in rt.manager.hosts.values())
    finally:
        await rt.stop()


async def test_plans_are_applied_one_at_a_time(broker: Mosquitto, tmp_path: Path) -> None:
    count = 2 * START_BATCH + 1
    rt = Runtime(write_settings(tmp_path / "site.json", site(broker.url)), registry=registry())
    await rt.start()
    try:
        assert rt.manager is not None
        large = build_plan(load_document(many_probes(broker.url, count), {}), registry())
        small = build_plan(load_document(many_probes(broker.url, 1), {}), registry())
        # The second plan must not run while the first one is still starting its batches.
        await asyncio.gather(rt.manager.apply(large), rt.manager.apply(small))
        assert set(rt.manager.hosts) == {"mod-0"}
    finally:
        await rt.stop()
