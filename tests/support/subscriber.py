"""An independent MQTT subscriber (paho-mqtt) that records what really reached the broker."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


class Received:
    """One message as a subscriber saw it."""

    __slots__ = ("payload", "retain", "topic")

    def __init__(self, topic: str, payload: bytes, retain: bool) -> None:
        self.topic = topic
        self.payload = payload
        self.retain = retain

    def __repr__(self) -> str:
        return f"Received({self.topic!r}, {self.payload!r}, retain={self.retain})"


class Subscriber:
    """Subscribes to filters and keeps every message and the latest payload per topic."""

    def __init__(self, port: int, *filters: str, host: str = "127.0.0.1") -> None:
        self.messages: list[Received] = []
        self.latest: dict[str, bytes] = {}
        self._lock = threading.Condition()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sub-{uuid.uuid4().hex[:8]}")
        self._client.on_message = self._on_message
        self._subscribed = threading.Event()
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.connect(host, port)
        self._client.loop_start()
        if filters:
            self._client.subscribe([(f, 1) for f in filters])
            if not self._subscribed.wait(10):
                raise TimeoutError("subscription not acknowledged")

    def _on_message(self, _client: Any, _userdata: Any, msg: paho.MQTTMessage) -> None:
        payload = bytes(msg.payload)  # typed `bytes | bytearray`; paho hands over bytes, so this is the same object
        with self._lock:
            self.messages.append(Received(msg.topic, payload, bool(msg.retain)))
            if payload:
                self.latest[msg.topic] = payload
            else:
                self.latest.pop(msg.topic, None)
            self._lock.notify_all()

    def wait_for(self, predicate: Callable[[Subscriber], bool], timeout: float = 15.0) -> bool:
        """Wait until `predicate(self)` holds; returns whether it did."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.1))
        return True

    def wait_quiet(self, quiet: float = 0.3, timeout: float = 10.0) -> None:
        """Wait until no message arrived for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        seen = -1
        while time.monotonic() < deadline:
            with self._lock:
                count = len(self.messages)
            if count == seen:
                return
            seen = count
            time.sleep(quiet)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish through this client and wait for it to be sent."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(10)

    def close(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def retained(port: int, topic_filter: str, quiet: float = 0.5) -> dict[str, bytes]:
    """What a late subscriber to `topic_filter` receives as retained messages right now."""
    with Subscriber(port, topic_filter) as sub:
        sub.wait_quiet(quiet)
        return {m.topic: m.payload for m in sub.messages if m.retain and m.payload}
