"""FileStorage fails safe: torn tails are cut with a warning, any other damage is refused with
one line naming the file and offset, failed writes are never hidden, files are private."""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioraft import DataDirectoryConflict, StorageCorrupt
from trioraft.raft.log import Entry, Log
from trioraft.raft.membership import CONFIGURATION_PREFIX
from trioraft.raft.persister import REMEDY, SAVE_STEPS, Persister
from trioraft.raft.storage import (
    LOG_HEADER_SIZE,
    FileStorage,
    HardState,
    Snapshot,
    encode_hard_state,
    encode_record,
)

ENTRIES = [Entry(1 + i // 4, f"set k{i} {'v' * (i % 5)}") for i in range(10)]
ENDS = [LOG_HEADER_SIZE]  # where the k-th record of ENTRIES ends
for _i, _entry in enumerate(ENTRIES):
    ENDS.append(ENDS[-1] + len(encode_record(_i + 1, _entry)))


async def written(directory: Path, unsynced: int = 0, **options: object) -> FileStorage:
    """A storage holding ENTRIES and a hard state, left open; all synced but the last
    ``unsynced`` entries (appended after the last fsync, as a crash in an append finds them)."""
    storage = FileStorage(directory, **options)  # type: ignore[arg-type]
    storage.load()
    await storage.save_hard_state(HardState(3, "n1"))
    synced = len(ENTRIES) - unsynced
    storage.append(1, ENTRIES[:synced])
    await storage.sync()
    if unsynced:
        storage.append(synced + 1, ENTRIES[synced:])
    return storage


async def closed(directory: Path, unsynced: int = 0) -> Path:
    (await written(directory, unsynced)).close()
    return directory / "log"


def refusal(directory: Path) -> str:
    with pytest.raises(StorageCorrupt) as refused:
        FileStorage(directory).load()
    message = str(refused.value)
    assert "\n" not in message and message.endswith(f"; {REMEDY}")
    return message


def damage(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


def flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x20
    path.write_bytes(bytes(raw))


# -- torn tails are cut ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cut", "tail"),
    [
        pytest.param(ENDS[-1] - 7, b"", id="cut-mid-record"),
        pytest.param(ENDS[-2] + 5, b"", id="cut-mid-record-header"),
        pytest.param(ENDS[-1], b"\x93garbage\xff" * 9, id="garbage-after-last"),
        pytest.param(ENDS[-1], bytes(4096), id="zeroed-tail"),
        pytest.param(ENDS[-1] - 9, bytes(4096), id="zeroed-mid-record"),
    ],
)
async def test_torn_tail_is_cut_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cut: int, tail: bytes
) -> None:
    log = await closed(tmp_path, unsynced=1)
    log.write_bytes(log.read_bytes()[:cut] + tail)
    entries = FileStorage(tmp_path).load().log.entries
    kept = max(k for k, end in enumerate(ENDS) if end <= cut)
    assert entries == ENTRIES[:kept]
    assert log.stat().st_size == ENDS[kept]
    assert f"{log}: offset {ENDS[kept]}: cut {cut + len(tail) - ENDS[kept]} bytes" in caplog.text
    caplog.clear()
    assert FileStorage(tmp_path).load().log.entries == ENTRIES[:kept]
    assert "torn" not in caplog.text  # cut once, for good


# -- synced records lost --------------------------------------------------------------------


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(ENDS[7], id="at-a-record-boundary"),
        pytest.param(ENDS[-1] - 7, id="mid-record"),
        pytest.param(LOG_HEADER_SIZE, id="every-record"),
    ],
)
async def test_a_log_that_lost_synced_records_is_refused(tmp_path: Path, cut: int) -> None:
    """Records cut after they were synced (and perhaps acknowledged): at a record boundary
    the rest is a well-formed log, mid-record it looks like a torn append, and only the sync
    mark tells either from a log that never held them."""
    log = await closed(tmp_path)
    log.write_bytes(log.read_bytes()[:cut])
    kept = max(k for k, end in enumerate(ENDS) if end <= cut)
    message = refusal(tmp_path)
    assert message.startswith(
        f"{log}: offset {ENDS[kept]}: the records end at index {kept}, but this node had "
        f"synced them through index {len(ENTRIES)} ({tmp_path / 'synced'})"
    )


