"""Drivers shipped with the runtime, one package per vendor."""
