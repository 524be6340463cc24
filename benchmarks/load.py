"""A fast Haltian load generator: pre-encoded messages in Haltian's exact topics and payloads, over a raw socket.

    python -m benchmarks.load --port P --devices devices.json --seq-start 0 --count 200000 [--rate 5000]
        [--qos 1] [--times send-times.bin]

Without `--rate` the messages go out as one burst; with it they are paced and the send time of every
message is written to `--times` (float64 `time.perf_counter()` values, one per message). At QoS 1 at most
`--window` messages are unacknowledged, so packet ids are never reused while in flight. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import datetime as dt
import selectors
import sys
import time
from pathlib import Path

import msgspec

from benchmarks import mqttwire
from benchmarks.sites import STREAM_PREFIX, TYPES, slot, value_of

CHUNK = 512


class Payload(msgspec.Struct):
    """A Haltian measurement payload."""

    measured_at: str
    value: int | float


def _stamp(ts: float, zulu: bool) -> str:
    moment = dt.datetime.fromtimestamp(ts, dt.UTC)
    if zulu:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return moment.isoformat(timespec="microseconds")


def build(device_ids: list[str], seq_start: int, count: int, qos: int, base: float, step: float) -> list[bytes]:
    """PUBLISH packets for messages `seq_start..+count`, measured at `base + i * step`."""
    encode = msgspec.json.Encoder().encode
    n = len(device_ids)
    topics = {(d, t, s): f"{STREAM_PREFIX}/measurements/{(TYPES[t].camel, TYPES[t].snake)[s]}/{device_ids[d]}".encode()
              for d in range(n) for t in range(len(TYPES)) for s in (0, 1)} if n * 6 <= 200_000 else None
    packets: list[bytes] = []
    for i in range(count):
        seq = seq_start + i
        device, type_index, spelling = slot(seq, n)
        if topics is not None:
            topic = topics[(device, type_index, spelling)]
        else:
            t = TYPES[type_index]
            topic = f"{STREAM_PREFIX}/measurements/{(t.camel, t.snake)[spelling]}/{device_ids[device]}".encode()
        payload = encode(Payload(_stamp(base + i * step, spelling == 0), value_of(seq, type_index)))
        packets.append(mqttwire.publish_packet(topic, payload, qos, seq % 65535 + 1 if qos else 0))
    return packets


class Sender:
    """One raw publishing connection; counts PUBACKs at QoS 1."""

    def __init__(self, host: str, port: int, qos: int, window: int) -> None:
        self.sock = mqttwire.open_session(host, port, f"bench-load-{time.monotonic_ns() % 10**9}")
        self.sock.settimeout(None)
        self.qos = qos
        self.window = window
        self.sent = 0
        self.acked = 0
        self._pending = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ)

    def _read_acks(self, timeout: float) -> None:
        if not self._sel.select(timeout):
            return
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("broker closed the load connection")
        data = self._pending + data
        whole = len(data) // 4 * 4
        self.acked += whole // 4
        self._pending = data[whole:]

    def send(self, packets: list[bytes]) -> None:
        """Send packets, waiting for the QoS 1 window to open."""
        if self.qos:
            while self.sent - self.acked + len(packets) > self.window:
                self._read_acks(1.0)
        self.sock.sendall(b"".join(packets))
        self.sent += len(packets)
        if self.qos:
            self._read_acks(0)

    def finish(self, timeout: float = 120.0) -> None:
        """Wait until every QoS 1 message is acknowledged."""
        deadline = time.monotonic() + timeout
        while self.qos and self.acked < self.sent and time.monotonic() < deadline:
            self._read_acks(0.5)

    def close(self) -> None:
        """Disconnect cleanly."""
        with contextlib.suppress(OSError):
            self.sock.sendall(mqttwire.DISCONNECT)
        self.sock.close()


def burst(sender: Sender, packets: list[bytes]) -> tuple[float, float]:
    """Send everything as fast as the socket (and the QoS 1 window) allows; returns first and last send times."""
    first = time.perf_counter()
    step = CHUNK if sender.qos else 4096
    for i in range(0, len(packets), step):
        sender.send(packets[i:i + step])
    last = time.perf_counter()
    sender.finish()
    return first, last


def paced(sender: Sender, packets: list[bytes], rate: float) -> array.array[float]:
    """Send at `rate` messages per second; returns each message's send time."""
    times = array.array("d", bytes(8 * len(packets)))
    total = len(packets)
    start = time.perf_counter()
    i = 0
    while i < total:
        now = time.perf_counter()
        due = min(total, int((now - start) * rate) + 1)
        if due > i:
            for k in range(i, due):
                times[k] = now
            sender.send(packets[i:due])
            i = due
        else:
            time.sleep(max(0.0, min(0.0005, i / rate - (now - start))))
    sender.finish()
    return times


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--devices", type=Path, required=True, help="JSON list of device ids")
    parser.add_argument("--seq-start", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="messages per second (0: one burst)")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=0)
    parser.add_argument("--window", type=int, default=20000, help="QoS 1 messages unacknowledged at most")
    parser.add_argument("--times", type=Path, default=None, help="where to write per-message send times")
    args = parser.parse_args(argv)
    device_ids = msgspec.json.decode(args.devices.read_bytes(), type=list[str])
    base = time.time()
    step = 1.0 / args.rate if args.rate else 1e-5
    packets = build(device_ids, args.seq_start, args.count, args.qos, base, step)
    sender = Sender(args.host, args.port, args.qos, min(args.window, 30000))
    try:
        if args.rate:
            times = paced(sender, packets, args.rate)
            first, last = times[0], times[-1]
            if args.times is not None:
                args.times.write_bytes(times.tobytes())
        else:
            first, last = burst(sender, packets)
    finally:
        sender.close()
    sys.stdout.write(msgspec.json.encode({"first": first, "last": last, "sent": sender.sent,
                                          "acked": sender.acked}).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
