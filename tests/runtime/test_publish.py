"""State and metadata on a real mosquitto: exact topics and payloads, retention, clearing, reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import msgspec

from runtime.publisher import BATCH, WRITE_MAX
from tests.support.broker import Mosquitto
from tests.support.site import ProbeDriver, running, site, write_settings
from tests.support.subscriber import Subscriber, retained

ROOM = "placeos/org-t/state/bld-1/lvl-2/area-201/sys-201/drv-p/Sensor/1"


async def until(predicate: object, timeout: float = 10.0) -> bool:
    """Poll a condition on the event loop (the runtime runs in this loop)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.02)
    return False


async def test_state_topic_and_payload_exact(broker: Mosquitto, tmp_path: Path) -> None:
    path = write_settings(tmp_path / "site.yaml", site(broker.url, org={"id": "org-t", "name": "T"}))
    with Subscriber(broker.port, "placeos/org-t/#") as sub:
        async with running(path) as rt:
            host = rt.manager.hosts["mod-a"]  # type: ignore[union-attr]
            host.set_state("temperature", 21.5)
            host.set_state("count", 5)
            host.set_state("detail", {"a": [1, True, None], "b": "x"})
            expected = b'{"time":%d,"value":"5"}' % host.states["count"].time_ms
            assert await until(lambda: sub.latest.get(f"{ROOM}/count") == expected)
            await rt.publisher.outputs[0].flush(5)  # type: ignore[union-attr]
            sub.wait_quiet(0.2)
            assert sub.latest[f"{ROOM}/temperature"].endswith(b',"value":"21.5"}')
            payload = msgspec.json.decode(sub.latest[f"{ROOM}/detail"])
            assert payload["value"] == '{"a":[1,true,null],"b":"x"}'
            assert sub.latest[f"{ROOM}/connected"].endswith(b'"value":"true"}')
            meta = msgspec.json.decode(sub.latest["placeos/org-t/metadata/sys-201"])
            assert meta == {"id": "sys-201", "name": "Room 2.01", "zones": ["area-201"], "modules": ["mod-a"]}
            assert msgspec.json.decode(sub.latest["placeos/org-t/metadata/lvl-2"]) == {
                "id": "lvl-2", "name": "Level 2", "tags": ["level"], "parent": "bld-1"}
            assert msgspec.json.decode(sub.latest["placeos/org-t/metadata/drv-p"]) == {
                "id": "drv-p", "name": "Probe driver", "driver": "probe", "description": "test probe"}
            assert sub.latest["placeos/org-t/runtime/rt-test"] == b'{"online":true}'


