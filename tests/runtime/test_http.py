"""The HTTP surface with a real client: metrics, health, readiness, the API and commands."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from runtime.app import Runtime
from tests.support.broker import Mosquitto
from tests.support.site import running, site, write_settings

KEY = {"X-API-Key": "test-key"}


def base(rt: Runtime) -> str:
    assert rt.http is not None
    return f"http://127.0.0.1:{rt.http.port}"


async def get(rt: Runtime, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(base(rt) + path, headers=headers) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


async def post(rt: Runtime, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(base(rt) + path, json=body, headers=headers) as resp:
        return resp.status, await resp.json()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def with_demo(url: str) -> dict[str, Any]:
    doc = site(url)
    doc["drivers"].append({"id": "drv-demo", "name": "Demo", "driver": "demo", "settings": {"interval": 0.05}})
    doc["modules"].append({"id": "mod-demo", "driver": "drv-demo",
                           "settings": {"seed": 1, "api_key_token": "do-not-show", "password": "hidden"}})
    doc["systems"][0]["modules"].append("mod-demo")
    return doc


async def test_metrics_move_as_the_demo_publishes(broker: Mosquitto, tmp_path: Path) -> None:
    path = write_settings(tmp_path / "site.yaml", with_demo(broker.url))
    async with running(path) as rt:
        status, first = await get(rt, "/metrics")
        assert status == 200
        await asyncio.sleep(0.3)
        _, second = await get(rt, "/metrics")
        a, b = samples(first), samples(second)
        key = ("placeos_runtime_state_changes_total", ())
        assert b[key] > a[key] > 0
        published = ("placeos_runtime_published_total", (("broker", "local"),))
        assert b[published] > a[published]
        assert b[("placeos_runtime_broker_connected", (("broker", "local"),))] == 1
        assert b[("placeos_runtime_modules", (("status", "running"),))] == 2
        assert b[("placeos_runtime_publish_latency_seconds_count", (("broker", "local"), ("stage", "acked")))] > 0
        assert any(name == "placeos_runtime_settings_info" for name, _labels in b)
        assert any(name.startswith("process_") for name, _labels in b)


async def test_readyz_follows_the_broker(broker: Mosquitto, tmp_path: Path) -> None:
    path = write_settings(tmp_path / "site.yaml", site(broker.url))
    async with running(path) as rt:
        assert await get(rt, "/healthz") == (200, {"status": "ok"})
        assert (await get(rt, "/readyz"))[0] == 200
        broker.stop()
        try:
            for _ in range(200):
                status, body = await get(rt, "/readyz")
                if status == 503:
                    break
                await asyncio.sleep(0.05)
            assert status == 503 and body["brokers_disconnected"] == ["local"]
            assert (await get(rt, "/healthz"))[0] == 200
        finally:
            broker.start()
        assert await rt.publisher.wait_connected(20)  # type: ignore[union-attr]
        assert (await get(rt, "/readyz"))[0] == 200


async def test_api_needs_a_key(broker: Mosquitto, tmp_path: Path) -> None:
    path = write_settings(tmp_path / "site.yaml", site(broker.url))
    async with running(path) as rt:
        assert (await get(rt, "/api/systems"))[0] == 401
        assert (await get(rt, "/api/systems", {"X-API-Key": "wrong"}))[0] == 401
        assert (await post(rt, "/api/modules/mod-a/exec/echo", {"text": "x"}))[0] == 401
        status, systems = await get(rt, "/api/systems", KEY)
        assert status == 200
        assert systems[0]["modules"][0]["prefix"] == "placeos/org-t/state/bld-1/lvl-2/area-201/sys-201/drv-p/Sensor/1"
        status, system = await get(rt, "/api/systems/sys-201", KEY)
        assert status == 200 and system["levels"] == {"building": "bld-1", "level": "lvl-2", "area": "area-201"}
        assert (await get(rt, "/api/systems/nope", KEY))[0] == 404


async def test_api_is_off_without_keys(broker: Mosquitto, tmp_path: Path) -> None:
    doc = site(broker.url)
    doc["http"] = {"port": 0}
    async with running(write_settings(tmp_path / "site.yaml", doc)) as rt:
        assert (await get(rt, "/api/systems", KEY))[0] == 404
        assert (await get(rt, "/metrics"))[0] == 200
        assert (await get(rt, "/readyz"))[0] == 200


async def test_module_detail_redacts_secrets_and_filters_state(broker: Mosquitto, tmp_path: Path) -> None:
    doc = with_demo(broker.url)
    doc["privacy"] = {"rules": [{"name": "emails", "match": "email", "action": "mask"}]}
    doc["http"]["privacy"] = ["emails"]
    async with running(write_settings(tmp_path / "site.yaml", doc)) as rt:
        rt.manager.hosts["mod-a"].set_state("host", "jane.doe@acme.com")  # type: ignore[union-attr]
        status, module = await get(rt, "/api/modules/mod-a", KEY)
        assert status == 200 and module["state"]["host"] == "j***@a***.com"
        assert module["connected"] is True and module["status"] == "running"
        _, demo = await get(rt, "/api/modules/mod-demo", KEY)
        assert demo["settings"]["api_key_token"] == "***" and demo["settings"]["password"] == "***"
        assert demo["settings"]["seed"] == 1
        assert (await get(rt, "/api/modules/nope", KEY))[0] == 404


async def test_commands(broker: Mosquitto, tmp_path: Path) -> None:
    async with running(write_settings(tmp_path / "site.yaml", with_demo(broker.url))) as rt:
        assert await post(rt, "/api/modules/mod-a/exec/echo", {"text": "ab", "times": 2}, KEY) == (
            200, {"result": {"text": "abab"}})
        status, body = await post(rt, "/api/modules/mod-a/exec/echo", {"text": 5}, KEY)
        assert status == 400 and "Expected `str`" in body["error"]
        status, body = await post(rt, "/api/modules/mod-a/exec/echo", {}, KEY)
        assert status == 400 and "missing required field `text`" in body["error"]
        assert (await post(rt, "/api/modules/mod-a/exec/nope", {}, KEY))[0] == 404
        assert (await post(rt, "/api/modules/nope/exec/echo", {}, KEY))[0] == 404
        assert (await post(rt, "/api/modules/mod-a/exec/slow", None, KEY))[0] == 504
        status, body = await post(rt, "/api/modules/mod-demo/exec/set_people", {"count": 3}, KEY)
        assert status == 200 and body == {"result": {"people_count": 3}}
        assert rt.manager.hosts["mod-demo"].get_state("people_count") == 3  # type: ignore[union-attr]
