"""The driver registry: installed drivers are imported only when a site uses them, broken ones are skipped."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from runtime import registry as registry_module
from runtime.errors import DriverNotFound
from runtime.registry import GROUP, Registry

ROOT = Path(__file__).resolve().parents[2]


def installed(monkeypatch: pytest.MonkeyPatch, **drivers: str) -> None:
    """Pretend these entry points (name = "module:Class") are the installed drivers."""
    points = [EntryPoint(name=name, value=value, group=GROUP) for name, value in drivers.items()]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: points if group == GROUP else [])


def test_a_broken_driver_is_logged_and_reported_missing(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    installed(monkeypatch, demo="drivers.demo:DemoDriver", broken="drivers.no_such_driver:Driver")
    found = Registry.from_entry_points()
    assert "demo" in found
    assert "broken" not in found
    with pytest.raises(DriverNotFound):
        found.get("broken")
    assert "driver broken (drivers.no_such_driver:Driver) cannot be loaded" in caplog.text
    assert found.keys() == ["demo"]


def test_a_driver_is_imported_when_first_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    installed(monkeypatch, demo="drivers.demo:DemoDriver")
    found = Registry.from_entry_points()
    assert found.get("demo").key == "demo"
    assert found.get("demo") is found.get("demo")


SITE = {
    "org": {"id": "org-1", "name": "Org"},
    "brokers": [{"name": "local", "url": "mqtt://127.0.0.1:1883"}],
    "http": {"enabled": False},
    "zones": [{"id": "bld-1", "name": "HQ", "tags": ["building"]}],
    "drivers": [{"id": "drv-h", "name": "Haltian", "driver": "haltian",
                 "settings": {"url": "mqtt://127.0.0.1:1883", "integration_id": "i", "api_key_id": "k"}}],
    "modules": [{"id": "mod-1", "driver": "drv-h", "settings": {"devices": ["dev-1"]}}],
    "systems": [{"id": "sys-1", "name": "Room", "zones": ["bld-1"], "modules": ["mod-1"]}],
}

PROBE = """
import sys
from runtime.app import Runtime
from runtime.plan import build_plan
from runtime.registry import Registry
from runtime.settings import load_settings
registry = Registry.from_entry_points()
plan = build_plan(load_settings(sys.argv[1]), registry)
registry.get(plan.modules["mod-1"].driver_key)
print(sorted(m for m in ("aiohttp", "jsonschema", "yaml", "drivers.empathic_building") if m in sys.modules))
"""


def test_a_json_site_without_http_imports_neither_aiohttp_nor_yaml_nor_jsonschema(tmp_path: Path) -> None:
    # About 15 MB of memory a Haltian-only site without the HTTP endpoint does not need.
    path = tmp_path / "site.json"
    path.write_text(json.dumps(SITE))
    done = subprocess.run([sys.executable, "-c", PROBE, str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"
