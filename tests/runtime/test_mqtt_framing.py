"""The session's own framing of incoming MQTT data (`_Client._read_packets`), fed byte strings directly."""

from __future__ import annotations

import asyncio

from gmqtt.mqtt.constants import MQTTv50, MQTTv311

from runtime.mqtt import _Client, _InflightStorage, _varint


class Connection:
    """What the framing touches of a gmqtt connection."""

    def __init__(self) -> None:
        self._last_data_in = 0.0
        self.written: list[bytes] = []

    def send_package(self, data: bytes) -> None:
        self.written.append(data)


def packet(cmd: int, body: bytes) -> bytes:
    return bytes((cmd,)) + _varint(len(body)) + body


def publish(topic: str, payload: bytes, qos: int = 0, mid: int = 0, v5: bool = False) -> bytes:
    raw = topic.encode()
    head = len(raw).to_bytes(2, "big") + raw + (mid.to_bytes(2, "big") if qos else b"") + (b"\x00" if v5 else b"")
    return packet(0x30 | (qos << 1) | 1, head + payload)


def client(version: int = MQTTv311) -> tuple[_Client, Connection, list[tuple[str, bytes, int, bool]], list[int]]:
    c = _Client("framing")
    conn = Connection()
    c._package_handler.set_connection(conn)
    c._connection = conn
    c._connection_state.protocol_version = version
    c._acks = []
    c.lost = asyncio.Event()
    c.inflight_storage = _InflightStorage(lambda since: None)
    delivered: list[tuple[str, bytes, int, bool]] = []
    c.deliver = lambda topic, payload, qos, retain: delivered.append((topic, payload, qos, retain))
    others: list[int] = []
    c._package_handler._handle_packet = lambda cmd, data: others.append(cmd)
    return c, conn, delivered, others


def test_packets_of_one_read_are_delivered_in_order_and_the_rest_goes_to_gmqtt() -> None:
    c, conn, delivered, others = client()
    data = publish("a/1", b"one") + packet(0xD0, b"") + publish("a/2", b"x" * 70_000)  # a 3-byte length
    assert c._read_packets(conn, data) == len(data)
    assert delivered == [("a/1", b"one", 0, True), ("a/2", b"x" * 70_000, 0, True)]
    assert others == [0xD0]
    assert conn._last_data_in > 0


def test_a_packet_split_across_reads_waits_for_its_end() -> None:
    c, conn, delivered, _ = client()
    first, second = publish("a/1", b"one"), publish("a/2", b"y" * 300)  # a 2-byte length
    data = first + second
    for cut in (len(first) + 1, len(first) + 2, len(data) - 1):  # before its length, inside it, in the payload
        delivered.clear()
        assert c._read_packets(conn, data[:cut]) == len(first)
        assert delivered == [("a/1", b"one", 0, True)]
        assert c._read_packets(conn, data[len(first):]) == len(second)
        assert delivered[-1] == ("a/2", b"y" * 300, 0, True)


def test_a_length_of_more_than_four_bytes_is_malformed_and_drops_the_connection() -> None:
    c, conn, delivered, others = client()
    assert c._read_packets(conn, b"\x30\xff\xff\xff\xff\x01" + b"\x00" * 10) == -1
    assert delivered == [] and others == []
    assert c.lost.is_set()  # the session's supervisor reconnects


def test_a_superseded_connection_delivers_nothing() -> None:
    c, _, delivered, others = client()
    data = publish("a/1", b"one")
    assert c._read_packets(Connection(), data) == len(data)
    assert delivered == [] and others == []


def test_publishes_with_properties_a_topic_alias_or_a_short_body_go_to_gmqtt() -> None:
    c, conn, delivered, others = client(MQTTv50)
    raw = b"a/1"
    with_properties = packet(0x30, len(raw).to_bytes(2, "big") + raw + b"\x02\x01\x01" + b"p")
    alias_only = packet(0x30, b"\x00\x00\x03\x23\x00\x01" + b"p")
    short = packet(0x30, b"\x00")
    plain = publish("a/2", b"q", v5=True)
    data = with_properties + alias_only + short + plain
    assert c._read_packets(conn, data) == len(data)
    assert others == [0x30, 0x30, 0x30]
    assert delivered == [("a/2", b"q", 0, True)]


async def test_qos1_publishes_of_one_read_are_acknowledged_in_one_write() -> None:
    c, conn, delivered, _ = client()
    data = b"".join(publish(f"a/{i}", b"%d" % i, qos=1, mid=i + 1) for i in range(3))
    assert c._read_packets(conn, data) == len(data)
    assert [d[2] for d in delivered] == [1, 1, 1]
    await asyncio.sleep(0)
    assert conn.written == [b"".join(b"\x40\x02" + (i + 1).to_bytes(2, "big") for i in range(3))]



def test_pubacks_release_their_packet_ids_and_stored_packets() -> None:
    c, conn, _, others = client()
    acked: list[float | None] = []
    c.inflight_storage = _InflightStorage(acked.append)
    ids = c._package_handler.id_generator
    mids = [ids.next_id() for _ in range(3)]
    for n, mid in enumerate(mids):
        c.inflight_storage.since = float(n)
        c.inflight_storage.push_message(mid, b"packet")
    data = packet(0x40, mids[0].to_bytes(2, "big")) + packet(0x40, mids[2].to_bytes(2, "big") + b"\x10")  # v5 reason
    assert c._read_packets(conn, data) == len(data)
    assert acked == [0.0, 2.0] and c.inflight_storage.count == 1
    assert ids._used_ids == {mids[1]}
    assert others == []


def test_the_transports_flow_control_reaches_the_session_for_the_current_connection_only() -> None:
    c, conn, _, _ = client()
    c.writable = True
    resumed: list[bool] = []
    c.on_writable = lambda: resumed.append(True)
    c._writing(conn, False)  # the transport's pause_writing()
    assert c.writable is False and resumed == []
    c._writing(Connection(), True)  # a superseded connection's transport says nothing about this one
    assert c.writable is False and resumed == []
    c._writing(conn, True)  # resume_writing()
    assert c.writable is True and resumed == [True]
