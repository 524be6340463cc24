"""Token lifecycle: one refresh in flight, refresh tokens never reused, login only when needed."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from drivers.empathic_building.api import EbApi
from drivers.empathic_building.auth import StaticToken, UserTokens
from drivers.empathic_building.errors import AuthError, LoginRejected
from runtime.clock import FakeClock
from tests.drivers.empathic_building.conftest import EMAIL, GATEWAY_TOKEN, PASSWORD, Eb, eventually

log = logging.getLogger("test.eb.auth")


def user_tokens(eb: Eb, http: aiohttp.ClientSession, clock: FakeClock, *, password: str = PASSWORD,
                keepalive: bool = False, timeout: float = 5.0) -> UserTokens:
    return UserTokens(http, eb.url, EMAIL, password, clock=clock, logger=log, keepalive=keepalive, timeout=timeout)


async def test_login_once_then_reuse_the_access_token(eb: Eb, http: aiohttp.ClientSession, clock: FakeClock) -> None:
    tokens = user_tokens(eb, http, clock)
    first = await tokens.token()
    assert await tokens.token() == first
    assert (eb.server.logins, eb.server.refreshes) == (1, 0)
    assert tokens.accepted is True
    await tokens.close()


async def test_fifty_concurrent_requests_at_expiry_cause_exactly_one_refresh(
        eb: Eb, http: aiohttp.ClientSession, clock: FakeClock) -> None:
    tokens = user_tokens(eb, http, clock)
    api = EbApi(http, eb.url, tokens)
    assert (await api.request("GET", "/v1/locations/1")).ok
    await clock.advance(600)  # the access token has now expired
    responses = await asyncio.gather(*(api.request("GET", "/v1/locations/1") for _ in range(50)))
    assert all(r.ok for r in responses)
    assert eb.server.refreshes == 1
    assert eb.server.logins == 1
    assert tokens.refreshes == 1
    await tokens.close()


async def test_fifty_concurrent_401s_cause_exactly_one_refresh(eb: Eb, http: aiohttp.ClientSession,
                                                               clock: FakeClock) -> None:
    """The server expires the token early: fifty requests get 401 at once, one refresh serves them all."""
    tokens = user_tokens(eb, http, clock)
    api = EbApi(http, eb.url, tokens)
    await tokens.token()
    eb.server.expire_access_tokens()
    responses = await asyncio.gather(*(api.request("GET", "/v1/organizations/1") for _ in range(50)))
    assert [r.status for r in responses] == [200] * 50
    assert (eb.server.refreshes, eb.server.logins) == (1, 1)
    await tokens.close()


async def test_refresh_happens_before_expiry_without_traffic(eb: Eb, http: aiohttp.ClientSession,
                                                             clock: FakeClock) -> None:
    tokens = user_tokens(eb, http, clock, keepalive=True)
    first = await tokens.token()
    await clock.advance(600 - 60 - 1)
    assert eb.server.refreshes == 0
    await clock.advance(2)
    await eventually(lambda: eb.server.refreshes == 1)
    assert await tokens.token() != first
    await clock.advance(600 * 5)  # keeps the chain alive on its own
    await eventually(lambda: eb.server.refreshes >= 5)
    assert eb.server.logins == 1
    await tokens.close()


async def test_refresh_timeout_logs_in_instead_of_resending_the_refresh_token(
        eb: Eb, http: aiohttp.ClientSession, clock: FakeClock) -> None:
    tokens = user_tokens(eb, http, clock, timeout=0.2)
    await tokens.token()
    await clock.advance(600)
    eb.server.latency = 0.5  # the refresh answer comes too late; the server did use the token
    with pytest.raises(AuthError):
        await tokens.token()  # the fallback login times out as well
    eb.server.latency = 0.0
    await asyncio.sleep(0.6)  # let the server finish the abandoned requests
    await clock.advance(10)  # past the login backoff
    assert await tokens.token()
    assert eb.server.reuse_events == []
    assert tokens.refreshes == 0
    await tokens.close()


async def test_rejected_refresh_falls_back_to_login(eb: Eb, http: aiohttp.ClientSession, clock: FakeClock) -> None:
    tokens = user_tokens(eb, http, clock)
    await tokens.token()
    eb.server.revoke_refresh_tokens()
    await clock.advance(600)
    assert await tokens.token()
    assert eb.server.logins == 2
    await tokens.close()


async def test_login_failures_back_off_exponentially(eb: Eb, http: aiohttp.ClientSession, clock: FakeClock) -> None:
    tokens = user_tokens(eb, http, clock, password="wrong")
    with pytest.raises(LoginRejected):
        await tokens.token()
    with pytest.raises(AuthError, match="backing off"):
        await tokens.token()
    assert eb.server.logins == 1
    assert tokens.accepted is False
    await clock.advance(2)
    with pytest.raises(LoginRejected):
        await tokens.token()
    assert eb.server.logins == 2
    await clock.advance(2)  # the second failure doubled the wait to 4 s
    with pytest.raises(AuthError, match="backing off"):
        await tokens.token()
    await clock.advance(2)
    with pytest.raises(LoginRejected):
        await tokens.token()
    assert eb.server.logins == 3
    await tokens.close()


async def test_tokens_and_passwords_are_never_logged(eb: Eb, http: aiohttp.ClientSession, clock: FakeClock,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = user_tokens(eb, http, clock)
    api = EbApi(http, eb.url, tokens)
    access = await tokens.token()
    await clock.advance(600)
    renewed = await tokens.token()
    eb.server.revoke_refresh_tokens()
    await clock.advance(600)
    await api.request("GET", "/v1/locations/1")
    text = caplog.text + repr(tokens)
    for secret in (PASSWORD, access, renewed):
        assert secret not in text
    await tokens.close()


async def test_gateway_static_token(eb: Eb, http: aiohttp.ClientSession) -> None:
    tokens = StaticToken(GATEWAY_TOKEN)
    api = EbApi(http, eb.url, tokens)
    assert (await api.request("POST", "/v2/measurements", body=b"[]")).ok
    assert tokens.accepted is True
    bad = StaticToken("not-a-token")
    response = await EbApi(http, eb.url, bad).request("POST", "/v2/measurements", body=b"[]")
    assert response.status == 401
    assert bad.accepted is False
    assert GATEWAY_TOKEN not in repr(tokens)
