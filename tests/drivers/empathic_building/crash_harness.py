"""Hosts a gateway and its spool in a process of its own, so a test can SIGKILL it mid-burst.

    python -m tests.drivers.empathic_building.crash_harness --url URL --token TOKEN --state-dir DIR \
        [--first N] [--count N]

Prints `PENDING <n>` after opening the spool, `ACK <i>` once measurement i is accepted (fsynced),
and `DRAINED` when nothing is pending. Measurement i is a temperature of vendor `crash` at
`T0 + i` ms.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

import aiohttp

from drivers.empathic_building.api import EbApi
from drivers.empathic_building.auth import StaticToken
from drivers.empathic_building.gateway import Gateway
from drivers.empathic_building.spool import DeadLetterFile, Spool
from runtime.clock import SystemClock
from runtime.testing import FakeMetrics

T0 = 1_767_225_600_000


async def run(url: str, token: str, state_dir: Path, first: int, count: int) -> None:
    """Open the spool, submit the burst one measurement at a time, then drain."""
    async with aiohttp.ClientSession() as http:
        gateway = Gateway(EbApi(http, url, StaticToken(token), timeout=5.0), Spool(state_dir),
                          DeadLetterFile(state_dir), clock=SystemClock(), logger=logging.getLogger("harness"),
                          metrics=FakeMetrics(), backoff=(0.05, 0.5))
        await gateway.open()
        print(f"PENDING {gateway.pending}", flush=True)
        sender = asyncio.create_task(gateway.run(), name="harness-gateway")
        for i in range(first, first + count):
            await gateway.submit([{"type": "temperature", "vendor_id": "crash", "time": T0 + i, "value": 20 + i % 7}])
            print(f"ACK {i}", flush=True)
        await gateway.drain()
        print("DRAINED", flush=True)
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        gateway.spool.close()


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(run(args.url, args.token, args.state_dir, args.first, args.count))


if __name__ == "__main__":
    main()
