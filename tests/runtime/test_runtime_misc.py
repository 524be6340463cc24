"""Smaller runtime promises: the embedded broker, following another module's state, check warnings."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from runtime.plan import build_plan
from runtime.settings import load_document
from tests.support.broker import Mosquitto, free_port
from tests.support.site import registry, running, site, write_settings
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
