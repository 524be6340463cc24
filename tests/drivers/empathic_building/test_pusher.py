"""The Pusher client against the fake: auth, resubscription, close codes, ping/pong, corrupt events."""

from __future__ import annotations

from drivers.empathic_building import EmpathicBuildingDriver
from drivers.empathic_building.models import encode_event_data
from drivers.empathic_building.pusher import PusherClient, PusherEndpoint
from runtime.clock import FakeClock
from tests.drivers.empathic_building.conftest import DriverFactory, Eb, eventually

PRIVATE = {"private-organization-1", "private-location-1"}
ALL = PRIVATE | {"notifications"}


def pusher_of(driver: EmpathicBuildingDriver) -> PusherClient:
    assert driver._hub is not None
    return driver._hub.pusher


async def live_driver(eb: Eb, load_driver: DriverFactory, **extra: object) -> EmpathicBuildingDriver:
    driver = await load_driver(eb.settings(live=True, sensors=["vendor-1"], **extra))
    await eventually(lambda: eb.server.channels_of_open_sockets() == [ALL])
    await eventually(lambda: driver.ctx.connected is True)  # type: ignore[attr-defined]
    return driver


def test_endpoint_url_for_cluster_and_self_hosted() -> None:
    hosted = PusherEndpoint.for_cluster("eu", "33d6c4f799c274f7e0bc")
    assert hosted.url.startswith("wss://ws-eu.pusher.com:443/app/33d6c4f799c274f7e0bc?protocol=7&client=")
    assert PusherEndpoint("127.0.0.1", 8089, False, "k").url.startswith("ws://127.0.0.1:8089/app/k?protocol=7")


async def test_private_channels_are_authorised_and_notifications_is_not(eb: Eb, load_driver: DriverFactory) -> None:
    driver = await live_driver(eb, load_driver)
    socket_id = pusher_of(driver).socket_id
    assert sorted(eb.server.auth_requests) == sorted((socket_id, c) for c in PRIVATE)
    assert (socket_id, "notifications") in eb.server.subscriptions
    assert eb.server.subscription_errors == []


async def test_reconnect_at_once_on_42xx_resubscribes_with_fresh_auth(eb: Eb, load_driver: DriverFactory) -> None:
    driver = await live_driver(eb, load_driver)
    pusher = pusher_of(driver)
    first_socket = pusher.socket_id
    await eb.server.disconnect_all(4200, "reconnect now")
    await eventually(lambda: pusher.connections == 2 and eb.server.channels_of_open_sockets() == [ALL])
    second_socket = pusher.socket_id
    assert second_socket != first_socket
    assert pusher.reconnect_delays == [0.0]
    authorised_for_second = {c for s, c in eb.server.auth_requests if s == second_socket}
    assert authorised_for_second == PRIVATE  # a new socket id needs new auths
    await eventually(lambda: driver.ctx.connected is True)  # type: ignore[attr-defined]


async def test_41xx_reconnects_after_backoff(eb: Eb, load_driver: DriverFactory, clock: FakeClock) -> None:
    driver = await live_driver(eb, load_driver)
    pusher = pusher_of(driver)
    await eb.server.disconnect_all(4100, "over capacity")
    await eventually(lambda: pusher.reconnect_delays == [1.0])
    assert driver.ctx.connected is False  # type: ignore[attr-defined]
    assert pusher.connections == 1  # waiting on the (fake) clock
    await clock.advance(1.0)
    await eventually(lambda: pusher.connections == 2 and eb.server.channels_of_open_sockets() == [ALL])
    await eventually(lambda: driver.ctx.connected is True)  # type: ignore[attr-defined]
    await eb.server.disconnect_all(4101, "again")
    await eventually(lambda: pusher.reconnect_delays == [1.0, 2.0])  # capped exponential backoff


