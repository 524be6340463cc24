"""SIGKILL the runtime process mid-burst and restart it: every accepted measurement is stored exactly once.

The runtime runs as `python -m runtime run site.yaml` with an EB gateway module. Measurements go in
through the HTTP API (`send_measurements`); an HTTP 200 means accepted (validated and fsynced to the
module's spool). The fake EB server runs in the test, so the test can hold its answers: the gateway
is then in the middle of a request (stored by the server, not yet answered) while the burst goes on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.drivers.empathic_building.conftest import GATEWAY_TOKEN, Eb
from tests.support.broker import Mosquitto, free_port
from tests.support.site import write_settings

ROOT = Path(__file__).resolve().parents[3]
API_KEY = "crash-test-key"
MODULE = "mod-eb-gateway"
T0 = 1_767_225_600_000
PER_CALL = 50          # measurements per `send_measurements` call
CALLS = 60             # the whole burst
DELIVERED_FIRST = 2    # calls delivered and answered before the server starts holding answers
KILL_AFTER = 20        # accepted calls before the last stretch, during which the process is killed
BOUND = 60.0           # seconds: a failure bound only, never a pass condition


def call(n: int) -> list[dict[str, Any]]:
    """The measurements of call n: temperatures of vendor `crash` at distinct timestamps."""
    return [{"type": "temperature", "vendor_id": "crash", "time": T0 + n * PER_CALL + i,
             "value": 18 + (n * PER_CALL + i) % 100 / 10} for i in range(PER_CALL)]


def site(broker: Mosquitto, eb: Eb, http_port: int, state_dir: Path) -> dict[str, Any]:
    """A site with one EB gateway module against the fake, its API on `http_port`."""
    return {
        "org": {"id": "org-eb-crash", "name": "EB crash"},
        "brokers": [{"name": "local", "url": broker.url, "client_id": "rt-eb-crash"}],
        "http": {"host": "127.0.0.1", "port": http_port, "api_keys": [API_KEY]},
        "state_dir": str(state_dir),
        "drivers": [{"id": "drv-eb-gateway", "name": "Empathic Building gateway", "driver": "empathic_building",
                     "settings": {"api_url": eb.url, "token": GATEWAY_TOKEN, "location_id": "1"}}],
        "modules": [{"id": MODULE, "driver": "drv-eb-gateway", "name": "Gateway",
                     # A held request must stay in flight until the kill, not time out and be retried.
                     "settings": {"gateway": True, "batch_delay": 0, "request_timeout": 600}}],
        "systems": [{"id": "sys-1", "name": "Room", "modules": [MODULE]}],
    }


class RuntimeProcess:
    """`python -m runtime run <settings>` with its log in a file, and its HTTP API."""

    def __init__(self, settings: Path, log: Path, http: aiohttp.ClientSession, port: int) -> None:
        self.settings = settings
        self.log = log
        self.http = http
        self.base = f"http://127.0.0.1:{port}/api/modules/{MODULE}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the process (its log goes to `self.log`, never to a pipe that could fill up)."""
        log = await asyncio.to_thread(self.log.open, "ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runtime", "run", str(self.settings), cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL, stderr=log, env={**os.environ})
        finally:
            log.close()  # the child has its own copy

    async def kill(self) -> None:
        """SIGKILL: no cleanup, no flush beyond what was fsynced."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def terminate(self) -> int:
        """SIGTERM and the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(BOUND):
            return await self.proc.wait()

    def tail(self) -> str:
        """The end of the process log, for failure messages."""
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    async def module(self) -> dict[str, Any] | None:
        """The module as the API shows it, or None while the API is not up."""
        try:
            async with self.http.get(self.base, headers={"X-API-Key": API_KEY}) as resp:
                if resp.status != 200:
                    return None
                module: dict[str, Any] = await resp.json()
                return module
        except aiohttp.ClientConnectionError:
            return None

    async def gateway(self, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Wait for the module's `gateway` state to meet `condition`; return it."""
        async with asyncio.timeout(BOUND):
            while True:
                module = await self.module()
                if module is not None and module["status"] == "running" and "gateway" in module["state"]:
                    stats: dict[str, Any] = module["state"]["gateway"]
                    if condition(stats):
                        return stats
                assert self.proc is not None and self.proc.returncode is None, f"runtime exited:\n{self.tail()}"
                await asyncio.sleep(0.02)

    async def submit(self, n: int) -> bool:
        """Send call n; True when it was accepted (HTTP 200 with every item accepted)."""
        try:
            async with self.http.post(f"{self.base}/exec/send_measurements", json={"measurements": call(n)},
                                      headers={"X-API-Key": API_KEY}) as resp:
                if resp.status != 200:
                    return False
                body = await resp.json()
        except aiohttp.ClientError:
            return False  # the process died under the call: not acknowledged, so not accepted
        assert body["result"]["accepted"] == PER_CALL, body
        return True


async def until(condition: Callable[[], bool]) -> None:
    """Wait for a condition of the in-process fake server (bounded)."""
    async with asyncio.timeout(BOUND):
        while not condition():
            await asyncio.sleep(0.01)


async def test_sigkill_of_the_runtime_mid_burst_stores_every_accepted_measurement_once(
        broker: Mosquitto, eb: Eb, tmp_path: Path) -> None:
    port = free_port()
    settings = write_settings(tmp_path / "site.yaml", site(broker, eb, port, tmp_path / "state"))
    accepted: list[int] = []
    attempted = 0
    # No keep-alive: every call opens its own connection, so none outlives the killed process.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        first = RuntimeProcess(settings, tmp_path / "first.log", http, port)
        second = RuntimeProcess(settings, tmp_path / "second.log", http, port)
        try:
            await first.start()
            await first.gateway(lambda g: g["pending"] == 0)

            # Delivered and answered: the 2xx is recorded and the spool compacted.
            for n in range(DELIVERED_FIRST):
                attempted = n + 1
                assert await first.submit(n), first.tail()
                accepted.append(n)
                await first.gateway(lambda g: g["delivered"] == len(accepted) * PER_CALL and g["pending"] == 0)

            # From here the server stores what it gets but holds its answers: a request is in flight.
            eb.server.hold_answers()
            for n in range(DELIVERED_FIRST, KILL_AFTER):
                attempted = n + 1
                assert await first.submit(n), first.tail()
                accepted.append(n)
            await until(lambda: eb.server.held >= 1)
            stored_before_kill = len(eb.server.stored())
            assert stored_before_kill > DELIVERED_FIRST * PER_CALL  # the held request was stored

            # The rest of the burst keeps coming while the process is killed.
            going = asyncio.Event()

            async def rest_of_burst() -> None:
                nonlocal attempted
                for n in range(KILL_AFTER, CALLS):
                    attempted = n + 1
                    if not await first.submit(n):
                        return
                    accepted.append(n)
                    going.set()

            burst = asyncio.create_task(rest_of_burst())
            async with asyncio.timeout(BOUND):
                await going.wait()
            await first.kill()
            async with asyncio.timeout(BOUND):
                await burst
            assert len(accepted) < CALLS, "the kill must land in the middle of the burst"

            # Restart with the same settings and state directory, answers still held: `pending` cannot move.
            await second.start()
            at_restart = await second.gateway(lambda g: True)
            pending_at_restart = at_restart["pending"]
            not_delivered = (len(accepted) - DELIVERED_FIRST) * PER_CALL
            # A call cut by the kill may have reached the spool without its answer (not accepted, still sent).
            assert not_delivered <= pending_at_restart <= not_delivered + PER_CALL, (at_restart, second.tail())

            eb.server.release_answers()
            done = await second.gateway(lambda g: g["pending"] == 0)
            assert done["delivered"] == pending_at_restart
            assert done["dead_letters"] == 0
            assert await second.terminate() == 0, second.tail()
        finally:
            eb.server.release_answers()
            await first.kill()
            await second.kill()

    sent = {m["time"]: m for n in range(attempted) for m in call(n)}
    expected = {m["time"]: m for n in accepted for m in call(n)}
    stored = [m for m in eb.server.stored() if m["vendor_id"] == "crash"]
    copies = Counter(m["time"] for m in stored)
    missing = expected.keys() - copies.keys()
    assert not missing, f"{len(missing)} accepted measurements lost, e.g. {sorted(missing)[:5]}"
    assert all(n == 1 for n in copies.values()), "a measurement is stored more than once"
    assert copies.keys() <= sent.keys(), "the server holds measurements nobody sent"
    assert all(m["value"] == sent[m["time"]]["value"] for m in stored)
    # Resends across the crash happened on the wire (what the server stored but had not yet answered
    # was sent again after the restart); the duplicate-timestamp rule dropped every copy.
    assert 0 < eb.server.duplicates_dropped <= pending_at_restart
    assert sum(eb.server.batch_sizes) == len(eb.server.stored()) + eb.server.duplicates_dropped
