"""A lock that a crashed holder cannot keep, with fencing tokens, and leader election for apps.

Each contender for the lock ``name`` takes a lease, then creates the key
``<prefix><name>/<lease id>`` under that lease. Contenders queue by ``(create_index, key)``
(two keys created by one log entry share an index; the key breaks the tie, the same for
everyone); the first holds the lock, and every other one watches only the key just ahead of
its own (its predecessor) and checks again when that key is deleted. So waiters are served in
the order they asked, and a release wakes one waiter, not all.

Invariants:
- The fencing token is the index of the read at which the holder found no one ahead of it
  (of its last page, when the line takes several).
  The previous holder's key existed at that holder's own read and was deleted before this
  one's, so tokens strictly grow with every change of holder, across deletes and re-creates
  of the lock, even when two keys share a ``create_index``.
- A holder's body runs in a cancel scope whose deadline is ``ttl - margin`` seconds after the
  last keepalive was *sent* (see :mod:`trioraft.kv.leases`: a keepalive is answered only by a
  confirmed leader, and a later leader restarts the lease at a full TTL), so the body is
  cancelled before the lease can expire anywhere and another contender take the lock. The
  keepalive task pushes that deadline on; a failed or late keepalive lets it pass.
- On exit (normal, error or cancellation) the lease is revoked, shielded and bounded, which
  deletes the key and lets the next waiter in; if that fails, the lease expires on its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import trio

from .._errors import LeaseNotFound, MaybeApplied, VersionConflict
from .changes import Compacted
from .clients import OpsClient

#: Keys of the lease locks live under this prefix, one folder per lock name.
LOCK_PREFIX = "\x00lock/"
#: Keys of app elections live under this prefix, one folder per election name.
ELECTION_PREFIX = "\x00elect/"


@dataclass(frozen=True, slots=True)
class Contender:
    key: str
    create_index: int


class LockLost(Exception):
    """The lock's lease could not be kept alive: the body was cancelled."""


class LeaseKV(Protocol):
    """What the lock needs of a client (the cluster, coalescing and embedded clients)."""

    async def lease_grant(self, ttl: int) -> int: ...

    async def lease_keepalive(self, lease: int) -> None: ...

    async def lease_revoke(self, lease: int) -> None: ...

    async def create(self, key: str, value: str, *, lease: int) -> int:
        """Put ``key`` at version 0 under ``lease``; its ``create_index`` (also when it existed
        from an earlier try of ours)."""
        ...

    async def contenders(self, prefix: str) -> tuple[list[Contender], int, int]:
        """The keys under ``prefix`` in line, and the indexes they were read at: the first
        (watch for deletes after it) and the last (the view is complete as of it)."""
        ...

    async def wait_deleted(self, key: str, *, after: int) -> None:
        """Return once ``key``, which existed at index ``after``, is deleted."""
        ...


class ClientLeaseKV:
    """:class:`LeaseKV` over any replicated KV client (cluster, coalescing or embedded)."""

    def __init__(self, kv: OpsClient) -> None:
        self.kv = kv

    async def lease_grant(self, ttl: int) -> int:
        return await self.kv.lease_grant(ttl)

    async def lease_keepalive(self, lease: int) -> None:
        await self.kv.lease_keepalive(lease)

    async def lease_revoke(self, lease: int) -> None:
        await self.kv.lease_revoke(lease)

    async def create(self, key: str, value: str, *, lease: int) -> int:
        try:
            await self.kv.put(key, value, 0, lease=lease)
        except (VersionConflict, MaybeApplied):
            pass  # an earlier attempt of ours created it: the key names our lease
        created = await self.kv.get(key)
        if created.version == 0:
            raise LeaseNotFound(lease)  # created, then gone with its lease already
        return created.create_index

    async def contenders(self, prefix: str) -> tuple[list[Contender], int, int]:
        listing = await self.kv.range_all(prefix=prefix)
        found = [Contender(item.key, item.create_index) for item in listing.items]
        return sorted(found, key=_place), listing.first_index, listing.last_index

    async def wait_deleted(self, key: str, *, after: int) -> None:
        while True:
            try:
                async with self.kv.watch(key, after=after) as changes:
                    async for change in changes:
                        if change.key == key and change.kind == "delete":
                            return
            except Compacted:
                # The history it needed is gone (a watch that fell far behind): look again.
                page = await self.kv.range(prefix=key, limit=1)
                if not any(item.key == key for item in page.items):
                    return
                after = page.index


