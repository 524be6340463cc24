"""The baseline: a minimal Haltian-to-PlaceOS relay on gmqtt and uvloop, as little work per message as possible.

    python -m benchmarks.relay --port P --map relay-map.json --qos 0

Per message: split the topic, look the device and type up in dicts, decode the payload with msgspec, encode
the seed state payload with msgspec, publish it retained at `--qos`. No state, no change detection, no
privacy, no metrics, no flow control (at QoS 1 a burst runs gmqtt out of packet ids). Prints `ready` once
subscribed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

import gmqtt
import msgspec
import uvloop


class Measurement(msgspec.Struct):
    """A Haltian measurement payload."""

    value: Any = None
    measured_at: str | None = None


class State(msgspec.Struct):
    """The seed state payload: change time (Unix ms) and the value as a JSON string."""

    time: int
    value: str


class RelayMap(msgspec.Struct):
    """Subscription filter, device id -> topic prefix, type spelling -> state key."""

    filter: str
    devices: dict[str, str]
    types: dict[str, str]


async def run(port: int, mapping: RelayMap, qos: int) -> None:
    """Relay until SIGTERM."""
    decode = msgspec.json.Decoder(Measurement).decode
    encode = msgspec.json.Encoder().encode
    devices, types = mapping.devices, mapping.types
    client = gmqtt.Client(f"bench-relay-{port}")
    dropped = 0

    def on_message(_client: Any, topic: str, payload: bytes, _qos: int, _properties: Any) -> int:
        nonlocal dropped
        parts = topic.split("/")
        prefix = devices.get(parts[-1])
        key = types.get(parts[-2])
        if prefix is None or key is None:
            return 0
        value = decode(payload).value
        out = encode(State(time.time_ns() // 1_000_000, encode(value).decode()))
        try:
            client.publish(f"{prefix}/{key}", out, qos=qos, retain=True)
        except OverflowError:  # gmqtt ran out of packet ids: the message is lost
            dropped += 1
        return 0

    subscribed = asyncio.Event()
    client.on_message = on_message
    client.on_subscribe = lambda *_args: subscribed.set()
    await client.connect("127.0.0.1", port, keepalive=0)
    client.subscribe(gmqtt.Subscription(mapping.filter, qos=qos))
    await subscribed.wait()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    if dropped:
        sys.stderr.write(f"relay: {dropped} publishes failed (no packet id left)\n")
    await client.disconnect()


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.relay", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--map", type=Path, required=True)
    parser.add_argument("--qos", type=int, choices=(0, 1), default=0)
    args = parser.parse_args(argv)
    mapping = msgspec.json.decode(args.map.read_bytes(), type=RelayMap)
    uvloop.run(run(args.port, mapping, args.qos))
    return 0


if __name__ == "__main__":
    sys.exit(main())
