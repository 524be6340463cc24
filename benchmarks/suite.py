"""The scenarios: one target process (the runtime or the baseline relay) per session, each with its own mosquitto.

A session starts a fresh mosquitto, the counting subscriber, then the target; it warms up with one message per
device, and then runs phases: bursts (throughput, CPU, lost final state) and fixed-rate runs (latency). The
runtime runs as an operator runs it, `python -m runtime run SETTINGS`, fed by the Haltian stream on the same
mosquitto it publishes to.
"""

from __future__ import annotations

import array
import compileall
import contextlib
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from benchmarks.broker import Broker
from benchmarks.procs import Children, cpu_seconds, status_kib
from benchmarks.sites import TYPES, FinalState, Site, seq_of

Kind = Literal["runtime", "relay"]
STATE_KEYS = frozenset(t.key for t in TYPES)
PYTHON = sys.executable
PROJECT = Path(__file__).resolve().parent.parent
PACKAGES = ("runtime", "drivers", "benchmarks")


def compile_sources(env: dict[str, str] | None) -> None:
    """Byte-compile the packages the sessions' processes import, as an installed (not editable) package has them.

    With PYTHONDONTWRITEBYTECODE set, as on CI machines, every process start would otherwise compile them again,
    and the start-up figure would measure the compiler.
    """
    pythonpath = (env or {}).get("PYTHONPATH") or os.environ.get("PYTHONPATH") or ""
    roots = [Path(p) for p in pythonpath.split(os.pathsep) if p] + [PROJECT]
    for root in roots:
        for package in PACKAGES:
            if (root / package).is_dir():
                compileall.compile_dir(root / package, quiet=1)


class BenchError(RuntimeError):
    """A scenario could not run (a process died or never became ready)."""


class SubscriberProc:
    """The counting subscriber process and its JSON-lines conversation."""

    def __init__(self, children: Children, port: int, log: Path) -> None:
        self._children = children
        self._log = log.open("wb")
        self.proc = children.spawn([PYTHON, "-m", "benchmarks.subscriber", "--port", str(port)], name="subscriber",
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.event("ready", 10)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(msgspec.DecodeError):
                self._events.put(msgspec.json.decode(line))
        self._events.put({"event": "exited"})

    def send(self, **cmd: Any) -> None:
        """Send one command."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(msgspec.json.encode(cmd).decode() + "\n")
        self.proc.stdin.flush()

    def event(self, name: str, timeout: float) -> dict[str, Any]:
        """Wait for the next event called `name`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"subscriber: no {name!r} within {timeout:.0f} s")
            try:
                event = self._events.get(timeout=left)
            except queue.Empty:
                continue
            if event.get("event") == name:
                return event
            if event.get("event") in ("exited", "closed"):
                raise BenchError(f"subscriber ended while waiting for {name!r}")

    def close(self) -> None:
        """Quit."""
        with contextlib.suppress(OSError, ValueError):
            self.send(cmd="quit")
        self._children.stop(self.proc.pid, timeout=5)
        self._log.close()


@dataclass
class Config:
    """Sizes and durations of one benchmark run."""

    devices: int = 10_000
    burst: int = 200_000
    rates: tuple[int, ...] = (1_000, 5_000, 20_000)
    latency_seconds: float = 3.0
    quiet: float = 3.0
    timeout: float = 180.0


