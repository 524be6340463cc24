"""The Empathic Building driver's exceptions."""

from __future__ import annotations

from runtime.errors import DriverError


class EmpathicBuildingError(DriverError):
    """Base class of every error this driver raises on purpose."""


class SettingsProblem(EmpathicBuildingError):
    """The module's merged settings are inconsistent (credentials, live vs gateway, forward rules)."""


class AuthError(EmpathicBuildingError):
    """No usable token: login failed, is backing off, or the server rejected the credentials."""


class LoginRejected(AuthError):
    """The server rejected the email and password (a configuration problem, not a transient one)."""


class ApiError(EmpathicBuildingError):
    """The REST API answered with an unexpected status."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"HTTP {status}: {message}")


class TransientApiError(EmpathicBuildingError):
    """A request failed in a way that may succeed later (timeout, connection error, 5xx)."""


class InvalidMeasurement(EmpathicBuildingError, ValueError):
    """A measurement does not match its documented fields and ranges; it was not queued."""


class CorruptEvent(EmpathicBuildingError):
    """A live event's data is not base64(gzip(JSON array))."""


class PusherClosed(EmpathicBuildingError):
    """The Pusher server closed the socket with a code that forbids reconnecting unchanged (4000-4099)."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        super().__init__(f"Pusher closed the connection with {code}: {reason or 'no reason given'}")


class SpoolError(EmpathicBuildingError):
    """The on-disk spool could not be written; nothing was acknowledged."""
