"""Service API enrichment: labels and group members from a loopback GraphQL fake; failures never stop data."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from tests.drivers.haltian.conftest import DEV_A, DEV_B, GROUP, Rig


class FakeServiceApi:
    """Hasura-style answers for login, refresh, devices and a device group."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail = False
        self.tokens = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        query: str = body["query"]
        if self.fail:
            self.calls.append("failed")
            return web.Response(status=503, text="maintenance")
        if "login(" in query or "refreshToken(" in query:
            op = "login" if "login(" in query else "refreshToken"
            self.calls.append(op)
            self.tokens += 1
            return web.json_response({"data": {op: {
                "accessToken": f"access-{self.tokens}", "expiresIn": 900, "refreshToken": f"refresh-{self.tokens}",
                "refreshExpiresIn": 43200, "organizationId": "org-1"}}})
        if request.headers.get("Authorization") != f"Bearer access-{self.tokens}":
            return web.json_response({"errors": [{"message": "invalid token"}]})
        if "devices" in query:
            self.calls.append("devices")
            return web.json_response({"data": {"devices": [
                {"id": DEV_A, "name": "Door sensor 2.01"}, {"id": DEV_B, "name": "Thermometer 2.01"},
                {"id": GROUP, "name": "Room 2.01 group"}]}})
        self.calls.append("group")
        return web.json_response({"data": {"device": {"id": GROUP, "name": "Room 2.01", "childDevices": {
            "edges": [{"node": {"id": DEV_B, "tuid": "TUID-B", "name": "Thermometer 2.01"}},
                      {"node": {"id": DEV_A, "tuid": "TUID-A", "name": "Door sensor 2.01"}}]}}}})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/graphql", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/v1/graphql"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def api() -> AsyncIterator[FakeServiceApi]:
    """A running fake Service API."""
    fake = FakeServiceApi()
    await fake.start()
    yield fake
    await fake.stop()


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll with a deadline (the HTTP round trips are real I/O)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def gql(api: FakeServiceApi) -> dict[str, Any]:
    """GraphQL settings of the driver record."""
    return {"graphql_url": api.url, "graphql_email": "ops@example.com", "graphql_password": "pw",
            "graphql_organization": "acme"}


async def test_labels_and_group_members(rig: Rig, api: FakeServiceApi) -> None:
    _, ctx = await rig.module(devices=[{"id": DEV_A, "label": "Entrance"}, DEV_B], device_group=GROUP, **gql(api))
    await until(lambda: ctx.states["devices"][GROUP].get("members") is not None)
    devices = ctx.states["devices"]
    assert devices[DEV_A]["label"] == "Entrance"  # the settings label wins
    assert devices[DEV_B]["label"] == "Thermometer 2.01"
    assert devices[GROUP]["label"] == "Room 2.01 group"
    assert devices[GROUP]["members"] == sorted([DEV_A, DEV_B])
    assert api.calls == ["login", "devices", "group"]


async def test_shared_client_refreshes_the_token_and_caches_names(rig: Rig, api: FakeServiceApi) -> None:
    _, one = await rig.module("mod-1", devices=[DEV_A], **gql(api))
    _, two = await rig.module("mod-2", devices=[DEV_B], **gql(api))
    await until(lambda: one.states["devices"][DEV_A]["label"] is not None
                and two.states["devices"][DEV_B]["label"] is not None)
    assert api.calls.count("login") == 1
    assert api.calls.count("devices") == 1  # the second module got the cached names
    await rig.clock.advance(3600)
    await until(lambda: api.calls.count("devices") == 2)
    assert api.calls.count("refreshToken") == 1
    assert api.calls.count("login") == 1


async def test_failure_is_counted_and_the_stream_goes_on(rig: Rig, api: FakeServiceApi) -> None:
    api.fail = True
    _, ctx = await rig.module(devices=[DEV_A], **gql(api))
    await until(lambda: ctx.metrics.counts[("dropped", "graphql_error")] == 1)
    rig.session.go_up()
    rig.send("humidity", DEV_A, 40.0)
    assert ctx.states["humidity"] == 40.0
    assert ctx.states["devices"][DEV_A]["label"] is None
