"""Tokens for the EB REST API: a user account's rotating pair, or a gateway's static token.

Rules from seed 003 that shape `UserTokens`:
- login (`/v1/login`) is expensive for the server, so it is used only when no refresh can help;
- a refresh token (`/v1/token`) is single-use, and sending one twice makes the server invalidate
  the whole chain. So at most one renewal runs at a time (every caller awaits the same task), and
  a refresh token is forgotten the moment it is sent: if the answer is lost (timeout, connection
  reset, 5xx) it is not retried, the account logs in again instead.
Tokens and passwords never appear in logs, exceptions or reprs.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

import aiohttp
import msgspec

from drivers.empathic_building.errors import AuthError, EmpathicBuildingError, LoginRejected, TransientApiError
from drivers.empathic_building.models import TokenResponse
from runtime.clock import Clock
from runtime.tasks import STOP_TIMEOUT, cancel_and_wait, raise_if_cancelled

StatusListener = Callable[[bool], None]
_token_decoder = msgspec.json.Decoder(TokenResponse)
Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


class _Rejected(EmpathicBuildingError):
    """The token endpoint refused the credentials or refresh token (4xx)."""


class TokenManager:
    """What the REST client needs: a current token, a way to report it rejected, and its status."""

    def __init__(self) -> None:
        self._accepted: bool | None = None
        self._listeners: list[StatusListener] = []

    @property
    def accepted(self) -> bool | None:
        """Whether the server last accepted our token (None before the first answer)."""
        return self._accepted

    def add_listener(self, listener: StatusListener) -> Callable[[], None]:
        """Call `listener(accepted)` on every change; returns a function that removes it."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def report(self, accepted: bool) -> None:
        """Record whether the server accepted the token in a request."""
        if accepted != self._accepted:
            self._accepted = accepted
            for listener in list(self._listeners):
                listener(accepted)

    async def token(self) -> str:
        """A token to put in the Bearer header."""
        raise NotImplementedError

    def invalidate(self, token: str) -> None:
        """The server answered 401 to `token`: stop handing it out."""

    async def close(self) -> None:
        """Stop background work."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} accepted={self._accepted}>"


class StaticToken(TokenManager):
    """A gateway account's static, non-expiring token."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token

    async def token(self) -> str:
        """The static token."""
        return self._token

    def invalidate(self, token: str) -> None:
        """A static token cannot be renewed: report it rejected."""
        self.report(False)


