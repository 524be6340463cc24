"""The driver against a real mosquitto: every type over the wire, TLS with credentials, broker restarts."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trustme

from drivers.haltian import HaltianDriver, HaltianSettings
from drivers.haltian.simulator import HaltianSimulator
from runtime.clock import SystemClock
from runtime.mqtt import MqttEndpoint, MqttSession, SessionListener
from runtime.testing import FakeModuleContext
from runtime.transports import RuntimeTransports
from tests.drivers.haltian.cases import CASES, GROUP_TYPES
from tests.drivers.haltian.conftest import API_KEY, DEV_A, GROUP, INTEGRATION, PREFIX, Shared, payload
from tests.support.broker import Mosquitto, free_port
from tests.support.subscriber import Subscriber

pytestmark = pytest.mark.broker


async def until(check: Callable[[], bool], *, timeout: float = 15.0, action: Callable[[], None] | None = None,
                what: str = "condition") -> None:
    """Poll `check` (doing `action` each round) until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        if action is not None:
            action()
        await asyncio.sleep(0.05)


def _state_is(ctx: FakeModuleContext, key: str, expected: Any) -> bool:
    return bool(ctx.states.get(key) == expected)


def _detail_is(ctx: FakeModuleContext, device: str, key: str, expected: Any) -> bool:
    return bool(ctx.states["devices"][device].get(key) == expected)


class Site:
    """Modules on real transports and the real clock."""

    def __init__(self, state_root: Path) -> None:
        self.transports = RuntimeTransports()
        self.shared = Shared()
        self.clock = SystemClock()
        self.state_root = state_root
        self.loaded: list[tuple[HaltianDriver, FakeModuleContext]] = []

    async def module(self, module_id: str, **settings: Any) -> tuple[HaltianDriver, FakeModuleContext]:
        """Load a module."""
        state_dir = self.state_root / module_id
        state_dir.mkdir(parents=True, exist_ok=True)
        ctx = FakeModuleContext(module_id, clock=self.clock, state_dir=state_dir,  # type: ignore[arg-type]
                                transports=self.transports, shared=self.shared)  # type: ignore[arg-type]
        driver = HaltianDriver(ctx, msgspec.convert(settings, HaltianSettings))
        await driver.on_load()
        await driver.on_update()
        self.loaded.append((driver, ctx))
        return driver, ctx

    async def close(self) -> None:
        """Unload everything."""
        for driver, ctx in self.loaded:
            await driver.on_unload()
            await ctx.teardown()
        await self.transports.close()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    """Real transports; unloaded at the end."""
    s = Site(tmp_path)
    yield s
    await s.close()


def conn(url: str, **extra: Any) -> dict[str, Any]:
    """Connection settings of the driver record."""
    return {"url": url, "integration_id": INTEGRATION, "api_key_id": API_KEY, "api_key_token": "t", **extra}


async def test_every_type_and_spelling_over_the_broker(broker: Mosquitto, site: Site) -> None:
    driver, ctx = await site.module("mod-room", **conn(broker.url), devices=[DEV_A], device_group=GROUP)
    stream = driver.stream
    assert stream is not None
    await until(lambda: stream.up, what="the stream to connect")
    with Subscriber(broker.port) as pub:
        probe_at = [time.time()]

        def probe() -> None:
            probe_at[0] += 0.001
            pub.publish(f"{PREFIX}/measurements/rssi/{DEV_A}", payload(-60, probe_at[0]))

        await until(lambda: "rssi" in ctx.states["devices"][DEV_A], action=probe, what="the subscription")
        at = time.time()
        sent = 0
        for case in CASES:
            for i, spelling in enumerate(dict.fromkeys(case.spellings)):
                device = GROUP if case.detail in GROUP_TYPES else DEV_A
                at += 0.01
                pub.publish(f"{PREFIX}/measurements/{spelling}/{device}",
                            payload(case.value, at, zulu=i == 0, own=spelling if i else None))
                sent += 1
                if case.state is not None and case.detail != "directional_movement":
                    await until(partial(_state_is, ctx, case.state, case.expected), what=f"{spelling}")
                await until(partial(_detail_is, ctx, device, case.detail, case.value), what=f"{spelling} in detail")
    assert ctx.connected is True
    assert not any(k[0] == "decode_error" for k in ctx.metrics.counts)


async def test_broker_restart_resubscribes_and_data_flows_again(broker: Mosquitto, site: Site) -> None:
    driver, ctx = await site.module("mod-room", **conn(broker.url), devices=[DEV_A])
    stream = driver.stream
    assert stream is not None
    session = stream.session
    assert isinstance(session, MqttSession)
    await until(lambda: stream.up, what="the stream to connect")
    value = [0]

    def send() -> None:
        value[0] += 1
        with Subscriber(broker.port) as pub:
            pub.publish(f"{PREFIX}/measurements/co2/{DEV_A}", payload(400 + value[0], time.time()))

    await until(lambda: ctx.states.get("co2") is not None, action=send, what="data before the restart")
    await asyncio.to_thread(broker.restart)
    await until(lambda: session.reconnects >= 1 and stream.up, what="the reconnect")
    before = ctx.states["co2"]
    await until(lambda: ctx.states["co2"] != before, action=send, what="data after the restart")
    assert driver.stream is stream and stream.session is session
    assert ctx.connected is True


