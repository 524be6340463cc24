"""Driver registry, fed by the `placeos_runtime.drivers` entry-point group (name = driver key)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib.metadata import entry_points

from runtime.driver import Driver
from runtime.errors import DriverNotFound

GROUP = "placeos_runtime.drivers"
_log = logging.getLogger("runtime.registry")

AnyDriver = type[Driver]  # type: ignore[type-arg]


class Registry:
    """Driver classes by key."""

    def __init__(self, drivers: Iterable[AnyDriver] = ()) -> None:
        self._drivers: dict[str, AnyDriver] = {}
        for cls in drivers:
            self.add(cls)

    @classmethod
    def from_entry_points(cls) -> Registry:
        """Every driver installed under the entry-point group; broken ones are logged and skipped."""
        registry = cls()
        for ep in entry_points(group=GROUP):
            try:
                loaded = ep.load()
            except Exception as exc:  # a broken third-party driver must not stop the others
                _log.error("driver %s (%s) cannot be loaded: %s", ep.name, ep.value, exc)
                continue
            registry.add(loaded, key=ep.name)
        return registry

    def add(self, driver: AnyDriver, key: str | None = None) -> None:
        """Register a driver class under its key."""
        self._drivers[key or driver.key] = driver

    def get(self, key: str) -> AnyDriver:
        """The driver class for `key`."""
        try:
            return self._drivers[key]
        except KeyError as exc:
            raise DriverNotFound(key) from exc

    def __contains__(self, key: object) -> bool:
        return key in self._drivers

    def keys(self) -> list[str]:
        """Registered keys, sorted."""
        return sorted(self._drivers)
