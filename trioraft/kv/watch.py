"""Watch: waiting for the next changes under a prefix, in process or over a long poll.

The applier records each applied entry's changes in a :class:`~trioraft.kv.changes.WatchHistory`
(see there for what a watcher is promised) and wakes the watchers once per applied batch.

Invariants:
- A watcher never misses a wake-up: it reads the history, and only if that answered nothing
  new waits on the current ``trio.Event``, which the next ``wake`` sets and replaces (no
  checkpoint between the read and the wait).
- ``watch`` raises :class:`~trioraft.kv.changes.Compacted` on entry, not at its first change.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import trio

from .changes import DEFAULT_LIMIT, Change, WatchHistory


class WatchHub:
    """A :class:`WatchHistory` that watchers can wait on; the applier feeds it."""

    def __init__(self, history: WatchHistory | None = None) -> None:
        self.history = history if history is not None else WatchHistory()
        self._advanced = trio.Event()

    def record(self, index: int, changes: Iterable[Change] = ()) -> None:
        self.history.record(index, changes)

    def reset(self, index: int) -> None:
        self.history.reset(index)
        self.wake()

    def wake(self) -> None:
        """Wake every waiter (once per applied batch, not per entry)."""
        self._advanced.set()
        self._advanced = trio.Event()

    async def wait_past(self, index: int) -> None:
        """Return once an entry after ``index`` is applied (or the history was reset)."""
        while self.history.applied <= index:
            await self._advanced.wait()

    async def next_changes(
        self, prefix: str, after: int, *, limit: int = DEFAULT_LIMIT
    ) -> tuple[list[Change], int]:
        """The changes under ``prefix`` after ``after``, waiting until there is one.

        A long poll bounds the wait with a cancel scope, then answers ``since(...)``, which
        may be empty but still moves ``through`` on.
        """
        while True:
            changes, through = self.history.since(prefix, after, limit)
            if changes:
                return changes, through
            after = through
            await self.wait_past(after)

    @asynccontextmanager
    async def watch(self, prefix: str, *, after: int) -> AsyncIterator[AsyncIterator[Change]]:
        """``async with hub.watch(prefix, after=i) as changes: async for change in changes``."""
        self.history.check(after)  # Compacted at once, not at the first iteration

        async def changes() -> AsyncIterator[Change]:
            position = after
            while True:
                batch, position = self.history.since(prefix, position)
                for change in batch:
                    yield change
                if not batch:
                    await self.wait_past(position)

        iterator = changes()
        try:
            yield iterator
        finally:
            await iterator.aclose()  # type: ignore[attr-defined]
