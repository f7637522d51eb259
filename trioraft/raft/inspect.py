"""Look inside a node's data directory without starting it, and without writing a byte.

:func:`inspect_data_dir` reads ``hardstate``, ``snapshot`` and ``log`` with the storage
layer's own parsers (:func:`~trioraft.raft.persister.decode_blob`,
:func:`~trioraft.raft.storage.parse_log`, ...), so it verifies exactly what
:meth:`FileStorage.load <trioraft.FileStorage.load>` verifies: every checksum, the
framing and order of the log's records, and that the three files agree. Where ``load``
would cut a torn tail and fsync, this only reports it.

Verdicts, each with the exit status ``trioraft inspect`` gives it:

- ``ok`` (0): everything verifies;
- ``torn`` (3): a torn log tail, which a starting node cuts (and logs) before it runs;
- ``corrupt`` (1): anything a starting node refuses (it names the file, the offset and
  what to do, as ``load`` does); the other files are still reported where they can be read.

Invariants: files are only ever opened for reading; nothing here fsyncs, renames or creates.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from .._errors import StorageCorrupt
from .log import Entry
from .persister import corrupt, decode_blob, read_file
from .storage import (
    SYNC_MARK,
    HardState,
    Snapshot,
    check_log_present,
    check_sync_mark,
    decode_hard_state,
    decode_snapshot,
    disagreements,
    normalize,
    parse_log,
    read_sync_mark,
)

T = TypeVar("T")

#: What ``trioraft inspect`` exits with for each verdict.
EXIT_STATUS = {"ok": 0, "corrupt": 1, "torn": 3}

#: Files a crash in the middle of an atomic save may leave; never read by a node.
_TEMPORARY = ("log.tmp", "hardstate.tmp", "snapshot.tmp", "snapshot.incoming")


@dataclass
class LogReport:
    base_index: int
    base_term: int
    first_index: int  # of the records in the file (base_index + 1 if none)
    last_index: int  # base_index if none
    records: int
    first_term: int | None
    last_term: int | None
    file_bytes: int
    valid_bytes: int  # where the valid records end
    torn: str = ""  # what is wrong with the tail past ``valid_bytes``, if anything
    dropped_at_start: bool = False  # records a node drops: they overlap a newer snapshot
    synced_through: int = 0  # the sync mark: the records were durable up to this index


@dataclass
class Inspection:
    """What :func:`inspect_data_dir` found; ``problems`` are one-line messages."""

    directory: str
    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    snapshot_checked: bool = False  # the snapshot's data passed the application's check
    log: LogReport | None = None
    problems: list[str] = field(default_factory=list)
    temporary_files: list[str] = field(default_factory=list)
    entries: list[tuple[int, Entry]] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.problems:
            return "corrupt"
        if self.log is not None and self.log.torn:
            return "torn"
        return "ok"

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.verdict]


def inspect_data_dir(
    directory: str | os.PathLike[str],
    *,
    check_snapshot: Callable[[bytes], None] | None = None,
) -> Inspection:
    """Inspect ``directory`` (read-only). ``check_snapshot`` raises ``ValueError`` for
    snapshot data the application could not restore (``KVMachine.check_snapshot``)."""
    path = Path(directory)
    report = Inspection(str(path))
    if not path.is_dir():
        report.problems.append(f"{path}: not a directory")
        return report
    report.temporary_files = [name for name in _TEMPORARY if (path / name).exists()]
    hard_raw = _read_blob(path / "hardstate", report)
    if hard_raw is not None:
        where = str(path / "hardstate")
        report.hard_state = _guard(report, lambda: decode_hard_state(hard_raw, where))
    snap_raw = _read_blob(path / "snapshot", report)
    if snap_raw is not None:
        where = str(path / "snapshot")
        report.snapshot = _guard(report, lambda: decode_snapshot(snap_raw, where))
        if report.snapshot is not None and check_snapshot is not None:
            try:
                check_snapshot(report.snapshot.data)
                report.snapshot_checked = True
            except ValueError as exc:
                report.problems.append(
                    str(corrupt(path / "snapshot", f"the snapshot cannot be restored ({exc})"))
                )
    readable = hard_raw is not None and snap_raw is not None
    _inspect_log(path, report, has_hard_state=hard_raw != b"", check_files=readable)
    return report


def _inspect_log(
    path: Path, report: Inspection, *, has_hard_state: bool, check_files: bool
) -> None:
    """Parse the log; with ``check_files`` (the other two files were readable), check that
    the three files agree."""
    log_path, mark_path = path / "log", path / SYNC_MARK
    mark = _guard(report, lambda: read_sync_mark(mark_path))
    try:
        raw = read_file(log_path)
    except FileNotFoundError:
        if check_files:
            present = (log_path, has_hard_state, report.snapshot, mark or 0)
            _guard(report, lambda: check_log_present(*present))
        return
    except StorageCorrupt as exc:
        report.problems.append(str(exc))
        return
    try:
        parsed = parse_log(raw, str(log_path))
    except StorageCorrupt as exc:
        report.problems.append(str(exc))
        return
    records = parsed.records
    report.entries = records
    report.log = LogReport(
        base_index=parsed.base_index,
        base_term=parsed.base_term,
        first_index=records[0][0] if records else parsed.base_index + 1,
        last_index=records[-1][0] if records else parsed.base_index,
        records=len(records),
        first_term=records[0][1].term if records else None,
        last_term=records[-1][1].term if records else None,
        file_bytes=len(raw),
        valid_bytes=parsed.end,
        torn=parsed.damage,
        synced_through=mark or 0,
    )
    if mark is not None:
        _guard(report, lambda: check_sync_mark(parsed, mark, str(log_path), str(mark_path)))
    if check_files:
        found = disagreements(path, has_hard_state, report.snapshot, parsed)
        report.problems += map(str, found)
    if not report.problems:
        _, report.log.dropped_at_start = normalize(report.snapshot, records)


def _read_blob(path: Path, report: Inspection) -> bytes | None:
    """The checked content of a blob file, ``b""`` if it is absent, ``None`` if damaged."""
    try:
        raw = _guard(report, lambda: read_file(path))
    except FileNotFoundError:
        return b""
    return None if raw is None else _guard(report, lambda: decode_blob(raw, str(path)))


def _guard(report: Inspection, read: Callable[[], T]) -> T | None:
    try:
        return read()
    except StorageCorrupt as exc:
        report.problems.append(str(exc))
        return None
