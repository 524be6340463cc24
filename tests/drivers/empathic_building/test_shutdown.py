"""SIGTERM the runtime at the moment the Empathic Building server dies: it still shuts down cleanly and exits 0.

As in `make run`, the fake EB server is a process of its own, and the runtime (`python -m runtime run`) has a
live module (Pusher) and a gateway module against it. The server is SIGKILLed and the runtime gets SIGTERM
back to back, in both orders, so the shutdown meets the Pusher client while it notices the lost socket,
reconnects or backs off. Each round waits for the exit with a generous bound (a failure bound only), then
checks that no loop had to be abandoned and that the runtime said goodbye on MQTT.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec

from tests.runtime.test_process import Log, stop
from tests.support.broker import Mosquitto, free_port, wait_listening
from tests.support.site import write_settings
from tests.support.subscriber import Subscriber

ROOT = Path(__file__).resolve().parents[3]
ORG = "org-eb-stop"
CLIENT_ID = "rt-eb-stop"
PRESENCE = f"placeos/{ORG}/runtime/{CLIENT_ID}"
STATE = f"placeos/{ORG}/state/_/_/_/sys-1"
LIVE_CONNECTED = f"{STATE}/drv-eb/Live/1/connected"
GATEWAY_CONNECTED = f"{STATE}/drv-eb-gateway/Gateway/1/connected"
OFFLINE = b'{"online":false}'
ROUNDS = 6
BOUND = 60.0  # seconds: a failure bound only, never a pass condition
# What the runtime logs when a task or a shared service had to be abandoned because it ignored its cancellation.
ABANDONED = ("did not stop within", "did not finish within")


def site(broker: Mosquitto, eb_port: int, state_dir: Path) -> dict[str, Any]:
    """A live EB module and an EB gateway module against the fake on `eb_port` (the demo's accounts)."""
    eb = f"http://127.0.0.1:{eb_port}"
    return {
        "org": {"id": ORG, "name": "EB shutdown"},
        "brokers": [{"name": "local", "url": broker.url, "client_id": CLIENT_ID}],
        "http": {"host": "127.0.0.1", "port": 0},
        "state_dir": str(state_dir),
        "drivers": [
            {"id": "drv-eb", "name": "Empathic Building", "driver": "empathic_building",
             "settings": {"api_url": eb, "email": "demo@example.com", "password": "demo-password",
                          "organization_id": "1", "location_id": "1", "pusher_host": "127.0.0.1",
                          "pusher_port": eb_port, "pusher_tls": False}},
            {"id": "drv-eb-gateway", "name": "Empathic Building gateway", "driver": "empathic_building",
             "settings": {"api_url": eb, "token": "demo-gateway-token", "location_id": "1"}},
        ],
        "modules": [
            {"id": "mod-eb-live", "driver": "drv-eb", "name": "Live", "settings": {"live": True, "sensors": ["sim-1"]}},
            {"id": "mod-eb-gateway", "driver": "drv-eb-gateway", "name": "Gateway",
             "settings": {"gateway": True, "batch_delay": 0}},
        ],
        "systems": [{"id": "sys-1", "name": "Room", "modules": ["mod-eb-live", "mod-eb-gateway"]}],
    }


def fake_server(port: int) -> subprocess.Popen[bytes]:
    """The fake EB as `make run` starts it (sensor data every 0.2 s, so events flow until the kill)."""
    proc = subprocess.Popen([sys.executable, "-m", "drivers.empathic_building.fake_server", "--host", "127.0.0.1",
                             "--port", str(port), "--simulate", "0.2"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(proc, "127.0.0.1", port)
    return proc


def connected(sub: Subscriber) -> bool:
    """Both modules reported `connected: true` live (not a retained value from an earlier round)."""
    wanted = {LIVE_CONNECTED, GATEWAY_CONNECTED}
    ok = {m.topic for m in sub.messages
          if m.topic in wanted and not m.retain and msgspec.json.decode(m.payload)["value"] == "true"}
    return ok == wanted


def said_goodbye(sub: Subscriber) -> bool:
    """The runtime published its offline presence itself: the shutdown ran to the end."""
    return any(m.topic == PRESENCE and not m.retain and m.payload == OFFLINE for m in sub.messages)


def test_sigterm_as_the_eb_server_dies_exits_0(broker: Mosquitto, tmp_path: Path) -> None:
    for round_ in range(ROUNDS):
        eb_port = free_port()
        settings = write_settings(tmp_path / f"site-{round_}.yaml", site(broker, eb_port, tmp_path / "state"))
        eb = fake_server(eb_port)
        with Subscriber(broker.port, PRESENCE, LIVE_CONNECTED, GATEWAY_CONNECTED) as sub:
            proc = subprocess.Popen([sys.executable, "-m", "runtime", "run", str(settings)], cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            log = Log(proc)
            try:
                assert sub.wait_for(connected, timeout=BOUND), log.text
                if round_ % 2 == 0:
                    eb.send_signal(signal.SIGKILL)
                    proc.send_signal(signal.SIGTERM)
                else:
                    proc.send_signal(signal.SIGTERM)
                    eb.send_signal(signal.SIGKILL)
                try:
                    code: int | None = proc.wait(BOUND)
                except subprocess.TimeoutExpired:
                    code = None  # still running: the failure below shows what it was doing
            finally:
                stop(proc)
                log.close()
                stop(eb)
            assert code == 0, f"round {round_}: exit code {code}\n{log.text}"
            assert "SIGTERM received: shutting down" in log.text
            assert "second signal" not in log.text
            assert not any(text in log.text for text in ABANDONED), log.text
            assert sub.wait_for(said_goodbye), log.text
