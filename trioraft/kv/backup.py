"""Backups of the replicated KV: the file format, the download, and the restore.

A backup file is the state machine's snapshot with what it takes to trust it:

    magic "TRBAK001" (8 bytes) | header length (u32, big-endian) | header (JSON, UTF-8)
    | data (the KV snapshot, ``header["data_bytes"]`` bytes) | SHA-256 of all the above

The header says where the state comes from: ``{"format": 1, "index", "term", "node",
"created", "data_bytes"}`` (``index``: the last log entry the state includes).

Invariants:
- :func:`read_backup` accepts a file only if its magic, lengths and SHA-256 hold and its
  data restores into a :class:`~trioraft.kv.machine.KVMachine`; anything else raises
  :class:`BadBackup` with one line saying what is wrong. So a truncated or damaged file is
  never restored.
- :func:`download_backup` writes ``FILE`` only once the whole download has verified (it
  writes ``FILE.part``, fsyncs it and renames it); a failed download leaves no ``FILE``.
  The file is created 0600, as the data files are: it holds every key.
- :func:`restore` writes a new data directory that :class:`~trioraft.FileStorage` loads
  as: hard state term :data:`RESTORED_TERM` with no vote, the backup's state as a snapshot
  at the backup's index, an empty log continuing from it. It builds the directory beside
  the target and renames it into place, so a failed restore leaves no half-made directory;
  it never writes into a directory that holds anything.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import secrets
import shutil
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import trio

from .._errors import BadRequest, TrioRaftError
from ..raft.log import Log
from ..raft.persister import FILE_MODE, fsync_dir
from ..raft.storage import FileStorage, HardState, Snapshot
from ..rpc.codec import stdlib_json
from ..rpc.tls import ClientTls, client_context
from .machine import KVMachine

MAGIC = b"TRBAK001"
FORMAT = 1
_LENGTH = struct.Struct(">I")
_DIGEST_BYTES = hashlib.sha256().digest_size
#: The term every restored node starts from (their first election makes term 2): a new
#: cluster's count, whatever the terms of the cluster the backup came from.
RESTORED_TERM = 1
CONTENT_TYPE = "application/octet-stream"


class BadBackup(TrioRaftError):
    """A backup file that is truncated, damaged or not a trioraft backup."""


class RestoreRefused(TrioRaftError):
    """The restore would overwrite something (a data directory that is not empty)."""


@dataclass(frozen=True)
class BackupInfo:
    """What a backup's header says, and the file's SHA-256 (its trailer)."""

    index: int
    term: int
    node: str
    created: float
    data_bytes: int
    sha256: str = ""


def backup_pieces(index: int, term: int, node: str, data: list[bytes]) -> list[bytes]:
    """The backup file of the KV state whose snapshot is ``data`` (in pieces) as of log
    ``index`` (of ``term``), as the pieces it is sent in: a head, ``data``'s pieces and a
    trailer (no piece is copied)."""
    header = {
        "format": FORMAT,
        "index": index,
        "term": term,
        "node": node,
        "created": round(time.time(), 3),
        "data_bytes": sum(map(len, data)),
    }
    head = stdlib_json(header).encode()
    prefix = b"".join([MAGIC, _LENGTH.pack(len(head)), head])
    digest = hashlib.sha256(prefix)
    for piece in data:
        digest.update(piece)
    return [prefix, *data, digest.digest()]


def read_backup(raw: bytes, where: str) -> tuple[BackupInfo, bytes]:
    """The header and the KV data of a backup file's bytes, once every check holds."""
    prefix = len(MAGIC) + _LENGTH.size
    if len(raw) < prefix and MAGIC.startswith(raw[: len(MAGIC)]):
        raise BadBackup(f"{where}: truncated: {len(raw)} bytes, the header is missing")
    if raw[: len(MAGIC)] != MAGIC:
        raise BadBackup(f"{where}: not a trioraft backup (no {MAGIC.decode()} magic)")
    (head_bytes,) = _LENGTH.unpack_from(raw, len(MAGIC))
    try:
        header = json.loads(raw[prefix : prefix + head_bytes])
        info = BackupInfo(
            index=_int(header["index"]),
            term=_int(header["term"]),
            node=str(header["node"]),
            created=float(header["created"]),
            data_bytes=_int(header["data_bytes"]),
        )
        if header["format"] != FORMAT:
            raise BadBackup(f"{where}: backup format {header['format']!r}, expected {FORMAT}")
    except (ValueError, KeyError, TypeError) as exc:
        if len(raw) < prefix + head_bytes:
            raise BadBackup(f"{where}: truncated within its header") from None
        raise BadBackup(f"{where}: the header is damaged ({exc!r})") from None
    expected = prefix + head_bytes + info.data_bytes + _DIGEST_BYTES
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has bytes past its end"
        raise BadBackup(f"{where}: {what}: {len(raw)} bytes where the header says {expected}")
    body, digest = raw[:-_DIGEST_BYTES], raw[-_DIGEST_BYTES:]
    if hashlib.sha256(body).digest() != digest:
        raise BadBackup(f"{where}: fails its SHA-256 checksum (the file is damaged)")
    data = body[prefix + head_bytes :]
    try:
        KVMachine.check_snapshot(data)
    except ValueError as exc:
        raise BadBackup(f"{where}: the state does not restore: {exc}") from None
    return BackupInfo(**{**asdict(info), "sha256": digest.hex()}), data