async def test_records_dropped_on_purpose_lower_the_sync_mark_first(tmp_path: Path) -> None:
    """A follower's conflicting entries, and a log rewritten to end earlier (a snapshot that
    replaces a conflicting history), leave a log that loads, whatever else reached the disk."""
    storage = await written(tmp_path)
    storage.truncate_from(7)  # no sync after it: the cut is in the file all the same
    storage.close()
    assert FileStorage(tmp_path).load().log.entries == ENTRIES[:6]

    storage = FileStorage(tmp_path)
    storage.load()
    storage.append(7, ENTRIES[6:])
    await storage.sync()
    log = Log()
    log.compact(4, 9)  # a snapshot of another history at index 4
    await storage.save_snapshot(Snapshot(4, 9, b"theirs"), log)
    storage.close()
    loaded = FileStorage(tmp_path).load()
    assert loaded.log.last_index == 4 and loaded.snapshot == Snapshot(4, 9, b"theirs")


@pytest.mark.parametrize("left", [None, b"", bytes(12)], ids=["absent", "empty", "zeroed"])
async def test_a_data_directory_without_a_sync_mark_loads_and_gains_one(
    tmp_path: Path, left: bytes | None
) -> None:
    """Directories written before the mark was kept load as before, as do those whose mark
    a power failure left empty or zeroed (its file just created); the mark is then set."""
    log = await closed(tmp_path)
    if left is None:
        (tmp_path / "synced").unlink()
    else:
        (tmp_path / "synced").write_bytes(left)
    storage = FileStorage(tmp_path)
    assert storage.load().log.entries == ENTRIES
    storage.close()
    log.write_bytes(log.read_bytes()[: ENDS[7]])
    assert "the records end at index 7" in refusal(tmp_path)


async def test_a_log_missing_beside_its_sync_mark_is_refused(tmp_path: Path) -> None:
    """Even with no hard state or snapshot left, the mark says there was a log."""
    log = await closed(tmp_path)
    log.unlink()
    (tmp_path / "hardstate").unlink()
    assert refusal(tmp_path) == f"{log}: missing beside a sync mark; {REMEDY}"


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"\x01\x02\x03", "3 bytes, not the 12 of a sync mark"),
        (b"\x0a" + bytes(11), "the sync mark fails its checksum"),
    ],
)
async def test_a_damaged_sync_mark_is_refused(tmp_path: Path, content: bytes, what: str) -> None:
    await closed(tmp_path)
    (tmp_path / "synced").write_bytes(content)
    assert refusal(tmp_path) == f"{tmp_path / 'synced'}: offset 0: {what}; {REMEDY}"


@pytest.mark.timeout(30)  # a read of the FIFO would block for good
@pytest.mark.parametrize("name", ["log", "hardstate", "synced"])
async def test_a_fifo_in_place_of_a_file_is_refused_not_waited_on(
    tmp_path: Path, name: str
) -> None:
    await closed(tmp_path)
    (tmp_path / name).unlink()
    os.mkfifo(tmp_path / name)
    assert refusal(tmp_path) == f"{tmp_path / name}: not a regular file; {REMEDY}"


# -- everything else is refused -------------------------------------------------------------


async def test_flipped_byte_mid_log_is_refused(tmp_path: Path) -> None:
    log = await closed(tmp_path)
    flip(log, ENDS[4] + 20)  # in the command
    message = refusal(tmp_path)
    assert message.startswith(f"{log}: offset {ENDS[4]}: a record failing its checksum, ")
    assert f"a valid record follows at offset {ENDS[5]}" in message


async def test_damaged_length_mid_log_is_refused(tmp_path: Path) -> None:
    log = await closed(tmp_path)
    damage(log, ENDS[2], (10**6).to_bytes(4, "little"))  # runs past the end of the file
    assert refusal(tmp_path).startswith(f"{log}: offset {ENDS[2]}: a record of 1000000 bytes")


