"""Hot reload: each kind of change, verified by a real subscriber; untouched modules keep running."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from runtime.app import Runtime
from tests.support.broker import Mosquitto
from tests.support.site import ProbeDriver, running, site, write_settings
from tests.support.subscriber import retained

ORG = "placeos/org-t"
ROOM = f"{ORG}/state/bld-1/lvl-2/area-201/sys-201"


def base_site(url: str) -> dict[str, Any]:
    doc = site(url)
    doc["modules"].append({"id": "mod-b", "driver": "drv-p", "name": "Display"})
    doc["modules"].append({"id": "mod-c", "driver": "drv-p", "name": "Display"})
    doc["systems"][0]["modules"] += ["mod-b", "mod-c"]
    doc["zones"].append({"id": "area-202", "name": "Room 2.02", "tags": ["area"], "parent": "lvl-2"})
    doc["systems"].append({"id": "sys-202", "name": "Room 2.02", "zones": ["area-202"], "modules": ["mod-b"]})
    return doc


async def settle(rt: Runtime) -> dict[str, bytes]:
    assert rt.publisher is not None
    for out in rt.publisher.outputs:
        assert await out.flush(10)
    return retained(rt.publisher.outputs[0].session.endpoint.port, f"{ORG}/#")


async def reload_with(rt: Runtime, path: Path, doc: dict[str, Any]) -> None:
    write_settings(path, doc)
    ok, detail = await rt.reload()
    assert ok, detail


def states(found: dict[str, bytes]) -> set[str]:
    return {t for t in found if t.startswith(f"{ORG}/state/")}


def renamed(d: dict[str, Any]) -> None:
    d["modules"][0]["name"] = "Climate"


def reindexed(d: dict[str, Any]) -> None:
    d["systems"][0]["modules"] = ["mod-a", "mod-c", "mod-b"]


def removed_from_system(d: dict[str, Any]) -> None:
    d["systems"][1]["modules"] = []


def system_deleted(d: dict[str, Any]) -> None:
    del d["systems"][1]


def zone_retagged(d: dict[str, Any]) -> None:
    d["zones"][3]["tags"] = ["wing"]


def zone_reparented(d: dict[str, Any]) -> None:
    d["zones"].append({"id": "lvl-3", "name": "Level 3", "tags": ["level"], "parent": "bld-1"})
    d["zones"][3]["parent"] = "lvl-3"


def driver_deleted(d: dict[str, Any]) -> None:
    d["drivers"].append({"id": "drv-q", "name": "Other", "driver": "probe"})
    for m in d["modules"]:
        m["driver"] = "drv-q"
    d["drivers"] = [x for x in d["drivers"] if x["id"] != "drv-p"]


CASES: list[tuple[Callable[[dict[str, Any]], None], set[str], set[str]]] = [
    (renamed, {f"{ROOM}/drv-p/Sensor/1/temperature"}, {f"{ROOM}/drv-p/Climate/1/temperature"}),
    (reindexed, {f"{ROOM}/drv-p/Display/1/power"}, {f"{ROOM}/drv-p/Display/2/power", f"{ROOM}/drv-p/Display/1/mode"}),
    (removed_from_system, {f"{ORG}/state/bld-1/lvl-2/area-202/sys-202/drv-p/Display/1/power"},
     {f"{ROOM}/drv-p/Display/1/power"}),
    (system_deleted, {f"{ORG}/state/bld-1/lvl-2/area-202/sys-202/drv-p/Display/1/power", f"{ORG}/metadata/sys-202"},
     {f"{ROOM}/drv-p/Display/1/power"}),
    (zone_retagged, {f"{ORG}/state/bld-1/lvl-2/area-202/sys-202/drv-p/Display/1/power"},
     {f"{ORG}/state/bld-1/lvl-2/_/sys-202/drv-p/Display/1/power"}),
    (zone_reparented, {f"{ORG}/state/bld-1/lvl-2/area-202/sys-202/drv-p/Display/1/power"},
     {f"{ORG}/state/bld-1/lvl-3/area-202/sys-202/drv-p/Display/1/power", f"{ORG}/metadata/lvl-3"}),
    (driver_deleted, {f"{ROOM}/drv-p/Sensor/1/temperature", f"{ORG}/metadata/drv-p"},
     {f"{ROOM}/drv-q/Sensor/1/temperature", f"{ORG}/metadata/drv-q"}),
]


@pytest.mark.parametrize(("change", "gone", "present"), CASES, ids=[c[0].__name__ for c in CASES])
async def test_topics_move_on_reload(broker: Mosquitto, tmp_path: Path, change: Callable[[dict[str, Any]], None],
                                     gone: set[str], present: set[str]) -> None:
    doc = base_site(broker.url)
    path = write_settings(tmp_path / "site.yaml", doc)
    async with running(path) as rt:
        hosts = rt.manager.hosts  # type: ignore[union-attr]
        hosts["mod-a"].set_state("temperature", 20)
        hosts["mod-b"].set_state("power", True)
        hosts["mod-c"].set_state("mode", "hdmi")
        before = await settle(rt)
        assert gone <= set(before)
        loads = dict(ProbeDriver.loads)
        edited = copy.deepcopy(doc)
        change(edited)
        await reload_with(rt, path, edited)
        after = await settle(rt)
        assert not gone & set(after), gone & set(after)
        assert present <= set(after), present - set(after)
        if change is not driver_deleted:
            assert {m: ProbeDriver.loads[m] for m in loads} == loads  # nobody restarted
        published = {t: msgspec.json.decode(p) for t, p in after.items() if t.endswith("/temperature")}
        assert all(v["value"] == "20" for v in published.values())


async def test_settings_change_calls_on_update_and_keeps_state(broker: Mosquitto, tmp_path: Path) -> None:
    doc = base_site(broker.url)
    path = write_settings(tmp_path / "site.yaml", doc)
    async with running(path) as rt:
        hosts = rt.manager.hosts  # type: ignore[union-attr]
        hosts["mod-a"].set_state("temperature", 20)
        loads, updates = dict(ProbeDriver.loads), dict(ProbeDriver.updates)
        doc["modules"][0]["settings"] = {"label": "changed"}
        doc["modules"].append({"id": "mod-new", "driver": "drv-p", "name": "New"})
        doc["systems"][0]["modules"].append("mod-new")
        doc["modules"] = [m for m in doc["modules"] if m["id"] != "mod-c"]
        doc["systems"][0]["modules"].remove("mod-c")
        await reload_with(rt, path, doc)
        await rt.manager.wait_loaded(10)  # type: ignore[union-attr]
        assert ProbeDriver.updates["mod-a"] == updates["mod-a"] + 1
        assert ProbeDriver.loads["mod-a"] == loads["mod-a"]
        assert ProbeDriver.updates["mod-b"] == updates["mod-b"]
        assert ProbeDriver.loads.get("mod-new") == 1
        assert "mod-c" not in hosts
        found = await settle(rt)
        assert f"{ROOM}/drv-p/Sensor/1/temperature" in found
        assert f"{ROOM}/drv-p/New/1/connected" in found
        assert not [t for t in found if "/Display/2/" in t]


async def test_invalid_reload_changes_nothing(broker: Mosquitto, tmp_path: Path) -> None:
    doc = base_site(broker.url)
    path = write_settings(tmp_path / "site.yaml", doc)
    async with running(path) as rt:
        rt.manager.hosts["mod-a"].set_state("temperature", 20)  # type: ignore[union-attr]
        before = await settle(rt)
        plan = rt.plan
        bad = copy.deepcopy(doc)
        bad["modules"][0]["name"] = "Renamed"
        bad["systems"][0]["modules"].append("mod-missing")
        write_settings(path, bad)
        ok, detail = await rt.reload()
        assert not ok and detail["errors"] == ["systems[0].modules[3]: unknown module 'mod-missing'"]
        assert rt.plan is plan
        assert await settle(rt) == before
        text = (tmp_path / "site.yaml").read_text()
        assert "mod-missing" in text


async def test_privacy_rules_changed_on_reload_republish_retained_topics(broker: Mosquitto, tmp_path: Path) -> None:
    doc = base_site(broker.url)
    path = write_settings(tmp_path / "site.yaml", doc)
    async with running(path) as rt:
        host = rt.manager.hosts["mod-a"]  # type: ignore[union-attr]
        host.set_state("organizer", "jane@corp.example")
        host.set_state("jane@corp.example", 1)
        found = await settle(rt)
        assert f"{ROOM}/drv-p/Sensor/1/jane@corp.example" in found
        doc["privacy"] = {"rules": [{"name": "emails", "match": "email", "action": "mask"}]}
        doc["brokers"][0]["privacy"] = ["emails"]
        await reload_with(rt, path, doc)
        found = await settle(rt)
    assert b"jane@corp.example" not in b"".join(t.encode() + p for t, p in found.items())
    assert msgspec.json.decode(found[f"{ROOM}/drv-p/Sensor/1/organizer"])["value"] == '"j***@c***.example"'
    assert f"{ROOM}/drv-p/Sensor/1/j***@c***.example" in found


async def test_stop_during_a_burst_loses_nothing_accepted(broker: Mosquitto, tmp_path: Path) -> None:
    doc = base_site(broker.url)
    doc["brokers"][0]["max_inflight"] = 20
    path = write_settings(tmp_path / "site.yaml", doc)
    rt = Runtime(path, registry=__import__("tests.support.site", fromlist=["registry"]).registry())
    await rt.start()
    assert rt.publisher is not None and rt.manager is not None
    assert await rt.publisher.wait_connected(10)
    await rt.manager.wait_loaded(10)
    host = rt.manager.hosts["mod-a"]
    for i in range(3000):
        host.set_state(f"k{i % 300}", i)
        if i % 500 == 0:
            await asyncio.sleep(0)
    expected = {k: e.raw for k, e in host.states.items()}
    await rt.stop()  # what SIGTERM does
    found = retained(broker.port, f"{ROOM}/drv-p/Sensor/1/#")
    got = {t.rsplit("/", 1)[1]: msgspec.json.decode(p)["value"].encode() for t, p in found.items()}
    assert {k: got.get(k) for k in expected} == expected
