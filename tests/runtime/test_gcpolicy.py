"""The collector policy: paused while building, survivors frozen, everything reclaimed now and then."""

from __future__ import annotations

import asyncio
import gc
import weakref

from runtime.gcpolicy import GcPolicy


class Node:
    """An object that can be part of a reference cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


async def test_pause_settle_freeze_reclaim_and_close() -> None:
    policy = GcPolicy(asyncio.get_running_loop(), reclaim_every=3600.0)
    try:
        policy.pause()
        assert not gc.isenabled()
        policy.settle()
        assert gc.isenabled() and policy.active
        assert gc.get_freeze_count() > 0
        armed = policy._reclaim
        assert armed is not None
        assert 3590 < armed.when() - asyncio.get_running_loop().time() <= 3600

        # A cycle that becomes garbage after it was frozen is only found by a reclaim.
        a, b = Node(), Node()
        a.other, b.other = b, a
        alive = weakref.ref(a)
        gc.freeze()
        del a, b
        gc.collect()
        assert alive() is not None  # frozen: not looked at
        policy.reclaim()
        assert alive() is None
        assert policy.reclaims == 1
        assert gc.get_freeze_count() > 0
    finally:
        policy.close()
    assert gc.isenabled() and not policy.active
    assert gc.get_freeze_count() == 0
    assert policy._on_collect not in gc.callbacks


async def test_a_clean_collection_freezes_its_survivors() -> None:
    policy = GcPolicy(asyncio.get_running_loop())
    try:
        policy.settle()
        gc.unfreeze()
        gc.collect()
        gc.collect(1)  # nothing to find
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert policy.freezes >= 1
        assert gc.get_freeze_count() > 0
        before = policy.freezes
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        assert gc.collect(1) > 0  # garbage found: its survivors are not frozen this time
        await asyncio.sleep(0)
        assert policy.freezes == before
    finally:
        policy.close()
