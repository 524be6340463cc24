"""The EB REST client: Bearer requests over the runtime's aiohttp session, with one 401 retry."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Hashable
from typing import Any, TypeVar

import aiohttp
import msgspec

from drivers.empathic_building.auth import TokenManager
from drivers.empathic_building.errors import ApiError, AuthError, TransientApiError

T = TypeVar("T")


class Response(msgspec.Struct, frozen=True):
    """A finished HTTP exchange: status and body."""

    status: int
    body: bytes

    @property
    def ok(self) -> bool:
        """True for 2xx."""
        return 200 <= self.status < 300


class EbApi:
    """Authenticated REST calls; a 401 invalidates the token and retries once with a renewed one."""

    def __init__(self, http: aiohttp.ClientSession, api_url: str, tokens: TokenManager, *,
                 timeout: float = 30.0) -> None:
        self.http = http
        self.base = api_url.rstrip("/")
        self.tokens = tokens
        self.timeout = timeout

    async def request(self, method: str, path: str, *, body: bytes | None = None,
                      form: dict[str, str] | None = None, timeout: float | None = None) -> Response:
        """Send a request; raises `TransientApiError` on timeouts and connection errors, `AuthError` without a token."""
        for attempt in range(2):
            token = await self.tokens.token()
            response = await self._send(method, path, token, body, form, timeout or self.timeout)
            if response.status == 401:
                self.tokens.invalidate(token)
                if attempt == 0:
                    continue
                self.tokens.report(False)
                return response
            self.tokens.report(True)
            return response
        raise AssertionError("unreachable")

    async def get(self, path: str, kind: type[T]) -> T:
        """GET a JSON document and decode it as `kind`."""
        response = await self.request("GET", path)
        if response.status == 401:
            raise AuthError(f"GET {path}: token rejected")
        if not response.ok:
            raise ApiError(response.status, f"GET {path}")
        try:
            return msgspec.json.decode(response.body, type=kind)
        except msgspec.DecodeError as exc:  # not JSON (an HTML page) or not the expected shape
            raise ApiError(response.status, f"GET {path}: unexpected answer ({exc})") from exc

    async def _send(self, method: str, path: str, token: str, body: bytes | None, form: dict[str, str] | None,
                    timeout: float) -> Response:
        headers = {"authorization": f"Bearer {token}"}
        data: Any = form
        if body is not None:
            headers["content-type"] = "application/json"
            data = body
        try:
            async with asyncio.timeout(timeout):
                async with self.http.request(method, self.base + path, data=data, headers=headers) as resp:
                    return Response(resp.status, await resp.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientApiError(f"{method} {path}: {type(exc).__name__} {exc}".rstrip()) from exc


def secret_fingerprint(*parts: str) -> str:
    """A digest standing in for credentials in shared-service keys, which may be logged."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


class EbAccount:
    """One set of credentials: the shared token manager and REST client of a driver record's modules."""

    def __init__(self, key: Hashable, tokens: TokenManager, api: EbApi, *, gateway: bool) -> None:
        self.key = key
        self.tokens = tokens
        self.api = api
        self.gateway = gateway

    async def close(self) -> None:
        """Stop the token manager's background work."""
        await self.tokens.close()
