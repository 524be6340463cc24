"""Optional enrichment from Haltian's Service API (GraphQL, Hasura style): device names and group members.

One client per (endpoint, organisation, user) is shared by the modules of a driver record. It logs in,
refreshes the access token before it expires (one refresh in flight), caches the organisation's device
names for `refresh` seconds and, after a failure, answers from the failure for a minute instead of
sending every module's request again. A failure is the caller's to count; it never touches the stream.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from runtime.clock import Clock
from runtime.errors import DriverError

if TYPE_CHECKING:
    import aiohttp

_log = logging.getLogger("drivers.haltian.graphql")
FAILURE_HOLD = 60.0
TOKEN_MARGIN = 30.0

LOGIN = """mutation Login($email: String!, $organizationName: String!, $password: String!) {
  login(loginInput: {email: $email, organizationName: $organizationName, password: $password}) {
    accessToken expiresIn refreshToken refreshExpiresIn organizationId
  }
}"""
REFRESH = """mutation Refresh($organizationId: String!, $refreshToken: String!) {
  refreshToken(refreshTokenInput: {organizationId: $organizationId, refreshToken: $refreshToken}) {
    accessToken expiresIn refreshToken refreshExpiresIn organizationId
  }
}"""
DEVICES = "query Devices { devices { id name } }"
GROUP = """query Group($id: ID!) {
  device(id: $id) { id name childDevices { edges { node { id tuid name } } } }
}"""


class GraphQLError(DriverError):
    """The Service API could not be reached or answered with errors."""


class Tokens(msgspec.Struct, frozen=True):
    """Login or refresh result."""

    accessToken: str  # noqa: N815 - the vendor's field names
    expiresIn: float = 900.0  # noqa: N815
    refreshToken: str | None = None  # noqa: N815
    refreshExpiresIn: float = 43200.0  # noqa: N815
    organizationId: str | None = None  # noqa: N815


class _Reply(msgspec.Struct):
    data: dict[str, Any] | None = None
    errors: list[dict[str, Any]] | None = None


class Node(msgspec.Struct, frozen=True):
    """A device in a list."""

    id: str
    name: str | None = None
    tuid: str | None = None


class _Edge(msgspec.Struct, frozen=True):
    node: Node


class _Edges(msgspec.Struct, frozen=True):
    edges: list[_Edge] = []


class Group(msgspec.Struct, frozen=True):
    """A device group with its members."""

    id: str
    name: str | None = None
    childDevices: _Edges = _Edges()  # noqa: N815


_REPLY = msgspec.json.Decoder(_Reply)


class ServiceApi:
    """A logged-in GraphQL client with cached device names."""

    def __init__(self, http: aiohttp.ClientSession, url: str, *, email: str, password: str, organization: str,
                 clock: Clock, refresh: float = 3600.0) -> None:
        self._http = http
        self.url = url
        self._email = email
        self._password = password
        self._organization = organization
        self._clock = clock
        self.refresh = refresh
        self._tokens: Tokens | None = None
        self._access_until = 0.0
        self._refresh_until = 0.0
        self._auth_lock = asyncio.Lock()
        self._names_lock = asyncio.Lock()
        self._names: dict[str, str] = {}
        self._names_at: float | None = None
        self._failure: tuple[float, GraphQLError] | None = None

    async def close(self) -> None:
        """Nothing to release: the HTTP session belongs to the runtime."""

    async def device_names(self) -> dict[str, str]:
        """Device id -> name for the organisation, cached for `refresh` seconds."""
        async with self._names_lock:
            now = self._clock.time()
            if self._names_at is not None and now - self._names_at < self.refresh:
                return self._names
            self._check_failure(now)
            try:
                data = await self._query(DEVICES, {})
                nodes = msgspec.convert(data.get("devices") or [], list[Node])
            except (GraphQLError, msgspec.ValidationError) as exc:
                raise self._failed(now, exc) from exc
            self._names = {n.id: n.name for n in nodes if n.name}
            self._names_at = now
            self._failure = None
            return self._names

    async def group(self, group_id: str) -> Group | None:
        """A device group's name and members."""
        now = self._clock.time()
        self._check_failure(now)
        try:
            data = await self._query(GROUP, {"id": group_id})
            found = data.get("device")
            return None if found is None else msgspec.convert(found, Group)
        except (GraphQLError, msgspec.ValidationError) as exc:
            raise self._failed(now, exc) from exc

    def _check_failure(self, now: float) -> None:
        if self._failure is not None and now - self._failure[0] < FAILURE_HOLD:
            raise self._failure[1]

    def _failed(self, now: float, exc: Exception) -> GraphQLError:
        error = exc if isinstance(exc, GraphQLError) else GraphQLError(f"unexpected answer: {exc}")
        if self._failure is None:
            _log.warning("Haltian Service API %s failed: %s; names stay as they are", self.url, error)
        self._failure = (now, error)
        return error

    async def _query(self, query: str, variables: dict[str, Any], *, auth: bool = True) -> dict[str, Any]:
        import aiohttp  # noqa: PLC0415 - only sites that enrich from the Service API need aiohttp

        headers = {"Authorization": f"Bearer {await self._access_token()}"} if auth else {}
        try:
            async with self._http.post(self.url, json={"query": query, "variables": variables},
                                       headers=headers, timeout=aiohttp.ClientTimeout(total=20)) as response:
                body = await response.read()
                if response.status != 200:
                    raise GraphQLError(f"HTTP {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise GraphQLError(f"{type(exc).__name__}: {exc}") from exc
        try:
            reply = _REPLY.decode(body)
        except msgspec.DecodeError as exc:
            raise GraphQLError(f"not GraphQL JSON: {exc}") from exc
        if reply.errors:
            raise GraphQLError("; ".join(str(e.get("message", e)) for e in reply.errors))
        return reply.data or {}

    async def _access_token(self) -> str:
        async with self._auth_lock:
            now = self._clock.time()
            if self._tokens is not None and now < self._access_until:
                return self._tokens.accessToken
            tokens = self._tokens
            if tokens is not None and tokens.refreshToken and tokens.organizationId and now < self._refresh_until:
                try:
                    data = await self._query(REFRESH, {"organizationId": tokens.organizationId,
                                                       "refreshToken": tokens.refreshToken}, auth=False)
                    self._store(msgspec.convert(data.get("refreshToken"), Tokens), now)
                    return self._current()
                except (GraphQLError, msgspec.ValidationError) as exc:
                    _log.info("Haltian Service API token refresh failed (%s); logging in again", exc)
            data = await self._query(LOGIN, {"email": self._email, "organizationName": self._organization,
                                             "password": self._password}, auth=False)
            try:
                self._store(msgspec.convert(data.get("login"), Tokens), now)
            except msgspec.ValidationError as exc:
                raise GraphQLError(f"unexpected login answer: {exc}") from exc
            return self._current()

    def _store(self, tokens: Tokens, now: float) -> None:
        if tokens.organizationId is None and self._tokens is not None:
            tokens = msgspec.structs.replace(tokens, organizationId=self._tokens.organizationId)
        self._tokens = tokens
        self._access_until = now + tokens.expiresIn - TOKEN_MARGIN
        self._refresh_until = now + tokens.refreshExpiresIn - TOKEN_MARGIN

    def _current(self) -> str:
        if self._tokens is None:
            raise GraphQLError("not logged in")
        return self._tokens.accessToken
