"""Payload encoding: state payloads in the seed's form (or PlaceOS source's), metadata, presence."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec

PayloadFormat = Literal["seed", "placeos-source"]

_encoder = msgspec.json.Encoder()
encode_value: Callable[[Any], bytes] = _encoder.encode
ONLINE = b'{"online":true}'
OFFLINE = b'{"online":false}'
CLEAR = b""


def state_payload(fmt: PayloadFormat) -> Callable[[bytes, int], bytes]:
    """A function building the state payload from the raw encoded value and the change time (Unix ms)."""
    if fmt == "seed":
        encode_str = _encoder.encode

        def seed(raw: bytes, time_ms: int) -> bytes:
            # The value is the serialized JSON, itself carried as a JSON string.
            return b'{"time":%d,"value":%s}' % (time_ms, encode_str(raw.decode()))

        return seed

    def source(raw: bytes, time_ms: int) -> bytes:
        return b'{"time":%d,"value":%s}' % (time_ms // 1000, raw)

    return source


def round2(value: float) -> float:
    """Round a computed value to 2 decimals, as the payload contract asks."""
    return round(value, 2)


def encode_metadata(payload: dict[str, Any]) -> bytes:
    """Compact JSON of a metadata object."""
    return _encoder.encode(payload)
