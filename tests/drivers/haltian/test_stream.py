"""The shared upstream: one session per credentials, subscriptions from what modules need, O(1) routing."""

from __future__ import annotations

import uuid

from drivers.haltian.aggregate import RoomState
from runtime.errors import ConnectionRefused
from tests.drivers.haltian.conftest import API_KEY, DEV_A, DEV_B, GROUP, INTEGRATION, PREFIX, Rig


def ids(n: int) -> list[str]:
    """n deterministic device ids."""
    return [str(uuid.uuid5(uuid.NAMESPACE_URL, f"device-{i}")) for i in range(n)]


async def test_two_thousand_devices_over_five_hundred_modules_share_one_session(rig: Rig) -> None:
    devices = ids(2000)
    modules = []
    for m in range(500):
        modules.append(await rig.module(f"mod-{m}", devices=devices[m * 4:(m + 1) * 4]))
    assert len(rig.transports.sessions) == 1
    assert rig.shared.users(("haltian", "mqtt://127.0.0.1:1883", INTEGRATION, API_KEY)) == 500
    session = rig.session
    assert session.started
    assert session.endpoint.protocol == "3.1.1"
    assert session.endpoint.username == API_KEY
    assert session.subscriptions == {f"{PREFIX}/#": 1}
    session.go_up()
    rig.send("co2", devices[1999], 800)
    rig.send("co2", devices[0], 500)
    assert modules[499][1].states["co2"] == 800
    assert modules[0][1].states["co2"] == 500
    assert all("co2" not in ctx.states for _, ctx in modules[1:499])
    for driver, ctx in modules:
        await rig.unload(driver, ctx)
    assert session.stopped
    assert len(rig.shared) == 0


async def test_few_devices_get_specific_subscriptions(rig: Rig) -> None:
    await rig.module("mod-1", devices=[DEV_A], device_group=GROUP)
    await rig.module("mod-2", devices=[DEV_B])
    assert rig.session.subscriptions == {
        f"{PREFIX}/notifications/+": 1,
        f"{PREFIX}/+/+/{DEV_A}": 1,
        f"{PREFIX}/+/+/{GROUP}": 1,
        f"{PREFIX}/+/+/{DEV_B}": 1,
    }


async def test_subscriptions_switch_to_a_wildcard_past_the_limit_and_back(rig: Rig) -> None:
    devices = ids(12)
    loaded = [await rig.module(f"mod-{i}", devices=devices[i * 3:(i + 1) * 3], subscription_limit=10)
              for i in range(4)]
    assert rig.session.subscriptions == {f"{PREFIX}/#": 1}
    for driver, ctx in loaded[2:]:
        await rig.unload(driver, ctx)
    subs = rig.session.subscriptions
    assert f"{PREFIX}/#" not in subs
    assert len(subs) == 7
    assert all(f"{PREFIX}/+/+/{d}" in subs for d in devices[:6])


async def test_settings_change_rebinds_devices(rig: Rig) -> None:
    driver, ctx = await rig.module(devices=[DEV_A])
    rig.session.go_up()
    rig.send("co2", DEV_A, 500)
    await rig.update(driver, devices=[DEV_B])
    assert f"{PREFIX}/+/+/{DEV_A}" not in rig.session.subscriptions
    assert f"{PREFIX}/+/+/{DEV_B}" in rig.session.subscriptions
    assert DEV_A not in ctx.states["devices"]
    rig.send("co2", DEV_A, 900)
    assert ctx.metrics.counts[("dropped", "unbound_device")] == 1
    rig.send("co2", DEV_B, 600)
    assert ctx.states["co2"] == 600


async def test_qos_follows_the_driver_record(rig: Rig) -> None:
    await rig.module(devices=[DEV_A], qos=0)
    assert set(rig.session.subscriptions.values()) == {0}


async def test_new_token_goes_to_the_session_without_a_new_session(rig: Rig) -> None:
    driver, _ = await rig.module(devices=[DEV_A])
    assert rig.session.endpoint.password == "token-1"
    await rig.update(driver, devices=[DEV_A], api_key_token="token-2")
    assert len(rig.transports.sessions) == 1
    assert rig.session.endpoint.password == "token-2"


async def test_credential_refusal_marks_every_module_disconnected(rig: Rig) -> None:
    _, one = await rig.module("mod-1", devices=[DEV_A])
    _, two = await rig.module("mod-2", devices=[DEV_B])
    rig.session.go_up()
    rig.send("co2", DEV_A, 500)
    rig.send("co2", DEV_B, 500)
    assert one.connected and two.connected
    rig.session.connected = False
    rig.session.listener.on_refused(rig.session, ConnectionRefused(5, "not authorized"))  # type: ignore[arg-type]
    rig.session.listener.on_disconnected(rig.session, "refused")  # type: ignore[arg-type]
    assert one.connected is False
    assert two.connected is False


async def test_other_credentials_get_their_own_session(rig: Rig) -> None:
    await rig.module("mod-1", devices=[DEV_A])
    await rig.module("mod-2", devices=[DEV_B], api_key_id="another-key")
    assert len(rig.transports.sessions) == 2


async def test_a_failing_module_handler_does_not_starve_the_others(rig: Rig) -> None:
    broken, _ = await rig.module("mod-1", devices=[DEV_A])
    _, fine = await rig.module("mod-2", devices=[DEV_A])
    rig.session.go_up()

    class Exploding(RoomState):
        __slots__ = ()

        def measurement(self, *_args: object, **_kwargs: object) -> bool:
            raise RuntimeError("bug")

    broken.room.__class__ = Exploding
    rig.send("co2", DEV_A, 500)
    assert fine.states["co2"] == 500


async def test_qos_change_resubscribes_with_the_new_qos(rig: Rig) -> None:
    driver, _ = await rig.module(devices=[DEV_A])
    assert set(rig.session.subscriptions.values()) == {1}
    await rig.update(driver, devices=[DEV_A], qos=0)
    assert rig.session.subscriptions == {f"{PREFIX}/notifications/+": 0, f"{PREFIX}/+/+/{DEV_A}": 0}


async def test_moving_to_other_credentials_releases_the_old_session(rig: Rig) -> None:
    driver, ctx = await rig.module(devices=[DEV_A])
    old = rig.session
    await rig.update(driver, devices=[DEV_A], api_key_id="another-key")
    assert old.stopped
    new = rig.transports.sessions[1]
    assert f"haltian-iot/events/{INTEGRATION}/another-key/+/+/{DEV_A}" in new.subscriptions
    new.go_up()
    new.deliver(f"haltian-iot/events/{INTEGRATION}/another-key/measurements/co2/{DEV_A}", b'{"value": 600}')
    assert ctx.states["co2"] == 600
