"""A supervised MQTT session on gmqtt, shared by the publisher and by drivers.

gmqtt's own reconnect policy (a fixed delay, retrying refusals it deems transient) is
replaced by one supervisor task per session: capped exponential backoff, a slow retry
after credential refusals, an immediate retry when credentials change, MQTT 5 with a
fallback to 3.1.1, and subscriptions renewed on every new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any, Literal

import gmqtt
import msgspec
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.mqtt.package import Package

from runtime.errors import ConnectionRefused, RuntimeFault
from runtime.tasks import STOP_TIMEOUT, cancel_and_wait, raise_if_cancelled

_log = logging.getLogger("runtime.mqtt")

# CONNACK codes that mean the credentials are wrong: retrying soon cannot help.
CREDENTIAL_REFUSALS = frozenset({4, 5, 134, 135, 138, 140})
PROTOCOL_REFUSALS = frozenset({1, 132})
SUBSCRIBE_CHUNK = 100


class Will(msgspec.Struct, frozen=True):
    """An MQTT last will."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class MqttEndpoint(msgspec.Struct, frozen=True):
    """Where and how to connect: `mqtt://host:port` or `mqtts://host:port` plus credentials and TLS."""

    url: str
    username: str | None = None
    password: str | None = None
    client_id: str = ""
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive: int = 60
    will: Will | None = None
    connect_timeout: float = 10.0

    @property
    def host(self) -> str:
        """Host name from the URL."""
        return urllib.parse.urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def tls(self) -> bool:
        """True for `mqtts://`."""
        return urllib.parse.urlsplit(self.url).scheme == "mqtts"

    @property
    def port(self) -> int:
        """Port from the URL, or the scheme's default."""
        return urllib.parse.urlsplit(self.url).port or (8883 if self.tls else 1883)


class Backoff(msgspec.Struct, frozen=True):
    """Capped exponential backoff, and the slow retry used after a credential refusal."""

    initial: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    credentials_retry: float = 120.0