async def test_40xx_stops_and_reports(eb: Eb, load_driver: DriverFactory, clock: FakeClock) -> None:
    driver = await live_driver(eb, load_driver)
    pusher = pusher_of(driver)
    await eb.server.disconnect_all(4003, "application disabled")
    await eventually(lambda: pusher.fatal is not None)
    assert pusher.fatal is not None and pusher.fatal.code == 4003
    assert "4003" in driver.ctx.get_state("live_error")
    assert driver.ctx.connected is False  # type: ignore[attr-defined]
    await clock.advance(600)
    assert pusher.connections == 1


async def test_wrong_app_key_is_a_configuration_error(eb: Eb, load_driver: DriverFactory) -> None:
    driver = await load_driver(eb.settings(live=True, pusher_key="wrong-key"))
    await eventually(lambda: driver.ctx.get_state("live_error") is not None)
    assert "4001" in driver.ctx.get_state("live_error")


async def test_ping_after_activity_timeout_and_reconnect_without_pong(eb: Eb, load_driver: DriverFactory,
                                                                      clock: FakeClock) -> None:
    eb.server.activity_timeout = 10
    driver = await live_driver(eb, load_driver)
    pusher = pusher_of(driver)
    await clock.advance(10)   # silence: the client pings, the server answers
    await clock.advance(29)
    assert pusher.connections == 1
    eb.server.answer_pings = False
    await clock.advance(10)   # ping again; no pong this time
    await eventually(lambda: pusher.connections == 1 and bool(pusher.reconnect_delays), clock=clock, step=1.0)
    eb.server.answer_pings = True
    await eventually(lambda: pusher.connections == 2 and eb.server.channels_of_open_sockets() == [ALL],
                     clock=clock, step=1.0)


async def test_corrupt_event_data_is_counted_and_dropped(eb: Eb, load_driver: DriverFactory) -> None:
    driver = await live_driver(eb, load_driver)
    metrics = driver.ctx.metrics.counts  # type: ignore[attr-defined]
    for bad in ("not base64 !!", "aGVsbG8=", encode_event_data.__name__):
        await eb.server.push("private-location-1", "sensor-modified", raw_data=bad)
    await eb.server.push("private-location-1", "sensor-created",
                         [{"id": 7, "vendor_id": "vendor-1", "type": "temperature",
                           "last_measurement": {"time": 1, "value": 21.5}}])
    await eventually(lambda: driver.ctx.get_state("temperature") == 21.5)
    assert metrics[("decode_error", "eb_event")] == 3
    assert pusher_of(driver).connections == 1


async def test_data_sent_as_an_object_is_accepted(eb: Eb, load_driver: DriverFactory) -> None:
    eb.server.data_as_object = True
    await live_driver(eb, load_driver)


async def test_one_socket_for_modules_sharing_credentials(eb: Eb, load_driver: DriverFactory,
                                                          make_ctx: object) -> None:
    first = await live_driver(eb, load_driver)
    second = await load_driver(eb.settings(live=True, sensors=["vendor-2"]),
                               make_ctx("mod-eb-2"))  # type: ignore[operator]
    await eventually(lambda: second.ctx.connected is True)  # type: ignore[attr-defined]
    assert pusher_of(first) is pusher_of(second)
    assert len(eb.server.channels_of_open_sockets()) == 1
    assert eb.server.logins == 1


async def test_subscription_error_retries_with_a_fresh_auth(eb: Eb, load_driver: DriverFactory,
                                                            clock: FakeClock) -> None:
    eb.server.bad_auths = 1
    driver = await load_driver(eb.settings(live=True))
    await eventually(lambda: len(eb.server.subscription_errors) == 1)
    assert driver.ctx.connected is not True  # type: ignore[attr-defined]
    await clock.advance(1.0)
    await eventually(lambda: eb.server.channels_of_open_sockets() == [ALL])
    await eventually(lambda: driver.ctx.connected is True)  # type: ignore[attr-defined]
    failed_channel = eb.server.subscription_errors[0][1]
    assert [c for _, c in eb.server.auth_requests].count(failed_channel) == 2


async def test_server_ping_is_answered_with_pong(eb: Eb, load_driver: DriverFactory) -> None:
    await live_driver(eb, load_driver)
    await eb.server.ping_all()
    await eventually(lambda: eb.server.pongs == 1)
