"""Settings: schema, `${VAR}` expansion, and every kind of bad file reported with its path."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import SettingsError
from runtime.plan import build_plan
from runtime.settings import load_document, load_settings, schema_text
from tests.support.site import registry, site, write_settings

ROOT = Path(__file__).resolve().parents[2]
URL = "mqtt://127.0.0.1:1883"


def problems(doc: Any, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(SettingsError) as info:
        build_plan(load_document(doc, env or {}), registry())
    return info.value.problems


def test_schema_file_is_generated_from_the_structs() -> None:
    assert (ROOT / "settings" / "schema.json").read_text() == schema_text()


def test_demo_settings_are_valid() -> None:
    from runtime.registry import Registry

    plan = build_plan(load_settings(ROOT / "settings" / "demo.yaml"), Registry.from_entry_points())
    assert plan.modules


def test_env_expansion_converts_whole_values() -> None:
    doc = site("${BROKER_URL}")
    doc["brokers"][0].update(qos="${QOS}", tls_insecure="${INSECURE}", password="${PW}")
    doc["http"] = {"port": "${PORT}"}
    env = {"BROKER_URL": URL, "QOS": "0", "INSECURE": "true", "PW": "1234", "PORT": "9999"}
    s = load_document(doc, env)
    assert s.brokers[0].url == URL and s.brokers[0].qos == 0 and s.brokers[0].tls_insecure is True
    assert s.brokers[0].password == "1234"  # a string where the schema wants one
    assert s.http.port == 9999


def test_unset_variable_is_named() -> None:
    doc = site(URL)
    doc["brokers"][0]["password"] = "${MQTT_PASSWORD}"
    assert problems(doc) == ["brokers[0].password: environment variable MQTT_PASSWORD is not set"]


BAD: list[tuple[str, Any, str]] = []
Breakage = Callable[[dict[str, Any]], None]


def bad(name: str, expected: str) -> Callable[[Breakage], Breakage]:
    """Register the document `fn` breaks, with the problem it should be reported as."""
    def register(fn: Breakage) -> Breakage:
        doc = site(URL)
        fn(doc)
        BAD.append((name, doc, expected))
        return fn
    return register


@bad("missing brokers", "(root): 'brokers' is a required property")
def _1(d: dict[str, Any]) -> None:
    del d["brokers"]


@bad("unknown top-level key", "(root): unknown keys are not allowed ('colour' was unexpected)")
def _2(d: dict[str, Any]) -> None:
    d["colour"] = "blue"


@bad("wrong type", "brokers[0].qos: 2 is not one of [0, 1]")
def _3(d: dict[str, Any]) -> None:
    d["brokers"][0]["qos"] = 2


@bad("id with a slash", "zones[1].id: 'lvl/2' is not allowed here")
def _4(d: dict[str, Any]) -> None:
    d["zones"][1]["id"] = "lvl/2"
    d["zones"][2]["parent"] = "lvl/2"


@bad("id with a wildcard", "systems[0].id: 'sys+1' is not allowed here")
def _5(d: dict[str, Any]) -> None:
    d["systems"][0]["id"] = "sys+1"


@bad("empty id", "modules[0].id: '' is not allowed here")
def _6(d: dict[str, Any]) -> None:
    d["modules"][0]["id"] = ""
    d["systems"][0]["modules"] = [""]


@bad("duplicate id across kinds", "systems[0].id: duplicate id 'area-201' (also zones[2].id)")
def _7(d: dict[str, Any]) -> None:
    d["systems"][0]["id"] = "area-201"


@bad("unknown parent", "zones[2].parent: unknown parent zone 'lvl-9'")
def _8(d: dict[str, Any]) -> None:
    d["zones"][2]["parent"] = "lvl-9"


@bad("parent cycle", "zones[0].parent: zone parents form a cycle: bld-1 -> area-201 -> lvl-2 -> bld-1")
def _9(d: dict[str, Any]) -> None:
    d["zones"][0]["parent"] = "area-201"


@bad("two zones for one level", "systems[0].zones: zones 'lvl-2', 'lvl-3' both give the 'level' level")
def _10(d: dict[str, Any]) -> None:
    d["zones"].append({"id": "lvl-3", "name": "L3", "tags": ["level"], "parent": "bld-1"})
    d["systems"][0]["zones"] = ["area-201", "lvl-3"]


@bad("unknown module in a system", "systems[0].modules[1]: unknown module 'mod-zz'")
def _11(d: dict[str, Any]) -> None:
    d["systems"][0]["modules"].append("mod-zz")


@bad("unknown zone in a system", "systems[0].zones[0]: unknown zone 'area-9'")
def _12(d: dict[str, Any]) -> None:
    d["systems"][0]["zones"] = ["area-9"]


@bad("unknown driver record", "modules[0].driver: unknown driver record 'drv-x'")
def _13(d: dict[str, Any]) -> None:
    d["modules"][0]["driver"] = "drv-x"


@bad("unknown driver key", "drivers[0].driver: unknown driver 'nope' (installed: demo, flaky, probe)")
def _14(d: dict[str, Any]) -> None:
    d["drivers"][0]["driver"] = "nope"


@bad("bad time zone", "org.timezone: unknown IANA time zone 'Mars/Olympus'")
def _15(d: dict[str, Any]) -> None:
    d["org"]["timezone"] = "Mars/Olympus"


@bad("bad driver setting blamed on its layer", "zones[2].settings.label: Expected `str`, got `array`")
def _16(d: dict[str, Any]) -> None:
    d["zones"][2]["settings"] = {"label": [1]}


@bad("bad broker url", "brokers[0].url: 'http://x' is not allowed here")
def _17(d: dict[str, Any]) -> None:
    d["brokers"][0]["url"] = "http://x"


@bad("module listed twice", "systems[0].modules[1]: module 'mod-a' is listed twice")
def _18(d: dict[str, Any]) -> None:
    d["systems"][0]["modules"].append("mod-a")


@pytest.mark.parametrize(("doc", "expected"), [(d, e) for _n, d, e in BAD], ids=[n for n, _d, _e in BAD])
def test_bad_settings_are_reported_with_their_path(doc: Any, expected: str) -> None:
    found = problems(doc)
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize(("doc", "expected"), [(d, e) for _n, d, e in BAD], ids=[n for n, _d, _e in BAD])
def test_a_json_file_reports_the_same_problems(doc: Any, expected: str, tmp_path: Path) -> None:
    # JSON files take a fast path straight into the Structs; a failure must still be explained.
    with pytest.raises(SettingsError) as raised:
        build_plan(load_settings(write_settings(tmp_path / "bad.json", doc), {}), registry())
    assert any(p.startswith(expected) for p in raised.value.problems), raised.value.problems


def test_a_json_file_loads_as_its_document_does_and_expands_variables(tmp_path: Path) -> None:
    doc = site(URL)
    assert load_settings(write_settings(tmp_path / "site.json", doc), {}) == load_document(doc, {})
    doc["brokers"][0]["qos"] = "${QOS}"
    loaded = load_settings(write_settings(tmp_path / "vars.json", doc), {"QOS": "0"})
    assert loaded.brokers[0].qos == 0


def test_every_problem_is_reported_at_once() -> None:
    doc = site(URL)
    doc["systems"][0]["modules"].append("mod-zz")
    doc["zones"][2]["parent"] = "lvl-9"
    doc["org"]["timezone"] = "Nowhere/Land"
    assert len(problems(doc)) == 3


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, check=False)


def test_cli_check_prints_the_topic_plan(tmp_path: Path) -> None:
    result = run_cli("check", str(ROOT / "settings" / "demo.yaml"), "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert "placeos/zone-demo/metadata/zone-demo" in plan["metadata"]
    refs = {m["ref"]: m["prefix"] for s in plan["systems"] for m in s["modules"] if s["id"] == "sys-level-2"}
    assert refs["Sensor_2"] == "placeos/zone-demo/state/zone-hq/zone-l2/_/sys-level-2/drv-haltian/Sensor/2"
    text = run_cli("check", str(ROOT / "settings" / "demo.yaml"))
    assert text.returncode == 0 and "metadata topics" in text.stdout


@pytest.mark.parametrize("kind", ["yaml-syntax", "invalid", "missing-file"])
def test_cli_check_invalid_exits_2_without_traceback(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.yaml"
    if kind == "yaml-syntax":
        path.write_text("org: {id: [unclosed\n")
    elif kind == "invalid":
        doc = site(URL)
        doc["modules"][0]["driver"] = "drv-missing"
        write_settings(path, doc)
    result = run_cli("check", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "invalid settings" in result.stderr
    if kind == "invalid":
        assert "modules[0].driver: unknown driver record 'drv-missing'" in result.stderr
    as_json = run_cli("check", str(path), "--json")
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["ok"] is False


def test_cli_run_with_invalid_settings_exits_2(tmp_path: Path) -> None:
    doc = site(URL)
    doc["zones"][0]["parent"] = "area-201"
    result = run_cli("run", str(write_settings(tmp_path / "bad.json", doc)))
    assert result.returncode == 2
    assert "zone parents form a cycle" in result.stderr and "Traceback" not in result.stderr
