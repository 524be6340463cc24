"""The gateway's durable spool and dead-letter file, both in the module's state directory.

`spool.jsonl` is append-only JSON lines: `{"s": seq, "m": measurement}` when a measurement is
accepted, `{"d": [seq, ...]}` when it is finished (delivered, dead-lettered or superseded).
An append is flushed and fsynced before `append` returns, which is the moment a measurement
counts as accepted. When nothing is pending, or finished records outnumber pending ones, the
file is rewritten with only the pending records (temporary file, fsync, atomic rename, fsync of
the directory). A torn last line from a crash mid-append was never acknowledged and is ignored.

`dead_letters.jsonl` keeps every measurement the server rejected (400) or that cannot fit in a
request, with the status and reason, one JSON object a line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from drivers.empathic_building.errors import SpoolError
from drivers.empathic_building.models import AnyMeasurement, Measurement, encoder

SPOOL_FILE = "spool.jsonl"
DEAD_LETTER_FILE = "dead_letters.jsonl"


class _Record(msgspec.Struct, omit_defaults=True):
    s: int | None = None
    m: AnyMeasurement | None = None
    d: list[int] | None = None


class DeadLetter(msgspec.Struct):
    """A measurement the server would not take, kept for an operator."""

    time: float
    status: int
    reason: str
    measurement: dict[str, Any]


class SpoolEntry(msgspec.Struct):
    """A pending measurement: its spool sequence number, the Struct and its wire bytes."""

    seq: int
    item: Measurement
    raw: bytes


_record_decoder = msgspec.json.Decoder(_Record)
_dead_decoder = msgspec.json.Decoder(DeadLetter)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Append-only, fsynced storage of accepted measurements until they are finished."""

    def __init__(self, directory: Path, *, compact_min: int = 256) -> None:
        self.path = directory / SPOOL_FILE
        self._dir = directory
        self._compact_min = compact_min
        self._lock = asyncio.Lock()
        self._pending: dict[int, SpoolEntry] = {}
        self._finished_records = 0
        self._next_seq = 1
        self._file: Any = None
        self._torn = False
        self.corrupt_lines = 0

    @property
    def pending(self) -> list[SpoolEntry]:
        """Pending entries in acceptance order."""
        return list(self._pending.values())

    async def open(self) -> list[SpoolEntry]:
        """Load what a previous run left pending, and rewrite the file clean."""
        async with self._lock:
            await asyncio.to_thread(self._dir.mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(self._load)
            await asyncio.to_thread(self._rewrite, list(self._pending.values()))
            return self.pending

    async def append(self, items: Sequence[tuple[Measurement, bytes]]) -> list[SpoolEntry]:
        """Persist `items`; when this returns they are on disk (accepted)."""
        if not items:
            return []
        # Shielded: once bytes may be on disk, the in-memory bookkeeping must follow even if the caller is cancelled.
        return await asyncio.shield(asyncio.ensure_future(self._append(items)))

    async def _append(self, items: Sequence[tuple[Measurement, bytes]]) -> list[SpoolEntry]:
        async with self._lock:
            entries = [SpoolEntry(self._next_seq + i, item, raw) for i, (item, raw) in enumerate(items)]
            self._next_seq += len(entries)  # never reuse a number, even when the write fails
            data = b"".join(b'{"s":%d,"m":%s}\n' % (e.seq, e.raw) for e in entries)
            try:
                if self._torn:
                    await asyncio.to_thread(self._rewrite, list(self._pending.values()))
                await asyncio.to_thread(self._write, data)
            except OSError as exc:
                self._torn = True  # a partial line may be on disk: rewrite before the next append
                raise SpoolError(f"could not write the spool {self.path}: {exc}") from exc
            for entry in entries:
                self._pending[entry.seq] = entry
            return entries

    async def finish(self, seqs: Iterable[int]) -> None:
        """Record entries as finished, compacting when worthwhile; they stay pending until that is written."""
        done = {s for s in seqs if s in self._pending}
        if done:
            # Shielded like `append`: the file and the in-memory view must not drift apart on cancellation.
            await asyncio.shield(asyncio.ensure_future(self._finish(done)))

    async def _finish(self, done: set[int]) -> None:
        async with self._lock:
            remaining = [e for s, e in self._pending.items() if s not in done]
            finished_records = self._finished_records + len(done)
            try:
                if not remaining or finished_records >= max(self._compact_min, len(remaining)):
                    await asyncio.to_thread(self._rewrite, remaining)
                else:
                    await asyncio.to_thread(self._write, encoder.encode(_Record(d=sorted(done))) + b"\n")
                    self._finished_records = finished_records
            except OSError as exc:
                self._torn = True
                # Still pending: sent again (at least once) rather than forgotten.
                raise SpoolError(f"could not update the spool {self.path}: {exc}") from exc
            for seq in done:
                self._pending.pop(seq, None)

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _load(self) -> None:
        self._pending.clear()
        if not self.path.exists():
            return
        lines = self.path.read_bytes().split(b"\n")
        last = len(lines) - 1
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = _record_decoder.decode(line)
            except msgspec.DecodeError:
                if number != last:  # the last line may be a torn, never-acknowledged append
                    self.corrupt_lines += 1
                continue
            if record.s is not None and record.m is not None:
                self._pending[record.s] = SpoolEntry(record.s, record.m, encoder.encode(record.m))
                self._next_seq = max(self._next_seq, record.s + 1)
            for seq in record.d or ():
                self._pending.pop(seq, None)

    def _open_file(self) -> Any:
        if self._file is None:
            self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for appends
        return self._file

    def _write(self, data: bytes) -> None:
        f = self._open_file()
        f.write(data)
        f.flush()
        os.fsync(f.fileno())

    def _rewrite(self, entries: list[SpoolEntry]) -> None:
        self.close()
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(b"".join(b'{"s":%d,"m":%s}\n' % (e.seq, e.raw) for e in entries))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self._dir)
        self._finished_records = 0
        self._torn = False


class DeadLetterFile:
    """Append-only, fsynced record of rejected measurements."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / DEAD_LETTER_FILE
        self.count = 0

    async def open(self) -> int:
        """Count what is already there."""
        def count() -> int:
            if not self.path.exists():
                return 0
            with open(self.path, "rb") as f:
                return sum(1 for line in f if line.strip())

        self.count = await asyncio.to_thread(count)
        return self.count

    async def add(self, letters: Sequence[DeadLetter]) -> None:
        """Append and fsync."""
        if not letters:
            return
        data = b"".join(encoder.encode(letter) + b"\n" for letter in letters)

        def write() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

        await asyncio.to_thread(write)
        self.count += len(letters)

    async def list(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """The newest `limit` dead letters after skipping `offset` newest ones, newest first."""
        def read() -> list[DeadLetter]:
            if not self.path.exists():
                return []
            out: list[DeadLetter] = []
            with open(self.path, "rb") as f:
                for line in f:
                    with contextlib.suppress(msgspec.DecodeError):
                        out.append(_dead_decoder.decode(line))
            out.reverse()
            return out[offset:offset + limit]

        return await asyncio.to_thread(read)
