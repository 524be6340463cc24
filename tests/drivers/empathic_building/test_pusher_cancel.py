"""A cancelled Pusher client stops for good, even when the call it was in swallowed or converted the cancellation.

`close()` cancels the connection loop. A cancellation can get lost on its way: a clean-up that is itself
awaited when the cancel lands, a timeout helper that turns it into `TimeoutError`, a library that answers it
with a connection error. The loop catches those errors to reconnect, so it must notice that it was asked to
stop, and `close()` must never wait for it forever.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import aiohttp
import pytest

from drivers.empathic_building.errors import PusherClosed
from drivers.empathic_building.pusher import PusherClient, PusherEndpoint
from runtime.clock import FakeClock
from runtime.testing import FakeMetrics
from tests.drivers.empathic_building.conftest import Eb, eventually

BOUND = 5.0  # seconds: a failure bound for `close()`, never a pass condition
CHANNEL = "notifications"  # public: subscribing needs no auth
_log = logging.getLogger("tests.pusher_cancel")


class GatedClock(FakeClock):
    """A fake clock that can make the next cancelled sleep stay busy until it is cancelled once more.

    The Pusher session waits for its timer task to finish cancelling when the socket closes; holding that
    keeps the client inside its end-of-session clean-up, where a `close()` arriving at that moment lands.
    """

    def __init__(self) -> None:
        super().__init__()
        self._armed = False
        self.holding = 0

    def hold_next_cancel(self) -> None:
        """The next sleep that is cancelled keeps running until it is cancelled a second time."""
        self._armed = True

    async def sleep(self, seconds: float) -> None:
        """Sleep on the fake clock; see the class docstring for cancellation."""
        try:
            await super().sleep(seconds)
        except asyncio.CancelledError:
            if not self._armed:
                raise
            self._armed = False
            self.holding += 1
            try:
                await asyncio.Event().wait()  # ends only by the second cancellation
            finally:
                self.holding -= 1


@pytest.fixture
def clock() -> GatedClock:
    """The gated fake clock, shared by the client and the fake server."""
    return GatedClock()


class Listener:
    """Records what the client reports."""

    def __init__(self) -> None:
        self.status: list[tuple[str, bool]] = []
        self.fatal: list[PusherClosed] = []

    def on_event(self, channel: str, event: str, data: Any) -> None:
        """Channel events are not used here."""

    def on_channel_status(self, channel: str, subscribed: bool) -> None:
        """Record a status change."""
        self.status.append((channel, subscribed))

    def on_fatal(self, error: PusherClosed) -> None:
        """Record a fatal close."""
        self.fatal.append(error)


async def no_auth(channel: str, socket_id: str) -> str:
    """Only the public channel is used: nothing needs authorising."""
    raise AssertionError(f"unexpected auth for {channel}")


def client(http: Any, endpoint: PusherEndpoint, clock: FakeClock, listener: Listener | None = None,
           **extra: Any) -> PusherClient:
    """A client on the public channel."""
    pusher = PusherClient(cast(aiohttp.ClientSession, http), endpoint, no_auth, listener or Listener(), clock=clock,
                          logger=_log, metrics=FakeMetrics(), **extra)
    pusher.set_channels({CHANNEL})
    return pusher


class StalledHandshake:
    """Stands in for the HTTP session: the WebSocket handshake never completes, and its cancellation comes
    out as `error` (as from a timeout helper racing the cancel, or a library reporting the torn connection).
    Without an error it ignores cancellation altogether until `released` is set, then fails."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error
        self.attempts = 0
        self.connecting = asyncio.Event()
        self.released = asyncio.Event()

    async def ws_connect(self, url: str, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
        """Wait; on cancellation raise `error`, or without one keep waiting until released."""
        self.attempts += 1
        self.connecting.set()
        while True:
            try:
                await self.released.wait()
            except asyncio.CancelledError:
                if self.error is None:
                    continue
                raise self.error from None
            raise aiohttp.ClientConnectionError("handshake abandoned")


async def test_close_while_the_session_cleans_up_after_the_server_left(eb: Eb, http: aiohttp.ClientSession,
                                                                        clock: GatedClock) -> None:
    listener = Listener()
    pusher = client(http, PusherEndpoint("127.0.0.1", eb.port, False, eb.server.app_key), clock, listener)
    pusher.start()
    await eventually(lambda: pusher.is_subscribed(CHANNEL))
    task = pusher._task
    assert task is not None
    clock.hold_next_cancel()
    await eb.server.disconnect_all(4100, "over capacity")  # a loss that reconnects after a backoff
    await eventually(lambda: clock.holding == 1)  # the session is finishing: its timer is still being cancelled
    async with asyncio.timeout(BOUND):
        await pusher.close()
    assert clock.holding == 0
    assert task.cancelled()
    await clock.advance(600)
    assert pusher.connections == 1
    assert pusher.reconnect_delays == []
    assert eb.server.channels_of_open_sockets() == []
    assert listener.status == [(CHANNEL, True), (CHANNEL, False)]  # never subscribed again
    assert listener.fatal == []


@pytest.mark.parametrize("error", [TimeoutError(), aiohttp.ServerDisconnectedError(), ConnectionResetError()],
                         ids=["timeout", "server-disconnected", "connection-reset"])
async def test_close_during_a_handshake_that_converts_the_cancellation(clock: GatedClock,
                                                                       error: BaseException) -> None:
    session = StalledHandshake(error)
    pusher = client(session, PusherEndpoint("127.0.0.1", 9, False, "key"), clock)
    pusher.start()
    await session.connecting.wait()
    task = pusher._task
    assert task is not None
    async with asyncio.timeout(BOUND):
        await pusher.close()
    assert task.cancelled()
    await clock.advance(600)
    assert session.attempts == 1
    assert pusher.reconnect_delays == []


async def test_close_gives_up_on_a_loop_that_ignores_cancellation(clock: GatedClock,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    session = StalledHandshake(None)
    pusher = client(session, PusherEndpoint("127.0.0.1", 9, False, "key"), clock, close_timeout=0.05)
    pusher.start()
    await session.connecting.wait()
    task = pusher._task
    assert task is not None
    with caplog.at_level(logging.WARNING, logger=_log.name):
        async with asyncio.timeout(BOUND):
            await pusher.close()
    assert not task.done()
    assert any("did not stop" in r.getMessage() for r in caplog.records)
    session.released.set()  # the handshake fails now: the loop sees it was cancelled and ends
    async with asyncio.timeout(BOUND):
        await asyncio.wait({task})
    assert task.cancelled()
    await clock.advance(600)
    assert session.attempts == 1
