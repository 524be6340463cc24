"""SIGKILL the gateway process mid-burst, restart it: every accepted measurement is stored exactly once."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path

from tests.drivers.empathic_building.conftest import GATEWAY_TOKEN, Eb
from tests.drivers.empathic_building.crash_harness import T0

ROOT = Path(__file__).resolve().parents[3]
BURST = 5000


async def start_harness(eb: Eb, state_dir: Path, count: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.drivers.empathic_building.crash_harness", "--url", eb.url,
        "--token", GATEWAY_TOKEN, "--state-dir", str(state_dir), "--count", str(count),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE)


def acks(lines: list[str]) -> set[int]:
    return {int(line.split()[1]) for line in lines if line.startswith("ACK ")}


async def read_lines(proc: asyncio.subprocess.Process, until: str | None = None, *,
                     ack_count: int | None = None) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(60):
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                return lines
            line = raw.decode().strip()
            lines.append(line)
            if line == until or (ack_count is not None and len(acks(lines)) >= ack_count):
                return lines


async def test_sigkill_mid_burst_loses_nothing_accepted(eb: Eb, tmp_path: Path) -> None:
    eb.server.answer_delay = 0.05  # keep batches in flight while the burst goes on
    proc = await start_harness(eb, tmp_path, BURST)
    lines = await read_lines(proc, ack_count=300)
    proc.kill()  # SIGKILL: no cleanup, no flush beyond what was fsynced
    await proc.wait()
    lines += await read_lines(proc)  # ACKs already written to the pipe were acknowledged too
    accepted = acks(lines)
    assert "DRAINED" not in lines
    assert len(accepted) < BURST, "the kill must land in the middle of the burst"

    restarted = await start_harness(eb, tmp_path, 0)
    after = await read_lines(restarted, "DRAINED")
    await restarted.wait()
    pending_at_restart = int(next(line for line in after if line.startswith("PENDING")).split()[1])
    assert pending_at_restart > 0, "the restart had accepted measurements left to send"
    assert "DRAINED" in after

    stored = Counter(m["time"] - T0 for m in eb.server.stored() if m["vendor_id"] == "crash")
    missing = accepted - set(stored)
    assert not missing, f"{len(missing)} accepted measurements lost, e.g. {sorted(missing)[:5]}"
    assert all(n == 1 for n in stored.values())
    # Resends across the crash are allowed on the wire; the duplicate-timestamp rule absorbs them.
    assert eb.server.duplicates_dropped <= pending_at_restart
