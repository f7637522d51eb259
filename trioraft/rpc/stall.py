"""A connection's deadline that moves with every step it takes, without a Trio deadline per
step.

:class:`StallClock` bounds the current step of a connection (waiting for a request,
receiving one, sending a reply, lying idle between requests) by a limit of its own. A step
only records when it began and its limit, a few attribute stores, instead of entering a
cancel scope or rescheduling a Trio deadline (~5-20 us each on a small machine, several
times a message). One watcher task per connection sleeps until the expiry it last computed
and then looks again.

Invariants:
- :meth:`StallClock.expired` returns only once the step current at that moment has lasted
  its whole limit (a step restarted meanwhile is timed from its own start).
- A step whose expiry comes before the one the watcher sleeps to wakes the watcher; any
  other restart costs no wake-up (steps start later and later, so that is rare).
- A limit of ``math.inf`` never expires: the connection is busy in a way bounded elsewhere.
"""

from __future__ import annotations

import math

import trio


class StallClock:
    """When the current step of a connection began, and how long it may take."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.since = trio.current_time()
        self._planned = math.inf
        self._replan = trio.Event()

    def restart(self, limit: float) -> None:
        """A new step begins now, and may take ``limit`` seconds."""
        self.limit = limit
        self.since = now = trio.current_time()
        if now + limit < self._planned:
            self._replan.set()

    async def expired(self) -> None:
        """Return once the current step has outlasted its limit."""
        while True:
            expiry = self.since + self.limit
            if trio.current_time() >= expiry:
                return
            self._planned = expiry
            self._replan = trio.Event()
            with trio.move_on_at(expiry):
                await self._replan.wait()

    async def watch(self, scope: trio.CancelScope) -> None:
        """Cancel ``scope`` once the current step has outlasted its limit."""
        await self.expired()
        scope.cancel()
