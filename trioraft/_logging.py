"""trioraft's logging: every module logs through the ``trioraft`` logger (or a child of it).

The library never configures handlers; the CLI does (``--log-level``, ``--log-format``).
Nothing is logged on the per-operation path. Events a hostile peer can repeat at will (a
refused message) go through :class:`Throttled`, so a flood costs one line per interval, not
one per message.

Structured logs: :class:`JsonFormatter` writes each record as one JSON object on one line,
with the fields of :data:`log_context` (a server sets it for the tasks it runs: its node
id, term and role, read when the line is written). Trio hands each new task a copy of its
parent's context, so every task under a server, and every worker thread it starts, logs
with that server's fields, even with several servers in one process.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime

logger = logging.getLogger("trioraft")

#: Returns the fields that say who is logging (``{"node", "term", "role"}``), or is unset.
log_context: ContextVar[Callable[[], Mapping[str, object]] | None] = ContextVar(
    "trioraft_log_context", default=None
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``, the
    fields of :data:`log_context`, ``event`` (the message) and ``exception`` if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = log_context.get()
        if fields is not None:
            line.update(fields())
        line["event"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


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