async def test_placeos_source_payload(broker: Mosquitto, tmp_path: Path) -> None:
    doc = site(broker.url)
    doc["brokers"][0]["payload"] = "placeos-source"
    path = write_settings(tmp_path / "site.json", doc)
    with Subscriber(broker.port, "placeos/org-t/state/#") as sub:
        async with running(path) as rt:
            host = rt.manager.hosts["mod-a"]  # type: ignore[union-attr]
            host.set_state("detail", {"b": 2})
            expected = b'{"time":%d,"value":{"b":2}}' % (host.states["detail"].time_ms // 1000)
            assert await until(lambda: sub.latest.get(f"{ROOM}/detail") == expected)


async def test_same_value_twice_publishes_once(broker: Mosquitto, tmp_path: Path) -> None:
    path = write_settings(tmp_path / "site.yaml", site(broker.url))
    with Subscriber(broker.port, f"{ROOM}/level") as sub:
        async with running(path) as rt:
            host = rt.manager.hosts["mod-a"]  # type: ignore[union-attr]
            host.set_state("level", 3)
            host.set_state("level", 3)
            await rt.publisher.outputs[0].flush(5)  # type: ignore[union-attr]
            host.set_state("level", 3)
            host.set_state("level", 4)
            assert await until(lambda: sub.latest.get(f"{ROOM}/level", b"").endswith(b'"4"}'))
            await rt.publisher.outputs[0].flush(5)  # type: ignore[union-attr]
            sub.wait_quiet(0.3)
            values = [m.payload.rsplit(b'"value":', 1)[1] for m in sub.messages]
            assert values == [b'"3"}', b'"4"}']


async def test_a_value_superseded_while_waiting_to_be_sent_gives_way_to_its_successor(broker: Mosquitto,
                                                                                       tmp_path: Path) -> None:
    path = write_settings(tmp_path / "site.yaml", site(broker.url))
    with Subscriber(broker.port, f"{ROOM}/level") as sub:
        async with running(path) as rt:
            host = rt.manager.hosts["mod-a"]  # type: ignore[union-attr]
            out = rt.publisher.outputs[0]  # type: ignore[union-attr]
            coalesced = out._coalesced._value.get()
            host.set_state("level", 31)
            await asyncio.sleep(0)  # 31 is rendered and waits for the next socket write ...
            host.set_state("level", 32)  # ... when 32 arrives
            assert await until(lambda: sub.latest.get(f"{ROOM}/level", b"").endswith(b'"32"}'))
            await out.flush(5)
            sub.wait_quiet(0.3)
            # (an earlier test may have left its value retained on the topic)
            values = [m.payload.rsplit(b'"value":', 1)[1] for m in sub.messages
                      if m.payload.endswith((b'"31"}', b'"32"}'))]
            assert values == [b'"32"}']
            assert out._coalesced._value.get() == coalesced + 1


async def test_late_subscriber_gets_retained_state_and_metadata(broker: Mosquitto, tmp_path: Path) -> None:
    path = write_settings(tmp_path / "site.yaml", site(broker.url))
    async with running(path) as rt:
        rt.manager.hosts["mod-a"].set_state("humidity", 40)  # type: ignore[union-attr]
        await rt.publisher.outputs[0].flush(5)  # type: ignore[union-attr]
        found = retained(broker.port, "placeos/org-t/#")
        assert f"{ROOM}/humidity" in found
        assert f"{ROOM}/connected" in found
        assert {"placeos/org-t/metadata/org-t", "placeos/org-t/metadata/bld-1", "placeos/org-t/metadata/sys-201",
                "placeos/org-t/metadata/drv-p"} <= set(found)


async def test_none_clears_the_retained_topic(broker: Mosquitto, tmp_path: Path) -> None:
    path = write_settings(tmp_path / "site.yaml", site(broker.url))
    async with running(path) as rt:
        host = rt.manager.hosts["mod-a"]  # type: ignore[union-attr]
        host.set_state("booking", "room booked")
        await rt.publisher.outputs[0].flush(5)  # type: ignore[union-attr]
        assert f"{ROOM}/booking" in retained(broker.port, f"{ROOM}/#")
        host.set_state("booking", None)
        await rt.publisher.outputs[0].flush(5)  # type: ignore[union-attr]
        assert f"{ROOM}/booking" not in retained(broker.port, f"{ROOM}/#")


async def test_restart_with_renamed_module_leaves_no_ghost(broker: Mosquitto, tmp_path: Path) -> None:
    path = write_settings(tmp_path / "site.yaml", site(broker.url))
    async with running(path) as rt:
        rt.manager.hosts["mod-a"].set_state("temperature", 20)  # type: ignore[union-attr]
    assert f"{ROOM}/temperature" in retained(broker.port, "placeos/org-t/#")
    renamed = site(broker.url)
    renamed["modules"][0]["name"] = "Climate"
    renamed["zones"].append({"id": "area-202", "name": "Room 2.02", "tags": ["area"], "parent": "lvl-2"})
    renamed["systems"].append({"id": "sys-202", "name": "Room 2.02", "zones": ["area-202"], "modules": []})
    write_settings(path, renamed)
    async with running(path) as rt:
        rt.manager.hosts["mod-a"].set_state("temperature", 21)  # type: ignore[union-attr]
        await rt.publisher.outputs[0].flush(5)  # type: ignore[union-attr]
        found = retained(broker.port, "placeos/org-t/#")
    new_room = ROOM.replace("/Sensor/", "/Climate/")
    assert f"{new_room}/temperature" in found
    assert not [t for t in found if "/Sensor/" in t]
    assert "placeos/org-t/metadata/sys-202" in found


async def test_restart_without_a_system_clears_its_metadata_and_state(broker: Mosquitto, tmp_path: Path) -> None:
    doc = site(broker.url)
    doc["systems"].append({"id": "sys-old", "name": "Old", "zones": ["lvl-2"], "modules": ["mod-a"]})
    path = write_settings(tmp_path / "site.yaml", doc)
    async with running(path) as rt:
        rt.manager.hosts["mod-a"].set_state("temperature", 20)  # type: ignore[union-attr]
    found = retained(broker.port, "placeos/org-t/#")
    assert "placeos/org-t/metadata/sys-old" in found
    assert any("/sys-old/" in t for t in found)
    write_settings(path, site(broker.url))
    async with running(path) as rt:
        # The sweep queued its clears; `retained` blocks the event loop, so they must be sent first.
        assert await rt.publisher.outputs[0].flush(5)  # type: ignore[union-attr]
        found = retained(broker.port, "placeos/org-t/#")
    assert "placeos/org-t/metadata/sys-old" not in found
    assert not [t for t in found if "/sys-old/" in t]
    assert f"{ROOM}/temperature" in found  # still owned: kept for subscribers until the module sets it again


async def test_broker_restart_republishes_everything(broker: Mosquitto, tmp_path: Path) -> None:
    path = write_settings(tmp_path / "site.yaml", site(broker.url))
    async with running(path) as rt:
        host = rt.manager.hosts["mod-a"]  # type: ignore[union-attr]
        host.set_state("temperature", 19.5)
        await rt.publisher.outputs[0].flush(5)  # type: ignore[union-attr]
        before = retained(broker.port, "placeos/org-t/#")
        broker.restart()  # no persistence: the broker forgets every retained message
        assert await until(lambda: not rt.publisher.connected, 10)  # type: ignore[union-attr]
        assert await rt.publisher.wait_connected(15)  # type: ignore[union-attr]
        await rt.publisher.outputs[0].flush(5)  # type: ignore[union-attr]
        after = retained(broker.port, "placeos/org-t/#")
    assert after == before  # same bytes, so the original `time` too


async def test_failing_module_is_retried_and_others_unaffected(broker: Mosquitto, tmp_path: Path) -> None:
    doc = site(broker.url)
    doc["drivers"].append({"id": "drv-f", "name": "Flaky", "driver": "flaky", "settings": {"failures": 2}})
    doc["modules"].append({"id": "mod-f", "driver": "drv-f"})
    doc["systems"][0]["modules"].append("mod-f")
    path = write_settings(tmp_path / "site.yaml", doc)
    flaky = "placeos/org-t/state/bld-1/lvl-2/area-201/sys-201/drv-f/Flaky/1"
    with Subscriber(broker.port, "placeos/org-t/state/#") as sub:
        async with running(path) as rt:
            rt.manager.hosts["mod-a"].set_state("temperature", 22)  # type: ignore[union-attr]
            assert await until(lambda: f"{ROOM}/temperature" in sub.latest)
            assert await until(lambda: f"{flaky}/ok" in sub.latest)
            assert rt.manager.hosts["mod-f"].failures == 2  # type: ignore[union-attr]
            assert sub.latest[f"{flaky}/connected"].endswith(b'"true"}')
            assert ProbeDriver.loads["mod-a"] >= 1
        connected = [m.payload for m in sub.messages if m.topic == f"{flaky}/connected"]
        assert connected[0].endswith(b'"false"}')


@contextlib.contextmanager
def small_window_broker() -> Iterator[Mosquitto]:
    """A mosquitto of its own whose Receive Maximum (QoS 1 window) is 20."""
    small = Mosquitto(extra="max_inflight_messages 20\n")
    small.config.write_text(small.config.read_text().replace("max_inflight_messages 0\n", ""))
    small.start()
    try:
        yield small
    finally:
        small.close()


async def test_a_broker_with_a_small_receive_maximum_still_gets_everything(tmp_path: Path) -> None:
    with small_window_broker() as small:
        path = write_settings(tmp_path / "site.yaml", site(small.url))
        async with running(path) as rt:
            out = rt.publisher.outputs[0]  # type: ignore[union-attr]
            assert out.session.receive_maximum == 20
            host = rt.manager.hosts["mod-a"]  # type: ignore[union-attr]
            for i in range(2000):
                host.set_state(f"k{i}", i)
            assert await out.flush(30)
            found = retained(small.port, f"{ROOM}/#")
            assert len([t for t in found if "/k" in t]) == 2000
            assert rt.metrics.registry.get_sample_value(
                "placeos_runtime_publish_errors_total", {"broker": "local"}) == 0


async def test_a_burst_coalesces_to_the_latest_value_per_topic(broker: Mosquitto, tmp_path: Path) -> None:
    path = write_settings(tmp_path / "site.yaml", site(broker.url))
    with Subscriber(broker.port, f"{ROOM}/#") as sub:
        async with running(path) as rt:
            out = rt.publisher.outputs[0]  # type: ignore[union-attr]
            await out.flush(5)
            before = rt.publisher.state_changes  # type: ignore[union-attr]
            host = rt.manager.hosts["mod-a"]  # type: ignore[union-attr]
            # Five values per key without yielding: far more than one render batch.
            for rnd in range(5):
                for i in range(1000):
                    host.set_state(f"b{i}", rnd * 1000 + i)
            assert rt.publisher.state_changes - before == 5000  # type: ignore[union-attr]
            assert await out.flush(30)
            assert sub.wait_for(lambda s: sum(1 for t in s.latest if t.startswith(f"{ROOM}/b")) == 1000)
            sub.wait_quiet(0.3)
    burst = [m for m in sub.messages if m.topic.startswith(f"{ROOM}/b")]
    assert len(burst) == 1000  # every topic once, with its latest value
    for i in range(1000):
        assert sub.latest[f"{ROOM}/b{i}"].endswith(b'"value":"%d"}' % (4000 + i))


async def test_a_qos0_backlog_larger_than_one_write_all_goes_out(broker: Mosquitto, tmp_path: Path) -> None:
    # Start-up metadata, a reconcile or a republish after reconnecting queue thousands of topics at once.
    doc = site(broker.url, brokers=[{"name": "local", "url": broker.url, "client_id": "rt-test", "qos": 0}])
    count = 3 * WRITE_MAX + 7  # several socket writes, each on its own loop turn
    with Subscriber(broker.port, f"{ROOM}/#") as sub:
        async with running(write_settings(tmp_path / "site.yaml", doc)) as rt:
            out = rt.publisher.outputs[0]  # type: ignore[union-attr]
            for i in range(count):
                out.put(f"{ROOM}/q{i}", b"%d" % i)
            # No flush(): the drain alone must carry on until nothing is left.
            everything = lambda s: sum(1 for t in s.latest if t.startswith(f"{ROOM}/q")) == count  # noqa: E731
            assert await asyncio.to_thread(sub.wait_for, everything, 60)
    assert sub.latest[f"{ROOM}/q{count - 1}"] == b"%d" % (count - 1)


async def test_at_qos0_a_stalled_broker_makes_changes_wait_and_coalesce_not_pile_up(tmp_path: Path) -> None:
    stalled = Mosquitto()
    stalled.start()
    try:
        doc = site(stalled.url, brokers=[{"name": "local", "url": stalled.url, "client_id": "rt-test", "qos": 0}])
        async with running(write_settings(tmp_path / "site.yaml", doc)) as rt:
            publisher = rt.publisher
            assert publisher is not None
            out = publisher.outputs[0]
            await out.flush(5)
            host = rt.manager.hosts["mod-a"]  # type: ignore[union-attr]
            client = out.session._client
            assert client is not None
            transport = client._connection._transport
            filler = "x" * 1000
            keys = 4000
            one_write = WRITE_MAX * 1200  # what a single drain may hand to the socket at once
            assert stalled.proc is not None
            os.kill(stalled.proc.pid, signal.SIGSTOP)  # reads nothing: the socket buffers fill, then the transport's
            try:
                buffered: list[int] = []
                for rnd in range(12):  # 48 MB of changes, far beyond what the kernel buffers on loopback
                    for i in range(keys):
                        host.set_state(f"s{i}", f"{rnd}-{i}-{filler}")
                    for _ in range(10):
                        await asyncio.sleep(0)
                    buffered.append(transport.get_write_buffer_size())
                assert not out.session.writable
                assert max(buffered) < one_write  # the transport holds at most one drain's worth
                # The rest waits, coalescing: at most one rendered batch here, one entry per key still to render.
                assert 0 < len(out.pending) <= BATCH
                assert publisher.backlog <= keys
            finally:
                os.kill(stalled.proc.pid, signal.SIGCONT)
            assert await out.flush(60)

            def final() -> bool:
                # The broker works through megabytes of buffered publishes after it resumes: read until it has.
                found = retained(stalled.port, f"{ROOM}/#")
                last = [p for t, p in found.items() if t.rsplit("/", 1)[1].startswith("s")
                        and b'"value":"\\"11-%s-x' % t.rsplit("/s", 1)[1].encode() in p]
                return len(last) == keys

            assert await until(final, 30)
    finally:
        stalled.close()


async def test_changes_under_a_full_window_wait_and_coalesce(tmp_path: Path) -> None:
    with small_window_broker() as small:
        path = write_settings(tmp_path / "site.yaml", site(small.url))
        async with running(path) as rt:
            publisher = rt.publisher
            assert publisher is not None
            out = publisher.outputs[0]
            await out.flush(5)
            host = rt.manager.hosts["mod-a"]  # type: ignore[union-attr]
            assert small.proc is not None
            os.kill(small.proc.pid, signal.SIGSTOP)  # no acknowledgements: the window stays full
            try:
                for i in range(3000):
                    host.set_state(f"w{i}", i)
                for _ in range(20):
                    await asyncio.sleep(0)
                # One batch was rendered and waits for the window; the rest is still only marked dirty.
                assert 0 < len(out.pending) <= BATCH
                waiting = publisher.backlog
                assert 3000 - 2 * BATCH < waiting < 3000
                for i in range(3000):
                    host.set_state(f"w{i}", -i)
                # 6,000 changes, at most one entry per key: later values replaced the waiting ones.
                assert waiting < publisher.backlog <= 3000
            finally:
                os.kill(small.proc.pid, signal.SIGCONT)
            assert await out.flush(30)
            found = retained(small.port, f"{ROOM}/#")
            values = {t.rsplit("/", 1)[1]: p for t, p in found.items() if t.startswith(f"{ROOM}/w")}
            assert len(values) == 3000
            assert all(p.endswith(b'"value":"%d"}' % -int(k[1:])) for k, p in values.items())


async def test_a_crashed_module_task_restarts_the_module(broker: Mosquitto, tmp_path: Path) -> None:
    path = write_settings(tmp_path / "site.yaml", site(broker.url))
    with Subscriber(broker.port, f"{ROOM}/connected") as sub:
        async with running(path) as rt:
            host = rt.manager.hosts["mod-a"]  # type: ignore[union-attr]
            loads = ProbeDriver.loads["mod-a"]
            assert isinstance(host.instance, ProbeDriver)
            await host.instance.crash()
            assert await until(lambda: ProbeDriver.loads["mod-a"] == loads + 1 and host.status.value == "running")
            assert host.failures == 1
            assert rt.metrics.registry.get_sample_value(
                "placeos_runtime_module_restarts_total", {"driver": "drv-p"}) == 1
            assert await until(lambda: sub.latest.get(f"{ROOM}/connected", b"").endswith(b'"true"}'))
    connected = [m.payload.endswith(b'"true"}') for m in sub.messages]
    assert connected[-2:] == [False, True]  # down while failed, up again after the reload
