"""The runtime as a process: the last will on SIGKILL; SIGTERM exits 0 losing nothing, a second one at once."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from tests.support.broker import Mosquitto, free_port
from tests.support.site import write_settings
from tests.support.subscriber import Subscriber

ROOT = Path(__file__).resolve().parents[2]
PRESENCE = "placeos/org-p/runtime/rt-proc"
TEMPERATURE = "placeos/org-p/state/_/_/_/sys-1/drv-demo/Sensor/1/temperature"
OFFLINE = b'{"online":false}'
API_KEY = "proc-key"
# Loopback only: never route the test's HTTP requests through a proxy from the environment.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def demo_site(url: str, org: str = "org-p", client_id: str = "rt-proc") -> dict[str, Any]:
    return {
        "org": {"id": org, "name": "Proc"},
        "brokers": [{"name": "local", "url": url, "client_id": client_id}],
        "http": {"port": 0},
        "drivers": [{"id": "drv-demo", "name": "Demo", "driver": "demo", "settings": {"interval": 0.2}}],
        "modules": [{"id": "mod-1", "driver": "drv-demo"}],
        "systems": [{"id": "sys-1", "name": "Room", "modules": ["mod-1"]}],
    }


def start(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "runtime", "run", str(path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})


class Log:
    """A process's stderr, read line by line on a thread so a test can wait for a log line."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        self._stream = proc.stderr
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for raw in self._stream:
            with self._changed:
                self._lines.append(raw.decode(errors="replace"))
                self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = 20.0) -> bool:
        """Wait until a line containing `text` was logged; returns whether one was."""
        with self._changed:
            return self._changed.wait_for(lambda: any(text in line for line in self._lines), timeout)

    @property
    def text(self) -> str:
        """Everything read so far."""
        with self._changed:
            return "".join(self._lines)

    def close(self) -> None:
        """Read to the end (the process has exited) and close the pipe."""
        self._thread.join(10)
        self._stream.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill the process if a failed assertion left it running."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


@contextlib.contextmanager
def frozen(broker: Mosquitto) -> Iterator[None]:
    """Freeze mosquitto (SIGSTOP): connections stay open but nothing is read or acknowledged."""
    assert broker.proc is not None
    pid = broker.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def live(topic: str) -> Callable[[Subscriber], bool]:
    """A predicate: a message on `topic` arrived live (not retained), so from the process under test."""
    return lambda s: any(m.topic == topic and not m.retain for m in s.messages)


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
            doc["modules"][0]["name"] = "Climate"
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


def test_sigterm_with_a_frozen_broker_gives_up_flushing_and_exits_0(broker: Mosquitto, tmp_path: Path) -> None:
    path = write_settings(tmp_path / "site.yaml", demo_site(broker.url))
    with Subscriber(broker.port, PRESENCE, TEMPERATURE) as sub:
        proc = start(path)
        log = Log(proc)
        try:
            assert sub.wait_for(live(TEMPERATURE))  # connected, swept and publishing
            with frozen(broker):
                proc.send_signal(signal.SIGTERM)
                # The offline presence is never acknowledged: the flush waits for its timeout, then gives up.
                assert proc.wait(60) == 0
        finally:
            stop(proc)
            log.close()
        assert "SIGTERM received: shutting down" in log.text
        assert "second signal" not in log.text
        assert sub.wait_for(lambda s: s.latest.get(PRESENCE) == OFFLINE)


def test_a_second_sigterm_exits_at_once_while_the_shutdown_waits(broker: Mosquitto, tmp_path: Path) -> None:
    path = write_settings(tmp_path / "site.yaml", demo_site(broker.url))
    with Subscriber(broker.port, PRESENCE, TEMPERATURE) as sub:
        proc = start(path)
        log = Log(proc)
        try:
            assert sub.wait_for(live(TEMPERATURE))
            with frozen(broker):
                proc.send_signal(signal.SIGTERM)
                assert log.wait_for("SIGTERM received: shutting down")
                # The shutdown cannot finish before its flush to the frozen broker times out (exit 0, see the
                # test above); the second signal ends it now, with 1.
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(60) == 1
        finally:
            stop(proc)
            log.close()
        assert "second signal: exiting now" in log.text
        # No DISCONNECT was sent: the broker publishes the last will once it runs again.
        assert sub.wait_for(lambda s: s.latest.get(PRESENCE) == OFFLINE)


