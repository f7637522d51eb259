"""Crash-safe storage of one blob: the whole content is replaced atomically or not at all.

``save`` writes ``<path>.tmp``, fsyncs it, renames it over ``<path>`` and fsyncs the
directory; ``read`` returns the last saved content, or ``b""`` if nothing was ever saved.

Invariants:
- After a crash at any point of ``save``, ``read`` returns either the old or the new content,
  never a mix: ``<path>`` is only ever replaced by a rename of a file already fsynced.
- Every file carries a header (magic, length, CRC-32); a file that fails it raises
  :class:`~trioraft.StorageCorrupt` with one line, ``<path>: offset <n>: <what is wrong>;
  <what to do>`` (see :func:`corrupt`), instead of returning wrong bytes.
- A stale ``<path>.tmp`` left by a crash is never read, and the next ``save`` overwrites it.
- Files are created with mode 0600 (owner only).

The methods block on disk I/O; from Trio, call them with ``trio.to_thread.run_sync``
(which also makes a save non-cancellable once started).
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from .._errors import StorageCorrupt

MAGIC = b"TRP1"
_HEADER = struct.Struct("<4sII")  # magic, length, crc32

#: What an operator can do about a data file that fails its checks.
REMEDY = (
    "restore this node from a backup, or wipe its data directory and let it rejoin as a new member"
)

#: The mode of every file written (the data directory itself is 0700, see FileStorage).
FILE_MODE = 0o600

#: The steps of a save, in order; a crash hook is called after each one.
SAVE_STEPS = ("open", "write", "fsync", "close", "rename", "fsync-dir")


def corrupt(path: str | os.PathLike[str], what: str, offset: int | None = None) -> StorageCorrupt:
    """The error for a damaged data file, as one line:
    ``<path>: offset <n>: <what is wrong>; <what to do>`` (no offset part if ``None``)."""
    where = f"{os.fspath(path)}: offset {offset}" if offset is not None else os.fspath(path)
    return StorageCorrupt(f"{where}: {what}; {REMEDY}")


def encode_blob(data: bytes) -> bytes:
    return _HEADER.pack(MAGIC, len(data), zlib.crc32(data)) + data


def decode_blob(raw: bytes, where: str) -> bytes:
    if len(raw) < _HEADER.size:
        raise corrupt(where, f"{len(raw)} bytes, shorter than the {_HEADER.size}-byte header", 0)
    magic, length, crc = _HEADER.unpack_from(raw)
    data = raw[_HEADER.size :]
    if magic != MAGIC:
        raise corrupt(where, f"bad magic {magic!r} (overwritten, or not a trioraft file)", 0)
    if length != len(data):
        raise corrupt(where, f"the header says {length} bytes of content, found {len(data)}", 4)
    if zlib.crc32(data) != crc:
        raise corrupt(where, "the content fails its checksum", _HEADER.size)
    return data


def read_file(path: str | os.PathLike[str]) -> bytes:
    """The whole content of the regular file at ``path``; raises FileNotFoundError if there
    is none, and StorageCorrupt for anything else there (a FIFO would block the read forever)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise corrupt(path, "not a regular file")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Persister:
    """Atomically saved bytes at ``path``. ``after_step`` is a test hook (see SAVE_STEPS)."""

    def __init__(
        self, path: str | os.PathLike[str], *, after_step: Callable[[str], None] | None = None
    ):
        self.path = Path(path)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self._after_step = after_step or (lambda step: None)
        self._size: int | None = None  # of the content saved; None until looked up

    def save(self, data: bytes) -> None:
        step = self._after_step
        fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        step("open")
        try:
            view = memoryview(encode_blob(data))
            while view:
                view = view[os.write(fd, view) :]
            step("write")
            os.fsync(fd)
            step("fsync")
        finally:
            os.close(fd)
        step("close")
        self._size = None  # from here on the file may hold either content
        os.replace(self.tmp_path, self.path)
        self._size = len(data)
        step("rename")
        fsync_dir(self.path.parent)
        step("fsync-dir")

    def read(self) -> bytes:
        try:
            raw = read_file(self.path)
        except FileNotFoundError:
            return b""
        return decode_blob(raw, str(self.path))

    def size(self) -> int:
        """Bytes of content saved (0 if none), without reading the file: looked up once,
        then known from each save (nothing else writes the file while it is in use)."""
        if self._size is None:
            try:
                self._size = max(0, self.path.stat().st_size - _HEADER.size)
            except FileNotFoundError:
                self._size = 0
        return self._size
