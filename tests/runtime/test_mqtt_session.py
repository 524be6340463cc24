"""The supervised MQTT session against a fake broker that refuses: backoff per CONNACK code."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Literal

import pytest
from gmqtt.mqtt.handler import MqttPackageHandler

from runtime.errors import ConnectionRefused
from runtime.mqtt import Backoff, MqttEndpoint, MqttSession, SessionListener
from tests.support.broker import Mosquitto


class Refuser:
    """A TCP server answering every MQTT 3.1.1 CONNECT with a CONNACK carrying `code`."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.attempts: list[float] = []
        self.levels: list[int] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            connect = await reader.read(1024)
            at = connect.find(b"MQTT")
            if at >= 0:
                self.levels.append(connect[at + 4])
            self.attempts.append(asyncio.get_running_loop().time())
            writer.write(bytes((0x20, 0x02, 0x00, self.code)))
            await writer.drain()
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


class Recorder(SessionListener):
    def __init__(self) -> None:
        self.refusals: list[int] = []

    def on_refused(self, session: MqttSession, error: ConnectionRefused) -> None:
        self.refusals.append(error.code)


async def test_server_unavailable_retries_with_growing_capped_delays(caplog: pytest.LogCaptureFixture) -> None:
    broker = Refuser(3)
    await broker.start()
    listener = Recorder()
    session = MqttSession(MqttEndpoint(f"mqtt://127.0.0.1:{broker.port}", protocol="3.1.1"), listener,
                          name="t", backoff=Backoff(initial=0.1, cap=0.4, credentials_retry=60))
    with caplog.at_level(logging.WARNING, logger="runtime.mqtt"):
        session.start()
        try:
            for _ in range(500):
                if len(broker.attempts) >= 5:
                    break
                await asyncio.sleep(0.02)
        finally:
            await session.stop()
            await broker.stop()
    assert listener.refusals[:5] == [3] * 5
    delays = [float(m.group(1)) for r in caplog.records
              if (m := re.search(r"code 3.*retrying in ([0-9.]+) s", r.getMessage()))]
    assert delays[:5] == [0.1, 0.2, 0.4, 0.4, 0.4]  # the policy itself, read from the log: no wall-time check
    assert not session.connected


@pytest.mark.parametrize("code", [4, 5])
async def test_credential_refusal_waits_long_and_says_why(code: int, caplog: pytest.LogCaptureFixture) -> None:
    broker = Refuser(code)
    await broker.start()
    session = MqttSession(MqttEndpoint(f"mqtt://127.0.0.1:{broker.port}", username="key-id", protocol="3.1.1"),
                          Recorder(), name="t", backoff=Backoff(initial=0.01, cap=0.02, credentials_retry=60))
    with caplog.at_level(logging.ERROR, logger="runtime.mqtt"):
        session.start()
        for _ in range(100):
            if broker.attempts:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # a fast retry would have happened many times by now
    attempts = len(broker.attempts)
    await session.stop()
    await broker.stop()
    assert attempts == 1
    assert any("refused the credentials of user 'key-id'" in r.getMessage() for r in caplog.records)


async def test_mqtt5_refused_falls_back_to_3_1_1() -> None:
    broker = Refuser(1)  # "unacceptable protocol version"
    await broker.start()
    session = MqttSession(MqttEndpoint(f"mqtt://127.0.0.1:{broker.port}"), Recorder(), name="t",
                          backoff=Backoff(initial=0.05, cap=0.1))
    session.start()
    try:
        for _ in range(300):
            if len(broker.levels) >= 2:
                break
            await asyncio.sleep(0.02)
    finally:
        await session.stop()
        await broker.stop()
    assert broker.levels[:2] == [5, 4]  # MQTT 5 first, then 3.1.1


