"""Reference-counted shared upstream services (one connection, one token per credentials)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar, cast

T = TypeVar("T")
_log = logging.getLogger("runtime.shared")


class _Entry:
    __slots__ = ("ready", "service", "users")

    def __init__(self) -> None:
        self.service: Any = None
        self.users: set[tuple[str, str]] = set()
        self.ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()


class SharedServices:
    """Services keyed by connection settings; created with the first user, closed with the last."""

    def __init__(self) -> None:
        self._entries: dict[Hashable, _Entry] = {}
        self._held: dict[tuple[str, str], Hashable] = {}
        # user -> its holders (release_all without a scan); a list, as a module holds one or two
        self._slots: dict[str, list[tuple[str, str]]] = {}

    async def acquire(self, user: str, slot: str, key: Hashable, factory: Callable[[], Awaitable[T]]) -> T:
        """The service for `key`, held by `user` in `slot` (releasing what that slot held before)."""
        holder = (user, slot)
        previous = self._held.get(holder)
        if previous is not None and previous != key:
            await self._release(holder, previous)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
            entry.users.add(holder)
            self._held[holder] = key
            self._hold(holder)
            try:
                entry.service = await factory()
            except BaseException as exc:
                del self._entries[key]
                self._held.pop(holder, None)
                self._unhold(holder)
                if isinstance(exc, Exception):
                    entry.ready.set_exception(exc)
                    entry.ready.exception()  # mark retrieved; waiting users get it re-raised
                else:
                    entry.ready.cancel()
                raise
            entry.ready.set_result(entry.service)
            return cast(T, entry.service)
        entry.users.add(holder)
        self._held[holder] = key
        self._hold(holder)
        return cast(T, await asyncio.shield(entry.ready))

    async def release(self, user: str, slot: str) -> None:
        """Let go of what `user` holds in `slot` (nothing if it holds nothing)."""
        key = self._held.get((user, slot))
        if key is not None:
            await self._release((user, slot), key)

    async def release_all(self, user: str) -> None:
        """Let go of everything `user` holds."""
        for holder in list(self._slots.get(user, ())):
            key = self._held.get(holder)
            if key is not None:
                await self._release(holder, key)

    def users(self, key: Hashable) -> int:
        """How many holders a service has (0 when it does not exist)."""
        entry = self._entries.get(key)
        return len(entry.users) if entry else 0

    def __len__(self) -> int:
        return len(self._entries)

    def _hold(self, holder: tuple[str, str]) -> None:
        slots = self._slots.get(holder[0])
        if slots is None:
            self._slots[holder[0]] = [holder]
        elif holder not in slots:
            slots.append(holder)

    def _unhold(self, holder: tuple[str, str]) -> None:
        slots = self._slots.get(holder[0])
        if slots is not None and holder in slots:
            slots.remove(holder)
            if not slots:
                del self._slots[holder[0]]

    async def _release(self, holder: tuple[str, str], key: Hashable) -> None:
        self._held.pop(holder, None)
        self._unhold(holder)
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.users.discard(holder)
        if entry.users:
            return
        del self._entries[key]
        if entry.ready.done() and not entry.ready.cancelled() and entry.ready.exception() is None:
            try:
                await entry.service.close()
            except Exception as exc:  # closing a broken connection must not block the rest
                _log.warning("closing shared service %r failed: %s", key, exc)
