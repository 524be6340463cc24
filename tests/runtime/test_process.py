"""The runtime as a process: SIGKILL turns its presence offline (the MQTT last will); SIGTERM exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.broker import Mosquitto
from tests.support.site import write_settings
from tests.support.subscriber import Subscriber

ROOT = Path(__file__).resolve().parents[2]
PRESENCE = "placeos/org-p/runtime/rt-proc"


def demo_site(url: str) -> dict[str, object]:
    return {
        "org": {"id": "org-p", "name": "Proc"},
        "brokers": [{"name": "local", "url": url, "client_id": "rt-proc"}],
        "http": {"port": 0},
        "drivers": [{"id": "drv-demo", "name": "Demo", "driver": "demo", "settings": {"interval": 0.2}}],
        "modules": [{"id": "mod-1", "driver": "drv-demo"}],
        "systems": [{"id": "sys-1", "name": "Room", "modules": ["mod-1"]}],
    }


def start(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "runtime", "run", str(path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})


def test_sigkill_turns_presence_offline(broker: Mosquitto, tmp_path: Path) -> None:
    path = write_settings(tmp_path / "site.yaml", demo_site(broker.url))
    with Subscriber(broker.port, PRESENCE, "placeos/org-p/state/#") as sub:
        proc = start(path)
        try:
            assert sub.wait_for(lambda s: s.latest.get(PRESENCE) == b'{"online":true}')
            assert sub.wait_for(lambda s: any(t.endswith("/temperature") for t in s.latest))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            if proc.stderr:
                proc.stderr.close()
        assert sub.wait_for(lambda s: s.latest.get(PRESENCE) == b'{"online":false}', timeout=30)


def test_sigterm_exits_cleanly_and_says_offline(broker: Mosquitto, tmp_path: Path) -> None:
    path = write_settings(tmp_path / "site.yaml", demo_site(broker.url))
    with Subscriber(broker.port, PRESENCE) as sub:
        proc = start(path)
        assert sub.wait_for(lambda s: s.latest.get(PRESENCE) == b'{"online":true}')
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        if proc.stderr:
            proc.stderr.close()
        assert sub.wait_for(lambda s: s.latest.get(PRESENCE) == b'{"online":false}')


def test_sighup_reloads_and_json_logs_carry_the_module(broker: Mosquitto, tmp_path: Path) -> None:
    doc = demo_site(broker.url)
    path = write_settings(tmp_path / "site.yaml", doc)
    old = "placeos/org-p/state/_/_/_/sys-1/drv-demo/Sensor/1/temperature"
    new = "placeos/org-p/state/_/_/_/sys-1/drv-demo/Climate/1/temperature"
    with Subscriber(broker.port, "placeos/org-p/state/#") as sub:
        proc = subprocess.Popen([sys.executable, "-m", "runtime", "run", str(path), "--log-format", "json"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            # A live (not retained) message: this process is up and has its signal handlers.
            assert sub.wait_for(lambda s: any(m.topic == old and not m.retain for m in s.messages))
            doc["modules"][0]["name"] = "Climate"  # type: ignore[index]
            write_settings(path, doc)
            proc.send_signal(signal.SIGHUP)
            assert sub.wait_for(lambda s: new in s.latest and old not in s.latest)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        lines = [json.loads(line) for line in proc.stderr.read().decode().splitlines() if line.strip()]  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert any(r["message"].startswith("settings reloaded") for r in lines)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in lines)
