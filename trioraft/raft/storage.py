"""Durable Raft state: hard state (term, vote), the log, and the latest snapshot.

Two implementations of one interface:

- :class:`FileStorage`, on disk in a directory:
  ``hardstate`` and ``snapshot`` are replaced atomically through :class:`Persister`;
  ``log`` is append-only, one record per entry: ``u32 length, u32 crc32, payload`` with
  payload ``u64 index, u64 term, command (UTF-8)``. Appending costs O(entry), and ``sync``
  (one fsync, in a worker thread) or ``sync_blocking`` (the same fsync on the calling
  thread) makes everything appended so far durable: callers batch appends and sync once
  (group commit). On open, a torn or corrupt tail (short record, bad checksum,
  non-consecutive index) is cut off and the valid prefix kept.
- :class:`MemoryStorage`, for tests on virtual time: the same rules with nothing on disk;
  :meth:`MemoryStorage.crashed` gives what a restart would find (only synced data survives).

Invariants:
- Nothing appended is durable until ``sync`` or ``sync_blocking`` returns;
  ``save_hard_state`` and ``save_snapshot`` are durable when they return.
- ``save_snapshot`` writes the snapshot first, then replaces the log with the compacted one;
  :func:`normalize` makes any crash in between load a consistent state (log entries that
  conflict with or overlap the snapshot are dropped).
- Disk writes run to completion even if the caller is cancelled (threads are not abandoned).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from .._errors import StorageCorrupt
from .log import Entry, Log
from .persister import Persister, fsync_dir

_RECORD_HEADER = struct.Struct("<II")  # payload length, crc32(payload)
_ENTRY_HEAD = struct.Struct("<QQ")  # index, term
_SNAPSHOT_HEAD = struct.Struct("<QQ")  # last included index, term


@dataclass(frozen=True)
class HardState:
    term: int = 0
    voted_for: str | None = None


@dataclass(frozen=True)
class Snapshot:
    index: int
    term: int
    data: bytes


@dataclass
class Loaded:
    """What a node finds when it starts."""

    hard_state: HardState
    snapshot: Snapshot | None
    log: Log


class Storage(Protocol):
    def load(self) -> Loaded: ...

    async def save_hard_state(self, state: HardState) -> None: ...

    def append(self, first_index: int, entries: list[Entry]) -> None: ...

    def truncate_from(self, index: int) -> None: ...

    async def sync(self) -> None: ...

    def sync_blocking(self) -> None: ...

    async def save_snapshot(self, snapshot: Snapshot, log: Log) -> None: ...

    def raft_state_size(self) -> int: ...

    def snapshot_size(self) -> int: ...


def encode_record(index: int, entry: Entry) -> bytes:
    payload = _ENTRY_HEAD.pack(index, entry.term) + entry.command.encode()
    return _RECORD_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def parse_records(raw: bytes) -> tuple[list[tuple[int, Entry]], list[int], int]:
    """Parse log records up to the first damaged one.

    Returns the (index, entry) pairs, each record's file offset, and the length of the valid
    prefix (where a torn or corrupt tail begins).
    """
    records: list[tuple[int, Entry]] = []
    offsets: list[int] = []
    pos = 0
    while pos + _RECORD_HEADER.size <= len(raw):
        length, crc = _RECORD_HEADER.unpack_from(raw, pos)
        start = pos + _RECORD_HEADER.size
        payload = raw[start : start + length]
        if length < _ENTRY_HEAD.size or len(payload) != length or zlib.crc32(payload) != crc:
            break
        index, term = _ENTRY_HEAD.unpack_from(payload)
        if records and index != records[-1][0] + 1:
            break
        try:
            command = payload[_ENTRY_HEAD.size :].decode()
        except UnicodeDecodeError:
            break
        records.append((index, Entry(term, command)))
        offsets.append(pos)
        pos = start + length
    return records, offsets, pos


def normalize(snapshot: Snapshot | None, records: list[tuple[int, Entry]]) -> tuple[Log, bool]:
    """Build the log that ``records`` and ``snapshot`` agree on.

    Returns it and whether records had to be dropped (the file then needs rewriting).
    """
    base_index, base_term = (snapshot.index, snapshot.term) if snapshot else (0, 0)
    log = Log(base_index, base_term)
    if not records:
        return log, False
    first = records[0][0]
    by_index = {index: entry for index, entry in records}
    if first > base_index + 1 or (
        base_index in by_index and by_index[base_index].term != base_term
    ):
        return log, True  # a gap after the snapshot, or a history that conflicts with it
    log.append([entry for index, entry in records if index > base_index])
    return log, first <= base_index


def encode_snapshot(snapshot: Snapshot) -> bytes:
    return _SNAPSHOT_HEAD.pack(snapshot.index, snapshot.term) + snapshot.data


def decode_snapshot(raw: bytes) -> Snapshot | None:
    if not raw:
        return None
    if len(raw) < _SNAPSHOT_HEAD.size:
        raise StorageCorrupt("snapshot shorter than its header")
    index, term = _SNAPSHOT_HEAD.unpack_from(raw)
    return Snapshot(index, term, raw[_SNAPSHOT_HEAD.size :])


def encode_hard_state(state: HardState) -> bytes:
    return json.dumps({"term": state.term, "voted_for": state.voted_for}).encode()


def decode_hard_state(raw: bytes) -> HardState:
    if not raw:
        return HardState()
    data = json.loads(raw)
    return HardState(data["term"], data["voted_for"])


class FileStorage:
    """Raft state in ``directory`` (created if needed). Call :meth:`close` when done."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        after_step: Callable[[str], None] | None = None,
    ) -> None:
        """``after_step`` is a test hook called after each step of a snapshot save."""
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._after_step = after_step or (lambda step: None)
        self._hard_state = Persister(self.directory / "hardstate")
        self._snapshot = Persister(
            self.directory / "snapshot",
            after_step=lambda step: self._after_step(f"snapshot-{step}"),
        )
        self._log_path = self.directory / "log"
        self._fd = -1
        self._offsets: list[int] = []  # file offset of the record of each entry in the log
        self._first_index = 1  # index of the first record in the file
        self._log_bytes = 0

    def load(self) -> Loaded:
        hard_state = decode_hard_state(self._hard_state.read())
        snapshot = decode_snapshot(self._snapshot.read())
        raw = self._log_path.read_bytes() if self._log_path.exists() else b""
        records, offsets, valid = parse_records(raw)
        log, dropped = normalize(snapshot, records)
        if dropped:
            self._rewrite(log)
        else:
            if valid < len(raw):
                with open(self._log_path, "r+b") as f:
                    f.truncate(valid)
                    os.fsync(f.fileno())
            self._open_log(log.snapshot_index + 1, offsets[len(records) - len(log.entries) :])
            self._log_bytes = valid
        return Loaded(hard_state, snapshot, log)

    def _open_log(self, first_index: int, offsets: list[int]) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._first_index = first_index
        self._offsets = offsets

    def _rewrite(self, log: Log) -> None:
        """Replace the log file by one holding exactly ``log``'s entries (atomically)."""
        tmp = self._log_path.with_name("log.tmp")
        offsets, pos, chunks = [], 0, []
        for i, entry in enumerate(log.entries):
            record = encode_record(log.snapshot_index + 1 + i, entry)
            offsets.append(pos)
            pos += len(record)
            chunks.append(record)
        with open(tmp, "wb") as f:
            f.write(b"".join(chunks))
            f.flush()
            os.fsync(f.fileno())
        self._after_step("log-written")
        os.replace(tmp, self._log_path)
        self._after_step("log-renamed")
        fsync_dir(self.directory)
        self._open_log(log.snapshot_index + 1, offsets)
        self._log_bytes = pos

    async def save_hard_state(self, state: HardState) -> None:
        await trio.to_thread.run_sync(self._hard_state.save, encode_hard_state(state))

    def append(self, first_index: int, entries: list[Entry]) -> None:
        assert first_index == self._first_index + len(self._offsets), "appends must be contiguous"
        chunks = []
        for i, entry in enumerate(entries):
            record = encode_record(first_index + i, entry)
            self._offsets.append(self._log_bytes)
            self._log_bytes += len(record)
            chunks.append(record)
        data = memoryview(b"".join(chunks))
        while data:
            data = data[os.write(self._fd, data) :]

    def truncate_from(self, index: int) -> None:
        keep = index - self._first_index
        if keep < len(self._offsets):
            self._log_bytes = self._offsets[keep]
            del self._offsets[keep:]
            os.ftruncate(self._fd, self._log_bytes)

    async def sync(self) -> None:
        await trio.to_thread.run_sync(os.fsync, self._fd)

    def sync_blocking(self) -> None:
        os.fsync(self._fd)

    async def save_snapshot(self, snapshot: Snapshot, log: Log) -> None:
        def save() -> None:
            self._snapshot.save(encode_snapshot(snapshot))
            self._rewrite(log)

        await trio.to_thread.run_sync(save)

    def raft_state_size(self) -> int:
        return self._hard_state.size() + self._log_bytes

    def snapshot_size(self) -> int:
        return self._snapshot.size()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class MemoryStorage:
    """Storage with nothing on disk, for virtual-time tests; only synced data survives a crash."""

    def __init__(
        self,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        records: list[tuple[int, Entry]] | None = None,
    ) -> None:
        self._hard_state = hard_state or HardState()
        self._snapshot = snapshot
        self._durable: list[tuple[int, Entry]] = list(records or [])
        self._volatile: list[tuple[int, Entry]] = list(self._durable)

    def load(self) -> Loaded:
        log, _ = normalize(self._snapshot, self._durable)
        self._durable = _numbered(log)
        self._volatile = list(self._durable)
        return Loaded(self._hard_state, self._snapshot, log)

    async def save_hard_state(self, state: HardState) -> None:
        self._hard_state = state

    def append(self, first_index: int, entries: list[Entry]) -> None:
        if self._volatile:
            assert first_index == self._volatile[-1][0] + 1, "appends must be contiguous"
        self._volatile.extend((first_index + i, e) for i, e in enumerate(entries))

    def truncate_from(self, index: int) -> None:
        self._volatile = [(i, e) for i, e in self._volatile if i < index]

    async def sync(self) -> None:
        self.sync_blocking()

    def sync_blocking(self) -> None:
        self._durable = list(self._volatile)

    async def save_snapshot(self, snapshot: Snapshot, log: Log) -> None:
        self._snapshot = snapshot
        self._durable = _numbered(log)
        self._volatile = list(self._durable)

    def raft_state_size(self) -> int:
        entries = sum(
            _RECORD_HEADER.size + _ENTRY_HEAD.size + len(e.command.encode())
            for _, e in self._durable
        )
        return len(encode_hard_state(self._hard_state)) + entries

    def snapshot_size(self) -> int:
        return len(self._snapshot.data) if self._snapshot else 0

    def crashed(self) -> MemoryStorage:
        """The storage a restarted node finds: the durable state only."""
        return MemoryStorage(self._hard_state, self._snapshot, self._durable)


def _numbered(log: Log) -> list[tuple[int, Entry]]:
    return [(log.snapshot_index + 1 + i, entry) for i, entry in enumerate(log.entries)]
