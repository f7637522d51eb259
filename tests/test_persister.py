"""Crash safety of the blob persister: a crash anywhere in a save leaves old or new content."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from trioraft import Persister, StorageCorrupt
from trioraft.raft.persister import REMEDY, SAVE_STEPS


class Crash(Exception):
    pass


def crash_after(step_name: str):
    def hook(step: str) -> None:
        if step == step_name:
            raise Crash(step)

    return hook


def test_read_of_nothing_is_empty(tmp_path: Path) -> None:
    p = Persister(tmp_path / "state")
    assert p.read() == b"" and p.size() == 0


def test_save_and_read(tmp_path: Path) -> None:
    p = Persister(tmp_path / "state")
    p.save(b"one")
    p.save(b"two, longer")
    assert Persister(tmp_path / "state").read() == b"two, longer"
    assert p.size() == len(b"two, longer")
    p.save(b"")
    assert p.read() == b""


@pytest.mark.parametrize("step", SAVE_STEPS)
def test_crash_after_each_step_leaves_old_or_new(tmp_path: Path, step: str) -> None:
    path = tmp_path / "state"
    Persister(path).save(b"old content")
    with pytest.raises(Crash):
        Persister(path, after_step=crash_after(step)).save(b"new content!")
    after = Persister(path).read()
    renamed = SAVE_STEPS.index(step) >= SAVE_STEPS.index("rename")
    assert after == (b"new content!" if renamed else b"old content")
    Persister(path).save(b"next")  # a stale temporary file does not get in the way
    assert Persister(path).read() == b"next"


@pytest.mark.parametrize("step", SAVE_STEPS[: SAVE_STEPS.index("rename")])
def test_power_loss_before_rename_tears_only_the_temporary(tmp_path: Path, step: str) -> None:
    """Unsynced temporary bytes may vanish in any amount: the saved content is untouched."""
    path = tmp_path / "state"
    Persister(path).save(b"old content")
    persister = Persister(path, after_step=crash_after(step))
    with pytest.raises(Crash):
        persister.save(b"x" * 1000)
    if persister.tmp_path.exists():
        for keep in (0, 3, 12, 500):
            with open(persister.tmp_path, "r+b") as f:
                f.truncate(keep)
            assert Persister(path).read() == b"old content"


def test_corruption_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "state"
    Persister(path).save(b"some durable bytes")
    raw = path.read_bytes()
    for i in range(len(raw)):
        flipped = bytearray(raw)
        flipped[i] ^= 0x40
        path.write_bytes(bytes(flipped))
        with pytest.raises(StorageCorrupt):
            Persister(path).read()
    for cut in range(len(raw)):
        path.write_bytes(raw[:cut])
        with pytest.raises(StorageCorrupt) as refused:
            Persister(path).read()
        if cut < 12:
            what = f"offset 0: {cut} bytes, shorter than the 12-byte header"
        else:
            what = f"offset 4: the header says 18 bytes of content, found {cut - 12}"
        assert str(refused.value) == f"{path}: {what}; {REMEDY}"


@pytest.mark.parametrize(
    ("offset", "what"),
    [
        (0, "offset 0: bad magic"),
        (5, "offset 4: the header says"),
        (8, "offset 12: the content fails its checksum"),
        (20, "offset 12: the content fails its checksum"),
    ],
)
def test_corruption_message_names_file_offset_and_remedy(
    tmp_path: Path, offset: int, what: str
) -> None:
    path = tmp_path / "state"
    Persister(path).save(b"some durable bytes")
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(StorageCorrupt) as refused:
        Persister(path).read()
    message = str(refused.value)
    assert message.startswith(f"{path}: {what}") and message.endswith(f"; {REMEDY}")
    assert "\n" not in message


def test_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "state"
    persister = Persister(path, after_step=crash_after("close"))
    with pytest.raises(Crash):
        persister.save(b"secret")
    assert stat.S_IMODE(persister.tmp_path.stat().st_mode) == 0o600
    Persister(path).save(b"secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_save_fsyncs_file_and_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    steps: list[str] = []
    Persister(tmp_path / "state", after_step=steps.append).save(b"data")
    assert steps == list(SAVE_STEPS) and len(synced) == 2
