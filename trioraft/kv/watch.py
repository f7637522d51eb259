"""Watch: waiting for the next changes under a prefix, in process or over a long poll.

The state machine records each applied entry's changes in a
:class:`~trioraft.kv.changes.WatchHistory` (see there for what a watcher is promised); the
watchers wait for the applier to apply more.

Invariants:
- A watcher never misses a wake-up: it reads the history, and only if that answered nothing
  new waits for the next apply, with no checkpoint between the read and the start of the
  wait (the applier's event is set and replaced after each apply).
- ``watch`` raises :class:`~trioraft.kv.changes.Compacted` on entry, not at its first change.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from .changes import DEFAULT_LIMIT, Change, WatchHistory


class WatchHub:
    """Watches served from a :class:`~trioraft.kv.changes.WatchHistory` that an applier
    fills; ``next_apply`` returns once the applier has applied more (the replicated state
    machine's ``wait_next_apply``)."""

    def __init__(self, history: WatchHistory, next_apply: Callable[[], Awaitable[None]]) -> None:
        self.history = history
        self._next_apply = next_apply

    async def wait_past(self, index: int) -> None:
        """Return once a change after ``index`` is recorded (or the history started over)."""
        while self.history.applied <= index:
            await self._next_apply()

    async def _wait_past_or_go_on(self, index: int) -> None:
        """After an answer with nothing under its prefix through ``index``: wait for a change
        after it, or, if the answer stopped short of what is applied (it looked through its
        most), let other tasks run before the next look."""
        if self.history.applied > index:
            await trio.lowlevel.checkpoint()
        else:
            await self.wait_past(index)

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
            await self._wait_past_or_go_on(after)

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
                    await self._wait_past_or_go_on(position)

        iterator = changes()
        try:
            yield iterator
        finally:
            await iterator.aclose()  # type: ignore[attr-defined]
