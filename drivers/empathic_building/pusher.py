"""A Pusher Channels protocol 7 client on the runtime's aiohttp WebSocket session.

One socket serves every channel its owner asks for. After `pusher:connection_established` it
subscribes each channel, authorising `private-` channels through the owner's authorizer (EB's
`/v1/pusher/auth`) with the new socket id; every new socket authorises and subscribes afresh.
It sends `pusher:ping` after `activity_timeout` of silence and reconnects when no message comes
within `pong_timeout`. Close codes follow the protocol: 4000-4099 stop (a configuration problem,
reported as `PusherClosed`), 4100-4199 reconnect after a capped exponential backoff, 4200-4299
reconnect at once; other losses back off too. All waiting is on the runtime clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlencode

import aiohttp
import msgspec

from drivers.empathic_building.errors import EmpathicBuildingError, PusherClosed
from drivers.empathic_building.models import ConnectionEstablished, PusherErrorData, PusherFrame
from runtime.clock import Clock
from runtime.driver import DriverMetrics
from runtime.tasks import STOP_TIMEOUT, cancel_and_wait, raise_if_cancelled

PROTOCOL = 7
CLIENT_NAME = "placeos-runtime-python"
CLIENT_VERSION = "0.1.0"
Authorizer = Callable[[str, str], Awaitable[str]]
Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]
_frame_decoder = msgspec.json.Decoder(PusherFrame)
_encoder = msgspec.json.Encoder()


class PusherEndpoint(msgspec.Struct, frozen=True):
    """Where the Pusher server is and which app key to use."""

    host: str
    port: int
    tls: bool
    key: str

    @classmethod
    def for_cluster(cls, cluster: str, key: str) -> PusherEndpoint:
        """Pusher's hosted service: ws-<cluster>.pusher.com:443 over TLS."""
        return cls(f"ws-{cluster}.pusher.com", 443, True, key)

    @property
    def url(self) -> str:
        """The WebSocket URL with the protocol version and client name."""
        query = urlencode({"protocol": PROTOCOL, "client": CLIENT_NAME, "version": CLIENT_VERSION})
        return f"{'wss' if self.tls else 'ws'}://{self.host}:{self.port}/app/{self.key}?{query}"


class PusherListener(Protocol):
    """The owner of a `PusherClient`: receives channel events and subscription status."""

    def on_event(self, channel: str, event: str, data: Any) -> None:
        """A channel event (data as the server sent it: usually a string)."""
        ...

    def on_channel_status(self, channel: str, subscribed: bool) -> None:
        """A channel became subscribed, or stopped being subscribed."""
        ...

    def on_fatal(self, error: PusherClosed) -> None:
        """The server refused us with a 4000-4099 code: the client stopped."""
        ...


class _Reconnect(EmpathicBuildingError):
    """The session ended in a way that calls for a reconnect after backoff."""


def _data_object(data: Any) -> Any:
    """`data` of a `pusher:` event: a JSON string per the protocol, an object on some servers."""
    if isinstance(data, str | bytes):
        return msgspec.json.decode(data) if data else {}
    return data


