"""`embedded://HOST:PORT`: an in-process amqtt broker for the demo and small sites."""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any

from runtime.errors import RuntimeFault

_log = logging.getLogger("runtime.embedded")


class EmbeddedBroker:
    """An amqtt broker started inside the runtime (install the `embedded` extra)."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 1883
        self._broker: Any = None

    async def start(self) -> None:
        """Start listening."""
        try:
            from amqtt.broker import Broker  # noqa: PLC0415 - optional extra, imported only when used
        except ImportError as exc:
            raise RuntimeFault("embedded:// needs the optional extra: pip install 'placeos-runtime[embedded]'") from exc
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": 1000}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._broker = Broker(config)
        await self._broker.start()
        _log.warning("embedded MQTT broker listening on %s:%d; production sites should use an external broker "
                     "(mosquitto, EMQX, a cloud broker)", self.host, self.port)

    async def stop(self) -> None:
        """Stop the broker."""
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
