"""PlaceOS-style driver module runtime: hosts driver modules and publishes their state to MQTT."""

__version__ = "0.1.0"
