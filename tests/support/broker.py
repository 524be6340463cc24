"""A real mosquitto on a free loopback port, that tests can stop and restart."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(proc: subprocess.Popen[bytes], host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until `proc` accepts TCP connections on host:port; raise if it exits or never listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"mosquitto exited with {proc.returncode}: {err}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("mosquitto did not start listening")


def mosquitto_binary() -> str:
    """Path of the mosquitto executable."""
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found is None:
        raise RuntimeError("mosquitto is not installed; `make test` installs it")
    return found


class Mosquitto:
    """One mosquitto process without persistence; `extra` lines are appended to its config."""

    def __init__(self, port: int | None = None, extra: str = "", default_listener: bool = True) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._dir = Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self.config = self._dir / "mosquitto.conf"
        lines = ["persistence false", "log_dest none", "max_queued_messages 1000000",
                 "max_inflight_messages 0"]
        if default_listener:
            lines += [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
        self.config.write_text("\n".join(lines) + "\n" + extra)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """`mqtt://127.0.0.1:<port>`."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def directory(self) -> Path:
        """Scratch directory for this broker's files (password file, certificates)."""
        return self._dir

    def start(self) -> None:
        """Start and wait until the port accepts connections."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_listening(self.proc, self.host, self.port)

    def stop(self) -> None:
        """Stop the broker (its retained messages are lost: persistence is off)."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and remove the scratch directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