@dataclass
class Session:
    """One target process with its broker, subscriber and expected final state."""

    bench: Bench
    site: Site
    kind: Kind
    qos: int
    broker: Broker
    sub: SubscriberProc
    pid: int = 0
    seq: int = 0
    startup: float | None = None
    final: FinalState = field(init=False)
    devices_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.final = FinalState(self.site, relay=self.kind == "relay")
        self.devices_file = self.bench.workdir / f"devices-{self.site.devices}.json"
        if not self.devices_file.exists():
            self.devices_file.write_bytes(msgspec.json.encode(self.site.device_ids))

    def _expect(self, count: int) -> int:
        start = self.seq
        expected = self.final.apply(start, count)
        path = self.bench.workdir / "expected.json"
        path.write_bytes(msgspec.json.encode(expected))
        self.sub.send(cmd="expect", file=str(path))
        self.sub.event("expecting", 30)
        self.seq += count
        return start

    def _load(self, start: int, count: int, rate: float = 0.0, times: Path | None = None) -> dict[str, Any]:
        argv = [PYTHON, "-m", "benchmarks.load", "--port", str(self.broker.port), "--devices",
                str(self.devices_file), "--seq-start", str(start), "--count", str(count), "--qos", str(self.qos)]
        if rate:
            argv += ["--rate", str(rate)]
        if times is not None:
            argv += ["--times", str(times)]
        proc = self.bench.children.spawn(argv, name="load", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=self.bench.config.timeout)
        self.bench.children.stop(proc.pid)
        if proc.returncode != 0:
            raise BenchError(f"load generator failed: {err.decode(errors='replace')[-500:]}")
        result: dict[str, Any] = msgspec.json.decode(out.splitlines()[-1])
        return result

    def _wait_final(self) -> dict[str, Any]:
        cfg = self.bench.config
        self.sub.send(cmd="wait", quiet=cfg.quiet, timeout=cfg.timeout)
        return self.sub.event("final", cfg.timeout + 10)

    def alive(self) -> None:
        """Raise when the target process died."""
        if self.pid and not Path(f"/proc/{self.pid}").exists():
            raise BenchError(f"{self.kind} process {self.pid} died")

    def warmup(self) -> dict[str, Any]:
        """One message per device, so every module has state and the pipeline is known to be up."""
        return self.burst(self.site.devices)

    def burst(self, count: int) -> dict[str, Any]:
        """Send `count` messages at once; throughput until the final state is reached, CPU per message."""
        self.alive()
        start = self._expect(count)
        cpu0 = cpu_seconds(self.pid)
        load = self._load(start, count)
        final = self._wait_final()
        cpu1 = cpu_seconds(self.pid)
        self.alive()
        elapsed = final["t"] - load["first"]
        return {"messages": count, "seconds": round(elapsed, 3),
                "throughput": round(count / elapsed, 1) if elapsed > 0 else None,
                "lost_final_state": final["missing"], "topics": final["matched"] + final["missing"],
                "published": final["received"], "cpu_us_per_msg": round((cpu1 - cpu0) / count * 1e6, 2),
                "load_seconds": round(load["last"] - load["first"], 3)}

    def latency(self, rate: int, seconds: float) -> dict[str, Any]:
        """Send at a fixed rate; latency from the load's send to the subscriber's receipt, per state message."""
        self.alive()
        count = max(1, int(rate * seconds))
        start = self._expect(count)
        records_file = self.bench.workdir / "records.msgpack"
        times_file = self.bench.workdir / "send-times.bin"
        self.sub.send(cmd="record", file=str(records_file))
        self.sub.event("recording", 30)
        cpu0 = cpu_seconds(self.pid)
        self._load(start, count, rate=rate, times=times_file)
        final = self._wait_final()
        cpu1 = cpu_seconds(self.pid)
        self.sub.send(cmd="dump")
        self.sub.event("dumped", 30)
        sent = array.array("d", times_file.read_bytes())
        records = msgspec.msgpack.decode(records_file.read_bytes(), type=list[tuple[bytes, bytes, float]])
        latencies = _latencies(records, sent, start, count, self.site.per_module == 1 or self.kind == "relay")
        latencies.sort()
        result: dict[str, Any] = {"rate": rate, "messages": count, "measured": len(latencies),
                                  "lost_final_state": final["missing"],
                                  "cpu_us_per_msg": round((cpu1 - cpu0) / count * 1e6, 2)}
        if latencies:
            result |= {"p50_ms": round(_pct(latencies, 0.50) * 1e3, 3), "p99_ms": round(_pct(latencies, 0.99) * 1e3, 3),
                       "max_ms": round(latencies[-1] * 1e3, 3)}
        return result

    def peak_rss_mb(self) -> float:
        """VmHWM of the target process, MB."""
        return round(status_kib(self.pid, "VmHWM") / 1024, 1)


