"""The Empathic Building driver: live sensor state over Pusher, and a gateway that forwards measurements."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from drivers.empathic_building.api import EbAccount, EbApi, secret_fingerprint
from drivers.empathic_building.auth import StaticToken, TokenManager, UserTokens
from drivers.empathic_building.bridge import Bridge, ForwardRule, check_rules
from drivers.empathic_building.errors import EmpathicBuildingError, PusherClosed, SettingsProblem
from drivers.empathic_building.gateway import MEASUREMENTS_PATH, Gateway, GatewayStats
from drivers.empathic_building.live import Interest, LiveHub, SensorInfo
from drivers.empathic_building.models import Named, SensorObject
from drivers.empathic_building.pusher import PusherEndpoint
from drivers.empathic_building.spool import DeadLetterFile, Spool
from drivers.empathic_building.units import UnitError, measurement_state, status_state
from runtime.driver import Driver, ModuleContext, command
from runtime.tasks import STOP_TIMEOUT, cancel_and_wait

PRODUCTION_APP_KEY = "33d6c4f799c274f7e0bc"
# Not in the vendor documents (see the README): read for names only; failures are logged and counted.
ORGANIZATION_PATH = "/v1/organizations/{id}"
LOCATION_PATH = "/v1/locations/{id}"
MAX_NOTIFICATIONS = 50


class EmpathicBuildingSettings(msgspec.Struct, kw_only=True):
    """Driver-record keys (account, Pusher) and module keys (what to present or forward); the only defaults."""

    # Driver record: the account.
    api_url: str = "https://eu-api.empathicbuilding.com"
    email: str | None = None
    password: str | None = None
    token: str | None = None
    organization_id: str | int | None = None
    location_id: str | int | None = None
    # Driver record: Pusher (hosted cluster, or a self-hosted server when pusher_host is set).
    pusher_key: str = PRODUCTION_APP_KEY
    pusher_cluster: str = "eu"
    pusher_host: str | None = None
    pusher_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    pusher_tls: bool = True
    # Module.
    sensors: list[str | int] = []
    live: bool = False
    gateway: bool = False
    forward: list[ForwardRule] = []
    valid_to: Annotated[int, msgspec.Meta(gt=0, description="Validity of forwarded measurements (ms)")] | None = None
    capacity: Annotated[int, msgspec.Meta(ge=0)] | None = None
    batch_delay: Annotated[float, msgspec.Meta(ge=0)] = 0.5
    request_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    max_request_bytes: Annotated[int, msgspec.Meta(ge=1024, le=2 * 1024 * 1024)] = 2_000_000


def check_settings(s: EmpathicBuildingSettings) -> None:
    """Raise `SettingsProblem` naming every inconsistent combination."""
    problems: list[str] = []
    user = s.email is not None or s.password is not None
    if user and s.token is not None:
        problems.append("give either email and password (user account) or token (gateway account), not both")
    elif user and not (s.email and s.password):
        problems.append("a user account needs both email and password")
    elif not user and not s.token:
        problems.append("no credentials: set email and password (user account) or token (gateway account)")
    if not s.api_url.startswith(("http://", "https://")):
        problems.append(f"api_url must be an http(s) URL, got {s.api_url!r}")
    if s.live and s.token is not None and not user:
        problems.append("live updates need a user account; a gateway token can only send measurements")
    if s.live and s.organization_id is None and s.location_id is None:
        problems.append("live updates need organization_id and/or location_id")
    if s.sensors and not s.live:
        problems.append("sensors are presented from live updates: set live: true")
    if s.sensors and s.location_id is None:
        problems.append("sensors need location_id (their location channel)")
    if s.forward and not s.gateway:
        problems.append("forward needs gateway: true")
    try:
        check_rules(s.forward)
    except SettingsProblem as exc:
        problems.append(str(exc))
    if problems:
        raise SettingsProblem("Empathic Building settings: " + "; ".join(problems))


def _text(value: str | int | None) -> str | None:
    return None if value is None else str(value)


class EmpathicBuildingDriver(Driver[EmpathicBuildingSettings]):
    """Empathic Building: sensors and organization from live updates, measurements to /v2/measurements."""

    key = "empathic_building"
    name = "Empathic Building"
    generic_name = "EmpathicBuilding"
    description = ("Presents Empathic Building sensors, organization, location and notifications from Pusher "
                   "live updates, and forwards measurements (its own or other modules' state) as a gateway.")
    Settings = EmpathicBuildingSettings

    def __init__(self, ctx: ModuleContext, settings: EmpathicBuildingSettings) -> None:
        super().__init__(ctx, settings)
        self._account: EbAccount | None = None
        self._hub: LiveHub | None = None
        self._gateway: Gateway | None = None
        self._gateway_task: asyncio.Task[None] | None = None
        self._spool: Spool | None = None
        self._bridge: Bridge | None = None
        self._unlisten: Callable[[], None] | None = None
        self._sensor_meta: dict[str, dict[str, Any]] = {}
        self._sensor_values: dict[str, dict[str, Any]] = {}
        self._notifications: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._gateway_ok: bool | None = None

    # ---- lifecycle ----------------------------------------------------------------------------

    async def on_load(self) -> None:
        """Check the settings combination before anything connects."""
        check_settings(self.settings)

    async def on_update(self) -> None:
        """(Re)build the account, live subscriptions, gateway and bridge from the current settings."""
        s = self.settings
        check_settings(s)
        await self._stop_work()
        self.ctx.set_state("live_error", None)
        account = await self.ctx.shared("account", self._account_key(), self._make_account)
        self._account = account
        self._unlisten = account.tokens.add_listener(lambda _ok: self._update_connected())
        org, loc = _text(s.organization_id), _text(s.location_id)
        for key, ident in (("organization", org), ("location", loc)):
            current = self.ctx.get_state(key)
            if ident is None or not isinstance(current, dict) or current.get("id") != ident:
                self.ctx.set_state(key, {"id": ident, "name": None} if ident else None)
        old_hub = self._hub
        if s.live:
            endpoint = self._endpoint()
            hub_key = ("eb-live", account.key, endpoint)
            if old_hub is not None and old_hub.key != hub_key:
                old_hub.unregister(self.ctx.module_id)
            hub = await self.ctx.shared("live", hub_key, lambda: self._make_hub(account, endpoint))
            self._hub = hub
            # Re-registering replaces the interest in place: unchanged channels stay subscribed.
            hub.register(self.ctx.module_id, Interest(org, loc, frozenset(str(x) for x in s.sensors)), self)
            hub.start()  # a client stopped by a 4000-4099 close tries again once the settings changed
        else:
            if old_hub is not None:
                old_hub.unregister(self.ctx.module_id)
                self._hub = None
            await self.ctx.release("live")  # the hub closes when its last module lets go
        if s.gateway:
            await self._start_gateway(account)
        self.ctx.spawn(self._check_account(account, org, loc), name="eb-account-check")
        self._update_connected()

    async def on_unload(self) -> None:
        """Stop the gateway and leave the live hub; the runtime releases the shared services."""
        await self._stop_work()
        if self._hub is not None:
            self._hub.unregister(self.ctx.module_id)
            self._hub = None
        if self._spool is not None:
            self._spool.close()

    async def _stop_work(self) -> None:
        if self._bridge is not None:
            self._bridge.stop()
            self._bridge = None
        if self._gateway_task is not None:
            task, self._gateway_task = self._gateway_task, None
            await cancel_and_wait([task], STOP_TIMEOUT, self.ctx.logger, "the EB gateway sender")
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None

    # ---- commands -----------------------------------------------------------------------------

    @command(timeout=10.0)
    async def dead_letters(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """List the measurements the server rejected, newest first."""
        files = DeadLetterFile(self.ctx.state_dir)
        return [msgspec.to_builtins(d) for d in await files.list(limit=limit, offset=offset)]

    @command(timeout=30.0)
    async def send_measurements(self, measurements: list[dict[str, Any]]) -> dict[str, Any]:
        """Validate, persist (fsync) and queue EB measurements (gateway modules); returns the counts accepted."""
        if self._gateway is None or self._gateway_task is None:
            raise SettingsProblem("this module is not a gateway (set gateway: true)")
        result = await self._gateway.submit(measurements)
        return msgspec.to_builtins(result)  # type: ignore[no-any-return]

    # ---- shared services ----------------------------------------------------------------------

    def _account_key(self) -> tuple[str, ...]:
        s = self.settings
        api = s.api_url.rstrip("/")
        if s.token is not None:
            return ("eb-account", self.ctx.driver_id, api, "gateway", secret_fingerprint(s.token))
        return ("eb-account", self.ctx.driver_id, api, "user", secret_fingerprint(s.email or "", s.password or ""))

    async def _make_account(self) -> EbAccount:
        s = self.settings
        http = self.ctx.transports.http
        tokens: TokenManager
        if s.token is not None:
            tokens = StaticToken(s.token)
        else:
            tokens = UserTokens(http, s.api_url, s.email or "", s.password or "", clock=self.ctx.clock,
                                logger=self.ctx.logger, timeout=s.request_timeout)
        api = EbApi(http, s.api_url, tokens, timeout=s.request_timeout)
        return EbAccount(self._account_key(), tokens, api, gateway=s.token is not None)

    def _endpoint(self) -> PusherEndpoint:
        s = self.settings
        if s.pusher_host:
            return PusherEndpoint(s.pusher_host, s.pusher_port or (443 if s.pusher_tls else 80), s.pusher_tls,
                                  s.pusher_key)
        return PusherEndpoint.for_cluster(s.pusher_cluster, s.pusher_key)

    async def _make_hub(self, account: EbAccount, endpoint: PusherEndpoint) -> LiveHub:
        hub = LiveHub(("eb-live", account.key, endpoint), account, endpoint, clock=self.ctx.clock,
                      logger=self.ctx.logger, metrics=self.ctx.metrics)
        hub.start()
        return hub

    async def _start_gateway(self, account: EbAccount) -> None:
        s = self.settings
        if self._gateway is None:
            self._spool = Spool(self.ctx.state_dir)
            self._gateway = Gateway(account.api, self._spool, DeadLetterFile(self.ctx.state_dir),
                                    clock=self.ctx.clock, logger=self.ctx.logger, metrics=self.ctx.metrics,
                                    on_stats=self._on_gateway_stats, on_status=self._on_gateway_status)
            await self._gateway.open()
        gateway = self._gateway
        gateway.api = account.api
        gateway.valid_to = s.valid_to
        gateway.configure(max_request_bytes=s.max_request_bytes, batch_delay=s.batch_delay,
                          request_timeout=s.request_timeout)
        self._gateway_task = self.ctx.spawn(gateway.run(), name="eb-gateway")
        if s.forward:
            self._bridge = Bridge(self.ctx, s.forward, gateway.submit, capacity=s.capacity)
            self._bridge.start()

    async def _check_account(self, account: EbAccount, org: str | None, loc: str | None) -> None:
        """Prove the token works (connected) and read the organization and location names."""
        try:
            if account.gateway:
                if self._gateway is None or not self._gateway.pending:
                    await account.api.request("POST", MEASUREMENTS_PATH, body=b"[]")
                return
            await account.tokens.token()
        except EmpathicBuildingError as exc:
            self.ctx.logger.warning("Empathic Building account check: %s", exc)
            return
        for key, ident, path in (("organization", org, ORGANIZATION_PATH), ("location", loc, LOCATION_PATH)):
            if ident is None:
                continue
            try:
                named = await account.api.get(path.format(id=ident), Named)
            except EmpathicBuildingError as exc:
                # Undocumented path: a 404 or an odd answer leaves the name unknown (live events may fill it in).
                self.ctx.metrics.decode_error(f"eb_{key}")
                self.ctx.logger.warning("could not read the %s name: %s", key, exc)
                continue
            self.ctx.set_state(key, {"id": str(named.id), "name": named.name})

    # ---- connected ----------------------------------------------------------------------------

    def _update_connected(self) -> None:
        account = self._account
        if account is None:
            return
        token_ok = account.tokens.accepted is True and self._gateway_ok is not False
        live_ok = not self.settings.live or (self._hub is not None and self._hub.module_ok(self.ctx.module_id))
        self.ctx.set_connected(token_ok and live_ok)

    def _on_gateway_status(self, ok: bool) -> None:
        if ok != self._gateway_ok:
            self._gateway_ok = ok
            self._update_connected()

    def _on_gateway_stats(self, stats: GatewayStats) -> None:
        self.ctx.set_state("gateway", msgspec.to_builtins(stats))

    # ---- live sink ----------------------------------------------------------------------------

    def on_sensor(self, event: str, info: SensorInfo, sensor: SensorObject) -> None:
        """Turn a sensor event into state in runtime units."""
        sid = info.id
        if event == "sensor-deleted":
            self._sensor_meta.pop(sid, None)
            gone = self._sensor_values.pop(sid, {})
            for key in gone:
                self.ctx.set_state(key, self._value_from_other_sensor(key))
            self._publish_sensors()
            return
        self._sensor_meta[sid] = {"vendor_id": info.vendor_id, "type": info.type, "name": info.name}
        updates: dict[str, Any] = {}
        if sensor.last_measurement is not None:
            kind = sensor.last_measurement.type or info.type
            try:
                if kind is None:
                    raise UnitError(f"sensor {sid} has no known type")
                updates.update(measurement_state(kind, sensor.last_measurement))
            except UnitError as exc:
                self.ctx.metrics.dropped("unconvertible_measurement")
                self.ctx.logger.warning("sensor %s: %s", sid, exc)
        if sensor.last_status is not None:
            updates.update(status_state(sensor.last_status))
        self._sensor_values.setdefault(sid, {}).update(updates)
        for key, value in updates.items():
            self.ctx.set_state(key, value)
        self._publish_sensors()

    def _value_from_other_sensor(self, key: str) -> Any:
        for values in self._sensor_values.values():
            if key in values:
                return values[key]
        return None

    def _publish_sensors(self) -> None:
        self.ctx.set_state("sensors", dict(sorted(self._sensor_meta.items())) or None)

    def on_named(self, key: str, event: str, value: dict[str, Any]) -> None:
        """Organization or location changed or was deleted."""
        if event.endswith("-deleted"):
            self.ctx.set_state(key, None)
            return
        current = dict(self.ctx.get_state(key) or {})
        current["id"] = str(value.get("id", current.get("id")))
        if "name" in value:
            current["name"] = value["name"]
        self.ctx.set_state(key, current)

    def on_notification(self, event: str, notification: dict[str, Any]) -> None:
        """Keep the current notifications, newest last, as the `notifications` state."""
        nid = str(notification.get("id"))
        if event == "notification-deleted":
            self._notifications.pop(nid, None)
        elif event == "notification-modified" and nid in self._notifications:
            self._notifications[nid] = {**self._notifications[nid], **notification}
        else:
            self._notifications[nid] = dict(notification)
            self._notifications.move_to_end(nid)
            while len(self._notifications) > MAX_NOTIFICATIONS:
                self._notifications.popitem(last=False)
        self.ctx.set_state("notifications", list(self._notifications.values()))

    def on_live_status(self) -> None:
        """Subscriptions changed."""
        self._update_connected()

    def on_live_fatal(self, error: PusherClosed) -> None:
        """The Pusher server refused the configuration."""
        self.ctx.set_state("live_error", str(error))
