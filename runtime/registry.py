"""Driver registry, fed by the `placeos_runtime.drivers` entry-point group (name = driver key)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

from runtime.driver import Driver
from runtime.errors import DriverNotFound

GROUP = "placeos_runtime.drivers"
_log = logging.getLogger("runtime.registry")

AnyDriver = type[Driver]  # type: ignore[type-arg]


class Registry:
    """Driver classes by key; installed drivers are imported when a site first uses them."""

    def __init__(self, drivers: Iterable[AnyDriver] = ()) -> None:
        self._drivers: dict[str, AnyDriver] = {}
        self._installed: dict[str, EntryPoint] = {}
        for cls in drivers:
            self.add(cls)

    @classmethod
    def from_entry_points(cls) -> Registry:
        """Every driver installed under the entry-point group (a broken one is logged and skipped when used)."""
        registry = cls()
        for ep in entry_points(group=GROUP):
            registry._installed.setdefault(ep.name, ep)
        return registry

    def add(self, driver: AnyDriver, key: str | None = None) -> None:
        """Register a driver class under its key."""
        self._drivers[key or driver.key] = driver

    def _load(self, key: str) -> AnyDriver | None:
        found = self._drivers.get(key)
        if found is not None:
            return found
        ep = self._installed.pop(key, None)
        if ep is None:
            return None
        try:
            loaded = ep.load()
        except Exception as exc:  # a broken third-party driver must not stop the others
            _log.error("driver %s (%s) cannot be loaded: %s", ep.name, ep.value, exc)
            return None
        self.add(loaded, key=key)
        return loaded  # type: ignore[no-any-return]

    def get(self, key: str) -> AnyDriver:
        """The driver class for `key`."""
        found = self._load(key)
        if found is None:
            raise DriverNotFound(key)
        return found

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._load(key) is not None

    def keys(self) -> list[str]:
        """Registered keys (every installed driver imported), sorted."""
        for key in list(self._installed):
            self._load(key)
        return sorted(self._drivers)
