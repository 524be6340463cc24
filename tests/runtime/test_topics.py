"""Topic plans: hierarchy levels, `_` for missing levels, indexes, several systems; wildcards on a real broker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from runtime.plan import build_plan
from runtime.settings import load_document
from tests.support.broker import Mosquitto
from tests.support.site import registry, running, site, write_settings
from tests.support.subscriber import Subscriber

URL = "mqtt://127.0.0.1:1883"


def prefixes(doc: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    plan = build_plan(load_document(doc, {}), registry())
    return {mid: m.prefixes for mid, m in plan.modules.items()}


def test_full_hierarchy() -> None:
    assert prefixes(site(URL))["mod-a"] == ("placeos/org-t/state/bld-1/lvl-2/area-201/sys-201/drv-p/Sensor/1",)


def test_each_missing_level_is_an_underscore() -> None:
    doc = site(URL)
    doc["zones"] += [
        {"id": "bld-2", "name": "B2", "tags": ["building"]},
        {"id": "area-x", "name": "Loose area", "tags": ["area"], "parent": "bld-2"},
    ]
    doc["modules"] += [{"id": f"mod-{n}", "driver": "drv-p"} for n in ("lvl", "bld", "none", "area")]
    doc["systems"] += [
        {"id": "sys-lvl", "name": "Level", "zones": ["lvl-2"], "modules": ["mod-lvl"]},
        {"id": "sys-bld", "name": "Building", "zones": ["bld-1"], "modules": ["mod-bld"]},
        {"id": "sys-none", "name": "Nowhere", "modules": ["mod-none"]},
        {"id": "sys-area", "name": "Area without level", "zones": ["area-x"], "modules": ["mod-area"]},
    ]
    p = prefixes(doc)
    assert p["mod-lvl"] == ("placeos/org-t/state/bld-1/lvl-2/_/sys-lvl/drv-p/Probe/1",)
    assert p["mod-bld"] == ("placeos/org-t/state/bld-1/_/_/sys-bld/drv-p/Probe/1",)
    assert p["mod-none"] == ("placeos/org-t/state/_/_/_/sys-none/drv-p/Probe/1",)
    assert p["mod-area"] == ("placeos/org-t/state/bld-2/_/area-x/sys-area/drv-p/Probe/1",)


def test_custom_hierarchy_with_region() -> None:
    doc = site(URL, hierarchy=["region", "building", "level", "area"])
    doc["zones"].insert(0, {"id": "reg-eu", "name": "Europe", "tags": ["region"], "parent": "org-t"})
    doc["zones"][1]["parent"] = "reg-eu"
    assert prefixes(doc)["mod-a"] == ("placeos/org-t/state/reg-eu/bld-1/lvl-2/area-201/sys-201/drv-p/Sensor/1",)
    doc["zones"][1]["parent"] = "org-t"
    assert prefixes(doc)["mod-a"] == ("placeos/org-t/state/_/bld-1/lvl-2/area-201/sys-201/drv-p/Sensor/1",)


def test_duplicate_names_get_indexes_in_module_order() -> None:
    doc = site(URL)
    doc["modules"] += [{"id": "mod-b", "driver": "drv-p", "name": "Sensor"}, {"id": "mod-c", "driver": "drv-p"},
                       {"id": "mod-d", "driver": "drv-p", "name": "Sensor"}]
    doc["systems"][0]["modules"] = ["mod-b", "mod-c", "mod-a", "mod-d"]
    p = prefixes(doc)
    base = "placeos/org-t/state/bld-1/lvl-2/area-201/sys-201/drv-p"
    assert p["mod-b"] == (f"{base}/Sensor/1",)
    assert p["mod-c"] == (f"{base}/Probe/1",)
    assert p["mod-a"] == (f"{base}/Sensor/2",)
    assert p["mod-d"] == (f"{base}/Sensor/3",)


def test_module_in_two_systems_publishes_under_both() -> None:
    doc = site(URL)
    doc["modules"].append({"id": "mod-b", "driver": "drv-p", "name": "Sensor"})
    doc["systems"].append({"id": "sys-l2", "name": "Level 2", "zones": ["lvl-2"], "modules": ["mod-b", "mod-a"]})
    assert prefixes(doc)["mod-a"] == ("placeos/org-t/state/bld-1/lvl-2/area-201/sys-201/drv-p/Sensor/1",
                                      "placeos/org-t/state/bld-1/lvl-2/_/sys-l2/drv-p/Sensor/2")


def test_zone_settings_layering_outermost_first() -> None:
    doc = site(URL)
    doc["drivers"][0]["settings"] = {"label": "driver", "a": 1}
    doc["org"]["settings"] = {"label": "org", "b": 1}
    doc["zones"][0]["settings"] = {"label": "building"}
    doc["zones"][2]["settings"] = {"label": "area", "capacity": 8}
    plan = build_plan(load_document(doc, {}), registry())
    assert plan.modules["mod-a"].settings == {"label": "area", "a": 1, "b": 1, "capacity": 8}
    doc["systems"][0]["settings"] = {"label": "system"}
    doc["modules"][0]["settings"] = {"label": "module"}
    plan = build_plan(load_document(doc, {}), registry())
    assert plan.modules["mod-a"].settings["label"] == "module"
    assert plan.modules["mod-a"].timezone == "Europe/Helsinki"


async def test_seed_wildcards_select_exactly_what_they_say(broker: Mosquitto, tmp_path: Path) -> None:
    doc = site(broker.url)
    doc["drivers"].append({"id": "dep-123", "name": "VC", "driver": "probe"})
    doc["modules"] += [{"id": "mod-disp", "driver": "drv-p", "name": "Display"},
                       {"id": "mod-vc", "driver": "dep-123", "name": "VidConf"}]
    doc["systems"][0]["modules"] += ["mod-disp", "mod-vc"]
    doc["zones"].append({"id": "bld-9", "name": "Other", "tags": ["building"]})
    doc["systems"].append({"id": "sys-9", "name": "Other", "zones": ["bld-9"], "modules": ["mod-disp"]})
    path = write_settings(tmp_path / "site.yaml", doc)
    subs = {
        "building": Subscriber(broker.port, "placeos/org-t/state/bld-1/#"),
        "connected": Subscriber(broker.port, "placeos/org-t/state/+/+/+/+/+/+/+/connected"),
        "power": Subscriber(broker.port, "placeos/org-t/state/+/+/+/+/+/Display/+/power"),
        "call": Subscriber(broker.port, "placeos/org-t/state/+/+/+/+/dep-123/+/+/call_status"),
    }
    try:
        async with running(path) as rt:
            hosts = rt.manager.hosts  # type: ignore[union-attr]
            hosts["mod-a"].set_state("power", True)
            hosts["mod-disp"].set_state("power", True)
            hosts["mod-disp"].set_state("call_status", "idle")
            hosts["mod-vc"].set_state("call_status", "in call")
            hosts["mod-vc"].set_state("power", False)
            await rt.publisher.outputs[0].flush(5)  # type: ignore[union-attr]
            for sub in subs.values():
                sub.wait_quiet(0.3)
        # Live messages only: retained ones left by earlier tests on the shared broker are not this run's.
        got = {n: {m.topic for m in s.messages if m.payload and not m.retain} for n, s in subs.items()}
    finally:
        for sub in subs.values():
            sub.close()
    room = "placeos/org-t/state/bld-1/lvl-2/area-201/sys-201"
    other = "placeos/org-t/state/bld-9/_/_/sys-9"
    assert got["power"] == {f"{room}/drv-p/Display/1/power", f"{other}/drv-p/Display/1/power"}
    assert got["call"] == {f"{room}/dep-123/VidConf/1/call_status"}
    assert got["connected"] == {f"{room}/drv-p/Sensor/1/connected", f"{room}/drv-p/Display/1/connected",
                                f"{room}/dep-123/VidConf/1/connected", f"{other}/drv-p/Display/1/connected"}
    assert all(t.startswith("placeos/org-t/state/bld-1/") for t in got["building"])
    assert f"{room}/dep-123/VidConf/1/power" in got["building"]
    assert not [t for t in got["building"] if "bld-9" in t]
    await asyncio.sleep(0)