async def test_garbage_beginning_is_refused(tmp_path: Path) -> None:
    log = await closed(tmp_path)
    damage(log, LOG_HEADER_SIZE, os.urandom(ENDS[3] - LOG_HEADER_SIZE - 5))
    assert refusal(tmp_path).startswith(f"{log}: offset {LOG_HEADER_SIZE}: ")


async def test_overwritten_log_is_refused(tmp_path: Path) -> None:
    log = await closed(tmp_path)
    log.write_bytes(b"#!/bin/sh\necho this is not a log\n" * 10)
    assert refusal(tmp_path).startswith(f"{log}: offset 0: the log header is missing")


async def test_damaged_log_header_is_refused(tmp_path: Path) -> None:
    log = await closed(tmp_path)
    flip(log, 10)  # in the base index
    assert refusal(tmp_path).startswith(f"{log}: offset 0: the log header fails its checksum")


async def test_log_without_header_is_refused(tmp_path: Path) -> None:
    log = await closed(tmp_path)
    log.write_bytes(log.read_bytes()[LOG_HEADER_SIZE:])  # the format of older versions
    assert "written by an older trioraft" in refusal(tmp_path)


async def test_records_not_consecutive_are_refused(tmp_path: Path) -> None:
    log = await closed(tmp_path)
    raw = log.read_bytes()
    log.write_bytes(raw[: ENDS[-1]] + encode_record(12, Entry(3, "skipped 11")))
    message = refusal(tmp_path)
    assert message.startswith(f"{log}: offset {ENDS[-1]}: a record of index 12 where 11 was")


async def test_missing_hard_state_beside_a_log_is_refused(tmp_path: Path) -> None:
    await closed(tmp_path)
    (tmp_path / "hardstate").unlink()
    assert refusal(tmp_path).startswith(f"{tmp_path / 'hardstate'}: missing beside 10 log")


async def test_missing_log_beside_a_hard_state_is_refused(tmp_path: Path) -> None:
    await closed(tmp_path)
    (tmp_path / "log").unlink()
    assert refusal(tmp_path).startswith(f"{tmp_path / 'log'}: missing beside a hard state")


async def compacted(directory: Path, index: int) -> FileStorage:
    storage = await written(directory)
    log = Log()
    log.append(ENTRIES)
    log.compact(index, ENTRIES[index - 1].term)
    await storage.save_snapshot(Snapshot(index, ENTRIES[index - 1].term, b"state"), log)
    return storage


@pytest.mark.parametrize("index", [6, len(ENTRIES)])  # with entries after it, or none
async def test_missing_snapshot_beside_a_compacted_log_is_refused(
    tmp_path: Path, index: int
) -> None:
    (await compacted(tmp_path, index)).close()
    (tmp_path / "snapshot").unlink()
    message = refusal(tmp_path)
    assert message.startswith(f"{tmp_path / 'snapshot'}: missing, but ")
    assert f"continues from index {index}" in message


async def test_snapshot_older_than_the_log_is_refused(tmp_path: Path) -> None:
    """A gap: the log continues from index 6, the snapshot (say, restored from an old backup)
    stands for entries up to 2 only."""
    (await compacted(tmp_path, 6)).close()
    Persister(tmp_path / "snapshot").save((2).to_bytes(8, "little") * 2 + b"old")
    assert "snapshot at index 2 (term 2) is not the one" in refusal(tmp_path)


@pytest.mark.parametrize("name", ["hardstate", "snapshot"])
async def test_blob_failing_its_checksum_is_refused(tmp_path: Path, name: str) -> None:
    (await compacted(tmp_path, 6)).close()
    flip(tmp_path / name, 14)
    assert refusal(tmp_path) == (
        f"{tmp_path / name}: offset 12: the content fails its checksum; {REMEDY}"
    )


async def test_hard_state_that_is_not_one_is_refused(tmp_path: Path) -> None:
    await closed(tmp_path)
    Persister(tmp_path / "hardstate").save(b'{"term": "seven"}')
    assert refusal(tmp_path).startswith(f"{tmp_path / 'hardstate'}: the content is not")


# -- failed writes are never hidden ---------------------------------------------------------


