"""The history of changes to the keys, in commit order, that watches are served from.

Every replica applies every committed entry, so every replica records the same changes at the
same indexes and any node can serve a watch. A watcher names a key prefix and the last index
it has seen (``after``); it receives every change under that prefix with a greater index,
each once, in commit order, each with the index of the log entry that made it. To go on
(from any node, after a leader change or a restart) it asks again with ``after`` set to the
``through`` index of the last answer.

Invariants:
- :class:`WatchHistory` keeps the changes with index in ``compacted_through + 1 .. applied``
  (fewer when its bounds push the oldest out, which raises ``compacted_through``). It never
  answers with a gap: a watch starting at or before ``compacted_through`` gets
  :class:`Compacted` instead.
- The changes of one entry (a transaction may make several) are answered together: an answer
  ends at an entry boundary, so resuming after its ``through`` index misses nothing.
- After a snapshot is restored (at start, or installed from the leader), the history starts
  over at the snapshot's index: the changes before it are compacted away.
- Nothing here reads the clock or does I/O; :class:`~trioraft.kv.watch.WatchHub` adds the
  waiting.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from sys import getsizeof

from ..rpc.codec import json_string_bytes

#: Changes kept for watchers by default (each costs its key and value in memory).
DEFAULT_MAX_CHANGES = 100_000
#: Bytes of keys and values kept for watchers by default (as stored in memory).
DEFAULT_MAX_BYTES = 64 << 20
#: Most changes in one answer (an answer may hold more to end at an entry boundary).
DEFAULT_LIMIT = 1000
#: An answer stops once its keys and values reach this many bytes as sent (JSON-escaped),
#: at an entry boundary: watchers of large values get several smaller answers.
MAX_ANSWER_BYTES = 1 << 20
#: Changes one answer looks through at most (then at an entry boundary), whether or not
#: they are under its prefix: a watch of a quiet prefix went through all those kept, on the
#: event loop, in every request (100,000: 0.13 s).
MAX_SCAN = 10_000


class Compacted(Exception):
    """The changes a watch asked for are no longer kept: read the current state again."""

    def __init__(self, after: int, compacted_through: int) -> None:
        super().__init__(f"changes after {after} are compacted (kept: after {compacted_through})")
        self.after = after
        self.compacted_through = compacted_through


@dataclass(slots=True)
class Change:
    """One key changed by the entry at ``index``: its new value, or its deletion. Made by
    every replica for every write, so not frozen (a frozen one costs five times as much to
    build); never changed once made, and not hashable."""

    index: int
    key: str
    kind: str  # "put" (created or changed) or "delete"
    value: str
    version: int  # 0 after a delete
    create_index: int  # 0 after a delete

    def to_wire(self) -> dict[str, object]:
        return {
            "index": self.index,
            "key": self.key,
            "kind": self.kind,
            "value": self.value,
            "version": self.version,
            "create_index": self.create_index,
        }


class WatchHistory:
    """A bounded window of the latest changes, in index order (pure: no clock, no I/O)."""

    def __init__(
        self, *, max_changes: int = DEFAULT_MAX_CHANGES, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if max_changes < 1 or max_bytes < 1:
            raise ValueError("a watch history keeps at least one change")
        self.max_changes = max_changes
        self.max_bytes = max_bytes
        self.compacted_through = 0
        self.applied = 0
        #: Changes in index order; those before ``_start`` are dropped (``None``: their memory
        #: is freed at once, their slots with one slice later).
        self._changes: list[Change | None] = []
        self._indexes: list[int] = []  # parallel to _changes, for bisect
        #: Parallel to _changes: each one's size as counted when recorded (a string's
        #: memory can grow later: orjson keeps its UTF-8 form in it once sent).
        self._sizes: list[int] = []
        self._start = 0
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._changes) - self._start

    def record(self, index: int, changes: Iterable[Change] = ()) -> None:
        """Note that the entry at ``index`` is applied, with the changes it made (an entry of
        several ops may record several times, all before anyone reads)."""
        if index < self.applied:
            raise ValueError(f"index {index} recorded after {self.applied}")
        for change in changes:
            size = _size(change)
            self._changes.append(change)
            self._indexes.append(index)
            self._sizes.append(size)
            self._bytes += size
        self.applied = index
        self._trim()

    def reset(self, index: int) -> None:
        """Start over at a restored snapshot's ``index``: what came before is gone."""
        self._changes, self._indexes, self._sizes, self._start, self._bytes = [], [], [], 0, 0
        self.compacted_through = self.applied = index

    def check(self, after: int) -> None:
        """Raise :class:`Compacted` unless every change after ``after`` is kept."""
        if after < self.compacted_through:
            raise Compacted(after, self.compacted_through)

    def since(
        self, prefix: str, after: int, limit: int = DEFAULT_LIMIT
    ) -> tuple[list[Change], int]:
        """The changes under ``prefix`` with index > ``after``, and the index they run through.

        At most ``limit`` changes, and keys and values of at most :data:`MAX_ANSWER_BYTES` as
        sent, plus the rest of the last one's entry; at most :data:`MAX_SCAN` changes looked
        through, plus the rest of an entry. The second value is the ``after`` to ask with
        next: the last applied index when the answer is complete.
        Raises :class:`Compacted` when changes after ``after`` are no longer all kept.
        """
        self.check(after)
        found: list[Change] = []
        size = 0
        first = position = bisect.bisect_right(self._indexes, after, lo=self._start)
        end = len(self._changes)
        while position < end:
            change = self._changes[position]
            assert change is not None  # (only those before _start are dropped)
            if position > first and change.index != self._indexes[position - 1]:
                # An entry boundary: stop here once the answer is full, or has looked
                # through MAX_SCAN changes (it then runs through the entry looked at last).
                if found and (len(found) >= limit or size >= MAX_ANSWER_BYTES):
                    return found, found[-1].index
                if position - first >= MAX_SCAN:
                    return found, self._indexes[position - 1]
            if change.key.startswith(prefix):
                found.append(change)
                size += json_string_bytes(change.key) + json_string_bytes(change.value)
            position += 1
        return found, max(after, self.applied)

    def _trim(self) -> None:
        while len(self) > self.max_changes or (self._bytes > self.max_bytes and len(self) > 1):
            # Drop whole entries only, so `compacted_through` names an entry boundary.
            index = self._indexes[self._start]
            while self._start < len(self._changes) and self._indexes[self._start] == index:
                self._bytes -= self._sizes[self._start]
                self._changes[self._start] = None
                self._start += 1
            self.compacted_through = index
        if self._start > 1024 and self._start * 2 > len(self._changes):
            del self._changes[: self._start]
            del self._indexes[: self._start]
            del self._sizes[: self._start]
            self._start = 0


def _size(change: Change) -> int:
    """What ``change`` holds in memory: its strings as stored (1, 2 or 4 bytes a character,
    by their widest one) and its object."""
    return getsizeof(change.key) + getsizeof(change.value) + 64
