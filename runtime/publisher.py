"""The publisher: module state and metadata to every configured broker.

A state change only marks (module, key) dirty; the loop renders dirty keys (privacy, payload
format) in batches of at most `BATCH`, oldest first, and only while every connected broker has
room, so under pressure later changes of a key coalesce into its latest value before any work
is spent on them (state topics are latest-value by nature). Per broker it keeps `current`
(every retained topic the runtime owns, with what was last sent, so a reconnect republishes
them with their original `time`) and `pending` (topics waiting to be sent, latest value per
topic: bounded by the number of topics, never dropping anything, counting what it coalesces).
A state topic that no privacy rule changes holds the module's state entry itself, rendered in
the broker's payload format only when it is sent (a site may own 100,000 topics); an entry
superseded before it is sent is not sent: its successor is already queued. Sending is
batched on the event loop and, at QoS 1, bounded by an in-flight window so packet ids never run
out; acknowledgements reopen the window.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, Protocol

import msgspec

from runtime import topics
from runtime.metrics import Metrics
from runtime.model import Broker
from runtime.mqtt import Backoff, MqttEndpoint, MqttSession, SessionListener, Will
from runtime.payloads import CLEAR, OFFLINE, ONLINE, PayloadFormat, encode_metadata, encode_value, state_payload

_log = logging.getLogger("runtime.publisher")
_decode_metadata = msgspec.json.Decoder(dict[str, Any]).decode
SWEEP_TIMEOUT = 5.0
BATCH = 256
WRITE_MAX = 4096  # QoS 0 packets per socket write: start-up's 50,000 retained topics in chunks, not one buffer
"""Most state keys rendered per loop iteration, and the most topics a broker may have waiting before
rendering pauses for it: beyond this a burst coalesces instead of queueing."""


class StateEntry(msgspec.Struct, gc=False, eq=False):
    """A module's current value of one state key."""

    # Not tracked by the cyclic collector (two are made per message, each living until its successor): it
    # holds a JSON-able value and its encoding, never anything that could lead back to it.
    value: Any
    raw: bytes
    time_ms: int

    def supersede(self) -> None:
        """No longer the state: let go of the value and payload (a broker may still hold this entry as what it
        last got until the newer one, already queued, is rendered: nothing is sent for it meanwhile)."""
        self.value = None
        self.raw = b""
        self.time_ms = 0


class StateFilter(Protocol):
    """Privacy rules scoped to one state key of one module."""

    key: Any

    def apply(self, value: Any) -> Any:
        """Filtered value, the same object when nothing matched, or the drop sentinel."""
        ...


class RuleSet(Protocol):
    """The privacy rules of one destination."""

    def scope(self, driver_id: str, module_id: str, state_key: str) -> StateFilter | None:
        """Rules for one state key of one module, or None."""
        ...

    def metadata(self, payload: dict[str, Any]) -> Any:
        """A filtered metadata payload, or the drop sentinel."""
        ...


class Source(Protocol):
    """What the publisher needs to know of a module: its topics, cached routes and current states."""

    module_id: str
    driver_id: str
    prefixes: tuple[str, ...]
    routes: dict[str, Routes]
    states: dict[str, StateEntry]


Retained = bytes | StateEntry
"""What a topic holds: an encoded payload, or a state entry rendered when sent."""
Route = tuple["Lane", tuple[str, ...], "StateFilter | None"]


class Filtered(NamedTuple):
    """The route of a key with one lane, one topic and privacy rules: the topic and the key's filter."""

    topic: str
    scoped: StateFilter


Routes = str | Filtered | tuple[Route, ...]
"""How one state key reaches the brokers: per lane, its topics and privacy rules; or, in the common case of
one lane and one topic, just that topic (a site may have 100,000 of them), with its filter when rules apply."""


