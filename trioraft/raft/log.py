"""The Raft log as a pure value: entries after a snapshot point, and the log-matching rules.

Indexes start at 1. The log holds the entries ``snapshot_index + 1 .. last_index``; the
snapshot stands for everything up to ``snapshot_index``, whose term is ``snapshot_term``.

Invariants:
- ``0 <= snapshot_index <= last_index``; ``term_at(snapshot_index) == snapshot_term``.
- Terms never decrease along the log.
- :func:`match_append` implements the AppendEntries receiver rules (Raft §5.3): it never
  truncates an entry that matches the leader's, so a stale or reordered AppendEntries cannot
  remove entries the leader already counted as replicated.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. The index is its position; only the term and the command are stored."""

    term: int = field(metadata={"min": 0})
    command: str


class Log:
    """An in-memory Raft log (no I/O). Storage mirrors every change made here."""

    __slots__ = ("entries", "snapshot_index", "snapshot_term")

    def __init__(self, snapshot_index: int = 0, snapshot_term: int = 0) -> None:
        self.snapshot_index = snapshot_index
        self.snapshot_term = snapshot_term
        self.entries: list[Entry] = []

    @property
    def last_index(self) -> int:
        return self.snapshot_index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at ``index``; ``None`` if compacted away or beyond the end."""
        if index == self.snapshot_index:
            return self.snapshot_term
        if self.snapshot_index < index <= self.last_index:
            return self.entries[index - self.snapshot_index - 1].term
        return None

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.snapshot_index - 1]

    def slice(self, start: int, end: int) -> list[Entry]:
        """Entries ``start .. end - 1`` (``start`` must be past the snapshot)."""
        return self.entries[start - self.snapshot_index - 1 : end - self.snapshot_index - 1]

    def copy(self) -> Log:
        """An independent copy (entries are immutable, so the list copy is enough)."""
        clone = Log(self.snapshot_index, self.snapshot_term)
        clone.entries = list(self.entries)
        return clone

    def append(self, entries: list[Entry]) -> None:
        self.entries.extend(entries)

    def truncate_from(self, index: int) -> None:
        """Drop the entries at ``index`` and after."""
        del self.entries[index - self.snapshot_index - 1 :]

    def compact(self, index: int, term: int) -> None:
        """Let a snapshot at (``index``, ``term``) stand for every entry up to ``index``.

        Entries after ``index`` survive only if the log holds ``index`` with that same term;
        otherwise the whole log is replaced by the snapshot.
        """
        if self.term_at(index) == term and index <= self.last_index:
            del self.entries[: index - self.snapshot_index]
        else:
            self.entries = []
        self.snapshot_index, self.snapshot_term = index, term

    def first_index_of_term(self, term: int, at_or_before: int) -> int:
        """The first index of the run of ``term`` entries that contains ``at_or_before``."""
        index = at_or_before
        while index - 1 > self.snapshot_index and self.term_at(index - 1) == term:
            index -= 1
        return index

    def last_index_of_term(self, term: int) -> int | None:
        """The last index holding ``term``, or ``None`` if the log has no such entry."""
        for offset in range(len(self.entries) - 1, -1, -1):
            entry_term = self.entries[offset].term
            if entry_term == term:
                return self.snapshot_index + offset + 1
            if entry_term < term:
                return None
        return None


def is_up_to_date(last_index: int, last_term: int, my_last_index: int, my_last_term: int) -> bool:
    """Raft §5.4.1: is a candidate's log at least as up to date as mine?"""
    return (last_term, last_index) >= (my_last_term, my_last_index)


@dataclass(frozen=True)
class AppendResult:
    """What a follower does with an AppendEntries.

    On success, truncate from ``truncate_from`` (if not None), then append ``new_entries``;
    ``match_index`` is the last index known to match the leader. On failure, the fast
    back-up hint: ``conflict_term`` (0 if the log is too short) and ``conflict_index``.
    """

    success: bool
    match_index: int = 0
    truncate_from: int | None = None
    new_entries: tuple[Entry, ...] = ()
    conflict_term: int = 0
    conflict_index: int = 0


def match_append(log: Log, prev_index: int, prev_term: int, entries: list[Entry]) -> AppendResult:
    """The receiver side of AppendEntries (Raft §5.3) with the fast back-up hint."""
    if prev_index < log.snapshot_index:
        # The prefix up to the snapshot is committed, hence matches: skip what it covers.
        skip = log.snapshot_index - prev_index
        if skip >= len(entries):
            return AppendResult(True, match_index=prev_index + len(entries))
        prev_index, prev_term, entries = log.snapshot_index, log.snapshot_term, entries[skip:]
    my_term = log.term_at(prev_index)
    if my_term is None:
        return AppendResult(False, conflict_term=0, conflict_index=log.last_index + 1)
    if my_term != prev_term:
        first = log.first_index_of_term(my_term, prev_index)
        return AppendResult(False, conflict_term=my_term, conflict_index=first)
    for offset, entry in enumerate(entries):
        index = prev_index + 1 + offset
        existing = log.term_at(index)
        if existing is None:
            return AppendResult(True, prev_index + len(entries), None, tuple(entries[offset:]))
        if existing != entry.term:
            return AppendResult(True, prev_index + len(entries), index, tuple(entries[offset:]))
    return AppendResult(True, match_index=prev_index + len(entries))


def next_index_after_reject(log: Log, conflict_term: int, conflict_index: int) -> int:
    """The leader's new ``next_index`` for a follower that rejected with this hint."""
    if conflict_term:
        last = log.last_index_of_term(conflict_term)
        if last is not None:
            return last + 1
    return max(1, conflict_index)