def http_call(method: str, url: str, body: object = None) -> tuple[int, Any]:
    """One request to the runtime's HTTP API: status and decoded body (JSON, or text for /metrics)."""
    data = msgspec.json.encode(body) if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"X-API-Key": API_KEY, "Content-Type": "application/json"}
    )
    try:
        with HTTP.open(request, timeout=60) as resp:
            status, raw, kind = resp.status, resp.read(), resp.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        status, raw, kind = exc.code, exc.read(), exc.headers.get_content_type()
        exc.close()
    return status, msgspec.json.decode(raw) if kind == "application/json" else raw.decode()


def wait_http(base: str, timeout: float = 20.0) -> None:
    """Wait until the runtime's HTTP server answers /healthz."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(urllib.error.URLError, ConnectionError):
            if http_call("GET", base + "/healthz")[0] == 200:
                return
        time.sleep(0.05)
    raise AssertionError(f"{base} did not answer within {timeout} s")


def sample(metrics: str, name: str) -> float:
    """The value of the first sample called `name` in a Prometheus text page (one broker: one series)."""
    for family in text_string_to_metric_families(metrics):
        for found in family.samples:
            if found.name == name:
                return float(found.value)
    raise LookupError(name)


def test_sigterm_during_a_burst_loses_nothing_accepted(broker: Mosquitto, tmp_path: Path) -> None:
    count = 20_000
    port = free_port()
    # An org of its own: the burst's retained topics stay out of the other tests' subscriptions.
    doc = demo_site(broker.url, org="org-b", client_id="rt-burst")
    doc["http"] = {"host": "127.0.0.1", "port": port, "api_keys": [API_KEY]}
    path = write_settings(tmp_path / "site.yaml", doc)
    prefix = "placeos/org-b/state/_/_/_/sys-1/drv-demo/Sensor/1"
    base = f"http://127.0.0.1:{port}"
    burst = f"{base}/api/modules/mod-1/exec/burst"
    # Fresh values, so that nothing an earlier run left retained on the broker can pass for this run's.
    first, final = random.sample(range(1, 10**9), 2)
    with Subscriber(broker.port, f"{prefix}/temperature") as sub:
        proc = start(path)
        log = Log(proc)
        try:
            assert sub.wait_for(live(f"{prefix}/temperature"))
            wait_http(base)
            assert http_call("POST", burst, {"count": -1})[0] == 400
            published = sample(http_call("GET", base + "/metrics")[1], "placeos_runtime_published_total")
            # The second burst rewrites every key while the first one is still waiting to be sent.
            assert http_call("POST", burst, {"count": count, "value": first}) == (200, {"result": {"set": count}})
            assert http_call("POST", burst, {"count": count, "value": final}) == (200, {"result": {"set": count}})
            # Every change is accepted. Reported, not asserted: how far the drain had got at the signal (fewer
            # than `count` publishes since the bursts began means some final values were still to be sent).
            metrics = http_call("GET", base + "/metrics")[1]
            at_signal = (
                f"at SIGTERM {sample(metrics, 'placeos_runtime_published_total') - published:.0f} publishes "
                f"since the bursts began ({count} final values to send), "
                f"buffer depth {sample(metrics, 'placeos_runtime_buffer_depth'):.0f}, "
                f"{sample(metrics, 'placeos_runtime_inflight'):.0f} in flight"
            )
            print(at_signal)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        finally:
            stop(proc)
            log.close()
    topics = [f"{prefix}/burst_{i}" for i in range(count)]
    late = Subscriber(broker.port, f"{prefix}/#")
    try:
        late.wait_for(lambda s: len(s.latest) >= count and all(t in s.latest for t in topics), timeout=60)
    finally:
        late.close()  # its network thread has stopped: `latest` no longer changes
    wrong = [t for t in topics if t not in late.latest or msgspec.json.decode(late.latest[t])["value"] != str(final)]
    assert not wrong, f"{len(wrong)} of {count} topics missing or stale ({at_signal}), e.g. {wrong[:3]}\n{log.text}"