class NoSpace:
    """A fault seam failing ``operation`` with ENOSPC once armed."""

    def __init__(self, operation: str) -> None:
        self.operation = operation
        self.armed = False

    def __call__(self, operation: str, nbytes: int) -> None:
        if self.armed and operation == self.operation:
            raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("operation", ["append", "truncate", "sync"])
async def test_failed_log_write_keeps_what_was_synced(tmp_path: Path, operation: str) -> None:
    fault = NoSpace(operation)
    storage = await written(tmp_path, fault=fault)
    size = storage.raft_state_size()
    fault.armed = True
    with pytest.raises(OSError) as failed:
        if operation == "append":
            storage.append(11, [Entry(4, "lost")])
        elif operation == "truncate":
            storage.truncate_from(5)
        else:
            storage.append(11, [Entry(4, "unsynced")])
            storage.sync_blocking()
    assert failed.value.errno == errno.ENOSPC
    if operation != "sync":
        assert storage.raft_state_size() == size  # nothing counted that was not written
    fault.armed = False
    with pytest.raises(OSError, match="an earlier write failed"):
        storage.append(11 + (operation == "sync"), [Entry(4, "after the failure")])
    storage.close()
    entries = FileStorage(tmp_path).load().log.entries
    assert entries[: len(ENTRIES)] == ENTRIES  # everything synced is intact
    assert entries in (ENTRIES, [*ENTRIES, Entry(4, "unsynced")])


async def test_partial_write_then_failure_reloads_as_a_torn_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    storage = await written(tmp_path)
    real_write = os.write

    def write_half_then_fail(fd: int, data: bytes) -> int:
        if len(data) > 8:
            return real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", write_half_then_fail)
    with pytest.raises(OSError):
        storage.append(11, [Entry(4, "a long command " * 4)])
    monkeypatch.undo()
    with pytest.raises(OSError, match="an earlier write failed"):
        await storage.sync()
    storage.close()
    assert FileStorage(tmp_path).load().log.entries == ENTRIES
    assert "torn tail" in caplog.text


async def test_failed_hard_state_save_keeps_the_old_one(tmp_path: Path) -> None:
    fault = NoSpace("hardstate")
    storage = await written(tmp_path, fault=fault)
    fault.armed = True
    with pytest.raises(OSError):
        await storage.save_hard_state(HardState(4, "n2"))
    storage.close()
    assert FileStorage(tmp_path).load().hard_state == HardState(3, "n1")


async def test_snapshot_is_durable_before_the_log_changes(tmp_path: Path) -> None:
    await closed(tmp_path)
    events: list[str] = []

    def fail_the_log_rewrite(operation: str, nbytes: int) -> None:
        events.append(operation)
        if operation == "rewrite":
            raise OSError(errno.ENOSPC, "No space left on device")

    storage = FileStorage(tmp_path, after_step=events.append, fault=fail_the_log_rewrite)
    log = storage.load().log
    log.compact(6, ENTRIES[5].term)
    with pytest.raises(OSError):
        await storage.save_snapshot(Snapshot(6, ENTRIES[5].term, b"state"), log)
    assert events == ["snapshot", *(f"snapshot-{step}" for step in SAVE_STEPS), "rewrite"]
    storage.close()
    loaded = FileStorage(tmp_path).load()  # the snapshot, and the log that agrees with it
    assert loaded.snapshot == Snapshot(6, ENTRIES[5].term, b"state")
    assert (loaded.log.snapshot_index, loaded.log.entries) == (6, ENTRIES[6:])


# -- crafted content with valid checksums -------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000  # valid JSON, nested past Python's recursion limit


async def test_a_deeply_nested_hard_state_is_refused(tmp_path: Path) -> None:
    await closed(tmp_path)
    Persister(tmp_path / "hardstate").save(DEEP)
    assert (
        refusal(tmp_path) == f"{tmp_path / 'hardstate'}: the content is not a hard state; {REMEDY}"
    )


@pytest.mark.parametrize("term", [2**63, -1, "7", True])
async def test_a_hard_state_whose_term_no_peer_would_take_is_refused(
    tmp_path: Path, term: object
) -> None:
    """A term past the messages' 64-bit integers would leave the node unheard for good."""
    await closed(tmp_path)
    Persister(tmp_path / "hardstate").save(json.dumps({"term": term, "voted_for": None}).encode())
    message = refusal(tmp_path)
    assert message.startswith(f"{tmp_path / 'hardstate'}: the term is not one a peer would take")