class SessionListener:
    """Callbacks of a session; subclass and override what you need."""

    def on_connected(self, session: MqttSession) -> None:
        """A connection is up and subscriptions were sent."""

    def on_disconnected(self, session: MqttSession, reason: str) -> None:
        """The connection went down (or an attempt failed)."""

    def on_refused(self, session: MqttSession, error: ConnectionRefused) -> None:
        """The broker refused the connection with a CONNACK code."""

    def on_message(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """A message arrived on a subscribed topic."""

    def on_acked(self, session: MqttSession, since: float | None) -> None:
        """A QoS 1 publish was acknowledged; `since` is the `perf_counter` time given to `publish`."""

    def on_writable(self, session: MqttSession) -> None:
        """The socket took what waited to be written: `session.writable` is true again."""


class _InflightStorage(gmqtt.storage.PersistentStorage):  # type: ignore[misc]
    """gmqtt's in-flight store that also reports each acknowledgement."""

    def __init__(self, on_ack: Callable[[float | None], None]) -> None:
        super().__init__()
        self._on_ack = on_ack
        self.since: float | None = None
        self._since: dict[int, float] = {}

    def push_message(self, mid: int, raw_package: bytes) -> None:
        super().push_message(mid, raw_package)
        if self.since is not None:
            self._since[mid] = self.since

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        self._on_ack(self._since.pop(mid, None))

    @property
    def count(self) -> int:
        return len(self._messages)


class _Client(gmqtt.Client):  # type: ignore[misc]
    """gmqtt client whose automatic reconnect is handed to the session's supervisor.

    Incoming data is framed here, one pass over each socket read: QoS 0/1 PUBLISH packets without
    MQTT 5 properties (every message of a 3.1.1 session, and the common case on MQTT 5) are parsed in
    place and handed straight to `deliver`, their PUBACKs written together once the read is handled;
    PUBACKs for our own QoS 1 publishes release their packet ids here too; every other packet goes to
    gmqtt's own handler, as gmqtt's framing would hand it over.
    """

    lost: asyncio.Event
    inflight_storage: _InflightStorage
    deliver: Callable[[str, bytes, int, bool], None]
    on_writable: Callable[[], None]
    writable: bool
    _acks: list[bytes]

    async def reconnect(self, delay: bool = False) -> None:
        self.lost.set()

    async def _create_connection(self, *args: Any, **kwargs: Any) -> Any:
        connection = await super()._create_connection(*args, **kwargs)
        protocol = connection._protocol
        # gmqtt's read loop calls `self._read_packet(buffer)` on the protocol: an instance attribute is found first.
        protocol._read_packet = functools.partial(self._read_packets, connection)
        # The transport's flow control (gmqtt ignores it): above its high-water mark it holds what is not yet on
        # the socket, and publishers should wait, where a newer value can still replace an unsent one.
        self.writable = True
        protocol.pause_writing = functools.partial(self._writing, connection, False)
        protocol.resume_writing = functools.partial(self._writing, connection, True)
        return connection

    def _writing(self, connection: Any, writable: bool) -> None:
        if connection is self._connection:
            self.writable = writable
            if writable:
                self.on_writable()

    def _read_packets(self, connection: Any, data: bytes) -> int:
        """Frame the packets of one read (gmqtt's `_read_packet` contract): bytes consumed, -1 when malformed."""
        handler = self._package_handler
        if handler.current_connection is not connection:
            return len(data)  # a superseded connection: gmqtt drops what it still reads, too
        connection._last_data_in = time.monotonic()  # what gmqtt's keep-alive reads, once per read
        publish = self._publish_at
        acked = self.inflight_storage.remove_message_by_mid
        v5 = self._connection_state.protocol_version >= MQTTv50
        size = len(data)
        pos = 0
        while size - pos >= 2:
            i = pos + 1
            length = 0
            shift = 0
            while True:
                if i >= size:
                    return pos
                byte = data[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if byte < 0x80:
                    break
                shift += 7
                if shift > 21:
                    # gmqtt's read loop stops at -1: reconnect now rather than when the keep-alive notices.
                    _log.warning("malformed packet length from the broker; reconnecting")
                    self.lost.set()
                    return -1
            end = i + length
            if end > size:
                return pos
            cmd = data[pos]
            if cmd & 0xF0 == 0x30:
                publish(cmd, data, i, end, v5)
            elif cmd == 0x40 and length >= 2:
                # A PUBACK, as gmqtt handles it (its reason code unread), without its dispatch per packet.
                mid = int.from_bytes(data[i:i + 2], "big")
                handler.id_generator.free_id(mid)
                acked(mid)
            else:
                handler(Package(cmd, data[i:end]))  # gmqtt's handler logs what it fails on
            pos = end
        return pos

    def _publish_at(self, cmd: int, data: bytes, begin: int, end: int, v5: bool) -> None:
        qos = (cmd >> 1) & 3
        start = begin + 2
        stop = start + int.from_bytes(data[begin:start], "big")
        body = stop + (2 if qos else 0) + v5
        if qos == 2 or stop == start or end < body or (v5 and data[body - 1] != 0):
            # QoS 2, a topic alias, properties or a truncated packet: gmqtt knows those.
            self._package_handler(Package(cmd, data[begin:end]))
            return
        try:
            topic = data[start:stop].decode()
        except UnicodeDecodeError:
            self._package_handler(Package(cmd, data[begin:end]))
            return
        if qos:
            if not self._acks:
                asyncio.get_running_loop().call_soon(self._send_acks, self._connection)
            self._acks.append(b"\x40\x02" + data[stop:stop + 2])
        self.deliver(topic, data[body:end], qos, bool(cmd & 1))

    def _send_acks(self, connection: Any) -> None:
        """Write the PUBACKs gathered during one read (on the connection they belong to)."""
        acks, self._acks = self._acks, []
        if connection is self._connection and not self.lost.is_set():
            try:
                connection.send_package(b"".join(acks))
            except (OSError, AttributeError, RuntimeError):
                self.lost.set()


def _varint(value: int) -> bytes:
    """MQTT variable byte integer (remaining length)."""
    if value < 128:
        return bytes((value,))
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | 0x80 if value else digit)
        if not value:
            return bytes(out)


def build_tls_context(endpoint: MqttEndpoint) -> ssl.SSLContext:
    """TLS context for an endpoint: verified by default, insecure only when asked."""
    context = ssl.create_default_context(cafile=endpoint.ca_file)
    if endpoint.cert_file:
        context.load_cert_chain(endpoint.cert_file, endpoint.key_file)
    if endpoint.tls_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class MqttSession:
    """One supervised connection to a broker with a desired set of subscriptions."""

    def __init__(self, endpoint: MqttEndpoint, listener: SessionListener, *, name: str,
                 backoff: Backoff | None = None, logger: logging.Logger | None = None) -> None:
        self.endpoint = endpoint
        self.name = name
        self._listener = listener
        self._backoff = backoff or Backoff()
        self._log = logger or _log
        self._subscriptions: dict[str, int] = {}
        self._client: _Client | None = None
        self._storage: _InflightStorage | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._up = asyncio.Event()
        self.connected = False
        self.reconnects = 0
        self.receive_maximum = 65535  # the broker's limit on unacknowledged QoS 1 publishes (MQTT 5)
        self.last_error: str | None = None
        self.protocol = MQTTv50 if endpoint.protocol == "5" else MQTTv311

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the supervisor task (connects in the background)."""
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"mqtt:{self.name}")

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until connected; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._up.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self, *, graceful: bool = True) -> None:
        """Stop supervising and disconnect (sending DISCONNECT, so no will is published)."""
        self._stopping = True
        self._wake.set()
        client = self._client
        if client is not None and graceful and self.connected:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await client.disconnect()
        task, self._task = self._task, None
        if task is not None:
            # Bounded, and a cancellation of stop() itself is not swallowed.
            await cancel_and_wait([task], STOP_TIMEOUT, self._log, f"{self.name}: the MQTT supervisor")
        self._set_down()

    def update_endpoint(self, endpoint: MqttEndpoint) -> None:
        """Use new settings (e.g. a new token): reconnects at once when they differ."""
        if endpoint == self.endpoint:
            return
        self.endpoint = endpoint
        self.protocol = MQTTv50 if endpoint.protocol == "5" else MQTTv311
        self._wake.set()
        if self._client is not None:
            self._client.lost.set()

    # -- traffic ---------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        """Whether the socket keeps up: false while the transport holds more unsent data than its high-water
        mark (`on_writable` follows when it took it)."""
        client = self._client
        return client is not None and client.writable

    @property
    def inflight(self) -> int:
        """QoS 1 publishes sent and not yet acknowledged on the current connection."""
        return self._storage.count if self._storage is not None else 0

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                since: float | None = None) -> bool:
        """Hand a message to the client; False when not connected. `since` comes back in `on_acked`."""
        client = self._client
        if client is None or not self.connected:
            return False
        if self._storage is not None:
            self._storage.since = since
        try:
            client.publish(topic, payload, qos=qos, retain=retain)
        except (OSError, AttributeError, RuntimeError) as exc:
            self._log.warning("%s: publish failed: %s", self.name, exc)
            client.lost.set()
            return False
        return True

    def publish_batch(self, items: Iterable[tuple[str, bytes]], qos: int, retain: bool,
                      since: float | None = None) -> int:
        """Send PUBLISH packets encoded here, in one socket write; returns how many were handed over.

        gmqtt builds each packet through a Message object and writes each one to the socket on its own;
        this encodes them directly (packet ids from the client's own allocator, QoS 1 packets kept in the
        in-flight storage, so acknowledgements work as for `publish`) and writes them once. `since` comes
        back in `on_acked` for the first QoS 1 message of the batch.
        """
        client = self._client
        if client is None or not self.connected:
            return 0
        conn = client._connection
        proto = conn._protocol
        v5 = proto.proto_ver == MQTTv50
        first_byte = bytes((0x30 | (qos << 1) | int(retain),))
        tail = b"\x00" if v5 else b""  # MQTT 5: empty properties
        storage = self._storage
        ids = proto.id_generator
        parts: list[bytes] = []
        sent = 0
        for topic, payload in items:
            raw_topic = topic.encode()
            if qos:
                try:
                    mid = ids.next_id()
                except OverflowError:  # every packet id in use: the caller keeps the rest pending
                    break
                middle = len(raw_topic).to_bytes(2, "big") + raw_topic + mid.to_bytes(2, "big") + tail
            else:
                middle = len(raw_topic).to_bytes(2, "big") + raw_topic + tail
            size = len(middle) + len(payload)
            packet = b"".join((first_byte, _varint(size), middle, payload))
            if qos and storage is not None:
                storage.since = since if sent == 0 else None
                storage.push_message(mid, packet)
            parts.append(packet)
            sent += 1
        if parts:
            try:
                conn.send_package(b"".join(parts))
            except (OSError, AttributeError, RuntimeError) as exc:
                self._log.warning("%s: publish failed: %s", self.name, exc)
                client.lost.set()
                return 0
        return sent

    def subscribe(self, filters: dict[str, int]) -> None:
        """Add subscriptions (topic filter to QoS); kept across reconnects."""
        fresh = {f: q for f, q in filters.items() if self._subscriptions.get(f) != q}
        if not fresh:
            return
        self._subscriptions.update(fresh)
        if self.connected and self._client is not None:
            self._send_subscribe(self._client, fresh)

    def unsubscribe(self, filters: Iterable[str]) -> None:
        """Remove subscriptions."""
        gone = [f for f in filters if self._subscriptions.pop(f, None) is not None]
        if gone and self.connected and self._client is not None:
            for i in range(0, len(gone), SUBSCRIBE_CHUNK):
                self._client.unsubscribe(gone[i:i + SUBSCRIBE_CHUNK])

    @property
    def subscriptions(self) -> dict[str, int]:
        """The desired subscriptions."""
        return dict(self._subscriptions)

    # -- supervisor --------------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = self._backoff.initial
        while not self._stopping:
            client = self._new_client()
            wait = delay
            try:
                await self._connect(client)
            except ConnectionRefused as exc:
                raise_if_cancelled()
                self.last_error = str(exc)
                if exc.code in PROTOCOL_REFUSALS and self.protocol == MQTTv50:
                    self._log.info("%s: broker refused MQTT 5, falling back to 3.1.1", self.name)
                    self.protocol = MQTTv311
                    wait = 0.0
                elif exc.code in CREDENTIAL_REFUSALS:
                    self._log.error("%s: %s refused the credentials of user %r (%s); check the username and "
                                    "password/token, retrying in %.0f s", self.name, self.endpoint.url,
                                    self.endpoint.username, exc, self._backoff.credentials_retry)
                    wait = self._backoff.credentials_retry
                else:
                    self._log.warning("%s: %s, retrying in %.1f s", self.name, exc, delay)
                    delay = min(self._backoff.cap, delay * self._backoff.factor)
                self._listener.on_refused(self, exc)
                self._listener.on_disconnected(self, str(exc))
            except (OSError, TimeoutError, ssl.SSLError, RuntimeFault) as exc:
                raise_if_cancelled()
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._log.warning("%s: cannot connect to %s: %s; retrying in %.1f s", self.name,
                                  self.endpoint.url, self.last_error, delay)
                delay = min(self._backoff.cap, delay * self._backoff.factor)
                self._listener.on_disconnected(self, self.last_error)
            else:
                raise_if_cancelled()  # connected, although cancelled meanwhile
                delay = self._backoff.initial
                wait = delay
                await client.lost.wait()
                self._set_down()
                self.reconnects += 1
                self.last_error = "connection lost"
                self._log.warning("%s: connection to %s lost; reconnecting", self.name, self.endpoint.url)
                self._listener.on_disconnected(self, "connection lost")
            finally:
                await self._discard(client)
            if self._stopping:
                break
            raise_if_cancelled()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def _new_client(self) -> _Client:
        ep = self.endpoint
        will = None
        if ep.will is not None:
            will = gmqtt.Message(ep.will.topic, ep.will.payload, qos=ep.will.qos, retain=ep.will.retain)
        storage = _InflightStorage(self._acked)
        client = _Client(ep.client_id or None, will_message=will, persistent_storage=storage,
                         logger=logging.getLogger("gmqtt"))
        client.lost = asyncio.Event()
        client.inflight_storage = storage
        client.deliver = self._deliver
        client.on_writable = self._writable_again
        client._acks = []
        if ep.username is not None:
            client.set_auth_credentials(ep.username, ep.password)
        client.on_message = self._on_message
        client.on_connect = self._on_connack
        client.on_disconnect = lambda _client, *_args: _client.lost.set()
        return client

    async def _connect(self, client: _Client) -> None:
        storage = client.inflight_storage
        ep = self.endpoint
        tls: ssl.SSLContext | bool = False
        if ep.tls:
            if ep.tls_insecure:
                self._log.warning("%s: TLS certificate verification is OFF for %s (tls_insecure: true)",
                                  self.name, ep.url)
            tls = build_tls_context(ep)
        connecting = asyncio.ensure_future(client.connect(ep.host, ep.port, ssl=tls, keepalive=ep.keepalive,
                                                          version=self.protocol))
        lost = asyncio.ensure_future(client.lost.wait())
        try:
            async with asyncio.timeout(ep.connect_timeout):
                done, _ = await asyncio.wait({connecting, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not connecting.done():
                connecting.cancel()
        if connecting in done:
            try:
                connecting.result()
            except gmqtt.MQTTConnectError as exc:
                code = int(getattr(exc, "_code", 0))
                raise ConnectionRefused(code, getattr(exc, "message", str(exc))) from exc
            if client.lost.is_set():
                raise RuntimeFault("connection closed right after CONNACK")
        elif self.protocol == MQTTv50:
            # Closed during the handshake (gmqtt asks for a downgrade this way, too).
            raise ConnectionRefused(1, "connection closed during the MQTT 5 handshake")
        else:
            raise RuntimeFault("connection closed during the handshake")
        self._client = client
        self._storage = storage
        self.connected = True
        self.last_error = None
        if self._subscriptions:
            self._send_subscribe(client, self._subscriptions)
        self._up.set()
        self._listener.on_connected(self)

    def _send_subscribe(self, client: _Client, filters: dict[str, int]) -> None:
        items = [gmqtt.Subscription(f, qos=q) for f, q in filters.items()]
        for i in range(0, len(items), SUBSCRIBE_CHUNK):
            client.subscribe(items[i:i + SUBSCRIBE_CHUNK])

    def _on_message(self, _client: Any, topic: str, payload: bytes, qos: int, properties: dict[str, Any]) -> int:
        self._deliver(topic, payload, qos, bool(properties.get("retain")))
        return 0

    def _deliver(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        try:
            self._listener.on_message(topic, payload, qos, retain)
        except Exception as exc:  # a listener bug must not kill the connection's read loop
            self._log.error("%s: message handler failed on %r: %s", self.name, topic, exc, exc_info=exc)

    def _on_connack(self, _client: Any, _flags: int, _rc: int, properties: dict[str, Any]) -> None:
        values = properties.get("receive_maximum")
        self.receive_maximum = int(values[0]) if values else 65535

    def _acked(self, since: float | None) -> None:
        self._listener.on_acked(self, since)

    def _writable_again(self) -> None:
        self._listener.on_writable(self)

    def _set_down(self) -> None:
        self.connected = False
        self._up.clear()
        self._client = None
        self._storage = None

    async def _discard(self, client: _Client) -> None:
        client.lost.set()
        conn = getattr(client, "_connection", None)
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await conn.close()
