"""Prometheus metrics on a registry of the runtime's own (never the global one).

Labels stay low-cardinality: driver record ids, broker names, kinds, rule names; never
device ids or topics. Hot paths bind label children once and keep them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

P = "placeos_runtime_"
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _Flush(Collector):
    """Registered first: hands counts kept in plain ints on hot paths to their metrics before any is read."""

    def __init__(self) -> None:
        self.hooks: list[Callable[[], None]] = []

    def collect(self) -> Iterable[Metric]:
        """Run the hooks; yields nothing of its own."""
        for hook in self.hooks:
            hook()
        return []

    def describe(self) -> Iterable[Metric]:
        """Nothing to describe."""
        return []


class Metrics:
    """Every metric of one runtime."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry(auto_describe=True)
        self._flush = _Flush()
        r.register(self._flush)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.received = Counter(P + "messages_received", "Messages received from upstream", ["driver", "kind"],
                                registry=r)
        self.decode_errors = Counter(P + "decode_errors", "Upstream messages that could not be decoded",
                                     ["driver", "kind"], registry=r)
        self.dropped = Counter(P + "messages_dropped", "Upstream messages dropped on purpose", ["driver", "reason"],
                               registry=r)
        self.state_changes = Counter(P + "state_changes", "State changes accepted from modules", registry=r)
        self.published = Counter(P + "published", "Messages handed to the MQTT client", ["broker"], registry=r)
        self.publish_errors = Counter(P + "publish_errors", "Publishes that failed", ["broker"], registry=r)
        self.cleared = Counter(P + "retained_cleared", "Retained topics cleared", ["broker"], registry=r)
        self.coalesced = Counter(P + "coalesced", "Updates replaced by a newer one before sending", ["broker"],
                                 registry=r)
        self.buffer_depth = Gauge(P + "buffer_depth", "Topics waiting to be sent, and changed state keys not yet "
                                  "rendered for them", ["broker"], registry=r)
        self.inflight = Gauge(P + "inflight", "QoS 1 publishes awaiting acknowledgement", ["broker"], registry=r)
        self.latency = Histogram(P + "publish_latency_seconds",
                                 "From state set to handed to the client (stage=sent) or acknowledged by the broker "
                                 "(stage=acked); one observation per batch sent, for its oldest change",
                                 ["broker", "stage"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.privacy = Counter(P + "privacy_actions", "Privacy rule applications", ["rule", "action"], registry=r)
        self.modules = Gauge(P + "modules", "Modules by status", ["status"], registry=r)
        self.module_restarts = Counter(P + "module_restarts", "Module load failures and crashes", ["driver"],
                                       registry=r)
        self.broker_connected = Gauge(P + "broker_connected", "1 while connected to the broker", ["broker"],
                                      registry=r)
        self.reconnects = Counter(P + "broker_reconnects", "Connections lost", ["broker"], registry=r)
        self.reloads = Counter(P + "settings_reloads", "Settings reloads", ["result"], registry=r)
        self.settings = Info(P + "settings", "The loaded settings", registry=r)
        self.job_errors = Counter(P + "scheduled_job_errors", "Scheduled jobs that raised", ["driver"], registry=r)


def on_collect(metrics: Metrics, hook: Callable[[], None]) -> None:
    """Call `hook` before every read of the metrics (to flush counts kept in plain ints)."""
    metrics._flush.hooks.append(hook)


class DriverCounters:
    """The `DriverMetrics` given to the modules of one driver record (children bound lazily, once)."""

    def __init__(self, metrics: Metrics, driver_id: str) -> None:
        self._m = metrics
        self._driver = driver_id
        self._received: dict[str, Counter] = {}
        self._errors: dict[str, Counter] = {}
        self._dropped: dict[str, Counter] = {}
        self._unflushed: dict[str, int] = {}  # received counts not yet handed to prometheus (hot path)
        on_collect(metrics, self.flush)

    def received(self, kind: str, count: int = 1) -> None:
        """Count messages received (added to the metric when it is read)."""
        unflushed = self._unflushed
        unflushed[kind] = unflushed.get(kind, 0) + count

    def flush(self) -> None:
        """Hand the received counts to prometheus."""
        pending, self._unflushed = self._unflushed, {}
        for kind, count in pending.items():
            child = self._received.get(kind)
            if child is None:
                child = self._received[kind] = self._m.received.labels(self._driver, kind)
            child.inc(count)

    def decode_error(self, kind: str, count: int = 1) -> None:
        """Count decode errors."""
        child = self._errors.get(kind)
        if child is None:
            child = self._errors[kind] = self._m.decode_errors.labels(self._driver, kind)
        child.inc(count)

    def dropped(self, reason: str, count: int = 1) -> None:
        """Count deliberate drops."""
        child = self._dropped.get(reason)
        if child is None:
            child = self._dropped[reason] = self._m.dropped.labels(self._driver, reason)
        child.inc(count)
