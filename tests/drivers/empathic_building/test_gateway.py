"""The gateway: batching, 413 splits, retries, 401 refresh, dead letters, supersession, the spool."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from drivers.empathic_building.api import EbApi, Response
from drivers.empathic_building.auth import StaticToken, TokenManager, UserTokens
from drivers.empathic_building.errors import InvalidMeasurement, TransientApiError
from drivers.empathic_building.gateway import Gateway
from drivers.empathic_building.models import Temperature
from drivers.empathic_building.spool import SPOOL_FILE, DeadLetter, DeadLetterFile, Spool
from runtime.clock import FakeClock
from runtime.testing import FakeMetrics
from tests.drivers.empathic_building.conftest import EMAIL, GATEWAY_TOKEN, PASSWORD, DriverFactory, Eb, eventually

T0 = 1_767_225_600_000
log = logging.getLogger("test.eb.gateway")
GatewayFactory = Callable[..., Gateway]


def temp(i: int, vendor: str = "sensor-a", value: float = 21.0) -> dict[str, Any]:
    return {"type": "temperature", "vendor_id": vendor, "time": T0 + i, "value": value}


@pytest.fixture
async def gateways(eb: Eb, http: aiohttp.ClientSession, clock: FakeClock,
                   tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    tasks: list[asyncio.Task[None]] = []
    token_managers: list[TokenManager] = []

    def make(tokens: TokenManager | None = None, *, start: bool = True, directory: Path | None = None,
             **options: Any) -> Gateway:
        tokens = tokens or StaticToken(GATEWAY_TOKEN)
        token_managers.append(tokens)
        folder = directory or tmp_path
        gateway = Gateway(EbApi(http, eb.url, tokens, timeout=5.0), Spool(folder), DeadLetterFile(folder),
                          clock=clock, logger=log, metrics=FakeMetrics(), **options)
        if start:
            tasks.append(asyncio.create_task(gateway.run(), name="test-gateway"))
        return gateway

    yield make
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for tokens in token_managers:
        await tokens.close()


async def opened(gateway: Gateway) -> Gateway:
    await gateway.open()
    return gateway


async def drained(gateway: Gateway, clock: FakeClock | None = None) -> None:
    await eventually(lambda: gateway.pending == 0 and gateway.stats.pending == 0, clock=clock,
                     step=1.0 if clock else 0.0)


async def test_delivers_and_compacts_the_spool(eb: Eb, gateways: GatewayFactory, tmp_path: Path) -> None:
    gateway = await opened(gateways())
    result = await gateway.submit([temp(i) for i in range(100)])
    assert result.accepted == 100
    await drained(gateway)
    assert len(eb.server.stored()) == 100
    assert gateway.stats.delivered == 100
    assert (tmp_path / SPOOL_FILE).stat().st_size == 0


async def test_413_splits_the_batch_and_retries_the_halves(eb: Eb, gateways: GatewayFactory) -> None:
    eb.server.max_request_bytes = 2500
    gateway = await opened(gateways())
    await gateway.submit([temp(i) for i in range(200)])
    await drained(gateway)
    assert len(eb.server.stored()) == 200
    assert max(eb.server.batch_sizes) * 75 < 2500
    assert eb.server.duplicates_dropped == 0


async def test_item_too_large_for_any_request_goes_to_dead_letters(eb: Eb, gateways: GatewayFactory) -> None:
    gateway = await opened(gateways(max_request_bytes=1024))
    big = {"type": "generic_event", "vendor_id": "s", "time": T0, "value": "X", "metadata": {"blob": "y" * 2000}}
    await gateway.submit([big, temp(1)])
    await drained(gateway)
    assert len(eb.server.stored()) == 1
    assert gateway.stats.dead_letters == 1
    assert (await gateway.dead_letters.list())[0].measurement["type"] == "generic_event"


async def test_5xx_retries_with_capped_exponential_backoff(eb: Eb, gateways: GatewayFactory,
                                                           clock: FakeClock) -> None:
    eb.server.fail_next = [503, 500, 502, 503, 504]
    gateway = await opened(gateways(backoff=(1.0, 4.0)))
    await gateway.submit([temp(1)])
    await drained(gateway, clock)
    assert gateway.retry_delays == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert len(eb.server.stored()) == 1
    assert eb.server.measurement_requests == 6


async def test_timeout_is_retried_and_the_server_absorbs_the_resend(eb: Eb, gateways: GatewayFactory,
                                                                    clock: FakeClock) -> None:
    eb.server.answer_delay = 0.3  # stored, but the answer comes after the client gave up
    gateway = await opened(gateways(request_timeout=0.05))
    await gateway.submit([temp(1)])
    await eventually(lambda: bool(gateway.retry_delays))
    eb.server.answer_delay = 0.0
    await drained(gateway, clock)
    assert len(eb.server.stored()) == 1
    assert eb.server.duplicates_dropped == 1  # the resend on the wire, dropped by the duplicate-timestamp rule


async def test_401_refreshes_the_token_and_retries(eb: Eb, gateways: GatewayFactory, http: aiohttp.ClientSession,
                                                   clock: FakeClock) -> None:
    tokens = UserTokens(http, eb.url, EMAIL, PASSWORD, clock=clock, logger=log, keepalive=False)
    gateway = await opened(gateways(tokens))
    await gateway.submit([temp(1)])
    await drained(gateway)
    eb.server.expire_access_tokens()
    await gateway.submit([temp(2)])
    await drained(gateway)
    assert len(eb.server.stored()) == 2
    assert (eb.server.logins, eb.server.refreshes) == (1, 1)
    assert gateway.retry_delays == []


async def test_400_moves_only_the_rejected_items_to_dead_letters(eb: Eb, gateways: GatewayFactory) -> None:
    eb.server.reject_vendor_ids = {"foreign"}
    gateway = await opened(gateways())
    items = [temp(i) for i in range(10)]
    items.insert(4, temp(99, vendor="foreign"))
    await gateway.submit(items)
    await drained(gateway)
    assert sorted(m["time"] - T0 for m in eb.server.stored()) == list(range(10))
    letters = await gateway.dead_letters.list()
    assert [(d.status, d.measurement["vendor_id"]) for d in letters] == [(400, "foreign")]
    assert "not allowed" in letters[0].reason
    assert gateway.stats.dead_letters == 1
    assert gateway._metrics.counts[("dropped", "dead_letter")] == 1  # type: ignore[attr-defined]


async def test_same_sensor_type_and_timestamp_keeps_the_latest(eb: Eb, gateways: GatewayFactory) -> None:
    gateway = await opened(gateways(start=False))
    first = await gateway.submit([temp(1, value=20.0), temp(1, value=20.5)])
    assert (first.accepted, first.superseded) == (1, 1)
    second = await gateway.submit([temp(1, value=21.0), temp(1, vendor="other")])
    assert (second.accepted, second.superseded) == (2, 1)
    assert gateway.pending == 2
    task = asyncio.create_task(gateway.run())
    await drained(gateway)
    stored = {(m["vendor_id"], m["value"]) for m in eb.server.stored()}
    assert stored == {("sensor-a", 21.0), ("other", 21.0)}
    late = await gateway.submit([temp(1, value=22.0)])  # the server already holds this timestamp
    assert (late.accepted, late.duplicates) == (0, 1)
    assert gateway.stats.superseded == 2
    assert eb.server.duplicates_dropped == 0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_invalid_measurements_are_rejected_before_queuing(gateways: GatewayFactory) -> None:
    gateway = await opened(gateways(start=False))
    with pytest.raises(InvalidMeasurement, match=r"item 1: invalid humidity .*`\$\.value`"):
        await gateway.submit([temp(1), {"type": "humidity", "vendor_id": "h", "time": T0, "value": 45}])
    assert gateway.pending == 0


async def test_valid_to_comes_from_settings(eb: Eb, gateways: GatewayFactory) -> None:
    gateway = await opened(gateways(valid_to=15 * 60_000))
    await gateway.submit([temp(1), Temperature(vendor_id="x", time=T0, value=1.0, valid_to=T0 + 5)])
    await drained(gateway)
    valid = {m["vendor_id"]: m["valid_to"] - m["time"] for m in eb.server.stored()}
    assert valid == {"sensor-a": 15 * 60_000, "x": 5}


async def test_spool_survives_a_restart(eb: Eb, gateways: GatewayFactory, tmp_path: Path) -> None:
    first = await opened(gateways(start=False))
    await first.submit([temp(i) for i in range(5)])
    first.spool.close()
    second = await opened(gateways())
    await drained(second)
    assert len(eb.server.stored()) == 5


async def test_spool_ignores_a_torn_last_line_and_counts_corrupt_ones(tmp_path: Path) -> None:
    good = b'{"s":1,"m":{"type":"temperature","value":1.0,"vendor_id":"a","time":1}}\n'
    (tmp_path / SPOOL_FILE).write_bytes(b"garbage\n" + good + b'{"s":2,"m":{"type":"temp')
    spool = Spool(tmp_path)
    pending = await spool.open()
    assert [e.seq for e in pending] == [1]
    assert spool.corrupt_lines == 1
    assert (tmp_path / SPOOL_FILE).read_bytes() == good  # rewritten clean before the next append
    entries = await spool.append([(pending[0].item, pending[0].raw)])
    assert entries[0].seq == 2
    spool.close()


async def test_no_duplicates_on_the_wire_without_a_crash(eb: Eb, gateways: GatewayFactory,
                                                         clock: FakeClock) -> None:
    eb.server.error_rate = 0.3
    gateway = await opened(gateways(max_batch_items=20))
    for chunk in range(10):
        await gateway.submit([temp(chunk * 50 + i) for i in range(50)])
    await drained(gateway, clock)
    assert len(eb.server.stored()) == 500
    assert eb.server.duplicates_dropped == 0


async def test_dead_letters_command_and_send_measurements(eb: Eb, load_driver: DriverFactory) -> None:
    eb.server.reject_vendor_ids = {"foreign"}
    driver = await load_driver(eb.gateway_settings())
    result = await driver.execute("send_measurements", {"measurements": [temp(1), temp(2, vendor="foreign")]})
    assert result == {"accepted": 2, "superseded": 0, "duplicates": 0}
    await eventually(lambda: (driver.ctx.get_state("gateway") or {}).get("dead_letters") == 1)
    letters = await driver.execute("dead_letters", {"limit": 10})
    assert [d["measurement"]["vendor_id"] for d in letters] == ["foreign"]
    assert driver.ctx.get_state("gateway")["delivered"] == 1
    assert driver.ctx.connected is True  # type: ignore[attr-defined]
    with pytest.raises(InvalidMeasurement):
        await driver.execute("send_measurements", {"measurements": [{"type": "co2", "vendor_id": "c"}]})


async def test_spool_and_dead_letters_make_their_directory(tmp_path: Path) -> None:
    folder = tmp_path / "state" / "mod-gw"
    spool = Spool(folder)
    assert await spool.open() == []
    assert (folder / SPOOL_FILE).exists()
    spool.close()
    letters = DeadLetterFile(tmp_path / "other" / "mod-gw")
    assert await letters.open() == 0
    assert not letters.path.parent.exists()  # counting what is there makes nothing
    await letters.add([DeadLetter(time=1.0, status=400, reason="invalid", measurement={"type": "x"})])
    assert await letters.open() == 1


class StalledApi(EbApi):
    """Requests never get an answer, and cancelling one comes out as `TransientApiError` (as when the HTTP
    client reports the connection it was told to drop)."""

    def __init__(self) -> None:
        super().__init__(cast(aiohttp.ClientSession, None), "http://127.0.0.1:9", StaticToken(GATEWAY_TOKEN))
        self.requests = 0
        self.sending = asyncio.Event()

    async def request(self, method: str, path: str, *, body: bytes | None = None,
                      form: dict[str, str] | None = None, timeout: float | None = None) -> Response:
        """Wait for an answer that never comes."""
        self.requests += 1
        self.sending.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise TransientApiError(f"{method} {path}: ServerDisconnectedError") from None
        raise AssertionError("unreachable")


async def test_a_cancelled_sender_stops_even_when_the_request_reports_an_error(clock: FakeClock,
                                                                              tmp_path: Path) -> None:
    api = StalledApi()
    gateway = Gateway(api, Spool(tmp_path), DeadLetterFile(tmp_path), clock=clock, logger=log, metrics=FakeMetrics())
    await gateway.open()
    assert (await gateway.submit([temp(1)])).accepted == 1
    task = asyncio.create_task(gateway.run(), name="test-gateway")
    await api.sending.wait()
    task.cancel()
    async with asyncio.timeout(5.0):  # a failure bound only
        await asyncio.wait({task})
    assert task.cancelled()
    await clock.advance(600)
    assert api.requests == 1 and gateway.retry_delays == []
    assert gateway.pending == 1  # still spooled for the next run
    gateway.spool.close()
