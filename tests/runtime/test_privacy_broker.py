"""Privacy on real brokers: two destinations, different rules, different bytes; nothing raw leaks."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.app import Runtime
from tests.support.broker import Mosquitto
from tests.support.site import registry, site, write_settings
from tests.support.subscriber import Subscriber

SECRET = "s3cret-for-tests"
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
ROOM = "sys-201/drv-p/Sensor/1"


def digest(text: str) -> str:
    return hmac.new(SECRET.encode(), text.encode(), hashlib.sha256).hexdigest()


def two_broker_site(onprem: Mosquitto, cloud: Mosquitto) -> dict[str, Any]:
    doc = site(onprem.url)
    doc["brokers"] = [
        {"name": "onprem", "url": onprem.url, "client_id": "rt-onprem"},
        {"name": "cloud", "url": cloud.url, "client_id": "rt-cloud", "privacy": ["emails", "ids", "guests",
                                                                                  "visitors"]},
    ]
    doc["privacy"] = {"secret": SECRET, "rules": [
        {"name": "emails", "match": "email", "action": "hash"},
        {"name": "ids", "match": "uuid", "action": "hash"},
        {"name": "guests", "match": "(?i)guest-\\d+", "action": "mask", "states": ["booking*"]},
        {"name": "visitors", "match": "visitor", "action": "drop"},
    ]}
    doc["zones"][2]["name"] = "Room of jane@corp.example"
    return doc


class Background:
    """A runtime on its own event loop thread, so sync hypothesis tests can drive it."""

    def __init__(self, path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runtime = Runtime(path, registry=registry(), backoff_initial=0.05)
        self.call(self._start())

    async def _start(self) -> None:
        await self.runtime.start()
        assert self.runtime.publisher is not None and self.runtime.manager is not None
        assert await self.runtime.publisher.wait_connected(10)
        assert await self.runtime.manager.wait_loaded(10)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def set_state(self, key: str, value: Any) -> None:
        async def go() -> None:
            self.runtime.manager.hosts["mod-a"].set_state(key, value)  # type: ignore[union-attr]
            for out in self.runtime.publisher.outputs:  # type: ignore[union-attr]
                await out.flush(10)
        self.call(go())

    def close(self) -> None:
        self.call(self.runtime.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def cloud() -> Iterator[Mosquitto]:
    broker = Mosquitto()
    broker.start()
    yield broker
    broker.close()


@pytest.fixture
def pair(broker: Mosquitto, cloud: Mosquitto, tmp_path: Path) -> Iterator[tuple[Background, Subscriber, Subscriber]]:
    path = write_settings(tmp_path / "site.yaml", two_broker_site(broker, cloud))
    onprem_sub = Subscriber(broker.port, "placeos/org-t/#")
    cloud_sub = Subscriber(cloud.port, "placeos/org-t/#")
    bg = Background(path)
    try:
        yield bg, onprem_sub, cloud_sub
    finally:
        bg.close()
        onprem_sub.close()
        cloud_sub.close()


def latest(sub: Subscriber, suffix: str) -> Any:
    for topic, payload in sub.latest.items():
        if topic.endswith(suffix):
            return msgspec.json.decode(msgspec.json.decode(payload)["value"])
    return None


def test_two_brokers_receive_different_bytes(pair: tuple[Background, Subscriber, Subscriber]) -> None:
    bg, onprem, cloud = pair
    bg.set_state("booking", {"organizer": "john.doe@example.com", "guest": "Guest-42",
                             "john.doe@example.com": [1, "desk 5"]})
    bg.set_state("note", "guest-7 visits")  # the guests rule is scoped to booking* states
    bg.set_state("visitor_name", "Ann")  # dropped on the cloud by its key
    bg.set_state("lobby", "visitor at the door")  # dropped on the cloud by its value
    for sub in (onprem, cloud):
        sub.wait_quiet(0.3)
    assert latest(onprem, f"{ROOM}/booking") == {"organizer": "john.doe@example.com", "guest": "Guest-42",
                                                 "john.doe@example.com": [1, "desk 5"]}
    h = digest("john.doe@example.com")
    assert latest(cloud, f"{ROOM}/booking") == {"organizer": h, "guest": "****", h: [1, "desk 5"]}
    assert latest(onprem, f"{ROOM}/note") == latest(cloud, f"{ROOM}/note") == "guest-7 visits"
    assert latest(onprem, f"{ROOM}/visitor_name") == "Ann"
    assert latest(cloud, f"{ROOM}/visitor_name") is None
    assert latest(onprem, f"{ROOM}/lobby") == "visitor at the door"
    assert latest(cloud, f"{ROOM}/lobby") is None
    zone = msgspec.json.decode(cloud.latest["placeos/org-t/metadata/area-201"])
    assert zone["name"] == f"Room of {digest('jane@corp.example')}"
    assert b"jane@corp.example" in onprem.latest["placeos/org-t/metadata/area-201"]
    every_cloud_byte = b"".join(m.topic.encode() + m.payload for m in cloud.messages)
    assert b"john.doe@example.com" not in every_cloud_byte and b"visitor" not in every_cloud_byte


def test_a_value_that_becomes_dropped_clears_the_topic(pair: tuple[Background, Subscriber, Subscriber]) -> None:
    bg, _onprem, cloud = pair
    bg.set_state("status", "free")
    assert cloud.wait_for(lambda s: latest(s, f"{ROOM}/status") == "free")
    bg.set_state("status", "visitor inside")
    assert cloud.wait_for(lambda s: latest(s, f"{ROOM}/status") is None)
    assert [m.payload for m in cloud.messages if m.topic.endswith(f"{ROOM}/status")][-1] == b""


emails = st.from_regex(r"[a-z][a-z0-9._]{0,8}@[a-z]{2,8}\.(com|org|fi)", fullmatch=True)
uuids = st.uuids().map(str)
phones = st.from_regex(r"\+358 ?\d{2} \d{3} \d{4}", fullmatch=True)
words = st.text(alphabet="abc xyz-", max_size=8)
texts = st.lists(st.one_of(emails, uuids, words), min_size=1, max_size=4).map(" ".join)
values = st.recursive(
    st.one_of(texts, st.integers(-5, 5), st.booleans(), st.none(), st.floats(allow_nan=False, width=32)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=values)
def test_no_raw_match_ever_reaches_the_cloud(pair: tuple[Background, Subscriber, Subscriber], value: Any) -> None:
    bg, _onprem, cloud = pair
    raw = msgspec.json.encode(value).decode()
    secrets = set(EMAIL.findall(raw)) | set(UUID.findall(raw))
    start = len(cloud.messages)
    bg.set_state("prop", {"v": value, "n": start})
    assert cloud.wait_for(lambda s: any(m.topic.endswith(f"{ROOM}/prop") for m in s.messages[start:]))
    sent = b"".join(m.topic.encode() + m.payload for m in cloud.messages[start:]).decode()
    for secret in secrets:
        assert secret not in sent
        assert secret.lower() not in sent.lower()
        assert digest(secret) in sent