class PusherClient:
    """A supervised Pusher connection: one socket, many channels, resubscribed on every new socket."""

    def __init__(self, http: aiohttp.ClientSession, endpoint: PusherEndpoint, authorizer: Authorizer,
                 listener: PusherListener, *, clock: Clock, logger: Logger, metrics: DriverMetrics,
                 pong_timeout: float = 30.0, connect_timeout: float = 30.0,
                 backoff: tuple[float, float] = (1.0, 60.0), stable_after: float = 60.0,
                 close_timeout: float = STOP_TIMEOUT) -> None:
        self._http = http
        self.endpoint = endpoint
        self._authorize = authorizer
        self._listener = listener
        self._clock = clock
        self._log = logger
        self._metrics = metrics
        self._pong_timeout = pong_timeout
        self._connect_timeout = connect_timeout
        self._backoff_first, self._backoff_cap = backoff
        self._stable_after = stable_after
        self._close_timeout = close_timeout  # wall-clock seconds: shutdown must end even on a frozen test clock
        self._channels: set[str] = set()
        self._subscribed: set[str] = set()
        self._sub_tasks: dict[str, asyncio.Task[None]] = {}
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket_id: str | None = None
        self._last_error_code: int | None = None
        self.fatal: PusherClosed | None = None
        self.connections = 0
        self.reconnect_delays: list[float] = []

    @property
    def socket_id(self) -> str | None:
        """The current socket id (None while not connected)."""
        return self._socket_id

    def is_subscribed(self, channel: str) -> bool:
        """Whether `channel` is subscribed on the current socket."""
        return channel in self._subscribed

    def start(self) -> None:
        """Start the connection loop (idempotent)."""
        if self._task is None or self._task.done():
            self.fatal = None
            self._task = asyncio.create_task(self._run(), name=f"eb-pusher-{self.endpoint.host}")

    def set_channels(self, channels: set[str]) -> None:
        """Make the subscribed set `channels`: subscribe new ones, unsubscribe dropped ones."""
        added, removed = channels - self._channels, self._channels - channels
        self._channels = set(channels)
        ws, socket_id = self._ws, self._socket_id
        for channel in removed:
            task = self._sub_tasks.pop(channel, None)
            if task is not None:
                task.cancel()
            if channel in self._subscribed:
                self._set_status(channel, False)
            if ws is not None and not ws.closed:
                self._send_soon(ws, "pusher:unsubscribe", {"channel": channel})
        if ws is not None and socket_id is not None and not ws.closed:
            for channel in added:
                self._start_subscribe(ws, socket_id, channel, 0.0)

    async def close(self) -> None:
        """Stop the client and close the socket; a loop still running after `close_timeout` is left behind."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task], self._close_timeout, self._log, "the Pusher connection loop")
        await self._drop_socket()

    # ---- the connection loop ---------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            started = self._clock.monotonic()
            code: int | None = None
            reason = ""
            try:
                code, reason = await self._session()
            except (aiohttp.ClientError, OSError, TimeoutError, _Reconnect, msgspec.DecodeError) as exc:
                raise_if_cancelled()  # close() cancelled us and the cancellation came out as this error
                self._log.warning("Pusher connection lost: %s", exc or type(exc).__name__)
            except Exception as exc:  # a bug in one session must not end live updates for good
                raise_if_cancelled()
                self._log.exception("Pusher session failed unexpectedly: %s", exc)
            finally:
                await self._drop_socket()
            raise_if_cancelled()  # a session may also end normally when a call in it swallowed the cancellation
            if code is None and self._last_error_code is not None:
                code = self._last_error_code  # pusher:error carried the code, the close frame did not
            if code is not None and 4000 <= code <= 4099:
                self.fatal = PusherClosed(code, reason)
                self._log.error("%s; not reconnecting until the settings change", self.fatal)
                self._listener.on_fatal(self.fatal)
                return
            if self._clock.monotonic() - started >= self._stable_after:
                failures = 0
            if code is not None and 4200 <= code <= 4299:
                delay = 0.0
            else:
                failures += 1
                delay = min(self._backoff_cap, self._backoff_first * 2 ** (failures - 1))
            self.reconnect_delays.append(delay)
            self._log.info("Pusher reconnecting in %.0f s (close code %s)", delay, code)
            if delay > 0:
                await self._clock.sleep(delay)

    async def _session(self) -> tuple[int | None, str]:
        """One socket from connect to close; returns the close code and reason."""
        self._last_error_code = None
        async with asyncio.timeout(self._connect_timeout):
            ws = await self._http.ws_connect(self.endpoint.url, autoping=True, heartbeat=None)
        self._ws = ws
        self.connections += 1
        recv: asyncio.Future[aiohttp.WSMessage] | None = None
        timer: asyncio.Task[None] | None = None
        established = False
        waiting_pong = False
        activity_timeout = self._connect_timeout
        try:
            while True:
                if recv is None:
                    recv = asyncio.ensure_future(ws.receive())
                wait = activity_timeout if not waiting_pong else self._pong_timeout
                timer = asyncio.create_task(self._clock.sleep(wait), name="eb-pusher-timer")
                waiters: set[asyncio.Future[Any]] = {recv, timer}
                done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if recv not in done:
                    if not established:
                        raise _Reconnect("no pusher:connection_established in time")
                    if waiting_pong:
                        raise _Reconnect(f"no pong within {self._pong_timeout:.0f} s")
                    await ws.send_str(_encoder.encode({"event": "pusher:ping", "data": {}}).decode())
                    waiting_pong = True
                    continue
                timer.cancel()
                msg, recv = recv.result(), None
                waiting_pong = False
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    code = ws.close_code if ws.close_code is not None else (
                        msg.data if isinstance(msg.data, int) else None)
                    return code, str(msg.extra or "")
                if msg.type == aiohttp.WSMsgType.ERROR:
                    raise _Reconnect(f"WebSocket error: {ws.exception()}")
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    frame = _frame_decoder.decode(msg.data)
                except msgspec.DecodeError:
                    self._metrics.decode_error("pusher_frame")
                    self._log.warning("undecodable Pusher frame dropped")
                    continue
                if not established:
                    if frame.event != "pusher:connection_established":
                        if frame.event == "pusher:error":
                            self._on_error(frame)
                        continue
                    info = msgspec.convert(_data_object(frame.data), ConnectionEstablished)
                    activity_timeout = info.activity_timeout
                    self._socket_id = info.socket_id
                    established = True
                    self._log.info("Pusher connected (socket %s, activity timeout %.0f s)", info.socket_id,
                                   activity_timeout)
                    for channel in sorted(self._channels):
                        self._start_subscribe(ws, info.socket_id, channel, 0.0)
                    continue
                await self._on_frame(ws, frame)
        except msgspec.ValidationError as exc:
            raise _Reconnect(f"bad connection_established: {exc}") from exc
        finally:
            for fut in (recv, timer):
                if fut is not None and not fut.done():
                    fut.cancel()
            if timer is not None:
                # Never suppress CancelledError here: close() may be cancelling this task right now.
                await asyncio.gather(timer, return_exceptions=True)

    async def _on_frame(self, ws: aiohttp.ClientWebSocketResponse, frame: PusherFrame) -> None:
        event, channel = frame.event, frame.channel
        if event == "pusher:ping":
            await ws.send_str(_encoder.encode({"event": "pusher:pong", "data": {}}).decode())
        elif event == "pusher:pong":
            pass
        elif event == "pusher:error":
            self._on_error(frame)
        elif event == "pusher_internal:subscription_succeeded" and channel is not None:
            if channel in self._channels:
                self._set_status(channel, True)
        elif event == "pusher:subscription_error" and channel is not None:
            self._log.warning("Pusher subscription to %s failed: %s", channel, frame.data)
            self._set_status(channel, False)
            if channel in self._channels and self._socket_id is not None:
                self._start_subscribe(ws, self._socket_id, channel, self._backoff_first, retry=True)
        elif (channel is not None and not event.startswith(("pusher:", "pusher_internal:"))
              and channel in self._channels):
            self._metrics.received(event)
            self._listener.on_event(channel, event, frame.data)

    def _on_error(self, frame: PusherFrame) -> None:
        try:
            err = msgspec.convert(_data_object(frame.data), PusherErrorData)
        except (msgspec.ValidationError, msgspec.DecodeError):
            err = PusherErrorData(message=str(frame.data))
        self._last_error_code = err.code
        self._log.warning("Pusher error %s: %s", err.code, err.message)

    # ---- subscriptions ----------------------------------------------------------------------

    def _start_subscribe(self, ws: aiohttp.ClientWebSocketResponse, socket_id: str, channel: str, delay: float,
                         *, retry: bool = False) -> None:
        old = self._sub_tasks.get(channel)
        if old is not None and not old.done():
            if not retry:
                return
            old.cancel()
        self._sub_tasks[channel] = asyncio.create_task(self._subscribe(ws, socket_id, channel, delay),
                                                       name=f"eb-pusher-subscribe-{channel}")

    async def _subscribe(self, ws: aiohttp.ClientWebSocketResponse, socket_id: str, channel: str,
                         delay: float) -> None:
        attempt = 0
        while not ws.closed:
            if delay > 0:
                await self._clock.sleep(delay)
            try:
                data: dict[str, str] = {"channel": channel}
                if channel.startswith(("private-", "presence-")):
                    data["auth"] = await self._authorize(channel, socket_id)
                await ws.send_str(_encoder.encode({"event": "pusher:subscribe", "data": data}).decode())
                return
            except (EmpathicBuildingError, aiohttp.ClientError, ConnectionError) as exc:
                raise_if_cancelled()
                attempt += 1
                delay = min(self._backoff_cap, self._backoff_first * 2 ** (attempt - 1))
                self._log.warning("Pusher auth for %s failed (%s); retrying in %.0f s", channel, exc, delay)

    def _send_soon(self, ws: aiohttp.ClientWebSocketResponse, event: str, data: dict[str, str]) -> None:
        async def send() -> None:
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await ws.send_str(_encoder.encode({"event": event, "data": data}).decode())

        task = asyncio.create_task(send(), name=f"eb-pusher-{event}")
        self._sub_tasks[f"{event}:{data.get('channel')}"] = task

    def _set_status(self, channel: str, subscribed: bool) -> None:
        if subscribed == (channel in self._subscribed):
            return
        if subscribed:
            self._subscribed.add(channel)
        else:
            self._subscribed.discard(channel)
        self._listener.on_channel_status(channel, subscribed)

    async def _drop_socket(self) -> None:
        ws, self._ws = self._ws, None
        self._socket_id = None
        tasks = list(self._sub_tasks.values())
        self._sub_tasks.clear()
        await cancel_and_wait(tasks, self._close_timeout, self._log, "Pusher subscription tasks")
        for channel in list(self._subscribed):
            self._set_status(channel, False)
        if ws is not None and not ws.closed:
            await ws.close()
