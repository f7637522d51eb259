"""Durable Raft state: hard state (term, vote), the log, and the latest snapshot.

Two implementations of one interface:

- :class:`FileStorage`, on disk in a directory:
  ``hardstate`` and ``snapshot`` are replaced atomically through :class:`Persister`;
  ``log`` is append-only: a 28-byte header (magic, the index and term of the snapshot the log
  continues from — its *base* — and a CRC-32 of the header) written when the file is created,
  then one record per entry: ``u32 length, u32 crc32, payload`` with payload
  ``u64 index, u64 term, command (UTF-8)``. The log file is only ever created or replaced
  whole by an atomic rename, so its header is never torn. Appending costs O(entry), and
  ``sync`` (one fsync, in a worker thread) or ``sync_blocking`` (the same fsync on the calling
  thread) makes everything appended so far durable: callers batch appends and sync once
  (group commit).
- :class:`MemoryStorage`, for tests on virtual time: the same rules with nothing on disk;
  :meth:`MemoryStorage.crashed` gives what a restart would find (only synced data survives).

What ``FileStorage.load`` accepts, and what it refuses:
- A torn tail — a damaged last record with no valid record anywhere after it, the normal
  result of a crash during an append — is cut, with a warning naming the file, the offset and
  the bytes cut.
- Anything else raises :class:`~trioraft.StorageCorrupt` with one line,
  ``<path>: offset <n>: <what is wrong>; <what to do>`` (no offset part where none applies):
  a damaged record followed by a valid one (found by scanning forward for a record with a
  plausible length and index and a matching CRC), a log file whose records end before the
  sync mark (records lost after they were synced, and perhaps acknowledged, whether the cut
  fell on a record boundary or inside a record), a log whose header is missing or damaged,
  records not consecutive from the base, a log missing beside a hard state or snapshot, a
  hard state missing beside a non-empty log or a snapshot, a snapshot missing or older than
  the log's base (a gap), and any blob failing its checksum. In doubt it refuses: if a crash
  wrote back a later page of an unsynced batch but not an earlier one, load refuses rather
  than guess that the damage is unsynced data (an operator can cut the tail by hand).
- Log records that overlap or conflict with a snapshot newer than the log's base are the
  result of a crash between the snapshot save and the log rewrite: :func:`normalize` drops
  them and the log is rewritten (not corruption).

The ``synced`` file (the *sync mark*) holds the index of the last log record known to be
durable (``u64 index, u32 crc32`` of it), so that a log that lost synced records is told
from one that never had them: a cut at a record boundary leaves a well-formed, shorter log,
and a cut in the middle of a record looks like a torn tail. After each fsync of the log the
mark is raised in place, without an fsync of its own (a mark lost by a power failure is
only lower, which is safe); before the log drops records on purpose (a follower's conflicting
entries, a rewrite that ends earlier) it is lowered, durably. ``load`` refuses a log file
whose records end before the mark, and reads a missing mark as 0 (directories written before
it was kept).

The ``snapshot`` file's content is ``TRSNAP02``, ``u64 index, u64 term``, ``u32 length``
and that many bytes of the cluster configuration as of ``index`` (JSON), then the
application's data. A snapshot without a configuration (written before configurations were
kept, or restored from a backup) has no magic: ``u64 index, u64 term``, then the data; the
static configuration the node is given at start applies. The magic, read as an index,
would be about 1.4e16: never a real one.

A snapshot arriving from the leader in chunks (:mod:`trioraft.raft.transfer`) is written
to ``snapshot.incoming`` (:meth:`FileStorage.open_incoming`), never fsynced nor read at
start: opening the storage deletes one a crash left; once complete and checked, the
snapshot is saved through ``save_snapshot`` like any other.

Invariants:
- The sync mark never exceeds the last record durable in the log file (it is raised only
  after an fsync that covered that record, and lowered durably before records are dropped).
- Calls that touch the log are made one at a time (a ``RaftNode`` holds its lock across
  them, ``sync`` included): the mark ``sync`` raises is the last record written before it.
- Nothing appended is durable until ``sync`` or ``sync_blocking`` returns;
  ``save_hard_state`` and ``save_snapshot`` are durable when they return; what ``load``
  returns is durable (it fsyncs the log and the directory once).
- ``save_snapshot`` makes the snapshot durable first (``save_snapshot_file``), then replaces
  the log with the compacted one (``compact_log``). The two may be called apart, other
  writes between them (a node's own snapshot is written without its lock): the log then
  still holds the snapshot's prefix, which ``load`` drops. A snapshot file is never
  replaced by an older one: ``save_snapshot_file`` of an index at or before the saved
  snapshot's writes nothing (else the log, compacted past it, would start after it).
- A failed write or fsync raises its OSError, and no bookkeeping moves before a write
  succeeds; after one failure every later write raises too (after a failed fsync the page
  cache can no longer be trusted): reopen the storage (restart the node) to go on.
- Disk writes run to completion even if the caller is cancelled (threads are not abandoned).
- Permissions: the data directory is created 0700 and every file 0600; files found with
  looser modes are tightened when the storage is opened. An existing directory's mode is left
  as it is (it may be a mount point or shared on purpose), with a warning if other users can
  reach into it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import stat
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from .._errors import DataDirectoryConflict, StorageCorrupt
from .._logging import logger
from .log import Entry, Log
from .membership import Configuration, decode_configuration
from .persister import FILE_MODE, Persister, corrupt, fsync_dir, read_file

_RECORD_HEADER = struct.Struct("<II")  # payload length, crc32(payload)
_ENTRY_HEAD = struct.Struct("<QQ")  # index, term
_MIN_RECORD = _RECORD_HEADER.size + _ENTRY_HEAD.size
_SNAPSHOT_HEAD = struct.Struct("<QQ")  # last included index, term
_SNAPSHOT_MAGIC = b"TRSNAP02"
_SNAPSHOT_CONFIGURATION = struct.Struct("<I")  # the configuration's length
_LOG_MAGIC = b"TRLOG001"
_LOG_HEAD = struct.Struct("<8sQQ")  # magic, base index, base term
_LOG_CRC = struct.Struct("<I")  # crc32 of the head
LOG_HEADER_SIZE = _LOG_HEAD.size + _LOG_CRC.size
#: The largest term: messages carry 64-bit signed integers.
MAX_TERM = 2**63 - 1
_MARK = struct.Struct("<QI")  # the sync mark: index, crc32 of the index's 8 bytes
_MARK_INDEX = struct.Struct("<Q")
#: The sync mark's file (see the module docstring).
SYNC_MARK = "synced"
DIRECTORY_MODE = 0o700
#: Where a snapshot arriving in chunks from the leader is written until it is complete.
INCOMING_SNAPSHOT = "snapshot.incoming"
_FILE_NAMES = (
    "log",
    "log.tmp",
    "hardstate",
    "hardstate.tmp",
    "snapshot",
    "snapshot.tmp",
    INCOMING_SNAPSHOT,
    "lock",
    "owner",
    SYNC_MARK,
)

#: The operations a ``fault`` hook sees, each before its write (``incoming``: a chunk of a
#: snapshot arriving from the leader).
FAULT_OPERATIONS = ("append", "truncate", "sync", "hardstate", "snapshot", "rewrite", "incoming")


@dataclass(frozen=True)
class HardState:
    term: int = 0
    voted_for: str | None = None


@dataclass(frozen=True)
class Snapshot:
    index: int
    term: int
    data: bytes
    #: The cluster configuration as of ``index``; ``None`` in a snapshot that predates
    #: configurations (the static peers given at start apply).
    configuration: Configuration | None = None


@dataclass
class Loaded:
    """What a node finds when it starts."""

    hard_state: HardState
    snapshot: Snapshot | None
    log: Log


class IncomingSnapshot(Protocol):
    """A snapshot arriving in chunks, kept apart from the durable state until complete
    (see :mod:`trioraft.raft.transfer`): nothing in it is durable or read at start."""

    async def write(self, data: bytes) -> None:
        """Append ``data``; raises OSError if the write fails."""
        ...

    async def read(self) -> bytes:
        """Everything written so far."""
        ...

    def discard(self) -> None:
        """Drop what was written (idempotent)."""
        ...

    def close(self) -> None:
        """Stop writing but leave what was written, as a crash would (idempotent)."""
        ...


class Storage(Protocol):
    def load(self) -> Loaded: ...

    async def save_hard_state(self, state: HardState) -> None: ...

    def append(self, first_index: int, entries: list[Entry]) -> None: ...

    def truncate_from(self, index: int) -> None: ...

    async def sync(self) -> None: ...

    def sync_blocking(self) -> None: ...

    async def save_snapshot(self, snapshot: Snapshot, log: Log) -> None: ...

    async def save_snapshot_file(self, snapshot: Snapshot) -> bool: ...

    async def compact_log(self, log: Log) -> None: ...

    def raft_state_size(self) -> int: ...

    def log_bytes_through(self, index: int) -> int: ...

    def snapshot_size(self) -> int: ...

    def open_incoming(self) -> IncomingSnapshot: ...


#: ``fault(operation, nbytes)`` is called before each write and may raise OSError (a test
#: seam); ``operation`` is one of :data:`FAULT_OPERATIONS`.
Fault = Callable[[str, int], None]


def encode_record(index: int, entry: Entry) -> bytes:
    payload = _ENTRY_HEAD.pack(index, entry.term) + entry.command.encode()
    return _RECORD_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def encode_log_header(base_index: int, base_term: int) -> bytes:
    head = _LOG_HEAD.pack(_LOG_MAGIC, base_index, base_term)
    return head + _LOG_CRC.pack(zlib.crc32(head))


@dataclass
class ParsedLog:
    """A log file as :func:`parse_log` read it: records ``base_index + 1 ..``, consecutive."""

    base_index: int
    base_term: int
    records: list[tuple[int, Entry]]
    offsets: list[int]  # the file offset of each record
    end: int  # where the valid records end: a torn tail, if any, runs from here
    damage: str = ""  # what is wrong at ``end`` if the tail is torn

    @property
    def last_index(self) -> int:
        """The index of the last valid record (the base's if there is none)."""
        return self.records[-1][0] if self.records else self.base_index


def parse_log(raw: bytes, path: str) -> ParsedLog:
    """Parse a log file without changing it; raise StorageCorrupt for anything but a torn
    tail (see the module docstring)."""
    base_index, base_term = _parse_log_header(raw, path)
    parsed = ParsedLog(base_index, base_term, [], [], LOG_HEADER_SIZE)
    expected = base_index + 1
    pos = LOG_HEADER_SIZE
    while pos < len(raw):
        damage = _record_damage(raw, pos)
        if damage:
            later = _find_valid_record(raw, pos, expected - 1)
            if later is not None:
                raise corrupt(path, f"{damage}, but a valid record follows at offset {later}", pos)
            parsed.damage = damage
            break
        length = _RECORD_HEADER.unpack_from(raw, pos)[0]
        index, term = _ENTRY_HEAD.unpack_from(raw, pos + _RECORD_HEADER.size)
        if index != expected:
            raise corrupt(path, f"a record of index {index} where {expected} was expected", pos)
        end = pos + _RECORD_HEADER.size + length
        try:
            command = raw[pos + _MIN_RECORD : end].decode()
        except UnicodeDecodeError:
            raise corrupt(path, f"the command of index {index} is not UTF-8", pos) from None
        try:
            decode_configuration(command)  # (None for any other command)
        except ValueError as exc:
            what = f"the configuration entry of index {index}: {exc}"
            raise corrupt(path, what, pos) from None
        parsed.records.append((index, Entry(term, command)))
        parsed.offsets.append(pos)
        expected += 1
        pos = parsed.end = end
    return parsed


def _parse_log_header(raw: bytes, path: str) -> tuple[int, int]:
    if raw[: len(_LOG_MAGIC)] != _LOG_MAGIC:
        if not raw:
            what = "an empty file, without the log header"
        elif not _record_damage(raw, 0):
            what = "a log without a header, written by an older trioraft"
        else:
            what = "the log header is missing (overwritten, or not a trioraft log)"
        raise corrupt(path, what, 0)
    if len(raw) < LOG_HEADER_SIZE:
        raise corrupt(
            path, f"the log header is cut short ({len(raw)} of {LOG_HEADER_SIZE} bytes)", 0
        )
    (crc,) = _LOG_CRC.unpack_from(raw, _LOG_HEAD.size)
    if zlib.crc32(raw[: _LOG_HEAD.size]) != crc:
        raise corrupt(path, "the log header fails its checksum", 0)
    _, base_index, base_term = _LOG_HEAD.unpack_from(raw)
    return base_index, base_term


def _record_damage(raw: bytes, pos: int) -> str:
    """What is wrong with the framing or checksum of the record at ``pos`` ("" if nothing):
    the damage a torn append can leave."""
    if pos + _RECORD_HEADER.size > len(raw):
        return f"{len(raw) - pos} bytes, shorter than a record header"
    length, crc = _RECORD_HEADER.unpack_from(raw, pos)
    if length < _ENTRY_HEAD.size:
        return f"a record length of {length}, shorter than an index and a term"
    start = pos + _RECORD_HEADER.size
    if start + length > len(raw):
        return f"a record of {length} bytes running past the end of the file"
    if zlib.crc32(memoryview(raw)[start : start + length]) != crc:
        return "a record failing its checksum"
    return ""


def _find_valid_record(raw: bytes, damaged: int, last_index: int) -> int | None:
    """The first offset after ``damaged`` where a record that could follow ``last_index``
    begins: a plausible length, an index after ``last_index`` (at most one per
    ``_MIN_RECORD`` bytes since the damage) and a matching checksum. The index test makes
    random bytes fail before any checksum is computed."""
    view = memoryview(raw)
    for pos in range(damaged + 1, len(raw) - _MIN_RECORD + 1):
        length, crc = _RECORD_HEADER.unpack_from(raw, pos)
        start = pos + _RECORD_HEADER.size
        if not _ENTRY_HEAD.size <= length <= len(raw) - start:
            continue
        index = _ENTRY_HEAD.unpack_from(raw, start)[0]
        if not last_index < index <= last_index + 1 + (pos - damaged) // _MIN_RECORD:
            continue
        if zlib.crc32(view[start : start + length]) == crc:
            return pos
    return None


def encode_sync_mark(index: int) -> bytes:
    return _MARK.pack(index, zlib.crc32(_MARK_INDEX.pack(index)))


def decode_sync_mark(raw: bytes, where: str) -> int:
    """The index a sync mark file holds (0 for an absent one: ``b""``)."""
    if not raw.strip(b"\0"):
        return 0  # (a file created just before a power failure may come back empty or zeroed)
    if len(raw) != _MARK.size:
        raise corrupt(where, f"{len(raw)} bytes, not the {_MARK.size} of a sync mark", 0)
    index, crc = _MARK.unpack(raw)
    if zlib.crc32(raw[: _MARK_INDEX.size]) != crc:
        raise corrupt(where, "the sync mark fails its checksum", 0)
    return index


def read_sync_mark(path: Path) -> int:
    """The sync mark kept at ``path`` (0 if there is none)."""
    try:
        return decode_sync_mark(read_file(path), str(path))
    except FileNotFoundError:
        return 0


def check_log_present(
    log_path: Path, has_hard_state: bool, snapshot: Snapshot | None, mark: int
) -> None:
    """For a data directory without a log: raise StorageCorrupt if anything says it had one
    (a hard state, a snapshot or a sync mark)."""
    if has_hard_state or snapshot is not None or mark:
        found = "a hard state" if has_hard_state else "a snapshot" if snapshot else "a sync mark"
        raise corrupt(log_path, f"missing beside {found}")


def disagreements(
    directory: Path, has_hard_state: bool, snapshot: Snapshot | None, parsed: ParsedLog
) -> list[StorageCorrupt]:
    """Where a data directory's three files disagree (a hard state missing beside a log or a
    snapshot, a snapshot missing or not the one the log continues from), for ``load`` to
    refuse and ``trioraft inspect`` to report."""
    found: list[StorageCorrupt] = []
    base, log_path = parsed.base_index, directory / "log"
    if not has_hard_state and (parsed.records or snapshot is not None or base > 0):
        if parsed.records:
            what = f"{len(parsed.records)} log entries"
        else:
            what = "a snapshot" if snapshot else f"a log continuing from index {base}"
        why = f"missing beside {what} (without it this node could vote twice in a term)"
        found.append(corrupt(directory / "hardstate", why))
    if snapshot is None and base > 0:
        why = f"missing, but {log_path} continues from index {base}"
        found.append(corrupt(directory / "snapshot", why))
    if snapshot is not None and (
        snapshot.index < base or (snapshot.index == base and snapshot.term != parsed.base_term)
    ):
        why = (
            f"the snapshot at index {snapshot.index} (term {snapshot.term}) is not the one "
            f"{log_path} continues from (index {base}, term {parsed.base_term})"
        )
        found.append(corrupt(directory / "snapshot", why))
    return found


def check_sync_mark(parsed: ParsedLog, mark: int, log_path: str, mark_path: str) -> None:
    """Raise StorageCorrupt if the log file's valid records end before the sync mark."""
    if parsed.last_index < mark:
        raise corrupt(
            log_path,
            f"the records end at index {parsed.last_index}, but this node had synced them "
            f"through index {mark} ({mark_path}): synced entries, perhaps acknowledged, "
            "are lost",
            parsed.end,
        )


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
    if snapshot.configuration is None:  # the format older versions read too
        return _SNAPSHOT_HEAD.pack(snapshot.index, snapshot.term) + snapshot.data
    configuration = json.dumps(snapshot.configuration.to_json()).encode()
    return b"".join(
        (
            _SNAPSHOT_MAGIC,
            _SNAPSHOT_HEAD.pack(snapshot.index, snapshot.term),
            _SNAPSHOT_CONFIGURATION.pack(len(configuration)),
            configuration,
            snapshot.data,
        )
    )


def decode_snapshot(raw: bytes, where: str = "snapshot") -> Snapshot | None:
    if not raw:
        return None
    if not raw.startswith(_SNAPSHOT_MAGIC):  # written before configurations were kept
        if len(raw) < _SNAPSHOT_HEAD.size:
            raise corrupt(
                where, f"{len(raw)} bytes of content, shorter than the snapshot's index and term"
            )
        index, term = _SNAPSHOT_HEAD.unpack_from(raw)
        return Snapshot(index, term, raw[_SNAPSHOT_HEAD.size :])
    start = len(_SNAPSHOT_MAGIC) + _SNAPSHOT_HEAD.size + _SNAPSHOT_CONFIGURATION.size
    if len(raw) < start:
        raise corrupt(where, f"{len(raw)} bytes of content, shorter than the snapshot's header")
    index, term = _SNAPSHOT_HEAD.unpack_from(raw, len(_SNAPSHOT_MAGIC))
    (length,) = _SNAPSHOT_CONFIGURATION.unpack_from(raw, start - _SNAPSHOT_CONFIGURATION.size)
    if len(raw) < start + length:
        raise corrupt(where, f"the configuration of {length} bytes runs past the content")
    configuration = None
    if length:
        try:
            configuration = Configuration.from_json(json.loads(raw[start : start + length]))
        except (ValueError, RecursionError) as exc:
            raise corrupt(where, f"the configuration is not valid: {exc}") from None
    return Snapshot(index, term, raw[start + length :], configuration)


def encode_hard_state(state: HardState) -> bytes:
    return json.dumps({"term": state.term, "voted_for": state.voted_for}).encode()


def decode_hard_state(raw: bytes, where: str = "hardstate") -> HardState:
    if not raw:
        return HardState()
    try:
        data = json.loads(raw)
        term, voted_for = data["term"], data["voted_for"]
    except (ValueError, TypeError, KeyError, RecursionError):
        raise corrupt(where, "the content is not a hard state") from None
    if type(term) is not int or not 0 <= term <= MAX_TERM:
        raise corrupt(where, f"the term is not one a peer would take (0 to {MAX_TERM})")
    if not (voted_for is None or type(voted_for) is str):
        raise corrupt(where, "the content is not a hard state")
    return HardState(term, voted_for)


class FileStorage:
    """Raft state in ``directory`` (created 0700 if needed). Call :meth:`close` when done.

    ``after_step(step)`` is a test hook called after each step of a snapshot save;
    ``fault(operation, nbytes)`` is a test seam called before each write (see :data:`Fault`):
    ``nbytes`` is the bytes the operation writes (for ``truncate`` the bytes it cuts, for
    ``sync`` the size of the log it flushes). It may run in a worker thread.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        after_step: Callable[[str], None] | None = None,
        fault: Fault | None = None,
        owner: str | None = None,
    ) -> None:
        self.directory = Path(directory)
        _prepare_directory(self.directory)
        self._lock_fd = -1 if owner is None else _claim(self.directory, owner)
        self._after_step = after_step or (lambda step: None)
        self._fault = fault
        self._hard_state = Persister(self.directory / "hardstate")
        self._snapshot = Persister(
            self.directory / "snapshot",
            after_step=lambda step: self._after_step(f"snapshot-{step}"),
        )
        self._snapshot_saves = trio.Lock()
        self._saved_snapshot_index = 0  # the snapshot file's (known once loaded)
        self._log_path = self.directory / "log"
        self._fd = -1
        self._mark_path = self.directory / SYNC_MARK
        self._mark_fd = -1
        self._mark = 0  # the sync mark as last written (or read)
        self._offsets: list[int] = []  # file offset of the record of each entry in the log
        self._first_index = 1  # index of the first record in the file
        self._log_end = LOG_HEADER_SIZE  # the log file's size as far as writes succeeded
        self._failure: OSError | None = None  # the first write that failed
        self._incoming_path = self.directory / INCOMING_SNAPSHOT
        # A transfer cut short by a crash or a stop is never resumed: the leader starts over.
        self._incoming_path.unlink(missing_ok=True)

    def load(self) -> Loaded:
        """The durable state; raises StorageCorrupt (one line) if it cannot be trusted."""
        hard_raw = self._hard_state.read()
        hard_state = decode_hard_state(hard_raw, str(self._hard_state.path))
        snapshot = decode_snapshot(self._snapshot.read(), str(self._snapshot.path))
        self._saved_snapshot_index = 0 if snapshot is None else snapshot.index
        self._mark = read_sync_mark(self._mark_path)
        try:
            raw = read_file(self._log_path)
        except FileNotFoundError:
            raw = None
        if raw is None:
            check_log_present(self._log_path, bool(hard_raw), snapshot, self._mark)
            log = Log()
            self._rewrite(log)
            return Loaded(hard_state, None, log)
        parsed = parse_log(raw, str(self._log_path))
        disagreeing = disagreements(self.directory, bool(hard_raw), snapshot, parsed)
        if disagreeing:
            raise disagreeing[0]
        check_sync_mark(parsed, self._mark, str(self._log_path), str(self._mark_path))
        log, dropped = normalize(snapshot, parsed.records)
        torn = parsed.end < len(raw)
        if torn:
            logger.warning(
                "%s: offset %d: cut %d bytes of torn tail (%s), left by a crash during an append",
                self._log_path,
                parsed.end,
                len(raw) - parsed.end,
                parsed.damage,
            )
        if dropped or (snapshot is not None and snapshot.index != parsed.base_index):
            self._rewrite(log)  # a crash came between the snapshot save and the log rewrite
        else:
            if torn:
                self._cut(parsed.end, len(raw))
            self._open_log(log.snapshot_index + 1, parsed.offsets)
            self._log_end = parsed.end
            os.fsync(self._fd)  # what a killed process appended but never synced is durable now
            self._raise_mark(self._file_last_index)
        fsync_dir(self.directory)  # and so is a rename whose directory fsync a crash skipped
        return Loaded(hard_state, snapshot, log)

    def _cut(self, end: int, size: int) -> None:
        if self._fault is not None:
            self._fault("truncate", size - end)
        fd = os.open(self._log_path, os.O_WRONLY)
        try:
            os.ftruncate(fd, end)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _open_log(self, first_index: int, offsets: list[int]) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND)
        self._first_index = first_index
        self._offsets = offsets

    def _rewrite(self, log: Log) -> None:
        """Replace the log file by one holding exactly ``log``'s entries (atomically); the
        sync mark follows it."""
        tmp = self._log_path.with_name("log.tmp")
        offsets, pos = [], LOG_HEADER_SIZE
        chunks = [encode_log_header(log.snapshot_index, log.snapshot_term)]
        for i, entry in enumerate(log.entries):
            record = encode_record(log.snapshot_index + 1 + i, entry)
            offsets.append(pos)
            pos += len(record)
            chunks.append(record)
        if self._fault is not None:
            self._fault("rewrite", pos)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            _write_all(fd, b"".join(chunks))
            os.fsync(fd)
        finally:
            os.close(fd)
        self._after_step("log-written")
        if log.last_index < self._mark:
            self._set_mark(log.last_index, durable=True)  # before the log may end earlier
        os.replace(tmp, self._log_path)
        self._after_step("log-renamed")
        fsync_dir(self.directory)
        self._open_log(log.snapshot_index + 1, offsets)
        self._log_end = pos
        self._raise_mark(log.last_index)

    @property
    def _file_last_index(self) -> int:
        """The index of the log file's last record (its base's if it has none)."""
        return self._first_index + len(self._offsets) - 1

    def _raise_mark(self, last: int) -> None:
        """After an fsync that covered the log file through record ``last``: the sync mark
        moves up to it."""
        if last > self._mark:
            self._set_mark(last, durable=False)

    def _set_mark(self, index: int, *, durable: bool) -> None:
        """Write the sync mark in place; ``durable``: and fsync it (a mark lowered must be
        on disk before the log drops records; one raised may be lost, which is safe)."""
        if self._mark_fd < 0:
            self._mark_fd = os.open(self._mark_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        os.pwrite(self._mark_fd, encode_sync_mark(index), 0)
        if durable:
            os.fsync(self._mark_fd)
        self._mark = index

    def _write(self, operation: str | None, nbytes: int = 0) -> _Write:
        """Around one write: the fault seam first (``operation``, if any), and an OSError
        fails the storage before it is raised (see the module docstring)."""
        return _Write(self, operation, nbytes)

    async def save_hard_state(self, state: HardState) -> None:
        self._refuse_if_failed()
        data = encode_hard_state(state)

        def save() -> None:
            with self._write("hardstate", len(data)):
                self._hard_state.save(data)

        await trio.to_thread.run_sync(save)

    def append(self, first_index: int, entries: list[Entry]) -> None:
        assert first_index == self._first_index + len(self._offsets), "appends must be contiguous"
        self._refuse_if_failed()
        offsets, pos, chunks = [], self._log_end, []
        for i, entry in enumerate(entries):
            record = encode_record(first_index + i, entry)
            offsets.append(pos)
            pos += len(record)
            chunks.append(record)
        data = b"".join(chunks)
        with self._write("append", len(data)):
            _write_all(self._fd, data)
        self._offsets += offsets
        self._log_end = pos

    def truncate_from(self, index: int) -> None:
        self._refuse_if_failed()
        keep = index - self._first_index
        if keep < len(self._offsets):
            end = self._offsets[keep]
            with self._write("truncate", self._log_end - end):
                if index - 1 < self._mark:
                    self._set_mark(index - 1, durable=True)
                os.ftruncate(self._fd, end)
            self._log_end = end
            del self._offsets[keep:]

    async def sync(self) -> None:
        self._refuse_if_failed()
        last = self._file_last_index
        with self._write("sync", self._log_end):
            await trio.to_thread.run_sync(os.fsync, self._fd)
            self._raise_mark(last)

    def sync_blocking(self) -> None:
        self._refuse_if_failed()
        with self._write("sync", self._log_end):
            os.fsync(self._fd)
            self._raise_mark(self._file_last_index)

    async def save_snapshot(self, snapshot: Snapshot, log: Log) -> None:
        await self.save_snapshot_file(snapshot)  # durable before the log changes
        await self.compact_log(log)

    async def save_snapshot_file(self, snapshot: Snapshot) -> bool:
        """Make ``snapshot`` durable, unless one at or past its index already is (then
        nothing is written: ``False``). One save at a time."""
        self._refuse_if_failed()
        async with self._snapshot_saves:
            if snapshot.index <= self._saved_snapshot_index:
                return False
            data = encode_snapshot(snapshot)

            def save() -> None:
                with self._write("snapshot", len(data)):
                    self._snapshot.save(data)

            await trio.to_thread.run_sync(save)
            self._saved_snapshot_index = snapshot.index
            return True

    async def compact_log(self, log: Log) -> None:
        """Replace the log with ``log`` (compacted at a saved snapshot), durably."""
        self._refuse_if_failed()

        def rewrite() -> None:
            with self._write(None):
                self._rewrite(log)

        await trio.to_thread.run_sync(rewrite)

    def _refuse_if_failed(self) -> None:
        if self._failure is not None:
            raise OSError(
                errno.EIO,
                f"{self.directory}: an earlier write failed ({self._failure}); what reached "
                "the disk is unknown, so nothing more is written until the storage is reopened",
            ) from self._failure

    def raft_state_size(self) -> int:
        return self._hard_state.size() + self._log_end - LOG_HEADER_SIZE

    def log_bytes_through(self, index: int) -> int:
        """The bytes of the log's records up to ``index``: what compacting there frees."""
        records = index - self._first_index + 1
        if records <= 0:
            return 0
        end = self._offsets[records] if records < len(self._offsets) else self._log_end
        return end - LOG_HEADER_SIZE

    def snapshot_size(self) -> int:
        return self._snapshot.size()

    def open_incoming(self) -> IncomingSnapshot:
        """A new, empty ``snapshot.incoming`` (replacing any): written without fsync, as
        the snapshot is saved durably through :meth:`save_snapshot` once complete."""
        self._refuse_if_failed()
        return _IncomingFile(self._incoming_path, self._fault)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._mark_fd >= 0:
            os.close(self._mark_fd)
            self._mark_fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = -1


