"""Haltian IoT: sensors and device groups streamed over MQTT into room modules."""

from drivers.haltian.driver import DeviceRef, HaltianDriver, HaltianSettings

__all__ = ["DeviceRef", "HaltianDriver", "HaltianSettings"]
