"""A fake Empathic Building back-end and Pusher server for the demo and the tests.

It follows seed 003 and the Pusher protocol 7:
- `POST /v1/login` (form email, password) and `POST /v1/token` (form refresh_token) with rotating
  refresh tokens; using a refresh token twice invalidates the whole chain and is recorded in
  `reuse_events` so a test can fail on it;
- gateway accounts with static tokens;
- `POST /v1/pusher/auth` (form channel_name, socket_id, Bearer) signing `socket_id:channel_name`
  with HMAC-SHA256 under the app secret, answered as `{"auth": "<key>:<hex>"}`;
- `POST /v2/measurements` with the 2 MB limit (413), validation (400) and duplicate-timestamp
  dropping; stored measurements update sensors, which raises `sensor-created`/`sensor-modified`
  events on the location channel as base64(gzip(JSON array));
- a Pusher WebSocket at `/app/<key>` (connection_established, subscribe with auth check for
  `private-` channels, ping/pong, channel events);
- `GET /v1/organizations/<id>`, `/v1/locations/<id>`, `/v1/locations/<id>/sensors` for names and
  the sensors of a location.
Fault knobs (attributes) cover 5xx rates, latency, forced disconnects, close codes and token expiry;
`canned_answers` answers chosen paths with a fixed status and body (e.g. 404 for an endpoint that
does not exist), and `hold_answers()` / `release_answers()` keep `/v2/measurements` requests in
flight (stored, not yet answered) for as long as a test needs.

Run it: `python -m drivers.empathic_building.fake_server --port 8089`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import itertools
import logging
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from drivers.empathic_building.models import (
    Measurement,
    PusherFrame,
    encode_event_data,
    measurements_decoder,
)
from runtime.clock import Clock, SystemClock

MAX_REQUEST_BYTES = 2 * 1024 * 1024
DEFAULT_APP_KEY = "33d6c4f799c274f7e0bc"
_log = logging.getLogger("drivers.empathic_building.fake_server")
_frame_decoder = msgspec.json.Decoder(PusherFrame)


@dataclass
class _Chain:
    email: str
    valid: bool = True


@dataclass
class _Access:
    chain: _Chain
    expires_at: float


@dataclass
class Account:
    """A user account of the fake: its password and the organization and location it may see."""

    password: str
    organization_id: str
    location_id: str


@dataclass
class _Socket:
    ws: web.WebSocketResponse
    socket_id: str
    channels: set[str] = field(default_factory=set)


class FakeEmpathicBuilding:
    """The fake back-end: state, records for assertions, fault knobs, and the aiohttp app."""

    def __init__(self, *, clock: Clock | None = None, app_key: str = DEFAULT_APP_KEY,
                 app_secret: str = "fake-pusher-secret", token_lifetime: float = 3600.0,
                 organization: tuple[str, str] = ("1", "Acme Corp"), location: tuple[str, str] = ("1", "HQ"),
                 seed: int = 0) -> None:
        self.clock: Clock = clock or SystemClock()
        self.app_key = app_key
        self.app_secret = app_secret
        self.token_lifetime = token_lifetime
        self.organizations: dict[str, dict[str, Any]] = {organization[0]: {"id": organization[0],
                                                                           "name": organization[1]}}
        self.locations: dict[str, dict[str, Any]] = {location[0]: {"id": location[0], "name": location[1],
                                                                   "organization_id": organization[0]}}
        self.users: dict[str, Account] = {}
        self.gateway_tokens: dict[str, str] = {}  # token -> location id
        # Fault knobs.
        self.error_rate = 0.0            # share of REST requests answered 503
        self.latency = 0.0               # seconds added to every REST request
        self.answer_delay = 0.0          # seconds between storing measurements and answering (lost answers)
        self.fail_next: list[int] = []   # statuses for the next /v2/measurements requests
        self.max_request_bytes = MAX_REQUEST_BYTES
        self.reject_vendor_ids: set[str] = set()  # batches containing these get a 400
        self.answer_pings = True
        self.close_on_connect: int | None = None  # close every new socket with this code after the handshake
        self.activity_timeout = 120
        self.data_as_object = False      # send `data` of pusher: events as an object, not a JSON string
        self.bad_auths = 0               # sign the next N channel auths wrongly (subscription_error follows)
        self.canned_answers: dict[str, tuple[int, str]] = {}  # path -> (status, body) answered instead
        # Records.
        self.logins = 0
        self.refreshes = 0
        self.reuse_events: list[str] = []
        self.auth_requests: list[tuple[str, str]] = []
        self.subscriptions: list[tuple[str, str]] = []
        self.subscription_errors: list[tuple[str, str]] = []
        self.pongs = 0
        self.measurement_requests = 0
        self.batch_sizes: list[int] = []
        self.measurements: dict[tuple[str, str, str, int], dict[str, Any]] = {}
        self.duplicates_dropped = 0
        self.held = 0                    # /v2/measurements requests stored but not answered yet
        self._holding = False
        self._answers_released = asyncio.Event()
        self.sensors: dict[int, dict[str, Any]] = {}
        self._sensor_index: dict[tuple[str, str, str], int] = {}
        self._sensor_ids = itertools.count(1)
        self._socket_ids = itertools.count(1)
        self._access: dict[str, _Access] = {}
        self._refresh: dict[str, tuple[_Chain, bool]] = {}  # token -> (chain, already used)
        self._sockets: list[_Socket] = []
        self._random = random.Random(seed)
        self.app = self._build_app()

    # ---- set-up -----------------------------------------------------------------------------

    def add_user(self, email: str, password: str, *, organization_id: str | None = None,
                 location_id: str | None = None) -> None:
        """Create a user account."""
        self.users[email] = Account(password, organization_id or next(iter(self.organizations)),
                                    location_id or next(iter(self.locations)))

    def add_gateway(self, token: str, *, location_id: str | None = None) -> None:
        """Create a gateway account with a static token."""
        self.gateway_tokens[token] = location_id or next(iter(self.locations))

    # ---- knobs ------------------------------------------------------------------------------

    def expire_access_tokens(self) -> None:
        """Make every access token issued so far expire now (refresh tokens stay usable)."""
        now = self.clock.monotonic()
        for access in self._access.values():
            access.expires_at = min(access.expires_at, now)

    def revoke_refresh_tokens(self) -> None:
        """Invalidate every token chain (as after a detected reuse or a password change), without recording reuse."""
        for chain, _used in self._refresh.values():
            chain.valid = False
        for access in self._access.values():
            access.chain.valid = False

    def hold_answers(self) -> None:
        """From now on, store what `/v2/measurements` receives but answer only after `release_answers`."""
        if self._answers_released.is_set():
            self._answers_released = asyncio.Event()
        self._holding = True

    def release_answers(self) -> None:
        """Answer every held `/v2/measurements` request and stop holding new ones."""
        self._holding = False
        self._answers_released.set()

    async def disconnect_all(self, code: int = 4200, reason: str = "forced disconnect") -> int:
        """Close every Pusher socket with `code`; returns how many were closed."""
        sockets, self._sockets = self._sockets, []
        for sock in sockets:
            await sock.ws.close(code=code, message=reason.encode())
        return len(sockets)

    async def push(self, channel: str, event: str, objects: list[dict[str, Any]] | None = None, *,
                   raw_data: Any = None) -> int:
        """Send an event to every socket subscribed to `channel`; returns how many got it."""
        data = raw_data if objects is None else encode_event_data(objects)
        frame = msgspec.json.encode({"event": event, "channel": channel, "data": data}).decode()
        sent = 0
        for sock in list(self._sockets):
            if channel in sock.channels and not sock.ws.closed:
                await sock.ws.send_str(frame)
                sent += 1
        return sent

    async def ping_all(self) -> None:
        """Send `pusher:ping` to every open socket (clients must answer `pusher:pong`)."""
        for sock in list(self._sockets):
            if not sock.ws.closed:
                await sock.ws.send_str(self._pusher_frame("pusher:ping", {}))

    @property
    def subscribed_sockets(self) -> int:
        """How many open sockets have at least one subscription."""
        return sum(1 for s in self._sockets if s.channels and not s.ws.closed)

    def channels_of_open_sockets(self) -> list[set[str]]:
        """The subscribed channels of each open socket."""
        return [set(s.channels) for s in self._sockets if not s.ws.closed]

    def stored(self) -> list[dict[str, Any]]:
        """Every measurement stored, in arrival order."""
        return list(self.measurements.values())

    def sign(self, socket_id: str, channel: str) -> str:
        """Pusher's private-channel auth string for a socket and channel."""
        digest = hmac.new(self.app_secret.encode(), f"{socket_id}:{channel}".encode(), hashlib.sha256).hexdigest()
        return f"{self.app_key}:{digest}"

    # ---- the app ----------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._faults])
        app.router.add_post("/v1/login", self._login)
        app.router.add_post("/v1/token", self._token)
        app.router.add_post("/v1/pusher/auth", self._pusher_auth)
        app.router.add_get("/v1/organizations/{id}", self._organization)
        app.router.add_get("/v1/locations/{id}", self._location)
        app.router.add_get("/v1/locations/{id}/sensors", self._location_sensors)
        app.router.add_post("/v2/measurements", self._measurements)
        app.router.add_get("/app/{key}", self._websocket)
        return app

    @web.middleware
    async def _faults(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/app/"):
            return await handler(request)  # type: ignore[no-any-return]
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        if self.error_rate > 0 and self._random.random() < self.error_rate:
            return web.json_response({"error": "injected failure"}, status=503)
        canned = self.canned_answers.get(request.path)
        if canned is not None:
            return web.Response(status=canned[0], text=canned[1], content_type="text/html")
        return await handler(request)  # type: ignore[no-any-return]

    def _issue(self, chain: _Chain) -> dict[str, Any]:
        access, refresh = secrets.token_hex(16), secrets.token_hex(16)
        self._access[access] = _Access(chain, self.clock.monotonic() + self.token_lifetime)
        self._refresh[refresh] = (chain, False)
        return {"access_token": access, "token_type": "Bearer", "expires_in": int(self.token_lifetime),
                "refresh_token": refresh}

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        email, password = str(form.get("email", "")), str(form.get("password", ""))
        account = self.users.get(email)
        self.logins += 1
        if account is None or not hmac.compare_digest(account.password, password):
            return web.json_response({"error": "invalid credentials"}, status=401)
        return web.json_response(self._issue(_Chain(email)))

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = str(form.get("refresh_token", ""))
        entry = self._refresh.get(token)
        if entry is None:
            return web.json_response({"error": "invalid refresh token"}, status=401)
        chain, used = entry
        if used:
            self.reuse_events.append(f"refresh token of {chain.email} used twice")
            chain.valid = False  # the whole chain of refresh and access tokens is invalidated
            return web.json_response({"error": "refresh token reuse detected"}, status=401)
        self._refresh[token] = (chain, True)
        if not chain.valid:
            return web.json_response({"error": "token chain revoked"}, status=401)
        self.refreshes += 1
        return web.json_response(self._issue(chain))

    def _principal(self, request: web.Request) -> tuple[str, Account | None, str] | None:
        """(kind, user account, location id) for the Bearer token, or None."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        if token in self.gateway_tokens:
            return ("gateway", None, self.gateway_tokens[token])
        access = self._access.get(token)
        if access is None or not access.chain.valid or self.clock.monotonic() >= access.expires_at:
            return None
        account = self.users[access.chain.email]
        return ("user", account, account.location_id)

    async def _pusher_auth(self, request: web.Request) -> web.Response:
        who = self._principal(request)
        if who is None:
            return web.json_response({"error": "unauthorized"}, status=401)
        form = await request.post()
        channel, socket_id = str(form.get("channel_name", "")), str(form.get("socket_id", ""))
        _kind, account, _ = who
        if account is None or not channel or not socket_id:
            return web.json_response({"error": "forbidden"}, status=403)
        allowed = {f"private-organization-{account.organization_id}", f"private-location-{account.location_id}"}
        if channel not in allowed:
            return web.json_response({"error": f"no access to {channel}"}, status=403)
        self.auth_requests.append((socket_id, channel))
        if self.bad_auths > 0:
            self.bad_auths -= 1
            return web.json_response({"auth": self.sign(socket_id, channel + "-wrong")})
        return web.json_response({"auth": self.sign(socket_id, channel)})

    async def _organization(self, request: web.Request) -> web.Response:
        if self._principal(request) is None:
            return web.json_response({"error": "unauthorized"}, status=401)
        item = self.organizations.get(request.match_info["id"])
        return web.json_response(item) if item else web.json_response({"error": "not found"}, status=404)

    async def _location(self, request: web.Request) -> web.Response:
        if self._principal(request) is None:
            return web.json_response({"error": "unauthorized"}, status=401)
        item = self.locations.get(request.match_info["id"])
        return web.json_response(item) if item else web.json_response({"error": "not found"}, status=404)

    async def _location_sensors(self, request: web.Request) -> web.Response:
        if self._principal(request) is None:
            return web.json_response({"error": "unauthorized"}, status=401)
        location = request.match_info["id"]
        return web.json_response([s for s in self.sensors.values() if s["location_id"] == location])

    async def _measurements(self, request: web.Request) -> web.Response:
        self.measurement_requests += 1
        who = self._principal(request)
        if who is None:
            return web.json_response({"error": "unauthorized"}, status=401)
        if self.fail_next:
            return web.json_response({"error": "injected failure"}, status=self.fail_next.pop(0))
        body = await request.read()
        if len(body) > self.max_request_bytes:
            return web.json_response({"error": "request entity too large"}, status=413)
        try:
            items: Sequence[Measurement] = measurements_decoder.decode(body)
        except msgspec.DecodeError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        refused = [m.vendor_id for m in items if m.vendor_id in self.reject_vendor_ids]
        if refused:
            return web.json_response({"error": f"sensors not allowed: {sorted(set(refused))}"}, status=400)
        self.batch_sizes.append(len(items))
        location = who[2]
        for item in items:
            await self._store(location, item)
        if self.answer_delay > 0:
            await asyncio.sleep(self.answer_delay)
        if self._holding:
            released = self._answers_released
            self.held += 1
            try:
                await released.wait()
            finally:
                self.held -= 1
        return web.json_response({"accepted": len(items)}, status=202)

    async def _store(self, location: str, item: Measurement) -> None:
        fields = msgspec.to_builtins(item)
        key = (location, item.vendor_id, item.kind, item.time)
        if item.kind != "sensorstatus":
            if key in self.measurements:
                self.duplicates_dropped += 1  # duplicate timestamps are silently dropped
                return
            self.measurements[key] = fields
        sensor_key = (location, item.vendor_id, item.kind)
        sensor_id = self._sensor_index.get(sensor_key)
        data = {k: v for k, v in fields.items() if k not in ("vendor_id", "valid_to", "name")}
        if sensor_id is None:
            sensor_id = self._sensor_index[sensor_key] = next(self._sensor_ids)
            sensor: dict[str, Any] = {"id": sensor_id, "vendor_id": item.vendor_id, "type": item.kind,
                                      "name": item.name or item.vendor_id, "location_id": location}
            if item.kind == "sensorstatus":
                sensor["last_status"] = data
            else:
                sensor["last_measurement"] = data
            self.sensors[sensor_id] = sensor
            await self.push(f"private-location-{location}", "sensor-created", [sensor])
            return
        change_key = "last_status" if item.kind == "sensorstatus" else "last_measurement"
        self.sensors[sensor_id][change_key] = data
        await self.push(f"private-location-{location}", "sensor-modified", [{"id": sensor_id, change_key: data}])

    # ---- Pusher -----------------------------------------------------------------------------

    def _pusher_frame(self, event: str, data: dict[str, Any], channel: str | None = None) -> str:
        payload: Any = data if self.data_as_object else msgspec.json.encode(data).decode()
        frame: dict[str, Any] = {"event": event, "data": payload}
        if channel is not None:
            frame["channel"] = channel
        return msgspec.json.encode(frame).decode()

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        if request.match_info["key"] != self.app_key:
            await ws.send_str(self._pusher_frame("pusher:error", {"message": "Application does not exist",
                                                                  "code": 4001}))
            await ws.close(code=4001, message=b"Application does not exist")
            return ws
        if request.query.get("protocol") != "7":
            await ws.close(code=4007, message=b"Unsupported protocol version")
            return ws
        sock = _Socket(ws, f"{next(self._socket_ids)}.{self._random.randrange(10**6, 10**7)}")
        await ws.send_str(self._pusher_frame("pusher:connection_established",
                                             {"socket_id": sock.socket_id,
                                              "activity_timeout": self.activity_timeout}))
        if self.close_on_connect is not None:
            await ws.close(code=self.close_on_connect, message=b"closed by test knob")
            return ws
        self._sockets.append(sock)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_frame(sock, msg.data)
        finally:
            if sock in self._sockets:
                self._sockets.remove(sock)
        return ws

    async def _on_frame(self, sock: _Socket, text: str) -> None:
        try:
            frame = _frame_decoder.decode(text)
        except msgspec.DecodeError:
            await sock.ws.send_str(self._pusher_frame("pusher:error", {"message": "invalid frame", "code": None}))
            return
        if frame.event == "pusher:ping":
            if self.answer_pings:
                await sock.ws.send_str(self._pusher_frame("pusher:pong", {}))
            return
        if frame.event == "pusher:pong":
            self.pongs += 1
            return
        if frame.event == "pusher:subscribe":
            data = frame.data
            if isinstance(data, str):
                data = msgspec.json.decode(data)
            channel = str(data.get("channel", ""))
            auth = data.get("auth")
            if channel.startswith(("private-", "presence-")) and (
                    not isinstance(auth, str) or not hmac.compare_digest(auth, self.sign(sock.socket_id, channel))):
                self.subscription_errors.append((sock.socket_id, channel))
                await sock.ws.send_str(self._pusher_frame(
                    "pusher:subscription_error", {"type": "AuthError", "error": "Invalid signature", "status": 401},
                    channel))
                return
            sock.channels.add(channel)
            self.subscriptions.append((sock.socket_id, channel))
            await sock.ws.send_str(self._pusher_frame("pusher_internal:subscription_succeeded", {}, channel))
            return
        if frame.event == "pusher:unsubscribe":
            data = frame.data if isinstance(frame.data, dict) else msgspec.json.decode(frame.data or "{}")
            sock.channels.discard(str(data.get("channel", "")))

    # ---- demo simulation --------------------------------------------------------------------

    async def simulate(self, location_id: str, interval: float, sensors: int = 3) -> None:
        """Post plausible measurements for a few simulated sensors every `interval` seconds."""
        while True:
            now = int(self.clock.time() * 1000)
            for n in range(1, sensors + 1):
                vendor = f"sim-{n}"
                items: list[dict[str, Any]] = [
                    {"type": "temperature", "vendor_id": vendor, "time": now,
                     "value": round(21 + self._random.uniform(-1.5, 1.5), 2)},
                    {"type": "humidity", "vendor_id": vendor, "time": now,
                     "value": round(self._random.uniform(0.3, 0.5), 3)},
                    {"type": "occupancy", "vendor_id": vendor, "time": now,
                     "used": self._random.randint(0, 6), "total": 8},
                ]
                for item in measurements_decoder.decode(msgspec.json.encode(items)):
                    await self._store(location_id, item)
            await asyncio.sleep(interval)


async def serve(server: FakeEmpathicBuilding, host: str, port: int) -> web.AppRunner:
    """Start `server` on host:port; the caller cleans up the returned runner."""
    runner = web.AppRunner(server.app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def main(argv: list[str] | None = None) -> None:
    """Command line: run the fake on a port with one user and one gateway account."""
    parser = argparse.ArgumentParser(prog="python -m drivers.empathic_building.fake_server",
                                     description="A fake Empathic Building back-end and Pusher server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--email", default="demo@example.com")
    parser.add_argument("--password", default="demo-password")
    parser.add_argument("--gateway-token", default="demo-gateway-token")
    parser.add_argument("--app-key", default=DEFAULT_APP_KEY)
    parser.add_argument("--app-secret", default="fake-pusher-secret")
    parser.add_argument("--organization-id", default="1")
    parser.add_argument("--location-id", default="1")
    parser.add_argument("--token-lifetime", type=float, default=3600.0, help="access token lifetime (s)")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of REST requests answered 503")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each REST request")
    parser.add_argument("--simulate", type=float, default=0.0, metavar="SECONDS",
                        help="post simulated sensor data every SECONDS (0: off)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = FakeEmpathicBuilding(app_key=args.app_key, app_secret=args.app_secret,
                                  token_lifetime=args.token_lifetime,
                                  organization=(args.organization_id, "Demo Organization"),
                                  location=(args.location_id, "Demo Location"))
    server.add_user(args.email, args.password)
    server.add_gateway(args.gateway_token)
    server.error_rate = args.error_rate
    server.latency = args.latency

    async def run() -> None:
        runner = await serve(server, args.host, args.port)
        _log.info("fake Empathic Building on http://%s:%d (Pusher ws://%s:%d/app/%s)", args.host, args.port,
                  args.host, args.port, args.app_key)
        try:
            if args.simulate > 0:
                await server.simulate(args.location_id, args.simulate)
            else:
                await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