class _IncomingFile:
    """:class:`IncomingSnapshot` in a file of the data directory (mode 0600). A write (in a
    worker thread) and closing the descriptor exclude each other, so a write never lands
    in a file that reused a closed descriptor's number."""

    def __init__(self, path: Path, fault: Fault | None) -> None:
        self._path = path
        self._fault = fault
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, FILE_MODE)
        self._fd_lock = threading.Lock()

    async def write(self, data: bytes) -> None:
        if self._fault is not None:
            self._fault("incoming", len(data))
        await trio.to_thread.run_sync(self._write, data)

    def _write(self, data: bytes) -> None:
        with self._fd_lock:
            if self._fd < 0:
                raise OSError(errno.EBADF, f"{self._path}: closed")
            _write_all(self._fd, data)

    async def read(self) -> bytes:
        return await trio.to_thread.run_sync(self._path.read_bytes)

    def discard(self) -> None:
        if self._fd >= 0:
            self.close()
            self._path.unlink(missing_ok=True)

    def close(self) -> None:
        with self._fd_lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _claim(directory: Path, owner: str) -> int:
    """Lock ``directory`` for this process and check (or record) which node it belongs to;
    the locked descriptor. Two processes sharing one data directory, or a node started on
    another node's, would count one disk as two replicas: refuse both."""
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirectoryConflict(
            f"{directory}: in use by another process; give each node a data directory of its own"
        ) from None
    path = directory / "owner"
    try:
        recorded = read_file(path).decode("utf-8", errors="replace").strip()
    except FileNotFoundError:
        owner_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            _write_all(owner_fd, owner.encode() + b"\n")
            os.fsync(owner_fd)
        finally:
            os.close(owner_fd)
        fsync_dir(directory)
        recorded = owner
    if recorded != owner:
        os.close(fd)
        raise DataDirectoryConflict(
            f"{directory}: the data directory of node {recorded!r}, not of node {owner!r}; "
            "start each node on its own data directory"
        )
    return fd