class Output(SessionListener):
    """One broker: its session, what it owns and what waits to be sent."""

    def __init__(self, publisher: Publisher, broker: Broker, org: str, client_id: str, metrics: Metrics) -> None:
        self.publisher = publisher
        self.name = broker.name
        self.qos = broker.qos
        self.max_inflight = broker.max_inflight
        self.presence = topics.presence_topic(org, client_id)
        self.payload_format: PayloadFormat = broker.payload
        self.render = state_payload(broker.payload)
        self.current: dict[str, Retained] = {}
        self.pending: dict[str, Retained] = {}
        self.inherited: set[str] = set()  # owned topics found retained at start, not yet set by this run
        self.recording: set[str] | None = None
        self._oldest: float | None = None  # when the oldest unsent change was put
        self.swept = False
        self._scheduled = False
        self._org = org
        self._sweep: dict[str, bytes] | None = None
        self._sync_topic = ""
        self._sync_done: asyncio.Event | None = None
        self.session = MqttSession(self._endpoint(broker, client_id), self, name=f"broker {broker.name}",
                                   backoff=Backoff(cap=15.0))
        self._published = metrics.published.labels(self.name)
        self._coalesced = metrics.coalesced.labels(self.name)
        self._cleared = metrics.cleared.labels(self.name)
        self._errors = metrics.publish_errors.labels(self.name)
        self._depth = metrics.buffer_depth.labels(self.name)
        self._inflight = metrics.inflight.labels(self.name)
        self._connected_gauge = metrics.broker_connected.labels(self.name)
        self._reconnects = metrics.reconnects.labels(self.name)
        self._sent_latency = metrics.latency.labels(self.name, "sent")
        self._acked_latency = metrics.latency.labels(self.name, "acked")

    def _endpoint(self, broker: Broker, client_id: str) -> MqttEndpoint:
        return MqttEndpoint(
            url=broker.url.replace("embedded://", "mqtt://"), username=broker.username, password=broker.password,
            client_id=client_id, ca_file=broker.ca_file, cert_file=broker.cert_file, key_file=broker.key_file,
            tls_insecure=broker.tls_insecure, will=Will(self.presence, OFFLINE, qos=1, retain=True),
            # The embedded broker (amqtt) speaks MQTT 3.1.1 only.
            protocol="3.1.1" if broker.url.startswith("embedded://") else "5")

    def reconfigure(self, broker: Broker, client_id: str) -> None:
        """Apply changed broker settings; a changed endpoint reconnects."""
        self.qos = broker.qos
        self.max_inflight = broker.max_inflight
        if broker.payload != self.payload_format:
            # What was sent in the old format becomes bytes, so every state topic differs and goes out again.
            render = self.render
            self.current = {t: render(p.raw, p.time_ms) if isinstance(p, StateEntry) and p.raw else p
                            for t, p in self.current.items()}
            self.payload_format = broker.payload
            self.render = state_payload(broker.payload)
        self.session.update_endpoint(self._endpoint(broker, client_id))

    # -- the buffer ---------------------------------------------------------------------

    def put(self, topic: str, payload: Retained, since: float | None = None) -> None:
        """Make `payload` the retained value of `topic` (CLEAR removes it) and queue it."""
        if self.recording is not None:
            self.recording.add(topic)
        if self.inherited:
            self.inherited.discard(topic)
        if payload:
            if self.current.get(topic) == payload:
                return
            self.current[topic] = payload
        elif self.current.pop(topic, None) is None and topic not in self.pending and self.swept:
            return
        else:
            self._cleared.inc()
        if topic in self.pending:
            self._coalesced.inc()
        self.pending[topic] = payload
        if since is not None and self._oldest is None:
            self._oldest = since
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and self.session.connected and self._sweep is None:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.drain)

    def drain(self) -> None:
        """Send what is pending, up to the in-flight window at QoS 1."""
        self._scheduled = False
        if not self.pending or not self.session.connected or self._sweep is not None or not self.session.writable:
            # Not writable: the socket is behind, and what waits here can still coalesce (on_writable resumes).
            self.show_depth()
            return
        session, qos = self.session, self.qos
        pending = self.pending
        # gmqtt allots packet ids up to the broker's Receive Maximum (mosquitto's default is 20).
        limit = min(self.max_inflight, session.receive_maximum - 2)
        window = max(0, limit - session.inflight) if qos else WRITE_MAX
        now = time.perf_counter()
        oldest, self._oldest = self._oldest, None
        items: Any
        if window >= len(pending):
            items, self.pending = pending.items(), {}
        else:
            # Take the oldest `window` topics out in place: rebuilding the rest (thousands of coalesced
            # topics waiting for the QoS 1 window) on every acknowledgement made draining quadratic.
            items = list(itertools.islice(pending.items(), window))
            for topic, _payload in items:
                del pending[topic]
        render = self.render
        batch = [(t, p if type(p) is bytes else render(p.raw, p.time_ms)) for t, p in items
                 if type(p) is bytes or p.raw]
        if len(batch) < len(items):
            # Entries superseded while waiting: their successors are queued to be rendered (latest value wins).
            self._coalesced.inc(len(items) - len(batch))
        sent = session.publish_batch(batch, qos, True, oldest)
        if sent < len(batch):
            if not session.connected:
                self._errors.inc()
            rest: dict[str, Retained] = dict(batch[sent:])
            rest.update(self.pending)
            self.pending = rest
        if self.pending:
            self._oldest = oldest if oldest is not None else now
        if sent and oldest is not None:
            # One observation per batch (its oldest change), not one per message.
            self._sent_latency.observe(now - oldest)
        self._published.inc(sent)
        self.show_depth()
        self._inflight.set(session.inflight)
        if len(self.pending) < BATCH:
            self.publisher.resume()
        if self.pending and (not qos or len(batch) < len(items)):
            # The rest on the next turn, after the reads waiting meanwhile (at QoS 1 only when superseded entries
            # left part of the window unused: acknowledgements reopen it otherwise).
            self._schedule()

    def show_depth(self) -> None:
        """Set the buffer depth gauge: topics waiting here and state keys not yet rendered."""
        self._depth.set(len(self.pending) + self.publisher.backlog)

    def republish_all(self) -> None:
        """Queue every owned topic again (after a reconnect the broker may have lost them)."""
        merged = dict(self.current)
        merged.update(self.pending)
        self.pending = merged
        self._schedule()

    async def flush(self, timeout: float) -> bool:
        """Wait until nothing is pending or in flight; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.publisher.render_all()
            if not self.session.connected:
                return False
            if not self.pending and self.session.inflight == 0:
                return True
            self.drain()
            await asyncio.sleep(0.01)
        return False

    # -- session callbacks ----------------------------------------------------------------

    def on_connected(self, session: MqttSession) -> None:
        """Announce presence, republish everything, and sweep ghosts once."""
        self._connected_gauge.set(1)
        self.current[self.presence] = ONLINE
        if not self.swept and self._sweep is None:
            # Sweep before sending anything: the org filter would otherwise bring every start-up publish
            # straight back to us (tens of thousands on a large site) and delay the sweep's marker.
            self._start_sweep()
        self.republish_all()

    def on_disconnected(self, session: MqttSession, reason: str) -> None:
        """Count and show the loss."""
        self._connected_gauge.set(0)
        if reason == "connection lost":
            self._reconnects.inc()

    def on_acked(self, session: MqttSession, since: float | None) -> None:
        """Measure, and reopen the window."""
        if since is not None:
            self._acked_latency.observe(time.perf_counter() - since)
        window = min(self.max_inflight, session.receive_maximum)
        if self.pending and not self._scheduled and session.inflight <= window // 2:
            self._schedule()

    def on_writable(self, session: MqttSession) -> None:
        """The socket caught up: send what waited."""
        if self.pending:
            self._schedule()

    def on_message(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Collect retained topics during the start-up sweep."""
        if self._sweep is None:
            return
        if topic == self._sync_topic:
            if self._sync_done is not None:
                self._sync_done.set()
        elif retain and payload:
            self._sweep[topic] = payload

    # -- start-up sweep -------------------------------------------------------------------

    def _start_sweep(self) -> None:
        self._sweep = {}
        self._sync_topic = topics.sync_topic(self.session.endpoint.client_id, uuid.uuid4().hex[:12])
        self._sync_done = asyncio.Event()
        asyncio.get_running_loop().create_task(self._run_sweep(), name=f"sweep:{self.name}")

    async def _run_sweep(self) -> None:
        """Read the org's retained topics, then clear every one this runtime does not own."""
        org_filter = topics.org_filter(self._org)
        self.session.subscribe({org_filter: 1, self._sync_topic: 1})
        # Retained messages are delivered on subscribe, before our marker comes back.
        self.session.publish(self._sync_topic, b"sync", 1, False)
        assert self._sync_done is not None
        try:
            async with asyncio.timeout(SWEEP_TIMEOUT):
                await self._sync_done.wait()
        except TimeoutError:
            _log.warning("broker %s: retained topics not confirmed within %.0f s; sweeping what arrived",
                         self.name, SWEEP_TIMEOUT)
        found = self._sweep or {}
        self._sweep = None
        self.session.unsubscribe([org_filter, self._sync_topic])
        ghosts = {t for t in found if not self.publisher.owns(self, t)}
        for topic, payload in found.items():
            if topic not in ghosts and topic != self.presence and topic not in self.current:
                # Owned but not yet set in this run: keep it, and remember it so a later clear reaches it.
                self.current[topic] = payload
                self.inherited.add(topic)
        for topic in ghosts:
            self.put(topic, CLEAR)
        self.swept = True
        self._schedule()  # what was set during the sweep waited for it
        if ghosts:
            _log.info("broker %s: cleared %d retained topics no longer in the settings", self.name, len(ghosts))


