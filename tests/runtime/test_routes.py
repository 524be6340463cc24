"""How state keys are routed to brokers: one kept topic in the common case, full routes otherwise."""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime import topics
from runtime.metrics import Metrics
from runtime.model import Broker
from runtime.publisher import Publisher, Routes, RuleSet, StateEntry

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


def change(publisher: Publisher, source: FakeSource, value: float, time_ms: int) -> None:
    """Set `temperature` and render it at once."""
    source.states["temperature"] = StateEntry(value, str(value).encode(), time_ms)
    publisher.state_changed(source, "temperature")
    publisher.render_all()


async def test_one_broker_without_rules_keeps_only_the_topic() -> None:
    publisher = Publisher("org-1", [broker("a")], lambda b: "rt", Metrics(), no_rules)
    source = FakeSource()
    change(publisher, source, 21.5, 1_700_000_000_000)
    assert source.routes["temperature"] == TOPIC
    assert publisher.outputs[0].pending[TOPIC] == b'{"time":1700000000000,"value":"21.5"}'


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
    assert a.pending[TOPIC] == b'{"time":1700000001000,"value":"22.0"}'
    assert b.pending[TOPIC] == b'{"time":1700000001,"value":22.0}'
    publisher.reconcile([source])
    assert isinstance(source.routes["temperature"], tuple)