class _Write:
    """``FileStorage._write``'s context manager. A class, not a generator: a put enters a
    few, and a generator-based one costs four times as much."""

    __slots__ = ("_nbytes", "_operation", "_storage")

    def __init__(self, storage: FileStorage, operation: str | None, nbytes: int) -> None:
        self._storage = storage
        self._operation = operation
        self._nbytes = nbytes

    def __enter__(self) -> None:
        fault = self._storage._fault
        if fault is not None and self._operation is not None:
            try:
                fault(self._operation, self._nbytes)
            except OSError as exc:
                self._storage._failure = exc
                raise

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        if isinstance(exc, OSError):
            self._storage._failure = exc


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _prepare_directory(directory: Path) -> None:
    """Create ``directory`` 0700, or warn if an existing one lets other users in; tighten the
    data files in it to 0600."""
    try:
        directory.mkdir(mode=DIRECTORY_MODE, parents=True)
        os.chmod(directory, DIRECTORY_MODE)  # exactly 0700, whatever the umask
    except FileExistsError:
        mode = stat.S_IMODE(directory.stat().st_mode)
        if mode & 0o077:
            logger.warning(
                "%s: the data directory has mode %s, open to other users; its files are 0600, "
                "but chmod 700 it so that they cannot see or replace them",
                directory,
                oct(mode),
            )
    for name in _FILE_NAMES:
        path = directory / name
        try:
            if stat.S_IMODE(path.stat().st_mode) & 0o077:
                os.chmod(path, FILE_MODE)
        except FileNotFoundError:
            pass


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
        await self.save_snapshot_file(snapshot)
        await self.compact_log(log)

    async def save_snapshot_file(self, snapshot: Snapshot) -> bool:
        if self._snapshot is not None and snapshot.index <= self._snapshot.index:
            return False
        self._snapshot = snapshot
        return True

    async def compact_log(self, log: Log) -> None:
        self._durable = _numbered(log)
        self._volatile = list(self._durable)

    def raft_state_size(self) -> int:
        return len(encode_hard_state(self._hard_state)) + self.log_bytes_through(math.inf)

    def log_bytes_through(self, index: float) -> int:
        return sum(
            _RECORD_HEADER.size + _ENTRY_HEAD.size + len(e.command.encode())
            for i, e in self._durable
            if i <= index
        )

    def snapshot_size(self) -> int:
        return len(self._snapshot.data) if self._snapshot else 0

    def open_incoming(self) -> IncomingSnapshot:
        return _IncomingMemory()

    def crashed(self) -> MemoryStorage:
        """The storage a restarted node finds: the durable state only."""
        return MemoryStorage(self._hard_state, self._snapshot, self._durable)


class _IncomingMemory:
    """:class:`IncomingSnapshot` in memory: a crash loses it, as it does a partial file."""

    def __init__(self) -> None:
        self._data = bytearray()

    async def write(self, data: bytes) -> None:
        self._data += data

    async def read(self) -> bytes:
        return bytes(self._data)

    def discard(self) -> None:
        self._data = bytearray()

    def close(self) -> None:
        pass


def _numbered(log: Log) -> list[tuple[int, Entry]]:
    return [(log.snapshot_index + 1 + i, entry) for i, entry in enumerate(log.entries)]
