"""trioraft's logging: every module logs through the ``trioraft`` logger (or a child of it).

The library never configures handlers; the CLI does (``--log-level``). Nothing is logged on
the per-operation path. Events a hostile peer can repeat at will (a refused message) go
through :class:`Throttled`, so a flood costs one line per interval, not one per message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

logger = logging.getLogger("trioraft")


class Throttled:
    """Log at most one line per ``interval`` seconds; the next line says how many were
    suppressed meanwhile. ``clock`` is injectable for tests (monotonic seconds)."""

    def __init__(
        self,
        log: logging.Logger,
        level: int = logging.WARNING,
        *,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._level = level
        self._interval = interval
        self._clock = clock
        self._next = -float("inf")
        self._suppressed = 0

    def __call__(self, message: str, *args: object) -> None:
        now = self._clock()
        if now < self._next:
            self._suppressed += 1
            return
        self._next = now + self._interval
        if self._suppressed:
            message += f" ({self._suppressed} more like it suppressed)"
            self._suppressed = 0
        self._log.log(self._level, message, *args)