class Inbox(SessionListener):
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, int, bool]] = []

    def on_message(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.messages.append((topic, payload, qos, retain))


@contextlib.asynccontextmanager
async def pair(broker: Mosquitto, protocol: Literal["5", "3.1.1"], name: str,
               topics: str) -> AsyncIterator[tuple[Inbox, MqttSession]]:
    """A reader subscribed to `topics` (its inbox) and a writer, both connected."""
    inbox = Inbox()
    reader = MqttSession(MqttEndpoint(broker.url, protocol=protocol, client_id=f"{name}-reader-{protocol}"), inbox,
                         name="r")
    writer = MqttSession(MqttEndpoint(broker.url, protocol=protocol, client_id=f"{name}-writer-{protocol}"), Inbox(),
                         name="w")
    reader.start()
    writer.start()
    try:
        assert await reader.wait_connected(10) and await writer.wait_connected(10)
        reader.subscribe({topics: 1})
        await asyncio.sleep(0.2)  # the SUBACK
        yield inbox, writer
    finally:
        await writer.stop()
        await reader.stop()


async def received(inbox: Inbox, count: int, seconds: float = 5.0) -> list[tuple[str, bytes, int, bool]]:
    """The inbox once it holds `count` messages (or after `seconds`)."""
    for _ in range(int(seconds * 100)):
        if len(inbox.messages) >= count:
            break
        await asyncio.sleep(0.01)
    return inbox.messages


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_plain_publishes_take_the_lean_receive_path(broker: Mosquitto, protocol: Literal["5", "3.1.1"],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    slow: list[int] = []
    gmqtt_parser = MqttPackageHandler._handle_publish_packet

    def counting(handler: MqttPackageHandler, cmd: int, raw: bytes) -> None:
        slow.append(cmd)
        gmqtt_parser(handler, cmd, raw)

    monkeypatch.setattr(MqttPackageHandler, "_handle_publish_packet", counting)
    async with pair(broker, protocol, "lean", "lean/#") as (inbox, writer):
        for qos in (0, 1):
            writer.publish_batch([(f"lean/{qos}/{i}", b"%d" % i) for i in range(200)], qos, False)
        got = sorted((t, p, q) for t, p, q, _ in await received(inbox, 400))
    assert got == sorted((f"lean/{q}/{i}", b"%d" % i, q) for q in (0, 1) for i in range(200))
    assert slow == []  # none went through gmqtt's parser


async def test_a_message_larger_than_one_socket_read_arrives_whole(broker: Mosquitto) -> None:
    big = bytes(range(256)) * 800  # 204,800 bytes: several 64 KiB reads
    async with pair(broker, "5", "big", "big/#") as (inbox, writer):
        writer.publish_batch([("big/0", b"before"), ("big/1", big), ("big/2", b"after")], 1, False)
        got = [(t, p) for t, p, _, _ in await received(inbox, 3)]
    assert got == [("big/0", b"before"), ("big/1", big), ("big/2", b"after")]


class SlowInbox(Inbox):
    """Takes its time over each message and records how much the session had read and not yet handled."""

    def __init__(self) -> None:
        super().__init__()
        self.session: MqttSession | None = None
        self.unhandled: list[int] = []

    def on_message(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        super().on_message(topic, payload, qos, retain)
        assert self.session is not None and self.session._client is not None
        reader = self.session._client._connection._protocol._stream_reader
        self.unhandled.append(len(reader._buffer))
        time.sleep(0.0002)  # a handler slower than the input


async def test_a_reader_slower_than_its_input_holds_the_broker_back(broker: Mosquitto) -> None:
    inbox = SlowInbox()
    reader = MqttSession(MqttEndpoint(broker.url, protocol="3.1.1", client_id="slow-reader"), inbox, name="r")
    inbox.session = reader
    writer = MqttSession(MqttEndpoint(broker.url, protocol="3.1.1", client_id="fast-writer"), Inbox(), name="w")
    reader.start()
    writer.start()
    try:
        assert await reader.wait_connected(10) and await writer.wait_connected(10)
        reader.subscribe({"flood/#": 0})
        await asyncio.sleep(0.2)  # the SUBACK
        count, payload = 5000, b"p" * 1000
        for i in range(0, count, 500):
            writer.publish_batch([(f"flood/{n}", payload) for n in range(i, i + 500)], 0, False)
        got = await received(inbox, count, seconds=30)
    finally:
        await writer.stop()
        await reader.stop()
    assert [t for t, _, _, _ in got] == [f"flood/{n}" for n in range(count)]
    # 5 MB went through; the reader never held more than about one socket read of it: it takes data off the
    # socket only as fast as it handles it, and the rest waits in the kernel and, beyond that, in the broker.
    assert max(inbox.unhandled) < 512 * 1024
