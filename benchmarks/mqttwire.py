"""Raw MQTT 3.1.1 packets for the load generator and the counting subscriber (no client library overhead)."""

from __future__ import annotations

import socket
import struct

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
SUBSCRIBE = 0x82
SUBACK = 0x90
DISCONNECT = b"\xe0\x00"


def varint(value: int) -> bytes:
    """MQTT remaining-length encoding."""
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        if value:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def _string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, keepalive: int = 0) -> bytes:
    """CONNECT with a clean session and no credentials."""
    body = _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive) + _string(client_id)
    return bytes([CONNECT]) + varint(len(body)) + body


def subscribe_packet(topic_filter: str, qos: int, packet_id: int = 1) -> bytes:
    """SUBSCRIBE to one filter."""
    body = struct.pack("!H", packet_id) + _string(topic_filter) + bytes([qos])
    return bytes([SUBSCRIBE]) + varint(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, qos: int = 0, packet_id: int = 0, retain: bool = False) -> bytes:
    """PUBLISH; `packet_id` is used at QoS 1."""
    head = _string(topic) + (struct.pack("!H", packet_id) if qos else b"")
    return bytes([PUBLISH | (qos << 1) | int(retain)]) + varint(len(head) + len(payload)) + head + payload


def puback_packet(packet_id: bytes) -> bytes:
    """PUBACK for a 2-byte packet id."""
    return b"\x40\x02" + packet_id


def open_session(host: str, port: int, client_id: str, timeout: float = 10.0) -> socket.socket:
    """Connect, send CONNECT and wait for a successful CONNACK."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(client_id))
    ack = b""
    while len(ack) < 4:
        chunk = sock.recv(4 - len(ack))
        if not chunk:
            raise ConnectionError("broker closed the connection before CONNACK")
        ack += chunk
    if ack[0] != CONNACK or ack[3] != 0:
        raise ConnectionError(f"CONNACK refused: {ack!r}")
    return sock


def split_packets(buf: bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """Complete packets at the start of `buf` as (first byte, body) and how many bytes they used."""
    packets: list[tuple[int, bytes]] = []
    i, n = 0, len(buf)
    while n - i >= 2:
        j, mult, length = i + 1, 1, 0
        while j < n:
            digit = buf[j]
            j += 1
            length += (digit & 127) * mult
            if digit < 128:
                break
            mult *= 128
        else:
            break
        end = j + length
        if end > n:
            break
        packets.append((buf[i], bytes(buf[j:end])))
        i = end
    return packets, i
