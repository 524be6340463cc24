"""How state keys are routed to brokers: one kept topic in the common case, full routes otherwise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from runtime import topics
from runtime.metrics import Metrics
from runtime.model import Broker, Privacy, PrivacyRule
from runtime.payloads import CLEAR
from runtime.privacy import DROP, PrivacyEngine
from runtime.publisher import Filtered, Output, Publisher, Routes, RuleSet, StateEntry

PREFIX = topics.state_prefix("org-1", ["bld", None, "area"], "sys-1", "drv-1", "Probe", 1)
TOPIC = topics.state_topic(PREFIX, "temperature")


@dataclass(eq=False)
class FakeSource:
    """A module as the publisher sees it."""

    module_id: str = "mod-1"
    driver_id: str = "drv-1"
    prefixes: tuple[str, ...] = (PREFIX,)
    routes: dict[str, Routes] = field(default_factory=dict)
    states: dict[str, StateEntry] = field(default_factory=dict)


def no_rules(names: list[str]) -> RuleSet | None:
    """Destinations without privacy rules."""
    return None


def broker(name: str, payload: str = "seed") -> Broker:
    """A broker record that is never connected (the test reads what waits to be sent)."""
    return Broker(name=name, url="mqtt://127.0.0.1:1", payload=payload)  # type: ignore[arg-type]


def wire(out: Output, topic: str) -> bytes:
    """The payload `out` would send for `topic` now."""
    held = out.pending[topic]
    return held if isinstance(held, bytes) else out.render(held.raw, held.time_ms)


def change(publisher: Publisher, source: FakeSource, value: Any, time_ms: int, key: str = "temperature") -> None:
    """Set a key (`temperature` unless told) and render it at once."""
    source.states[key] = StateEntry(value, msgspec.json.encode(value), time_ms)
    publisher.state_changed(source, key)
    publisher.render_all()


def email_rules(names: list[str]) -> RuleSet | None:
    """Destinations that hash emails and drop anything mentioning a visitor."""
    engine = PrivacyEngine(Privacy(secret="s", rules=[PrivacyRule(name="e", match="email", action="hash"),
                                                      PrivacyRule(name="v", match="visitor", action="drop")]))
    return engine.for_rules(["e", "v"])


async def test_one_broker_without_rules_keeps_only_the_topic() -> None:
    publisher = Publisher("org-1", [broker("a")], lambda b: "rt", Metrics(), no_rules)
    source = FakeSource()
    change(publisher, source, 21.5, 1_700_000_000_000)
    assert source.routes["temperature"] == TOPIC
    out = publisher.outputs[0]
    assert wire(out, TOPIC) == b'{"time":1700000000000,"value":"21.5"}'
    # The broker holds the module's entry itself, not a second copy of the payload.
    assert out.current[TOPIC] is source.states["temperature"]


async def test_a_module_in_two_systems_keeps_full_routes() -> None:
    publisher = Publisher("org-1", [broker("a")], lambda b: "rt", Metrics(), no_rules)
    other = PREFIX.replace("sys-1", "sys-2")
    source = FakeSource(prefixes=(PREFIX, other))
    change(publisher, source, 21.5, 1_700_000_000_000)
    assert isinstance(source.routes["temperature"], tuple)
    assert set(publisher.outputs[0].pending) == {TOPIC, topics.state_topic(other, "temperature")}


async def test_a_kept_topic_still_reaches_every_broker_after_brokers_are_added() -> None:
    publisher = Publisher("org-1", [broker("a")], lambda b: "rt", Metrics(), no_rules)
    source = FakeSource()
    change(publisher, source, 21.5, 1_700_000_000_000)
    assert isinstance(source.routes["temperature"], str)
    # A reload adds a broker with another payload format: two lanes now, while the kept route is still the
    # single topic until the reload reconciles the modules.
    publisher.configure([broker("a"), broker("b", "placeos-source")], lambda b: f"rt-{b.name}", no_rules)
    change(publisher, source, 22.0, 1_700_000_001_000)
    a, b = publisher.outputs
    assert wire(a, TOPIC) == b'{"time":1700000001000,"value":"22.0"}'
    assert wire(b, TOPIC) == b'{"time":1700000001,"value":22.0}'
    publisher.reconcile([source])
    assert isinstance(source.routes["temperature"], tuple)


async def test_a_broker_whose_payload_format_changes_gets_every_state_topic_again() -> None:
    publisher = Publisher("org-1", [broker("a")], lambda b: "rt", Metrics(), no_rules)
    source = FakeSource()
    change(publisher, source, 21.5, 1_700_000_000_000)
    out = publisher.outputs[0]
    out.pending.clear()  # as if sent
    publisher.reconcile([source])
    assert not out.pending  # nothing changed: nothing to send
    publisher.configure([broker("a", "placeos-source")], lambda b: "rt", no_rules)
    publisher.reconcile([source])
    assert wire(out, TOPIC) == b'{"time":1700000000,"value":21.5}'


async def test_one_broker_with_rules_keeps_the_topic_and_the_keys_filter() -> None:
    publisher = Publisher("org-1", [broker("a")], lambda b: "rt", Metrics(), email_rules, drop=DROP)
    source, other = FakeSource(), FakeSource(module_id="mod-2", prefixes=(PREFIX.replace("sys-1", "sys-2"),))
    change(publisher, source, 21.5, 1_700_000_000_000)
    change(publisher, other, 20.0, 1_700_000_000_000)
    route = source.routes["temperature"]
    assert isinstance(route, Filtered) and route.topic == TOPIC
    other_route = other.routes["temperature"]
    assert isinstance(other_route, Filtered) and other_route.scoped is route.scoped  # one filter per key and rules
    out = publisher.outputs[0]
    assert out.current[TOPIC] is source.states["temperature"]  # nothing matched: the entry itself
    host = topics.state_topic(PREFIX, "host")
    change(publisher, source, "a.person@example.com", 1_700_000_001_000, key="host")
    assert b"example.com" not in wire(out, host)
    change(publisher, source, "a visitor", 1_700_000_002_000, key="host")
    assert out.pending[host] == CLEAR


async def test_a_filtered_route_still_reaches_every_broker_after_brokers_are_added() -> None:
    publisher = Publisher("org-1", [broker("a")], lambda b: "rt", Metrics(), email_rules, drop=DROP)
    source = FakeSource()
    change(publisher, source, "x@example.com", 1_700_000_000_000, key="host")
    host = topics.state_topic(PREFIX, "host")
    assert isinstance(source.routes["host"], Filtered)
    publisher.configure([broker("a"), broker("b", "placeos-source")], lambda b: f"rt-{b.name}", email_rules)
    change(publisher, source, "y@example.com", 1_700_000_001_000, key="host")
    a, b = publisher.outputs
    assert b"example.com" not in wire(a, host) and b"example.com" not in wire(b, host)
    assert wire(b, host).startswith(b'{"time":1700000001,"value":"')
