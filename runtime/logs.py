"""Logging set-up: readable text by default, JSON lines on request; the module id on module lines."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import msgspec

LogFormat = Literal["text", "json"]
_encode = msgspec.json.Encoder().encode


class _ModuleField(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "module_id"):
            record.module_id = None
        return True


class TextFormatter(logging.Formatter):
    """`time level logger [module] message`."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one line."""
        module = getattr(record, "module_id", None)
        record.where = f" [{module}]" if module else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one JSON line."""
        data: dict[str, object] = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname,
                                   "logger": record.name, "message": record.getMessage()}
        module = getattr(record, "module_id", None)
        if module:
            data["module"] = module
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return _encode(data).decode()


def setup_logging(fmt: LogFormat = "text", level: int = logging.INFO) -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ModuleField())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(name)s%(where)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("gmqtt").setLevel(logging.ERROR)
