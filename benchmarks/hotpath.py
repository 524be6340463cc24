"""The runtime's own per-message cost, in process: the Haltian stream's handler to bytes handed to the socket.

    python -m benchmarks.hotpath [--devices 10000] [--per-module 1] [--messages 200000] [--chunk 600]
        [--privacy] [--qos 0] [--profile]

Starts a mosquitto on a free loopback port and the runtime in this process with the benchmark site (under
the garbage-collector policy of `python -m runtime run`), then calls the shared Haltian stream's `on_message`
with the load's exact topics and payloads, yielding to the event loop every `--chunk` messages (about one
64 KiB socket read), as the MQTT client would. Reports CPU
µs per message for the handler and publishing (no MQTT receive cost, no other process on the core) and
the publishes it caused; `--profile` prints the top of a cProfile run instead. A tool for working on the
hot path; `make bench` remains the figure of record.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import uvloop

from benchmarks.load import Payload
from benchmarks.sites import STREAM_PREFIX, TYPES, Site, slot, value_of
from runtime.app import Runtime
from runtime.gcpolicy import GcPolicy
from tests.support.broker import Mosquitto


def messages(site: Site, start: int, count: int, base: float) -> list[tuple[str, bytes]]:
    """The load's (topic, payload) pairs for messages start..start+count, measured 0.1 ms apart from `base`."""
    encode = msgspec.json.Encoder().encode
    out: list[tuple[str, bytes]] = []
    for seq in range(start, start + count):
        device, type_index, spelling = slot(seq, site.devices)
        t = TYPES[type_index]
        topic = f"{STREAM_PREFIX}/measurements/{(t.camel, t.snake)[spelling]}/{site.device_ids[device]}"
        stamp = dt.datetime.fromtimestamp(base + seq * 1e-4, dt.UTC).isoformat(timespec="microseconds")
        out.append((topic, encode(Payload(stamp, value_of(seq, type_index)))))
    return out


def _stream(runtime: Runtime) -> Any:
    assert runtime.manager is not None
    for entry in runtime.manager.shared._entries.values():
        if type(entry.service).__name__ == "HaltianStream":
            return entry.service
    raise RuntimeError("no Haltian stream")


async def _run(args: argparse.Namespace, workdir: Path, broker: Mosquitto) -> None:
    site = Site(args.devices, args.per_module)
    path = site.write(workdir / "site.json", broker.url, qos=args.qos, privacy=args.privacy)
    runtime = Runtime(path)
    policy = GcPolicy(asyncio.get_running_loop())  # as `Runtime.run` does
    policy.pause()
    await runtime.start()
    assert runtime.publisher is not None and runtime.manager is not None
    await runtime.manager.wait_loaded(60)
    policy.settle()
    await runtime.publisher.wait_swept(30)
    out = runtime.publisher.outputs[0]
    stream = _stream(runtime)
    warmup = 20_000
    base = time.time() - (warmup + args.messages) * 1e-4
    warm = messages(site, 0, warmup, base)
    load = messages(site, warmup, args.messages, base)
    on_message = stream.on_message
    chunk = args.chunk

    async def feed(batch: list[tuple[str, bytes]]) -> None:
        for i, (topic, payload) in enumerate(batch):
            on_message(topic, payload, args.qos, False)
            if i % chunk == 0:
                await asyncio.sleep(0)
        await out.flush(60)

    await feed(warm)
    published = out._published._value.get()
    profiler = cProfile.Profile() if args.profile else None
    cpu, wall = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    await feed(load)
    if profiler is not None:
        profiler.disable()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    sent = out._published._value.get() - published
    await runtime.stop()
    policy.close()
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(35)
    print(f"{args.messages} messages, {args.devices} devices, {site.modules} modules, privacy "
          f"{'on' if args.privacy else 'off'}: {cpu / args.messages * 1e6:.1f} µs CPU/msg, "
          f"{args.messages / wall:,.0f} msg/s, {sent / args.messages:.2f} publishes/msg")


def main() -> None:
    """Parse arguments, start mosquitto, run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--per-module", type=int, default=1)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=600)
    parser.add_argument("--qos", type=int, default=0)
    parser.add_argument("--privacy", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto()
        broker.start()
        try:
            uvloop.run(_run(args, Path(tmp), broker))
        finally:
            broker.close()


if __name__ == "__main__":
    main()
