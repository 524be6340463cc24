"""Driver settings, lifecycle and `connected`."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from drivers.empathic_building import EmpathicBuildingDriver, EmpathicBuildingSettings
from drivers.empathic_building.errors import SettingsProblem
from drivers.empathic_building.pusher import PusherEndpoint
from runtime.shared import SharedServices
from runtime.testing import FakeModuleContext
from tests.drivers.empathic_building.conftest import GATEWAY_TOKEN, DriverFactory, Eb, eventually


def settings(**values: Any) -> EmpathicBuildingSettings:
    return msgspec.convert(values, EmpathicBuildingSettings)


def test_metadata_and_schema() -> None:
    assert EmpathicBuildingDriver.key == "empathic_building"
    assert {"dead_letters", "send_measurements"} <= set(EmpathicBuildingDriver.commands)
    schema = EmpathicBuildingDriver.settings_schema()
    assert "EmpathicBuildingSettings" in schema["$defs"]


def test_merged_settings_ignore_unknown_keys_and_defaults_live_in_the_struct() -> None:
    s = settings(email="a@b.c", password="p", capacity=8, some_zone_key=True)
    assert s.api_url == "https://eu-api.empathicbuilding.com"
    assert s.pusher_key == "33d6c4f799c274f7e0bc"
    assert s.capacity == 8
    assert (s.live, s.gateway, s.valid_to) == (False, False, None)


@pytest.mark.parametrize(("values", "message"), [
    ({}, "no credentials"),
    ({"email": "a@b.c"}, "needs both email and password"),
    ({"email": "a@b.c", "password": "p", "token": "t"}, "not both"),
    ({"token": "t", "live": True, "location_id": 1}, "live updates need a user account"),
    ({"email": "a@b.c", "password": "p", "live": True}, "organization_id and/or location_id"),
    ({"email": "a@b.c", "password": "p", "sensors": ["x"], "location_id": 1}, "set live: true"),
    ({"email": "a@b.c", "password": "p", "live": True, "organization_id": 1, "sensors": ["x"]}, "need location_id"),
    ({"token": "t", "forward": [{"module": "Sensor_1", "states": ["temperature"]}]}, "forward needs gateway: true"),
    ({"token": "t", "gateway": True, "forward": [{"module": "Sensor_1", "states": ["smell"]}]}, "cannot forward"),
    ({"token": "t", "api_url": "ftp://x"}, "http"),
])
async def test_inconsistent_settings_fail_on_load_with_a_clear_error(values: dict[str, Any], message: str) -> None:
    driver = EmpathicBuildingDriver(FakeModuleContext(), settings(**values))
    with pytest.raises(SettingsProblem, match=message):
        await driver.on_load()


def test_pusher_endpoint_from_cluster_or_host() -> None:
    ctx = FakeModuleContext()
    hosted = EmpathicBuildingDriver(ctx, settings(token="t", pusher_cluster="us2"))._endpoint()
    assert hosted == PusherEndpoint("ws-us2.pusher.com", 443, True, "33d6c4f799c274f7e0bc")
    own = EmpathicBuildingDriver(ctx, settings(token="t", pusher_host="pusher.local", pusher_tls=False,
                                               pusher_key="k"))._endpoint()
    assert own == PusherEndpoint("pusher.local", 80, False, "k")


async def test_gateway_module_is_connected_when_the_token_is_accepted(eb: Eb, load_driver: DriverFactory) -> None:
    driver = await load_driver(eb.gateway_settings())
    await eventually(lambda: driver.ctx.connected is True)  # type: ignore[attr-defined]


async def test_gateway_module_with_a_bad_token_is_not_connected(eb: Eb, load_driver: DriverFactory) -> None:
    driver = await load_driver(eb.gateway_settings(token="wrong"))
    await eventually(lambda: driver.ctx.connected is False)  # type: ignore[attr-defined]


async def test_user_module_without_live_is_connected_after_login(eb: Eb, load_driver: DriverFactory) -> None:
    driver = await load_driver(eb.settings())
    await eventually(lambda: driver.ctx.connected is True)  # type: ignore[attr-defined]
    await eventually(lambda: driver.ctx.get_state("organization") == {"id": "1", "name": "Acme Corp"})


async def test_modules_with_the_same_credentials_share_one_login(eb: Eb, load_driver: DriverFactory,
                                                                 make_ctx: Any) -> None:
    for n in range(3):
        driver = await load_driver(eb.settings(), make_ctx(f"mod-{n}"))
        await eventually(lambda d=driver: d.ctx.connected is True)  # type: ignore[misc]
    assert eb.server.logins == 1


async def test_on_update_is_safe_to_repeat_and_turning_live_off_closes_the_socket(
        eb: Eb, load_driver: DriverFactory, shared: SharedServices) -> None:
    driver = await load_driver(eb.settings(live=True))
    await eventually(lambda: driver.ctx.connected is True)  # type: ignore[attr-defined]
    assert len(shared) == 2  # the account and the live hub
    auths, subscriptions = len(eb.server.auth_requests), len(eb.server.subscriptions)
    await driver.on_update()
    await driver.on_update()
    await eventually(lambda: driver.ctx.connected is True)  # type: ignore[attr-defined]
    assert len(eb.server.channels_of_open_sockets()) == 1
    assert (len(eb.server.auth_requests), len(eb.server.subscriptions)) == (auths, subscriptions)  # no churn
    assert [k for k, _ in driver.ctx.history].count("organization") <= 2  # type: ignore[attr-defined]
    assert len(shared) == 2
    # live off: the module lets go of its live slot, and the hub (its last user gone) closes the socket.
    driver.settings = settings(**eb.settings(live=False))
    await driver.on_update()
    assert len(shared) == 1  # only the account is held; nothing stands in for the released hub
    await eventually(lambda: eb.server.channels_of_open_sockets() == [])
    await eventually(lambda: driver.ctx.connected is True)  # type: ignore[attr-defined]
    await driver.on_update()  # repeating with live off releases nothing more and keeps the account
    assert len(shared) == 1
    assert driver.ctx.connected is True  # type: ignore[attr-defined]
    # and live back on builds a new hub that subscribes again
    driver.settings = settings(**eb.settings(live=True))
    await driver.on_update()
    assert len(shared) == 2
    await eventually(lambda: driver.ctx.connected is True and len(eb.server.channels_of_open_sockets()) == 1)  # type: ignore[attr-defined]


async def test_secrets_never_reach_state(eb: Eb, load_driver: DriverFactory) -> None:
    driver = await load_driver(eb.gateway_settings())
    await eventually(lambda: driver.ctx.connected is True)  # type: ignore[attr-defined]
    assert GATEWAY_TOKEN not in msgspec.json.encode(driver.ctx.history).decode()  # type: ignore[attr-defined]


async def test_name_lookups_that_fail_are_logged_and_counted_and_the_module_keeps_running(
        eb: Eb, load_driver: DriverFactory, caplog: pytest.LogCaptureFixture) -> None:
    # The organization and location paths are not in the vendor documents: a 404 or an HTML page must not hurt.
    eb.server.canned_answers["/v1/organizations/1"] = (404, "<html>Not Found</html>")
    eb.server.canned_answers["/v1/locations/1"] = (200, "<html>a web page, not JSON</html>")
    driver = await load_driver(eb.settings())
    ctx: Any = driver.ctx
    await eventually(lambda: ctx.metrics.counts.get(("decode_error", "eb_location")) == 1)
    assert ctx.metrics.counts.get(("decode_error", "eb_organization")) == 1
    assert ctx.connected is True
    assert ctx.get_state("organization") == {"id": "1", "name": None}
    assert ctx.get_state("location") == {"id": "1", "name": None}
    check = next(t for t in ctx.tasks if t.get_name() == "eb-account-check")
    assert check.done() and check.exception() is None  # a crash of a spawned task would restart the module
    assert "could not read the organization name" in caplog.text and "HTTP 404" in caplog.text
    assert "could not read the location name" in caplog.text


async def test_one_failing_name_lookup_does_not_stop_the_other(eb: Eb, load_driver: DriverFactory) -> None:
    eb.server.canned_answers["/v1/organizations/1"] = (404, "not found")
    driver = await load_driver(eb.settings())
    await eventually(lambda: driver.ctx.get_state("location") == {"id": "1", "name": "HQ"})
    assert driver.ctx.get_state("organization") == {"id": "1", "name": None}