class UserTokens(TokenManager):
    """A user account's access/refresh pair: refreshed before expiry, one renewal in flight, login as last resort."""

    def __init__(self, http: aiohttp.ClientSession, api_url: str, email: str, password: str, *, clock: Clock,
                 logger: Logger, timeout: float = 30.0, refresh_margin: float = 60.0,
                 login_backoff: tuple[float, float] = (2.0, 300.0), keepalive: bool = True) -> None:
        super().__init__()
        self._http = http
        self._base = api_url.rstrip("/")
        self._email = email
        self._password = password
        self._clock = clock
        self._log = logger
        self._timeout = timeout
        self._refresh_margin = refresh_margin
        self._backoff_first, self._backoff_cap = login_backoff
        self._keepalive_wanted = keepalive
        self._access: str | None = None
        self._refresh: str | None = None
        self._expires_at = 0.0
        self._lifetime = math.inf
        self._inflight: asyncio.Task[str] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._login_failures = 0
        self._login_not_before = -math.inf
        self.logins = 0
        self.refreshes = 0

    async def token(self) -> str:
        """A valid access token, renewing it first when it expires within the margin."""
        access = self._access
        if access is not None and self._clock.monotonic() < self._expires_at - self._margin():
            return access
        return await self.renew()

    def invalidate(self, token: str) -> None:
        """Drop the access token if it is still the current one (the refresh token stays usable)."""
        if token == self._access:
            self._access = None

    async def renew(self) -> str:
        """Renew now, or join the renewal already in flight."""
        task = self._inflight
        if task is None:
            task = self._inflight = asyncio.create_task(self._obtain(), name="eb-token-renew")
            task.add_done_callback(self._renewal_done)
        # Shielded: a caller giving up (its own timeout) must not cancel a refresh that is on the wire.
        return await asyncio.shield(task)

    async def close(self) -> None:
        """Stop the keep-alive and any renewal, waiting for them at most `STOP_TIMEOUT` seconds."""
        tasks = [task for task in (self._keepalive, self._inflight) if task is not None]
        self._keepalive = self._inflight = None
        await cancel_and_wait(tasks, STOP_TIMEOUT, self._log, "EB token renewal")

    def _renewal_done(self, task: asyncio.Task[str]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved here; every waiter gets it re-raised through the shield

    def _margin(self) -> float:
        return min(self._refresh_margin, self._lifetime / 5)

    async def _obtain(self) -> str:
        refresh, self._refresh = self._refresh, None  # consumed now: never sent a second time
        if refresh is not None:
            try:
                pair = await self._post("/v1/token", {"refresh_token": refresh})
            except _Rejected:
                self._log.info("EB refresh token rejected; logging in again")
            except EmpathicBuildingError as exc:
                raise_if_cancelled()  # close() cancelled the refresh: no login after that
                self._log.warning("EB token refresh failed (%s); the refresh token is not reused, logging in", exc)
            else:
                self.refreshes += 1
                return self._store(pair, "refreshed")
        return await self._login()

    async def _login(self) -> str:
        now = self._clock.monotonic()
        if now < self._login_not_before:
            raise AuthError(f"EB login backing off for {self._login_not_before - now:.0f} s after failures")
        self.logins += 1
        try:
            pair = await self._post("/v1/login", {"email": self._email, "password": self._password})
        except _Rejected as exc:
            self._login_failed()
            raise LoginRejected("EB login rejected: check the account's email and password") from exc
        except EmpathicBuildingError as exc:
            self._login_failed()
            raise AuthError(f"EB login failed: {exc}") from exc
        self._login_failures = 0
        self._login_not_before = -math.inf
        return self._store(pair, "logged in")

    def _login_failed(self) -> None:
        self._login_failures += 1
        delay = min(self._backoff_cap, self._backoff_first * 2 ** (self._login_failures - 1))
        self._login_not_before = self._clock.monotonic() + delay
        self.report(False)

    def _store(self, pair: TokenResponse, how: str) -> str:
        self._access = pair.access_token
        self._refresh = pair.refresh_token
        self._lifetime = float(pair.expires_in) if pair.expires_in is not None else math.inf
        self._expires_at = self._clock.monotonic() + self._lifetime
        self._log.info("EB %s; access token valid for %s s", how,
                       "unlimited" if math.isinf(self._lifetime) else f"{self._lifetime:.0f}")
        self.report(True)
        if self._keepalive_wanted and self._keepalive is None:
            self._keepalive = asyncio.create_task(self._keep_fresh(), name="eb-token-keepalive")
        return pair.access_token

    async def _keep_fresh(self) -> None:
        """Refresh ahead of expiry even when idle, so the chain never lapses into an expensive login."""
        while True:
            due = self._expires_at - self._margin() - self._clock.monotonic()
            await self._clock.sleep(min(max(due, 1.0), 3600.0))
            if self._access is not None and self._clock.monotonic() < self._expires_at - self._margin():
                continue
            try:
                await self.renew()
            except AuthError as exc:
                raise_if_cancelled()
                self._log.warning("EB token keep-alive: %s", exc)
                await self._clock.sleep(max(1.0, self._login_not_before - self._clock.monotonic()))

    async def _post(self, path: str, form: dict[str, str]) -> TokenResponse:
        try:
            async with asyncio.timeout(self._timeout):
                async with self._http.post(self._base + path, data=form) as resp:
                    body = await resp.read()
                    status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientApiError(f"POST {path}: {type(exc).__name__}") from exc
        if status in (400, 401, 403):
            raise _Rejected(f"POST {path}: HTTP {status}")
        if status != 200:
            raise TransientApiError(f"POST {path}: HTTP {status}")
        try:
            return _token_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise TransientApiError(f"POST {path}: unexpected answer ({exc})") from exc