async def test_a_snapshot_whose_configuration_is_nested_too_deeply_is_refused(
    tmp_path: Path,
) -> None:
    await closed(tmp_path)
    raw = b"TRSNAP02" + struct.pack("<QQI", 4, 1, len(DEEP)) + DEEP + b"state"
    Persister(tmp_path / "snapshot").save(raw)
    message = refusal(tmp_path)
    assert message.startswith(f"{tmp_path / 'snapshot'}: the configuration is not valid: ")


@pytest.mark.parametrize("configuration", [DEEP, b"[]", b"{not json"])
async def test_a_log_holding_a_damaged_configuration_entry_is_refused(
    tmp_path: Path, configuration: bytes
) -> None:
    storage = await written(tmp_path)
    storage.append(len(ENTRIES) + 1, [Entry(9, CONFIGURATION_PREFIX + configuration.decode())])
    await storage.sync()
    storage.close()
    message = refusal(tmp_path)
    assert message.startswith(
        f"{tmp_path / 'log'}: offset {ENDS[-1]}: the configuration entry of index "
        f"{len(ENTRIES) + 1}: "
    )


def test_an_owner_file_that_is_not_text_names_the_directory(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    (tmp_path / "owner").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataDirectoryConflict, match="the data directory of node '"):
        FileStorage(tmp_path, owner="1")


# -- permissions ----------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_directory_is_0700_and_files_0600(tmp_path: Path) -> None:
    directory = tmp_path / "data" / "node"
    (await compacted(directory, 6)).close()
    assert mode(directory) == 0o700
    names = {p.name for p in directory.iterdir()}
    assert names == {"log", "hardstate", "snapshot", "synced"}
    assert all(mode(directory / name) == 0o600 for name in names)


async def test_loose_existing_directory_warns_and_loose_files_are_tightened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await closed(tmp_path)
    os.chmod(tmp_path, 0o755)
    os.chmod(tmp_path / "log", 0o644)
    (tmp_path / "hardstate.tmp").write_bytes(b"stale")
    os.chmod(tmp_path / "hardstate.tmp", 0o666)
    FileStorage(tmp_path).close()
    assert f"{tmp_path}: the data directory has mode 0o755" in caplog.text
    assert mode(tmp_path) == 0o755  # left as it is: it may be shared on purpose
    assert mode(tmp_path / "log") == mode(tmp_path / "hardstate.tmp") == 0o600


# -- property: whatever tail a crash leaves past the last sync, the synced prefix survives --


@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(
        st.tuples(st.lists(st.text(max_size=30), min_size=1, max_size=4), st.booleans()),
        min_size=1,
        max_size=8,
    ),
    cut_fraction=st.floats(0, 1),
    zeros=st.integers(0, 600),
)
def test_synced_prefix_survives_any_cut_after_it(
    batches: list[tuple[list[str], bool]], cut_fraction: float, zeros: int
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        storage = FileStorage(directory)
        storage.load()
        Persister(Path(directory, "hardstate")).save(encode_hard_state(HardState(1, None)))
        entries: list[Entry] = []
        ends = [LOG_HEADER_SIZE]
        synced = 0
        for commands, sync in batches:
            batch = [Entry(1, command) for command in commands]
            storage.append(len(entries) + 1, batch)
            for entry in batch:
                entries.append(entry)
                ends.append(ends[-1] + len(encode_record(len(entries), entry)))
            if sync:
                storage.sync_blocking()
                synced = len(entries)
        storage.close()
        log = Path(directory, "log")
        raw = log.read_bytes()
        cut = ends[synced] + round(cut_fraction * (len(raw) - ends[synced]))
        damaged = raw[:cut] + bytes(zeros)
        log.write_bytes(damaged)
        loaded = FileStorage(directory).load().log.entries
        # Every record still whole survives (the zeros may even complete one again).
        intact = max(k for k, end in enumerate(ends) if damaged[:end] == raw[:end])
        assert loaded == entries[:intact]
        assert len(loaded) >= synced