def _latencies(records: list[tuple[bytes, bytes, float]], sent: Sequence[float], start: int, count: int,
               one_device: bool) -> list[float]:
    if not one_device:
        return []
    decode = msgspec.json.decode
    out: list[float] = []
    for topic, payload, received in records:
        key = topic.rsplit(b"/", 1)[-1].decode()
        if key not in STATE_KEYS or not payload:
            continue
        value = decode(decode(payload)["value"])
        index = seq_of(key, value) - start
        if 0 <= index < count:
            out.append(received - sent[index])
    return out


def _pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class Bench:
    """Runs sessions; everything it starts is stopped by `children.close()`."""

    def __init__(self, config: Config, workdir: Path, children: Children, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.workdir = workdir
        self.children = children
        self.env = env
        self.last_stop_s: float | None = None
        self._sites: dict[tuple[int, int], Site] = {}
        compile_sources(env)

    def site(self, devices: int, per_module: int) -> Site:
        """A generated site (cached)."""
        key = (devices, per_module)
        if key not in self._sites:
            self._sites[key] = Site(devices, per_module)
        return self._sites[key]

    @contextlib.contextmanager
    def session(self, site: Site, kind: Kind, *, qos: int, privacy: bool = False,
                fmt: Literal["json", "yaml"] = "json") -> Iterator[Session]:
        """Start a broker, the subscriber and the target; stop them all afterwards."""
        broker = Broker(self.workdir, self.children)
        broker.start()
        sub: SubscriberProc | None = None
        target_pid = 0
        try:
            sub = SubscriberProc(self.children, broker.port, self.workdir / f"subscriber-{broker.port}.log")
            session = Session(self, site, kind, qos, broker, sub)
            if kind == "runtime":
                target_pid, session.startup = self._start_runtime(session, privacy, fmt)
            else:
                target_pid = self._start_relay(session)
            session.pid = target_pid
            yield session
        finally:
            if target_pid:
                began = time.perf_counter()
                self.children.stop(target_pid, timeout=30)
                self.last_stop_s = round(time.perf_counter() - began, 3)
            if sub is not None:
                sub.close()
            broker.stop()

    def _start_runtime(self, session: Session, privacy: bool, fmt: str) -> tuple[int, float]:
        site = session.site
        directory = self.workdir / f"site-{session.broker.port}"
        directory.mkdir()
        settings = site.write(directory / f"site.{fmt}", session.broker.url, qos=session.qos, privacy=privacy)
        session.sub.send(cmd="watch", topics=site.startup_topics())
        log = (directory / "runtime.log").open("wb")
        began = time.perf_counter()
        proc = self.children.spawn([PYTHON, "-m", "runtime", "run", str(settings)], name="runtime", stderr=log,
                                   cwd=directory, env=self.env)
        log.close()
        try:
            watched = session.sub.event("watched", 120)
        except BenchError as exc:
            tail = (directory / "runtime.log").read_text(errors="replace")[-2000:]
            raise BenchError(f"runtime did not start: {exc}\n{tail}") from exc
        return proc.pid, watched["t"] - began

    def _start_relay(self, session: Session) -> int:
        path = self.workdir / f"relay-map-{session.site.devices}-{session.site.per_module}.json"
        path.write_bytes(msgspec.json.encode(session.site.relay_map()))
        proc = self.children.spawn([PYTHON, "-m", "benchmarks.relay", "--port", str(session.broker.port), "--map",
                                    str(path), "--qos", str(session.qos)], name="relay", stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise BenchError("relay did not start")
        return proc.pid


def summarize(values: list[float]) -> dict[str, float] | None:
    """Median, min and max."""
    clean = [v for v in values if v is not None]
    if not clean:
        return None
    return {"median": round(statistics.median(clean), 3), "min": round(min(clean), 3), "max": round(max(clean), 3),
            "n": len(clean)}