def _int(value: object) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


#: ``progress(bytes_so_far, total_or_None)``, called as the download goes.
Progress = Callable[[int, int | None], None]


async def download_backup(
    urls: Sequence[str],
    path: str | os.PathLike[str],
    *,
    token: str | None = None,
    tls: ClientTls | None = None,
    patience: float = 30.0,
    progress: Progress | None = None,
) -> BackupInfo:
    """Fetch a consistent backup from the leader among ``urls`` (``GET /backup``) into
    ``path``; tries each server in turn until the leader answers, for up to ``patience``
    seconds. Raises :class:`BadBackup` if what arrived does not verify, ``OSError`` if no
    leader served one (``BadRequest`` if a server refused the request: a wrong token)."""
    target = Path(path)
    part = target.with_name(target.name + ".part")
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    verify = client_context(tls) if tls is not None else True
    refusals: collections.deque[str] = collections.deque(maxlen=len(urls))  # the last round's
    with trio.move_on_after(patience):
        async with httpx.AsyncClient(timeout=patience, verify=verify, headers=headers) as http:
            while True:
                for url in urls:
                    try:
                        refused = await _download_from(http, url.rstrip("/"), part, progress)
                        if refused is None:
                            return _install(part, target)
                        refusals.append(f"{url}: {refused}")
                    except httpx.HTTPStatusError as exc:
                        if exc.response.status_code in (401, 403):
                            raise BadRequest(_error(exc.response), 401) from None
                        refusals.append(f"{url}: {_error(exc.response)}")
                    except httpx.HTTPError as exc:
                        refusals.append(f"{url}: {exc!r}")
                await trio.sleep(0.2)  # an election may be under way
    part.unlink(missing_ok=True)
    last = "; ".join(refusals) or "no answer"
    raise OSError(f"no server served a backup within {patience} s ({last})")


async def _download_from(
    http: httpx.AsyncClient, url: str, part: Path, progress: Progress | None
) -> str | None:
    """Download ``url``'s backup into ``part``; if that server does not serve one now (it
    does not lead, or another backup is under way), why not."""
    async with http.stream("GET", f"{url}/backup") as response:
        if response.status_code == 503:
            await response.aread()
            return _error(response)
        if response.status_code != 200:
            await response.aread()
            response.raise_for_status()
        total = (
            int(response.headers["Content-Length"])
            if "Content-Length" in response.headers
            else None
        )
        received = 0
        _create_private(part)  # it holds every key: owner only, like the data files
        async with await trio.open_file(part, "wb") as f:
            async for chunk in response.aiter_bytes(1 << 20):
                await f.write(chunk)
                received += len(chunk)
                if progress is not None:
                    progress(received, total)
            await f.flush()
            await trio.to_thread.run_sync(os.fsync, f.fileno())
    return None


def _create_private(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE))
    os.chmod(path, FILE_MODE)  # an older file of that name may have had another mode


def _install(part: Path, target: Path) -> BackupInfo:
    try:
        info, _ = read_backup(part.read_bytes(), str(target))
    except BadBackup:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, target)
    fsync_dir(target.parent.resolve())
    return info


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


async def restore(backup: str | os.PathLike[str], data_dir: str | os.PathLike[str]) -> BackupInfo:
    """Seed ``data_dir`` (absent or empty) from the backup file ``backup`` (see the module
    docstring). Raises :class:`BadBackup` or :class:`RestoreRefused`."""
    info, data = _read_file(Path(backup))
    target = Path(data_dir)
    _refuse_to_overwrite(target)
    building = target.with_name(f".{target.name}.restoring-{secrets.token_hex(4)}")
    try:
        storage = FileStorage(building)
        try:
            storage.load()
            await storage.save_hard_state(HardState(RESTORED_TERM, None))
            snapshot = Snapshot(info.index, RESTORED_TERM, data)
            await storage.save_snapshot(snapshot, Log(info.index, RESTORED_TERM))
        finally:
            storage.close()
        _move_into_place(building, target)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    check = FileStorage(target)  # what a node will find there
    try:
        loaded = check.load()
    finally:
        check.close()
    assert loaded.snapshot is not None and loaded.snapshot.index == info.index
    return info


def _read_file(source: Path) -> tuple[BackupInfo, bytes]:
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise BadBackup(f"{source}: cannot read it: {exc.strerror}") from None
    return read_backup(raw, str(source))


def _refuse_to_overwrite(target: Path) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise RestoreRefused(
            f"{target}: exists and is not an empty directory; restore into a new one"
        )


def _move_into_place(building: Path, target: Path) -> None:
    if target.exists():
        target.rmdir()  # empty: checked before
    os.rename(building, target)
    fsync_dir(target.parent.resolve())