class Lane:
    """Brokers that get identical bytes: same payload format and privacy rules."""

    def __init__(self, fmt: PayloadFormat, rules: RuleSet | None, outputs: list[Output]) -> None:
        self.render = state_payload(fmt)
        self.rules = rules
        self.outputs = outputs


class Publisher:
    """Routes state changes and metadata to every broker output."""

    def __init__(self, org: str, brokers: Iterable[Broker], client_id: Callable[[Broker], str], metrics: Metrics,
                 rules_for: Callable[[list[str]], RuleSet | None], drop: object = None) -> None:
        self.org = org
        self.metrics = metrics
        self.outputs: list[Output] = []
        self._lanes: list[Lane] = []
        self._single: Lane | None = None  # the only lane, when there is one
        self._drop = drop
        self._owned_prefixes: set[str] = set()
        self._metadata: Mapping[str, bytes] = {}
        self.state_changes = 0  # moved to the Prometheus counter at scrape time (no lock per change)
        self._state_changes_synced = 0
        self._started = False
        self._dirty: dict[tuple[Source, str], None] = {}  # insertion-ordered: oldest change first
        self._since = 0.0  # when the oldest dirty key changed
        self._flush_scheduled = False
        self.configure(brokers, client_id, rules_for)

    def configure(self, brokers: Iterable[Broker], client_id: Callable[[Broker], str],
                  rules_for: Callable[[list[str]], RuleSet | None]) -> list[Output]:
        """(Re)build outputs and lanes; brokers are matched by name. Returns outputs that were removed."""
        existing = {o.name: o for o in self.outputs}
        outputs: list[Output] = []
        groups: dict[tuple[str, tuple[str, ...]], list[Output]] = {}
        for broker in brokers:
            out = existing.pop(broker.name, None)
            if out is None:
                out = Output(self, broker, self.org, client_id(broker), self.metrics)
                if self._started:
                    out.session.start()
            else:
                out.reconfigure(broker, client_id(broker))
            outputs.append(out)
            groups.setdefault((broker.payload, tuple(broker.privacy)), []).append(out)
        self.outputs = outputs
        self._lanes = [Lane(fmt, rules_for(list(names)), outs) for (fmt, names), outs in groups.items()]  # type: ignore[arg-type]
        self._single = self._lanes[0] if len(self._lanes) == 1 else None
        return list(existing.values())

    def sync_metrics(self) -> None:
        """Bring the counters kept as plain ints into the Prometheus registry."""
        delta = self.state_changes - self._state_changes_synced
        if delta:
            self.metrics.state_changes.inc(delta)
            self._state_changes_synced = self.state_changes
        for out in self.outputs:
            out.show_depth()

    def start(self) -> None:
        """Connect every broker."""
        self._started = True
        for out in self.outputs:
            out.session.start()

    @property
    def connected(self) -> bool:
        """True when every broker is connected."""
        return all(o.session.connected for o in self.outputs)

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until every broker is connected."""
        results = await asyncio.gather(*(o.session.wait_connected(timeout) for o in self.outputs))
        return all(results)

    async def wait_swept(self, timeout: float) -> bool:
        """Wait until every broker finished its start-up sweep."""
        deadline = time.monotonic() + timeout
        while not all(o.swept for o in self.outputs):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    # -- ownership ------------------------------------------------------------------------

    def set_owned(self, prefixes: set[str], metadata: Mapping[str, bytes]) -> None:
        """What the current settings own: module prefixes and metadata topics."""
        self._owned_prefixes = prefixes
        self._metadata = metadata

    def owns(self, out: Output, topic: str) -> bool:
        """Whether a retained topic found on a broker belongs to the current settings."""
        if topic in out.current:
            return True
        if topics.is_presence_topic(self.org, topic):
            return topic == out.presence or not topic.startswith(out.presence)
        if topic in self._metadata:
            return True
        return topics.prefix_of(topic) in self._owned_prefixes

    # -- metadata ---------------------------------------------------------------------------

    def publish_metadata(self, metadata: Mapping[str, bytes], previous: Mapping[str, bytes]) -> None:
        """Publish changed metadata (encoded payloads) and clear metadata topics that no longer exist."""
        for topic in previous:
            if topic not in metadata:
                for out in self.outputs:
                    out.put(topic, CLEAR)
        for lane in self._lanes:
            rules = lane.rules
            for topic, raw in metadata.items():
                data = raw
                if rules is not None:
                    payload = _decode_metadata(raw)
                    body = rules.metadata(payload)
                    if body is self._drop and self._drop is not None:
                        data = CLEAR
                    elif body is not payload:
                        data = encode_metadata(body)
                for out in lane.outputs:
                    out.put(topic, data)

    # -- state ------------------------------------------------------------------------------

    def routes(self, source: Source, key: str) -> Routes:
        """How one state key of one module reaches the brokers (built once per key and kept: see `Routes`)."""
        lanes = self._lane_routes(source, key)
        routes: Routes = lanes
        if len(lanes) == 1 and len(lanes[0][1]) == 1:
            _lane, (topic,), scoped = lanes[0]
            routes = topic if scoped is None else Filtered(topic, scoped)
        source.routes[key] = routes
        return routes

    def _lane_routes(self, source: Source, key: str) -> tuple[Route, ...]:
        built: list[Route] = []
        for lane in self._lanes:
            scoped = lane.rules.scope(source.driver_id, source.module_id, key) if lane.rules is not None else None
            out_key = key
            if scoped is not None:
                if scoped.key is self._drop:
                    built.append((lane, (), scoped))
                    continue
                out_key = scoped.key
            built.append((lane, tuple(topics.state_topic(p, out_key) for p in source.prefixes), scoped))
        return tuple(built)

    def state_changed(self, source: Source, key: str) -> None:
        """Queue a changed (or cleared) state key for every broker; its latest value is rendered on its turn."""
        self.state_changes += 1
        dirty = self._dirty
        if dirty:
            dirty[(source, key)] = None
            return
        self._since = time.perf_counter()
        dirty[(source, key)] = None
        self.resume()

    @property
    def backlog(self) -> int:
        """State keys changed and not yet rendered for the brokers."""
        return len(self._dirty)

    def resume(self) -> None:
        """A broker has room again: render what waits."""
        if self._dirty and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty = self._dirty
        if not dirty:
            return
        room = BATCH
        for out in self.outputs:
            if out.session.connected and out.swept:
                room = min(room, BATCH - len(out.pending))
        if room <= 0:
            return  # the fullest broker's drain calls resume()
        since = self._since
        if room >= len(dirty):
            batch: Iterable[tuple[Source, str]] = dirty
            self._dirty = {}
        else:
            batch = list(itertools.islice(dirty, room))
            for item in batch:
                del dirty[item]
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        self._render_current(batch, since)

    def render_all(self) -> None:
        """Render every dirty key now (before a flush or shutdown)."""
        dirty, self._dirty = self._dirty, {}
        self._render_current(dirty, self._since)

    def _render_current(self, keys: Iterable[tuple[Source, str]], since: float) -> None:
        for source, key in keys:
            self._render(source, key, source.states.get(key), since)

    def _render(self, source: Source, key: str, entry: StateEntry | None, since: float) -> None:
        route = source.routes.get(key) or self.routes(source, key)
        payload: Retained
        single = self._single
        if isinstance(route, str):
            if single is not None:
                payload = CLEAR if entry is None else entry
                for out in single.outputs:
                    out.put(route, payload, since)
                return
            # Built before the brokers were reconfigured (reconcile rebuilds every route soon after).
            lanes = self._lane_routes(source, key)
        elif isinstance(route, Filtered):
            if single is not None:
                payload = self._filtered(single, route.scoped, entry)
                for out in single.outputs:
                    out.put(route.topic, payload, since)
                return
            lanes = self._lane_routes(source, key)
        else:
            lanes = route
        for lane, state_topics, scoped in lanes:
            payload = CLEAR if entry is None else entry if scoped is None else self._filtered(lane, scoped, entry)
            for out in lane.outputs:
                for topic in state_topics:
                    out.put(topic, payload, since)

    def _filtered(self, lane: Lane, scoped: StateFilter, entry: StateEntry | None) -> Retained:
        """What a lane sends for a state entry after the key's privacy rules."""
        if entry is None:
            return CLEAR
        value = scoped.apply(entry.value)
        if value is self._drop:
            return CLEAR
        if value is entry.value:
            return entry
        return lane.render(encode_value(value), entry.time_ms)

    def reconcile(self, sources: Iterable[Source]) -> int:
        """Re-render every module state through the current routes and rules; clear what moved.

        Topics that are no longer produced (renamed, re-indexed or removed modules, deleted
        systems, retagged zones, a state key that a new rule hides) are cleared, and their
        clears are sent before the new topics. Returns how many topics were cleared.
        """
        before = {out: {t for t in out.current if topics.is_state_topic(self.org, t)} for out in self.outputs}
        for out in self.outputs:
            out.recording = set()
        # Every current state is rendered below; what is dirty may belong to a module that is gone.
        self._dirty.clear()
        since = time.perf_counter()
        for source in sources:
            source.routes.clear()
            for key, entry in list(source.states.items()):
                self._render(source, key, entry, since)
        cleared = 0
        for out in self.outputs:
            produced = out.recording or set()
            out.recording = None
            stale = {t for t in before[out] - produced
                     if t not in out.inherited or topics.prefix_of(t) not in self._owned_prefixes}
            for topic in stale:
                out.inherited.discard(topic)
                out.put(topic, CLEAR)
            if stale:
                # Clears go out first, so a subscriber never sees the old and the new topic at once.
                first = {t: out.pending[t] for t in stale if t in out.pending}
                first.update((t, p) for t, p in out.pending.items() if t not in stale)
                out.pending = first
            cleared += len(stale)
        return cleared

    async def remove_outputs(self, removed: Iterable[Output], timeout: float = 5.0) -> None:
        """Clear everything a removed broker holds for this runtime, then disconnect from it."""
        for out in removed:
            if out.session.connected:
                for topic in list(out.current):
                    out.put(topic, CLEAR)
                out.put(out.presence, OFFLINE)
                await out.flush(timeout)
            await out.session.stop()

    async def close(self, timeout: float = 5.0) -> None:
        """Announce going offline, flush, disconnect."""
        self.render_all()
        for out in self.outputs:
            if out.session.connected:
                out.put(out.presence, OFFLINE)
                out.current.pop(out.presence, None)
                await out.flush(timeout)
        await asyncio.gather(*(o.session.stop() for o in self.outputs))
