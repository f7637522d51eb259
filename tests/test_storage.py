"""Raft storage on disk: torn tails, damaged bytes, crashes during a snapshot save, restarts.

More refusals of damaged data, faults and permissions: test_storage_faults.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trioraft import StorageCorrupt
from trioraft.raft.log import Entry, Log
from trioraft.raft.persister import SAVE_STEPS
from trioraft.raft.storage import (
    LOG_HEADER_SIZE,
    FileStorage,
    HardState,
    MemoryStorage,
    Snapshot,
    encode_record,
)

ENTRIES = [Entry(1 + i // 3, f"command-{i}" * (1 + i % 4)) for i in range(12)]


async def written(
    directory: Path, entries: list[Entry] = ENTRIES, *, unsynced: int = 0
) -> FileStorage:
    """A storage holding ``entries`` and a hard state, left open; all synced but the last
    ``unsynced`` (appended after the last fsync, as a crash in an append finds them)."""
    storage = FileStorage(directory)
    storage.load()
    synced = len(entries) - unsynced
    storage.append(1, entries[:synced])
    await storage.sync()
    if unsynced:
        storage.append(synced + 1, entries[synced:])
    await storage.save_hard_state(HardState(4, "n2"))
    return storage


async def test_round_trip(tmp_path: Path) -> None:
    storage = await written(tmp_path)
    storage.close()
    loaded = FileStorage(tmp_path).load()
    assert loaded.hard_state == HardState(4, "n2")
    assert loaded.log.entries == ENTRIES and loaded.snapshot is None


async def test_truncate_then_append(tmp_path: Path) -> None:
    storage = await written(tmp_path)
    storage.truncate_from(5)
    storage.append(5, [Entry(9, "new")])
    await storage.sync()
    storage.close()
    assert FileStorage(tmp_path).load().log.entries == [*ENTRIES[:4], Entry(9, "new")]


def record_ends(entries: list[Entry] = ENTRIES) -> list[int]:
    """The file offset where the k-th record ends, for k = 0 .. len(entries)."""
    ends = [LOG_HEADER_SIZE]
    for i, entry in enumerate(entries):
        ends.append(ends[-1] + len(encode_record(i + 1, entry)))
    return ends


async def test_every_torn_tail_recovers_a_valid_prefix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = await written(tmp_path, unsynced=3)
    storage.close()
    raw = (tmp_path / "log").read_bytes()
    ends = record_ends()
    for cut in range(ends[-4], len(raw) + 1):
        (tmp_path / "log").write_bytes(raw[:cut])
        caplog.clear()
        loaded = FileStorage(tmp_path).load()
        whole = max(k for k, end in enumerate(ends) if end <= cut)
        assert loaded.log.entries == ENTRIES[:whole], f"cut at {cut}"
        assert (tmp_path / "log").stat().st_size == ends[whole]  # tail removed
        torn = f"offset {ends[whole]}: cut {cut - ends[whole]} bytes of torn tail"
        assert (torn in caplog.text) == (cut > ends[whole])


async def test_every_corrupt_byte_is_caught(tmp_path: Path) -> None:
    """A damaged byte anywhere is refused, except in the last record, where it looks exactly
    like a torn append (if it was never synced): that record alone is cut."""
    storage = await written(tmp_path, unsynced=1)
    storage.close()
    raw = (tmp_path / "log").read_bytes()
    ends = record_ends()
    for pos in range(len(raw)):
        damaged = bytearray(raw)
        damaged[pos] ^= 0x5A
        (tmp_path / "log").write_bytes(bytes(damaged))
        if pos >= ends[-2]:
            assert FileStorage(tmp_path).load().log.entries == ENTRIES[:-1], f"byte {pos}"
            continue
        with pytest.raises(StorageCorrupt) as refused:
            FileStorage(tmp_path).load()
        offset = max(end for end in [0, *ends] if end <= pos)  # the header, or a record
        assert str(refused.value).startswith(f"{tmp_path / 'log'}: offset {offset}: "), pos


async def test_append_costs_one_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = await written(tmp_path)
    sizes: list[int] = []
    real_write = os.write

    def spy(fd: int, data: bytes) -> int:
        sizes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spy)
    storage.append(13, [Entry(5, "x")])
    assert sizes == [len(encode_record(13, Entry(5, "x")))]
    storage.close()


SNAPSHOT_STEPS = [f"snapshot-{s}" for s in SAVE_STEPS] + ["log-written", "log-renamed"]


class Crash(Exception):
    pass


@pytest.mark.parametrize("step", SNAPSHOT_STEPS)
@pytest.mark.parametrize("keep_suffix", [True, False])
async def test_crash_during_snapshot_save(tmp_path: Path, step: str, keep_suffix: bool) -> None:
    """Install a snapshot at index 8: a crash after any step restarts into a consistent
    state, either the old log or the snapshot with the entries after it."""
    storage = await written(tmp_path)
    storage.close()

    def crash_at(name: str) -> None:
        if name == step:
            raise Crash(name)

    storage = FileStorage(tmp_path, after_step=crash_at)
    log = storage.load().log
    snap_term = ENTRIES[7].term if keep_suffix else 99  # 99: a history that conflicts
    log.compact(8, snap_term)
    with pytest.raises(Crash):
        await storage.save_snapshot(Snapshot(8, snap_term, b"state@8"), log)
    storage.close()
    loaded = FileStorage(tmp_path).load()
    if loaded.snapshot is None:
        assert loaded.log.entries == ENTRIES  # crashed before the snapshot was in place
    else:
        assert loaded.snapshot == Snapshot(8, snap_term, b"state@8")
        assert loaded.log.snapshot_index == 8
        assert loaded.log.entries == (ENTRIES[8:] if keep_suffix else [])
    again = FileStorage(tmp_path).load()  # and a second restart agrees
    assert (again.snapshot, again.log.entries) == (loaded.snapshot, loaded.log.entries)


async def test_memory_storage_loses_only_unsynced(tmp_path: Path) -> None:
    storage = MemoryStorage()
    storage.load()
    storage.append(1, ENTRIES[:5])
    await storage.sync()
    storage.append(6, ENTRIES[5:])
    await storage.save_hard_state(HardState(3, "a"))
    loaded = storage.crashed().load()
    assert loaded.log.entries == ENTRIES[:5] and loaded.hard_state == HardState(3, "a")


async def test_sizes(tmp_path: Path) -> None:
    storage = await written(tmp_path)
    expected = sum(len(encode_record(i + 1, e)) for i, e in enumerate(ENTRIES))
    assert storage.raft_state_size() == expected + len(b'{"term": 4, "voted_for": "n2"}')
    log = Log()
    log.append(ENTRIES)
    log.compact(12, ENTRIES[-1].term)
    await storage.save_snapshot(Snapshot(12, ENTRIES[-1].term, b"x" * 100), log)
    assert storage.snapshot_size() == 116  # index and term, then the data
    assert storage.raft_state_size() < 100
    storage.close()


async def test_log_bytes_through_is_what_compacting_there_frees(tmp_path: Path) -> None:
    """On disk and in memory alike: the records up to an index, before and after a
    compaction (whose records are gone)."""
    ends = record_ends()
    on_disk = await written(tmp_path)
    in_memory = MemoryStorage()
    in_memory.append(1, ENTRIES)
    await in_memory.sync()
    for storage in (on_disk, in_memory):
        assert storage.log_bytes_through(0) == 0
        for index in (1, 5, 12):
            assert storage.log_bytes_through(index) == ends[index] - LOG_HEADER_SIZE
        assert storage.log_bytes_through(99) == ends[12] - LOG_HEADER_SIZE
        log = Log()
        log.append(ENTRIES)
        log.compact(5, ENTRIES[4].term)
        await storage.compact_log(log)
        assert storage.log_bytes_through(5) == 0
        assert storage.log_bytes_through(7) == ends[7] - ends[5]
    on_disk.close()
