"""A distributed lock over any :class:`~trioraft.KeyValue` client (single server or cluster).

The lock named ``name`` is the KV key ``name``: its value is the holder's id, or ``""`` when
free. Acquire reads the key and, if free, claims it with a versioned put of our holder id;
release writes ``""`` at the version it read while we hold it.

Invariants:
- Only a versioned put that finds the key free, at the version we read, can make us holder,
  so two holders can never both succeed.
- A put answering ``Maybe`` is settled by reading the key again: we hold the lock exactly when
  its value is our holder id. Release likewise stops once the value is no longer ours.
- One :class:`Lock` object may be shared by many tasks: a local ``trio.Lock`` lets one of them
  at a time take the distributed lock.
- Cancellation never leaves the lock held behind the caller's back: release, and the clean-up
  of a cancelled acquire, run shielded for up to ``cleanup_timeout`` seconds; a release that
  cannot finish in that time raises :class:`TimeoutError` rather than pretend.
"""

from __future__ import annotations

import random
import uuid

import trio

from .._errors import KeyNotFound, MaybeApplied, VersionConflict
from .clients import Backoff, KeyValue

FREE = ""


class Lock:
    """``async with Lock(kv, "name"):`` runs the block while holding the lock ``name``."""

    def __init__(
        self,
        kv: KeyValue,
        name: str,
        *,
        holder: str | None = None,
        poll_start: float = 0.001,
        poll_cap: float = 0.02,
        cleanup_timeout: float = 30.0,
    ) -> None:
        self.kv = kv
        self.name = name
        self.holder = holder or uuid.uuid4().hex
        if self.holder == FREE:
            raise ValueError("holder id must not be empty")
        self._poll = (poll_start, poll_cap)
        self._rng = random.Random(self.holder)  # seeded: a holder's polling replays exactly
        self._cleanup_timeout = cleanup_timeout
        self._local = trio.Lock()

    @property
    def locked(self) -> bool:
        """Whether a task of this process holds (or is taking) the lock through this object."""
        return self._local.locked()

    async def acquire(self) -> None:
        await self._local.acquire()
        try:
            await self._acquire_remote()
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(self._cleanup_timeout):
                await self._release_remote()
            self._local.release()
            raise

    async def release(self) -> None:
        if not self._local.locked():
            raise RuntimeError(f"lock {self.name!r} is not held")
        try:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self._cleanup_timeout
                await self._release_remote()
        finally:
            self._local.release()
        if scope.cancelled_caught:
            raise TimeoutError(f"could not release lock {self.name!r} in {self._cleanup_timeout}s")

    async def _acquire_remote(self) -> None:
        backoff = Backoff(*self._poll, rng=self._rng)
        while True:
            value, version = await self.kv.get(self.name)
            if value == self.holder:
                return  # an earlier put that answered Maybe did apply
            if value != FREE:
                await backoff.wait()
                continue
            try:
                await self.kv.put(self.name, self.holder, version)
                return
            except (VersionConflict, MaybeApplied, KeyNotFound):
                continue  # lost a race, or unsure: the next read decides

    async def _release_remote(self) -> None:
        while True:
            value, version = await self.kv.get(self.name)
            if value != self.holder:
                return
            try:
                await self.kv.put(self.name, FREE, version)
                return
            except (VersionConflict, MaybeApplied, KeyNotFound):
                continue

    async def __aenter__(self) -> Lock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()
