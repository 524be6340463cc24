"""A counting subscriber on `placeos/#` over a raw socket: last payload per topic, receive times, final state.

    python -m benchmarks.subscriber --port P

Driven by JSON lines on stdin, answering with JSON lines on stdout:

- `{"cmd": "watch", "topics": [...]}`: answers `{"event": "watched", "t": ...}` once every listed topic has
  arrived (non-empty); presence topics must say online. `t` is the `time.perf_counter()` of the last arrival.
- `{"cmd": "expect", "file": F}`: F is a JSON object topic -> expected payload suffix; counting restarts.
- `{"cmd": "wait", "quiet": s, "timeout": s}`: answers `{"event": "final", "t": ..., "matched": n, "missing": m,
  "received": r}` once every expected topic's last payload ends with its suffix (`t` is when the last of them
  arrived), or when nothing arrived for `quiet` seconds, or at `timeout`.
- `{"cmd": "record", "file": F}` / `{"cmd": "dump"}`: keep (topic, payload, time) of every message and write
  them to F as msgpack when asked.
- `{"cmd": "quit"}`.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from benchmarks import mqttwire

ONLINE = b'{"online":true}'


class Counter:
    """Subscriber state and the packet loop."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.received = 0
        self.last_at = time.perf_counter()
        self.subscribed = False
        self.expected: dict[bytes, bytes] = {}
        self.ok: set[bytes] = set()
        self.ok_at = 0.0
        self.watch: set[bytes] | None = None
        self.watch_at = 0.0
        self.record: list[tuple[bytes, bytes, float]] | None = None
        self.record_file: Path | None = None

    def feed(self, data: bytes, now: float) -> None:
        """Parse every complete packet in the buffer."""
        buf = self.buf
        buf += data
        packets, used = mqttwire.split_packets(buf)
        acks: list[bytes] = []
        expected, ok, watch, record = self.expected, self.ok, self.watch, self.record
        count = 0
        for first, body in packets:
            if first & 0xF0 != mqttwire.PUBLISH:
                if first == mqttwire.SUBACK:
                    self.subscribed = True
                continue
            tlen = (body[0] << 8) | body[1]
            topic = body[2:2 + tlen]
            p = 2 + tlen
            if first & 0x06:
                acks.append(body[p:p + 2])
                p += 2
            payload = body[p:]
            count += 1
            want = expected.get(topic)
            if want is not None:
                if payload.endswith(want):
                    if topic not in ok:
                        ok.add(topic)
                        self.ok_at = now
                else:
                    ok.discard(topic)
            if watch is not None and topic in watch and payload and (b"/runtime/" not in topic or payload == ONLINE):
                watch.discard(topic)
                self.watch_at = now
            if record is not None:
                record.append((topic, payload, now))
        del buf[:used]
        if count:
            self.received += count
            self.last_at = now
        if acks:
            self.sock.sendall(b"".join(mqttwire.puback_packet(a) for a in acks))


def _say(event: dict[str, Any]) -> None:
    sys.stdout.write(msgspec.json.encode(event).decode() + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.subscriber", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--filter", default="placeos/#")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=0)
    args = parser.parse_args(argv)
    sock = mqttwire.open_session(args.host, args.port, f"bench-sub-{os.getpid()}")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.sendall(mqttwire.subscribe_packet(args.filter, args.qos))
    sock.setblocking(False)
    counter = Counter(sock)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "sock")
    stdin = sys.stdin.buffer
    os.set_blocking(stdin.fileno(), False)
    sel.register(stdin, selectors.EVENT_READ, "stdin")
    pending = b""
    waiting: dict[str, float] | None = None
    told_ready = False
    while True:
        for key, _ in sel.select(0.05):
            if key.data == "sock":
                try:
                    data = sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                if not data:
                    _say({"event": "closed"})
                    return 1
                counter.feed(data, time.perf_counter())
                continue
            chunk = os.read(stdin.fileno(), 1 << 16)
            if not chunk:
                return 0
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                cmd = msgspec.json.decode(line)
                name = cmd["cmd"]
                if name == "quit":
                    return 0
                if name == "watch":
                    counter.watch = {t.encode() for t in cmd["topics"]}
                elif name == "expect":
                    raw = msgspec.json.decode(Path(cmd["file"]).read_bytes(), type=dict[str, bytes])
                    counter.expected = {t.encode(): s for t, s in raw.items()}
                    counter.ok = set()
                    counter.received = 0
                    _say({"event": "expecting", "topics": len(counter.expected)})
                elif name == "wait":
                    waiting = {"quiet": float(cmd.get("quiet", 3.0)),
                               "deadline": time.perf_counter() + float(cmd.get("timeout", 120.0))}
                elif name == "record":
                    counter.record = []
                    counter.record_file = Path(cmd["file"])
                    _say({"event": "recording"})
                elif name == "dump":
                    records, counter.record = counter.record or [], None
                    if counter.record_file is not None:
                        counter.record_file.write_bytes(msgspec.msgpack.encode(records))
                    _say({"event": "dumped", "messages": len(records)})
                elif name == "stats":
                    _say({"event": "stats", "received": counter.received, "last_at": counter.last_at})
        if not told_ready and counter.subscribed:
            told_ready = True
            _say({"event": "ready"})
        if counter.watch is not None and not counter.watch:
            counter.watch = None
            _say({"event": "watched", "t": counter.watch_at})
        if waiting is not None:
            now = time.perf_counter()
            done = len(counter.ok) == len(counter.expected)
            if done or now - counter.last_at > waiting["quiet"] or now > waiting["deadline"]:
                waiting = None
                _say({"event": "final", "t": counter.ok_at if done else counter.last_at, "complete": done,
                      "matched": len(counter.ok), "missing": len(counter.expected) - len(counter.ok),
                      "received": counter.received})


if __name__ == "__main__":
    sys.exit(main())
