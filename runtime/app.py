"""The runtime: settings to plan, brokers, publisher and modules, signals and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import signal
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.clock import Clock, SystemClock
from runtime.embedded import EmbeddedBroker
from runtime.errors import SettingsError
from runtime.gcpolicy import GcPolicy
from runtime.manager import Manager
from runtime.metrics import Metrics
from runtime.model import Broker, Site
from runtime.plan import Plan, build_plan
from runtime.privacy import DROP, PrivacyEngine, RuleSet
from runtime.publisher import Publisher
from runtime.registry import Registry
from runtime.settings import load_settings
from runtime.transports import RuntimeTransports

if TYPE_CHECKING:
    from runtime.http import HttpApi

_log = logging.getLogger("runtime")


def default_client_id(site: Site, broker: Broker) -> str:
    """`placeos-runtime-<host>-<org>`, made a valid topic level."""
    raw = f"placeos-runtime-{socket.gethostname()}-{site.org.id}"
    return re.sub(r"[/+#\x00\s]", "-", raw)


class Runtime:
    """One running site."""

    def __init__(self, settings_path: str | Path, *, registry: Registry | None = None, clock: Clock | None = None,
                 env: Mapping[str, str] | None = None, metrics: Metrics | None = None,
                 backoff_initial: float = 1.0) -> None:
        self.settings_path = Path(settings_path)
        self.registry = registry or Registry.from_entry_points()
        self.clock = clock or SystemClock()
        self.env = env
        self.metrics = metrics or Metrics()
        self.transports = RuntimeTransports()
        self.plan: Plan | None = None
        self.publisher: Publisher | None = None
        self.manager: Manager | None = None
        self.http: HttpApi | None = None
        self.http_rules: RuleSet | None = None
        self.drop = DROP
        self._reload_lock = asyncio.Lock()
        self._embedded: list[EmbeddedBroker] = []
        self._backoff_initial = backoff_initial
        self._stop = asyncio.Event()
        self.gc: GcPolicy | None = None
        """The collector policy, when running as the process (`run`)."""

    def load(self) -> Plan:
        """Read and resolve the settings file (raises `SettingsError`)."""
        return build_plan(load_settings(self.settings_path, self.env), self.registry)

    def _client_id(self, site: Site) -> Callable[[Broker], str]:
        return lambda broker: broker.client_id or default_client_id(site, broker)

    def _privacy(self, site: Site) -> PrivacyEngine:
        engine = PrivacyEngine(site.privacy, on_action=self._count_privacy)
        self.http_rules = engine.for_rules(site.http.privacy)
        return engine

    def _settings_info(self, plan: Plan) -> None:
        try:
            digest = hashlib.sha256(self.settings_path.read_bytes()).hexdigest()
        except OSError:
            digest = ""
        self.metrics.settings.info({"path": str(self.settings_path), "org": plan.org, "sha256": digest,
                                    "modules": str(len(plan.modules))})

    def _count_privacy(self, rule: str, action: str) -> None:
        self.metrics.privacy.labels(rule, action).inc()

    async def start(self) -> None:
        """Start brokers, publish metadata and start every module."""
        plan = self.plan = self.load()
        site = plan.site
        for warning in plan.warnings:
            _log.warning("settings: %s", warning)
        for broker in site.brokers:
            if broker.url.startswith("embedded://"):
                embedded = EmbeddedBroker(broker.url)
                await embedded.start()
                self._embedded.append(embedded)
        privacy = self._privacy(site)
        publisher = self.publisher = Publisher(site.org.id, site.brokers, self._client_id(site), self.metrics,
                                               privacy.for_rules, drop=DROP)
        publisher.set_owned(plan.prefixes(), plan.metadata)
        publisher.publish_metadata(plan.metadata, {})
        publisher.start()
        state_dir = (self.settings_path.parent / site.state_dir).resolve()
        self.manager = Manager(self.registry, publisher, self.clock, self.transports, self.metrics, state_dir,
                               backoff_initial=self._backoff_initial)
        await self.manager.apply(plan)
        self._settings_info(plan)
        if site.http.enabled:
            from runtime.http import HttpApi  # noqa: PLC0415 - aiohttp's server, imported only when it serves

            self.http = HttpApi(self)
            await self.http.start(site.http.host, site.http.port)
        _log.info("site %s: %d modules in %d systems, %d brokers", site.org.id, len(plan.modules),
                  len(plan.systems), len(site.brokers))

    async def reload(self) -> tuple[bool, dict[str, Any]]:
        """Re-read the settings file and apply it as a diff; an invalid file changes nothing."""
        async with self._reload_lock:
            old, publisher, manager = self.plan, self.publisher, self.manager
            if old is None or publisher is None or manager is None:
                return False, {"errors": ["the runtime is not running"]}
            try:
                plan = self.load()
            except SettingsError as exc:
                self.metrics.reloads.labels("failed").inc()
                _log.error("settings reload rejected; the running configuration stays: %s", "; ".join(exc.problems))
                return False, {"errors": exc.problems}
            site = plan.site
            if site.org.id != old.org or site.http != old.site.http or site.state_dir != old.site.state_dir:
                _log.warning("settings reload: changes to org id, http or state_dir take effect at the next restart")
            for warning in plan.warnings:
                _log.warning("settings: %s", warning)
            privacy = self._privacy(site)
            removed = publisher.configure(site.brokers, self._client_id(site), privacy.for_rules)
            publisher.set_owned(plan.prefixes(), plan.metadata)
            publisher.publish_metadata(plan.metadata, old.metadata)
            self.plan = plan
            await manager.apply(plan)
            await publisher.remove_outputs(removed)
            if self.gc is not None and self.gc.active:
                self.gc.reclaim()  # what the reload replaced may be frozen cyclic garbage
            self.metrics.reloads.labels("ok").inc()
            self._settings_info(plan)
            _log.info("settings reloaded: %d modules in %d systems", len(plan.modules), len(plan.systems))
            return True, {"modules": len(plan.modules), "systems": len(plan.systems),
                          "warnings": list(plan.warnings)}

    async def stop(self) -> None:
        """Stop modules, flush and disconnect the brokers, stop embedded brokers."""
        if self.http is not None:
            await self.http.stop()
        if self.manager is not None:
            await self.manager.stop()
        if self.publisher is not None:
            await self.publisher.close()
        await self.transports.close()
        for embedded in self._embedded:
            await embedded.stop()
        self._embedded.clear()

    async def _settle_gc(self, policy: GcPolicy) -> None:
        try:
            if self.manager is not None:
                await self.manager.wait_loaded(self.manager.load_timeout)
        finally:
            policy.settle()

    def request_stop(self) -> None:
        """Ask `run` to shut down."""
        self._stop.set()

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; a second signal exits at once."""
        loop = asyncio.get_running_loop()
        signals = 0

        def on_signal(signum: int) -> None:
            nonlocal signals
            signals += 1
            if signals > 1:
                _log.warning("second signal: exiting now")
                os._exit(1)
            _log.info("%s received: shutting down", signal.Signals(signum).name)
            self.request_stop()

        reloads: set[asyncio.Task[Any]] = set()

        def on_hangup() -> None:
            task = loop.create_task(self.reload(), name="reload")
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        policy = self.gc = GcPolicy(loop)
        policy.pause()  # until the first loads are done (see runtime/gcpolicy.py)
        settle: asyncio.Task[None] | None = None
        try:
            await self.start()
            settle = loop.create_task(self._settle_gc(policy), name="gc-settle")
            await self._stop.wait()
        finally:
            if settle is not None:
                settle.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await settle
            await self.stop()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(signum)
            policy.close()  # after stopping: unfrozen, the heap would be walked while shutting down
        return 0
