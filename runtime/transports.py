"""The runtime's real transports lent to drivers: supervised MQTT sessions and one HTTP client session."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.mqtt import MqttEndpoint, MqttSession, SessionListener

if TYPE_CHECKING:
    import aiohttp


class RuntimeTransports:
    """Hands out MQTT sessions and the shared aiohttp session; closed with the runtime."""

    def __init__(self) -> None:
        self._http: aiohttp.ClientSession | None = None

    def mqtt(self, endpoint: MqttEndpoint, listener: SessionListener, *, name: str) -> MqttSession:
        """A new supervised MQTT session (call `start()` on it)."""
        return MqttSession(endpoint, listener, name=name)

    @property
    def http(self) -> aiohttp.ClientSession:
        """The shared HTTP client session, created on first use."""
        if self._http is None or self._http.closed:
            import aiohttp  # noqa: PLC0415 - imported only when a driver speaks HTTP

            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self._http

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._http is not None:
            await self._http.close()
            self._http = None