@pytest.fixture
def tls_broker(tmp_path: Path) -> Any:
    """A mosquitto with only a TLS listener (trustme CA) that requires a password."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file = tmp_path / "ca.pem"
    cert_file = tmp_path / "server.pem"
    key_file = tmp_path / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    passwords = tmp_path / "passwd"
    passwords.touch()
    subprocess.run(["/usr/bin/mosquitto_passwd", "-b", str(passwords), API_KEY, "right-token"], check=True,
                   capture_output=True)
    port = free_port()
    # `user root` only matters when the tests run as root: mosquitto would otherwise drop to its own user,
    # which cannot read files in pytest's private tmp_path.
    broker = Mosquitto(port=port, default_listener=False, extra=(
        f"user root\nlistener {port} 127.0.0.1\ncafile {ca_file}\ncertfile {cert_file}\nkeyfile {key_file}\n"
        f"allow_anonymous false\npassword_file {passwords}\n"))
    broker.start()
    yield broker, ca_file
    broker.close()


@pytest.mark.skipif(not Path("/usr/bin/mosquitto_passwd").exists(), reason="mosquitto_passwd is not installed")
async def test_tls_wrong_password_then_new_token(tls_broker: Any, site: Site,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    broker, ca_file = tls_broker
    caplog.set_level(logging.WARNING)
    url = f"mqtts://127.0.0.1:{broker.port}"
    settings = conn(url, api_key_token="wrong-token", ca_file=str(ca_file), devices=[DEV_A])
    driver, ctx = await site.module("mod-room", **settings)
    stream = driver.stream
    assert stream is not None
    await until(lambda: "refused the credentials" in caplog.text, what="the credential log line")
    line = next(r for r in caplog.records if "refused the credentials" in r.getMessage())
    assert line.levelno == logging.ERROR
    assert API_KEY in line.getMessage()
    assert stream.refusal is not None and stream.refusal.code in (4, 5)
    assert ctx.connected is False

    # The session now waits minutes before retrying; a new token must reconnect at once.
    driver.settings = msgspec.convert({**settings, "api_key_token": "right-token"}, HaltianSettings)
    await driver.on_update()
    await until(lambda: stream.up, timeout=10, what="the reconnect with the new token")
    with _TlsPublisher(broker.port, ca_file) as pub:
        await until(lambda: ctx.states.get("co2") is not None,
                    action=lambda: pub(f"{PREFIX}/measurements/co2/{DEV_A}", payload(555, time.time())),
                    what="data over TLS")
    assert ctx.states["co2"] == 555
    assert ctx.connected is True


async def test_tls_is_verified_by_default(tls_broker: Any, site: Site, caplog: pytest.LogCaptureFixture) -> None:
    broker, _ca_file = tls_broker
    caplog.set_level(logging.WARNING)
    url = f"mqtts://127.0.0.1:{broker.port}"
    driver, ctx = await site.module("mod-room", **conn(url, api_key_token="right-token", devices=[DEV_A]))
    assert driver.stream is not None
    await until(lambda: "CERTIFICATE_VERIFY_FAILED" in caplog.text or "certificate verify failed" in caplog.text,
                what="the verification failure")
    assert driver.stream.up is False
    assert ctx.connected is False


async def test_tls_insecure_connects_with_a_warning(tls_broker: Any, site: Site,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    broker, _ca_file = tls_broker
    caplog.set_level(logging.WARNING)
    url = f"mqtts://127.0.0.1:{broker.port}"
    driver, _ = await site.module("mod-room", **conn(url, api_key_token="right-token", tls_insecure=True,
                                                     devices=[DEV_A]))
    stream = driver.stream
    assert stream is not None
    await until(lambda: stream.up, what="the insecure connection")
    assert "verification is OFF" in caplog.text


class _TlsPublisher:
    """A paho publisher for the TLS listener."""

    def __init__(self, port: int, ca_file: Path) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="tls-publisher")
        self._client.tls_set(ca_certs=str(ca_file))
        self._client.username_pw_set(API_KEY, "right-token")
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def __call__(self, topic: str, body: bytes) -> None:
        self._client.publish(topic, body, qos=1).wait_for_publish(10)

    def __enter__(self) -> _TlsPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class _Quiet(SessionListener):
    pass


async def test_simulator_feeds_modules_through_the_broker(broker: Mosquitto, site: Site) -> None:
    sim = HaltianSimulator(integration=INTEGRATION, api_key=API_KEY, devices=8, rate=2000, malformed=0.05, seed=3)
    settings = sim.settings(url=broker.url)
    record = settings["drivers"][0]["settings"]
    loaded = [await site.module(m["id"], **record, **m["settings"]) for m in settings["modules"]]
    streams = {id(d.stream) for d, _ in loaded}
    assert len(streams) == 1
    stream = loaded[0][0].stream
    assert stream is not None
    await until(lambda: stream.up, what="the stream to connect")
    publisher = MqttSession(MqttEndpoint(url=broker.url, protocol="3.1.1", client_id="sim-test"), _Quiet(),
                            name="sim")
    publisher.start()
    try:
        assert await publisher.wait_connected(10)
        for _ in range(2):  # the first round may race the driver's SUBACK
            await sim.run(publisher, count=600, qos=1)

        def complete() -> bool:
            return all({"temperature", "humidity", "co2", "battery", "people_count"} <= set(ctx.states)
                       for _, ctx in loaded)

        await until(complete, what="every room to have its states")
    finally:
        await publisher.stop()
    counts = loaded[0][1].metrics.counts
    assert sum(n for (what, _), n in counts.items() if what in ("decode_error", "dropped")) > 0
    for _, ctx in loaded:
        assert ctx.connected is True