@asynccontextmanager
async def lease_lock(
    kv: OpsClient | LeaseKV,
    name: str,
    *,
    ttl: int = 10,
    holder: str = "",
    prefix: str = LOCK_PREFIX,
    margin: float | None = None,
    cleanup_timeout: float = 10.0,
) -> AsyncIterator[int]:
    """``async with lease_lock(kv, name, ttl=10) as token:`` holds ``name`` under a lease.

    The body is cancelled (and :class:`LockLost` raised) when the lease can no longer be
    kept; ``token`` grows with every change of holder (give it to the guarded resource).
    """
    if ttl < 1:
        raise ValueError("ttl is at least 1 second")
    if isinstance(kv, OpsClient):
        kv = ClientLeaseKV(kv)
    margin = ttl / 4 if margin is None else margin
    folder = f"{prefix}{name}/"
    asked = trio.current_time()
    lease = await kv.lease_grant(ttl)
    try:
        async with _unwrapped_errors(), trio.open_nursery() as nursery:
            # The lease must stay alive while we wait in line too, or our key would vanish.
            guard = trio.CancelScope(deadline=asked + ttl - margin)
            nursery.start_soon(_keep_alive, kv, lease, ttl, margin, guard)
            with guard:
                key = f"{folder}{lease:016x}"
                mine = Contender(key, await kv.create(key, holder, lease=lease))
                yield await _wait_for_turn(kv, folder, mine)
            nursery.cancel_scope.cancel()
        if guard.cancelled_caught:
            raise LockLost(f"lock {name!r}: lease {lease} could not be kept alive")
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(cleanup_timeout):
            await kv.lease_revoke(lease)


@asynccontextmanager
async def _unwrapped_errors() -> AsyncIterator[None]:
    """Let the caller's own error out of our nursery as itself, not in an ExceptionGroup."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def _wait_for_turn(kv: LeaseKV, folder: str, mine: Contender) -> int:
    """Wait until ``mine`` is first in line; the index of the read that found it first."""
    while True:
        contenders, first, last = await kv.contenders(folder)
        before = [c for c in contenders if _place(c) < _place(mine)]
        if not before:
            if mine not in contenders:
                raise LockLost(f"{mine.key!r} is gone: its lease expired while waiting")
            return last
        await kv.wait_deleted(max(before, key=_place).key, after=first)


def _place(contender: Contender) -> tuple[int, str]:
    return contender.create_index, contender.key


async def _keep_alive(
    kv: LeaseKV, lease: int, ttl: int, margin: float, guard: trio.CancelScope
) -> None:
    """Renew every third of the TTL; each success moves the body's deadline on."""
    while True:
        await trio.sleep(ttl / 3)
        sent = trio.current_time()
        with trio.move_on_at(guard.deadline):
            try:
                await kv.lease_keepalive(lease)
            except Exception:
                guard.cancel()  # the lease is gone, or no leader confirms it: stop now
                return
            guard.deadline = sent + ttl - margin


def elect(
    kv: OpsClient | LeaseKV, name: str, *, ttl: int = 10, candidate: str = ""
) -> AbstractAsyncContextManager[int]:
    """``async with elect(kv, "name") as term:`` runs the body only while elected.

    The same queue as the lock, under its own prefix: the body runs once this candidate is
    first in line, with ``term`` as its fencing token, and is cancelled if it stops being
    the elected one (its lease could not be kept).
    """
    return lease_lock(kv, name, ttl=ttl, holder=candidate, prefix=ELECTION_PREFIX)
