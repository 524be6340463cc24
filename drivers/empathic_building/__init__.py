"""Empathic Building: live sensor state over Pusher and a durable measurement gateway."""

from drivers.empathic_building.driver import EmpathicBuildingDriver, EmpathicBuildingSettings

__all__ = ["EmpathicBuildingDriver", "EmpathicBuildingSettings"]
