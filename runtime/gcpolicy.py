"""How the runtime process uses Python's cyclic garbage collector.

A large site is millions of long-lived objects (modules, states, topics, routes) and very little
cyclic garbage. Left alone, the collector walks all of them again and again: seconds while the
site is built, then full collections of 100 to 400 ms that stall every message waiting behind them.
So the process (this is a process-wide setting, used by `Runtime.run` only):

- pauses the collector while the site is built, then freezes what start-up made out of later
  collections (`gc.freeze`);
- after each collection of the older generations that found no garbage, freezes the survivors too:
  every message replaces state objects that live for seconds, long enough to reach the oldest
  generation, and each full collection would otherwise walk all of them (tens of milliseconds);
- once an hour (`reclaim_every`), collects everything once, frozen objects included, so that a cycle
  which became garbage after it was frozen is not kept for good; a settings reload does the same.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

_log = logging.getLogger("runtime.gc")


class GcPolicy:
    """The collector policy of one runtime process."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, reclaim_every: float = 3600.0) -> None:
        self._loop = loop
        self._reclaim_every = reclaim_every
        self._reclaim: asyncio.TimerHandle | None = None
        self._freeze_pending = False
        self.active = False
        """True between `settle()` and `close()`."""
        self.freezes = 0
        """Collections whose survivors were frozen."""
        self.reclaims = 0
        """Collections of everything, frozen objects included."""

    def pause(self) -> None:
        """Stop automatic collection while the site is being built."""
        gc.disable()

    def settle(self) -> None:
        """The site is built: collect automatically again, with what exists now frozen."""
        gc.enable()
        gc.freeze()
        if not self.active:
            self.active = True
            gc.callbacks.append(self._on_collect)
        self._arm()
        _log.debug("start-up objects frozen out of garbage collection: %d", gc.get_freeze_count())

    def reclaim(self) -> None:
        """Collect everything once, frozen objects included, and freeze the survivors again."""
        began = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self.reclaims += 1
        _log.debug("full collection of %d objects: %d unreachable, %.0f ms", gc.get_freeze_count(), found,
                   (time.perf_counter() - began) * 1000)
        self._arm()

    def thaw(self) -> None:
        """Make frozen objects collectable again (before a settings reload replaces many of them)."""
        gc.unfreeze()

    def close(self) -> None:
        """Stop the policy (the collector stays on, nothing stays frozen)."""
        if self._reclaim is not None:
            self._reclaim.cancel()
            self._reclaim = None
        if self.active:
            gc.callbacks.remove(self._on_collect)
            self.active = False
        gc.unfreeze()
        gc.enable()

    def _arm(self) -> None:
        if self._reclaim is not None:
            self._reclaim.cancel()
        self._reclaim = self._loop.call_later(self._reclaim_every, self.reclaim)

    def _on_collect(self, phase: str, info: dict[str, Any]) -> None:
        # Runs inside the collector, possibly on another thread: only schedule the freeze here.
        if (phase == "stop" and info["generation"] >= 1 and info["collected"] == 0
                and info["uncollectable"] == 0 and not self._freeze_pending):
            self._freeze_pending = True
            self._loop.call_soon_threadsafe(self._freeze)

    def _freeze(self) -> None:
        self._freeze_pending = False
        if self.active:
            gc.freeze()
            self.freezes += 1
