"""The runtime's exception hierarchy."""

from __future__ import annotations

from collections.abc import Sequence


class RuntimeFault(Exception):
    """Base class of every error the runtime raises on purpose."""


class SettingsError(RuntimeFault):
    """A settings file is invalid; carries every problem found, each with its path."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class DriverNotFound(RuntimeFault):
    """No driver is registered under the requested key."""


class DriverError(RuntimeFault):
    """A driver failed in a way it reported itself (bad upstream answer, protocol error)."""


class CommandError(RuntimeFault):
    """A module command could not be run."""


class UnknownCommand(CommandError):
    """The module has no command of that name."""


class CommandArgumentsError(CommandError):
    """The arguments given to a command do not match its signature."""


class ConnectionRefused(RuntimeFault):
    """An MQTT broker refused the connection with a CONNACK code."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(f"refused with code {code}: {message}")
