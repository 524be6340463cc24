"""A mosquitto started for one benchmark target: loopback, free port, persistence off, deep queues."""

from __future__ import annotations

import subprocess
from pathlib import Path

from benchmarks.procs import Children
from tests.support.broker import free_port, mosquitto_binary, wait_listening

# The default max_queued_messages (1000) drops a burst at QoS 0 for any consumer. max_inflight_messages 0
# lifts mosquitto's per-client window of 20 unacknowledged QoS 1 messages (and the Receive Maximum of 20
# it would advertise to MQTT 5 clients), so each client's own window is what gets measured.
CONFIG = ("persistence false", "log_dest none", "max_queued_messages 10000000", "max_inflight_messages 0",
          "set_tcp_nodelay true")


def mosquitto_version() -> str:
    """`mosquitto version x.y.z`."""
    out = subprocess.run([mosquitto_binary(), "-h"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].strip() if first else "unknown"


class Broker:
    """One mosquitto process on a free loopback port."""

    def __init__(self, workdir: Path, children: Children, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.host = "127.0.0.1"
        self.config = workdir / f"mosquitto-{self.port}.conf"
        self.config.write_text("\n".join((*CONFIG, *extra, f"listener {self.port} 127.0.0.1",
                                          "allow_anonymous true")) + "\n")
        self._children = children
        self.pid = 0

    @property
    def url(self) -> str:
        """`mqtt://127.0.0.1:<port>`."""
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> None:
        """Start and wait until the port accepts connections."""
        proc = self._children.spawn([mosquitto_binary(), "-c", str(self.config)], name="mosquitto")
        self.pid = proc.pid
        wait_listening(proc, self.host, self.port)

    def stop(self) -> None:
        """Stop the broker."""
        if self.pid:
            self._children.stop(self.pid)
            self.pid = 0
