"""The runtime as a process: SIGKILL turns its presence offline (the MQTT last will); SIGTERM exits 0."""

from __future__ import annotations

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
