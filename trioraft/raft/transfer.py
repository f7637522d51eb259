"""Snapshots in chunks: the chunks a leader sends, and the one transfer a follower keeps.

InstallSnapshot carries a snapshot of ``total`` bytes as chunks of at most
``RaftConfig.snapshot_chunk_bytes``, in order, one RPC each; every chunk names the whole
(:class:`TransferKey`: leader, term, index and term of the snapshot, size, SHA-256,
configuration), so no message ever nears ``max_message_bytes`` whatever the snapshot's
size. The follower appends each chunk to an :class:`~trioraft.raft.storage.IncomingSnapshot`
of its storage (``snapshot.incoming`` in its data directory); once the last is in and the
bytes match their SHA-256, its driver checks the data and installs it as one snapshot (the
core sees one ``step_install_snapshot``), durably, then drops the incoming copy.

Invariants:
- A follower keeps at most one transfer (:class:`Receiver`). A chunk at offset 0 of another
  transfer (a newer leader or term, another snapshot) replaces the one under way, whose
  bytes are dropped; the core has already refused chunks of an older term.
- Bytes are taken only in order: a chunk at the offset received so far is appended; a chunk
  of the same transfer ending at or before it is a resend whose reply was lost, answered
  again without writing (idempotent by offset); any other chunk is answered with the
  offset wanted (0 if it belongs to no transfer under way), where the leader goes on.
- What cannot be a valid chunk is refused with a :class:`~trioraft.BadRequest` naming the
  field, before anything is written (:func:`check_chunk`): a size over
  ``max_snapshot_bytes``, a chunk over ``snapshot_chunk_bytes`` or past the size, ``done``
  anywhere but on the last byte, a malformed SHA-256. A transfer whose bytes fail their
  SHA-256 is dropped and refused: the leader starts again from offset 0.
- The leader holds the snapshot's bytes (it has them in memory anyway) and encodes one
  chunk at a time; the SHA-256 of a snapshot is computed once (:class:`Outbound`).
- Nothing here touches Raft state: the term and leader rules stay in the core.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from .._errors import BadRequest
from .config import RaftConfig
from .messages import InstallSnapshotArgs
from .storage import IncomingSnapshot, Snapshot, Storage

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class TransferKey:
    """What names one transfer: every chunk of it carries the same."""

    term: int
    leader: str
    index: int
    snapshot_term: int
    total: int
    sha256: str
    configuration: str

    @classmethod
    def of(cls, args: InstallSnapshotArgs) -> TransferKey:
        return cls(
            args.term,
            args.leader,
            args.last_included_index,
            args.last_included_term,
            args.total,
            args.sha256,
            args.configuration,
        )


def check_chunk(args: InstallSnapshotArgs, size: int, config: RaftConfig) -> None:
    """Refuse (``BadRequest``) a chunk of ``size`` decoded bytes that no valid transfer holds."""
    if args.total > config.max_snapshot_bytes:
        raise BadRequest(
            f"total: a snapshot of {args.total} bytes is over this node's limit "
            f"(max_snapshot_bytes {config.max_snapshot_bytes})"
        )
    if size > config.chunk_bytes:
        raise BadRequest(
            f"chunk: a chunk of {size} bytes is over the limit "
            f"(snapshot_chunk_bytes {config.chunk_bytes})"
        )
    if args.offset + size > args.total:
        raise BadRequest(
            f"offset: a chunk of {size} bytes at {args.offset} runs past the snapshot's "
            f"{args.total} bytes"
        )
    if args.done != (args.offset + size == args.total):
        raise BadRequest("done: set on the chunk that ends the snapshot, and only on it")
    if not _SHA256_HEX.fullmatch(args.sha256):
        raise BadRequest("sha256: expected 64 lowercase hex digits")


@dataclass
class _Transfer:
    key: TransferKey
    sink: IncomingSnapshot
    received: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)


class Receiver:
    """A follower's side: the one transfer under way, written to ``storage``. The driver
    calls it one chunk at a time (never concurrently) and for the current leader only."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._current: _Transfer | None = None

    @property
    def receiving(self) -> TransferKey | None:
        return None if self._current is None else self._current.key

    async def take(self, args: InstallSnapshotArgs, data: bytes) -> tuple[int, bool]:
        """Take a chunk (checked with :func:`check_chunk`); the offset wanted next and
        whether the snapshot is complete and matches its SHA-256 (then :meth:`finish`).
        Raises ``BadRequest`` (the transfer dropped) if the complete bytes do not match,
        and OSError if the incoming copy cannot be written."""
        key = TransferKey.of(args)
        current = self._current
        if current is None or current.key != key:
            if args.offset != 0:
                return 0, False  # no such transfer here (any more): start again
            self.drop()
            current = self._current = _Transfer(key, self._storage.open_incoming())
        if args.offset == current.received:
            if data:
                await current.sink.write(data)
                current.hasher.update(data)
                current.received += len(data)
        elif args.offset + len(data) > current.received:
            return current.received, False  # out of order: go on from what is here
        # else: a resend of a chunk already taken
        if current.received < key.total:
            return current.received, False
        if current.hasher.hexdigest() != key.sha256:
            self.drop()
            raise BadRequest("sha256: the snapshot's bytes do not match it; send it again")
        return current.received, True

    async def finish(self) -> bytes:
        """The bytes of the complete transfer (``take`` said so)."""
        assert self._current is not None and self._current.received == self._current.key.total
        return await self._current.sink.read()

    def drop(self) -> None:
        """Forget the transfer under way, if any, and its bytes."""
        if self._current is not None:
            self._current.sink.discard()
            self._current = None

    def close(self) -> None:
        """Forget the transfer under way, leaving its bytes as a crash would (the node
        stops; the storage deletes them when it is opened again)."""
        if self._current is not None:
            self._current.sink.close()
            self._current = None


@dataclass
class Outbound:
    """A leader's side, for one follower: how far it has sent which snapshot."""

    snapshot: Snapshot
    sha256: str
    offset: int = 0

    def chunk(self, term: int, leader: str, chunk_bytes: int) -> InstallSnapshotArgs:
        """The chunk at ``offset`` (at most ``chunk_bytes`` of data, base64 encoded)."""
        snapshot = self.snapshot
        piece = memoryview(snapshot.data)[self.offset : self.offset + chunk_bytes]
        configuration = snapshot.configuration
        return InstallSnapshotArgs(
            term,
            leader,
            snapshot.index,
            snapshot.term,
            base64.b64encode(piece).decode(),
            zlib.crc32(piece),
            "" if configuration is None else json.dumps(configuration.to_json()),
            offset=self.offset,
            total=len(snapshot.data),
            sha256=self.sha256,
            done=self.offset + len(piece) == len(snapshot.data),
        )


def sha256_of(data: bytes) -> str:
    """The SHA-256 a transfer of ``data`` carries (hashlib releases the GIL: run it in a
    worker thread for a large snapshot)."""
    return hashlib.sha256(data).hexdigest()
