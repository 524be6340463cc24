"""The gateway direction: accept measurements durably and POST them to /v2/measurements.

Delivery guarantee (see the README): a measurement is *accepted* when `submit` returns, which is
after it has been validated and fsynced to the spool. An accepted measurement is sent until the
server answers 2xx, or it is moved to the dead-letter file (400 for that item, or too large for
any request), or it is superseded by a later one of the same sensor, type and timestamp before
being sent. Across a crash or restart it is at least once: entries whose 2xx had not yet been
recorded are sent again, and the server's duplicate-timestamp rule drops the copy. Without a
crash, no measurement is stored twice; a request that timed out may be resent on the wire, and
the same rule absorbs it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from drivers.empathic_building.api import EbApi
from drivers.empathic_building.errors import AuthError, InvalidMeasurement, TransientApiError
from drivers.empathic_building.models import Measurement, dedupe_key, encoder, validate_measurement
from drivers.empathic_building.spool import DeadLetter, DeadLetterFile, Spool, SpoolEntry
from runtime.clock import Clock
from runtime.driver import DriverMetrics
from runtime.tasks import raise_if_cancelled

MEASUREMENTS_PATH = "/v2/measurements"
MAX_REQUEST_BYTES = 2_000_000  # under the documented 2 MB, whichever way a megabyte is counted
Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]
Key = tuple[str, str, int]


class SubmitResult(msgspec.Struct):
    """What `submit` did with a group of measurements."""

    accepted: int
    superseded: int = 0
    duplicates: int = 0


class GatewayStats(msgspec.Struct):
    """Counters published as the `gateway` state."""

    pending: int = 0
    delivered: int = 0
    superseded: int = 0
    duplicates: int = 0
    dead_letters: int = 0


class Gateway:
    """Durable batching sender of EB measurements for one module."""

    def __init__(self, api: EbApi, spool: Spool, dead_letters: DeadLetterFile, *, clock: Clock, logger: Logger,
                 metrics: DriverMetrics, valid_to: int | None = None, max_request_bytes: int = MAX_REQUEST_BYTES,
                 max_batch_items: int = 10_000, batch_delay: float = 0.0, request_timeout: float = 30.0,
                 backoff: tuple[float, float] = (1.0, 60.0), remember_sent: int = 100_000,
                 on_stats: Callable[[GatewayStats], None] | None = None,
                 on_status: Callable[[bool], None] | None = None) -> None:
        self.api = api
        self.spool = spool
        self.dead_letters = dead_letters
        self._clock = clock
        self._log = logger
        self._metrics = metrics
        self.valid_to = valid_to
        self._max_bytes = max_request_bytes
        self._max_items = max_batch_items
        self._batch_delay = batch_delay
        self._timeout = request_timeout
        self._backoff_first, self._backoff_cap = backoff
        self._remember = remember_sent
        self._on_stats = on_stats
        self._on_status = on_status
        self._queue: OrderedDict[int, SpoolEntry] = OrderedDict()  # accepted, not yet sent
        self._queued_keys: dict[Key, int] = {}
        self._in_flight: dict[int, SpoolEntry] = {}
        self._sent_keys: OrderedDict[Key, None] = OrderedDict()  # in flight or delivered, bounded
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self.stats = GatewayStats()
        self.requests = 0
        self.retry_delays: list[float] = []

    def configure(self, *, max_request_bytes: int, batch_delay: float, request_timeout: float) -> None:
        """Apply changed settings (takes effect with the next batch)."""
        self._max_bytes = max_request_bytes
        self._batch_delay = batch_delay
        self._timeout = request_timeout

    async def open(self) -> None:
        """Load what the spool kept from an earlier run; it is sent first."""
        await self.dead_letters.open()
        for entry in await self.spool.open():
            self._enqueue(entry)
        if self._queue:
            self._wake.set()
        self.stats.dead_letters = self.dead_letters.count
        self._publish()

    @property
    def pending(self) -> int:
        """Accepted measurements not yet finished (queued or in flight)."""
        return len(self.spool.pending)

    async def submit(self, items: Iterable[Measurement | Mapping[str, Any]]) -> SubmitResult:
        """Validate, apply `valid_to`, persist (fsync) and queue; raises `InvalidMeasurement` before queuing any."""
        checked: list[tuple[Measurement, bytes]] = []
        for index, item in enumerate(items):
            try:
                measurement, raw = validate_measurement(item)
            except InvalidMeasurement as exc:
                raise InvalidMeasurement(f"item {index}: {exc}") from exc
            if self.valid_to is not None and measurement.valid_to is None:
                measurement = msgspec.structs.replace(measurement, valid_to=measurement.time + self.valid_to)
                raw = encoder.encode(measurement)
            checked.append((measurement, raw))
        result = SubmitResult(accepted=0)
        latest: dict[Key, int] = {}
        for index, (measurement, _) in enumerate(checked):
            key = dedupe_key(measurement)
            if key in latest:
                result.superseded += 1  # two in one call: the later one wins
            latest[key] = index
        fresh: list[tuple[Measurement, bytes]] = []
        for index in sorted(latest.values()):
            measurement, raw = checked[index]
            if dedupe_key(measurement) in self._sent_keys:
                result.duplicates += 1  # the server already has (or is getting) this timestamp
                continue
            fresh.append((measurement, raw))
        entries = await self.spool.append(fresh)
        replaced: list[int] = []
        for entry in entries:
            old = self._enqueue(entry)
            if old is not None:
                replaced.append(old)
        if entries:
            self._wake.set()
        if replaced:
            result.superseded += len(replaced)
            await self.spool.finish(replaced)
        result.accepted = len(entries)
        self.stats.superseded += result.superseded
        self.stats.duplicates += result.duplicates
        if result.superseded:
            self._metrics.dropped("superseded", result.superseded)
        if result.duplicates:
            self._metrics.dropped("duplicate_timestamp", result.duplicates)
        self._publish()
        return result

    async def run(self) -> None:
        """Send forever: wait for work, then drain the queue in batches."""
        try:
            while True:
                if not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                if self._batch_delay > 0:
                    await self._clock.sleep(self._batch_delay)
                while self._queue:
                    batch, oversized = self._take_batch()
                    if oversized:
                        await self._dead_letter(oversized, 413, "larger than the request size limit on its own")
                    await self._send(batch)
                    self._publish()
        finally:
            self._requeue_in_flight()

    def _requeue_in_flight(self) -> None:
        """Put back what a stopped run had taken but not finished, so a restarted run sends it."""
        unfinished, self._in_flight = self._in_flight, {}
        if not unfinished:
            return
        merged = sorted([*self._queue.values(), *unfinished.values()], key=lambda e: e.seq)
        self._queue.clear()
        self._queued_keys.clear()
        for entry in merged:
            self._enqueue(entry)

    async def drain(self) -> None:
        """Wait until nothing is pending."""
        while self.pending:
            self._idle.clear()
            await self._idle.wait()

    # ---- internals ----------------------------------------------------------------------------

    def _enqueue(self, entry: SpoolEntry) -> int | None:
        """Queue an entry; returns the seq of a queued one with the same key it supersedes."""
        key = dedupe_key(entry.item)
        old = self._queued_keys.get(key)
        if old is not None:
            self._queue.pop(old, None)
        self._queue[entry.seq] = entry
        self._queued_keys[key] = entry.seq
        return old

    def _take_batch(self) -> tuple[list[SpoolEntry], list[SpoolEntry]]:
        """The next batch under the size limit, and entries too large for any request."""
        batch: list[SpoolEntry] = []
        oversized: list[SpoolEntry] = []
        size = 1
        while self._queue and len(batch) < self._max_items:
            seq, entry = next(iter(self._queue.items()))
            extra = len(entry.raw) + (1 if batch else 0)
            if size + extra + 1 > self._max_bytes:
                if batch:
                    break
                self._dequeue(seq, entry)
                self._in_flight[seq] = entry
                oversized.append(entry)
                continue
            self._dequeue(seq, entry)
            self._in_flight[seq] = entry
            batch.append(entry)
            size += extra
            key = dedupe_key(entry.item)
            self._sent_keys[key] = None
            self._sent_keys.move_to_end(key)
            while len(self._sent_keys) > self._remember:
                self._sent_keys.popitem(last=False)
        return batch, oversized

    def _dequeue(self, seq: int, entry: SpoolEntry) -> None:
        self._queue.pop(seq, None)
        key = dedupe_key(entry.item)
        if self._queued_keys.get(key) == seq:
            del self._queued_keys[key]

    async def _send(self, batch: list[SpoolEntry]) -> None:
        """POST one batch until it is finished: 2xx, split on 413/400, retry on 5xx, timeouts and 401."""
        if not batch:
            return
        body = b"[" + b",".join(e.raw for e in batch) + b"]"
        failures = 0
        while True:
            reason: str
            try:
                self.requests += 1
                response = await self.api.request("POST", MEASUREMENTS_PATH, body=body, timeout=self._timeout)
            except AuthError as exc:
                reason = str(exc)
                self._status(False)
            except TransientApiError as exc:
                reason = str(exc)
            else:
                status = response.status
                if response.ok:
                    await self._delivered(batch)
                    self._status(True)
                    return
                if status in (413, 400, 422):
                    self._status(True)
                    if len(batch) == 1:
                        detail = response.body[:500].decode(errors="replace")
                        await self._dead_letter(batch, status, detail or f"HTTP {status}")
                        return
                    # Find the rejected items by halves; the rest still goes through.
                    middle = len(batch) // 2
                    await self._send(batch[:middle])
                    await self._send(batch[middle:])
                    return
                if status in (401, 403):
                    self._status(False)
                reason = f"HTTP {status}"
            raise_if_cancelled()  # a cancellation that came out as a failed request ends the retries
            failures += 1
            delay = min(self._backoff_cap, self._backoff_first * 2 ** (failures - 1))
            self.retry_delays.append(delay)
            self._log.warning("POST %s of %d measurements failed (%s); retrying in %.0f s", MEASUREMENTS_PATH,
                              len(batch), reason, delay)
            await self._clock.sleep(delay)

    async def _delivered(self, batch: list[SpoolEntry]) -> None:
        for entry in batch:
            self._in_flight.pop(entry.seq, None)
        await self.spool.finish(e.seq for e in batch)
        self.stats.delivered += len(batch)
        self._metrics.received("measurement_delivered", len(batch))

    async def _dead_letter(self, entries: list[SpoolEntry], status: int, reason: str) -> None:
        now = self._clock.time()
        for entry in entries:
            self._in_flight.pop(entry.seq, None)
        await self.dead_letters.add([DeadLetter(now, status, reason, msgspec.to_builtins(e.item)) for e in entries])
        await self.spool.finish(e.seq for e in entries)
        for entry in entries:
            self._sent_keys.pop(dedupe_key(entry.item), None)  # never stored: the timestamp is still free
        self.stats.dead_letters = self.dead_letters.count
        self._metrics.dropped("dead_letter", len(entries))
        self._log.error("%d measurement(s) moved to dead letters (HTTP %d): %s", len(entries), status, reason)

    def _status(self, ok: bool) -> None:
        if self._on_status is not None:
            self._on_status(ok)

    def _publish(self) -> None:
        self.stats.pending = self.pending
        if not self.stats.pending:
            self._idle.set()
        if self._on_stats is not None:
            self._on_stats(msgspec.structs.replace(self.stats))
