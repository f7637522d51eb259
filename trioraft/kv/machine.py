"""The versioned key/value state machine: pure, deterministic, no I/O.

Rules (the whole protocol):
- Every key has a version; version 0 means the key is absent, and a get of an absent key
  answers ``NoKey`` with value ``""`` and version 0.
- Every change is made at an index (the replicated KV's: the log index of the entry that
  carries it; ops of one entry share it). A key remembers ``mod_index``, the index of its
  last change, and ``create_index``, the index at which it was last created; both are 0 for
  an absent key and for keys restored from a snapshot taken before indexes were recorded.
  So a key's ``mod_index`` never decreases, and a key deleted then created again gets a
  greater ``create_index`` (the same one only when both happen in one entry).
- ``put(key, value, version)`` applies only when ``version`` equals the key's current version;
  it then stores ``value`` and increments the version (so a put at version 0 creates a key at
  version 1). Otherwise it changes nothing and answers ``NoKey`` when the key is absent
  (``version > 0``), ``Version`` when it exists.
- ``delete(key, version)`` removes the key when ``version`` is its current version; otherwise
  it changes nothing and answers ``NoKey`` when the key is absent, ``Version`` when it exists.
  A key created again after a delete starts over at version 1.
- ``append(key, arg)`` adds ``arg`` to the end of the value (an absent key acts like a put
  at version 0) and increments the version.
- ``range`` answers keys in code point order from ``start`` (before ``end``, under
  ``prefix``), at most ``limit`` and at most :data:`~trioraft.kv.messages.MAX_RANGE_CHARS`
  characters of keys and values (but always one key, if any), with ``next``, the first key
  it left out.
- ``txn`` evaluates every compare against the state before it, then runs the ``success`` or
  ``failure`` ops in order, at the same index; nothing else runs in between.
- :class:`VersionedKV` holds only the keys: nothing grows with the number of clients.
  :class:`KVMachine` (the replicated one) also remembers, per client session, its last
  sequence number and reply, so a retried append is applied exactly once; clients that only
  get and put never open one.
- Appends go in client sessions: ``open`` makes one (its id is a counter and the nonce the
  proposing server logged, never reused) and each append names its session and sequence
  number. The table of sessions is bounded: beyond ``max_sessions``, the least recently used
  one is forgotten, and an append in an unknown session answers ``SessionExpired`` and
  changes nothing (it may be the retry of one already applied). So no append is ever
  applied twice. Eviction follows the log's order, the same on every replica.
- A retried write cannot apply twice. Versions only grow while a key exists, so a retried
  put, delete or txn whose first attempt applied meets ``Version`` (or fails its compares),
  unless the key was deleted since and is back at the version it names. So the KV keeps
  tombstones: the index of each key's last deletion (lease expiries included), the most
  recent ``max_tombstones`` of them, and ``forgotten_through``, the greatest index of one
  it dropped. A retry carries ``retry_after``: the greatest index its client had seen
  before the first attempt (which, if it applied, applied after it). If a key the retry
  writes or compares may have been deleted after that index, the retry changes nothing
  and answers as a conflict (``Version``, or a txn that did not succeed): the client
  reports ``Maybe``; likewise when ``retry_after`` is not before the retry's own index (the
  client saw a history other than this one: the store was restored from a backup, say). A
  retried txn whose compares fail runs neither branch (they may fail
  because its first attempt applied; its client reports ``Maybe`` and never sees the
  failure branch's results), and a malformed retry answers ``BadOp`` like any other.
- ``apply`` never raises for a malformed op (an entry from a faulty peer, say): it answers
  ``BadOp`` and changes nothing, identically on every replica (a txn is checked whole before
  any of it runs). ``restore`` (and ``check_snapshot``) raise ``ValueError`` for data that is
  not a snapshot of this machine; snapshots of the format before indexes restore with 0s.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sortedcontainers import SortedList

from ..rpc.codec import dump_json, stdlib_json
from .changes import Change, WatchHistory
from .leases import DEFAULT_MAX_LEASES, LeaseTable
from .messages import (
    BAD_OP,
    COMPARE_OPS,
    COMPARE_TARGETS,
    MAX_LEASE_TTL,
    MAX_RANGE_CHARS,
    MAX_RANGE_LIMIT,
    NO_KEY,
    NO_LEASE,
    NO_SPACE,
    OK,
    SESSION_EXPIRED,
    TXN_OPS,
    VERSION,
    AppendReply,
    DeleteReply,
    GetReply,
    KeyRecord,
    KeyResult,
    LeaseReply,
    OpenSessionReply,
    PutReply,
    RangeReply,
    Reply,
    TxnReply,
)

#: Clients whose last append the replicated KV remembers (each costs ~100-300 bytes).
DEFAULT_MAX_SESSIONS = 100_000

#: Deleted keys whose deletion index the KV remembers (each costs ~20 bytes plus the key).
DEFAULT_MAX_TOMBSTONES = 10_000

#: One key's state: value, version, mod_index, create_index.
KeyState = tuple[str, int, int, int]
#: One op of a txn's branch: op, key, value, lease.
TxnBranchOp = tuple[str, str, str, int]
#: Keys and values encoded in one piece of a snapshot, in characters (a few ms of the GIL).
_SNAPSHOT_PIECE_CHARS = 1 << 20
#: The snapshot format that records indexes (the one before it had no "format").
SNAPSHOT_FORMAT = 2
#: Every successful put's reply (frozen, so one serves them all: building one per put was
#: a measurable part of a follower's CPU).
_PUT_OK = PutReply(OK)


class VersionedKV:
    """The KV state machine. Its methods return the wire replies; ``index`` is the index
    the change is made at (see the module docstring)."""

    __slots__ = (
        "_data",
        "_sorted",
        "changes",
        "forgotten_through",
        "max_tombstones",
        "removed_chars",
        "tombstones",
    )

    def __init__(self, max_tombstones: int = DEFAULT_MAX_TOMBSTONES) -> None:
        self._data: dict[str, KeyState] = {}
        #: key -> the index of its last deletion, oldest first (see the module docstring).
        self.tombstones: dict[str, int] = {}
        self.forgotten_through = 0
        self.max_tombstones = max_tombstones
        # Every key in order, built by the first range and then kept up to date (a create
        # or delete costs O(log n)): stores that are never ranged never pay for it. (A flat
        # sorted list moved every key after the one created or deleted: a lease's 200,000
        # keys deleted at once took 5.8-7.4 s, 1,000 creates at the front of 1M keys 0.5 s.)
        self._sorted: SortedList | None = None
        #: When a list, every change made is appended to it (for watches and leases).
        self.changes: list[Change] | None = None
        #: Characters of keys and values deleted, for the owner to reset (what a snapshot
        #: would win back: see ``KVNode``'s quota).
        self.removed_chars = 0

    def lookup(self, key: str) -> KeyState | None:
        """The key's state (value, version, mod_index, create_index), ``None`` if absent."""
        return self._data.get(key)

    def get(self, key: str, index: int = 0) -> GetReply:
        """The key as of ``index`` (this state's, which the reply repeats)."""
        entry = self._data.get(key)
        if entry is None:
            return GetReply("", 0, NO_KEY, index=index)
        return GetReply(entry[0], entry[1], OK, entry[2], entry[3], index)

    def put(self, key: str, value: str, version: int, index: int = 0) -> PutReply:
        current = self._data.get(key)
        if version != (0 if current is None else current[1]):
            return PutReply(NO_KEY if current is None else VERSION)
        self._store(key, value, index, current)
        return _PUT_OK

    def delete(self, key: str, version: int, index: int = 0) -> DeleteReply:
        current = self._data.get(key)
        if current is None:
            return DeleteReply(NO_KEY)
        if version != current[1]:
            return DeleteReply(VERSION)
        self._remove(key, index)
        return DeleteReply(OK)

    def append(self, key: str, arg: str, index: int = 0) -> AppendReply:
        current = self._data.get(key)
        self._store(key, arg if current is None else current[0] + arg, index, current)
        return AppendReply(OK)

    def range(self, prefix: str, start: str, end: str, limit: int, index: int = 0) -> RangeReply:
        keys = self._sorted_keys()
        items: list[KeyRecord] = []
        chars = 0
        for key in keys.islice(keys.bisect_left(max(start, prefix))):
            if (end and key >= end) or not key.startswith(prefix):
                break
            value, version, mod_index, create_index = self._data[key]
            chars += len(key) + len(value)
            if len(items) == limit or (items and chars > MAX_RANGE_CHARS):
                return RangeReply(OK, items, index, more=True, next=key)
            items.append(KeyRecord(key, value, version, mod_index, create_index))
        return RangeReply(OK, items, index)

    def txn(
        self,
        compares: list[tuple[str, str, str, str | int]],
        success: list[TxnBranchOp],
        failure: list[TxnBranchOp],
        index: int = 0,
    ) -> TxnReply:
        """``compares`` are (key, target, op, operand), branch ops (op, key, value, lease),
        all valid (see :meth:`KVMachine.apply`; leases are the machine's business)."""
        succeeded = self.holds(compares)
        results = []
        for op, key, value, _ in success if succeeded else failure:
            if op == "get":
                got = self.get(key)
                results.append(KeyResult(got.err, got.value, got.version, got.mod_index,
                                         got.create_index))  # fmt: skip
            elif op == "put":
                state = self._store(key, value, index, self._data.get(key))
                _, version, mod_index, create_index = state
                results.append(KeyResult(OK, "", version, mod_index, create_index))
            elif key in self._data:
                self._remove(key, index)
                results.append(KeyResult(OK))
            else:
                results.append(KeyResult(NO_KEY))
        return TxnReply(OK, succeeded, results, index)

    def holds(self, compares: list[tuple[str, str, str, str | int]]) -> bool:
        """Whether every (valid) compare holds."""
        return all(self._holds(*compare) for compare in compares)

    def _holds(self, key: str, target: str, op: str, operand: str | int) -> bool:
        value, version, mod_index, create_index = self._data.get(key, ("", 0, 0, 0))
        actual: str | int
        if target == "value":
            actual = value
        elif target == "version":
            actual = version
        elif target == "mod_index":
            actual = mod_index
        else:
            actual = create_index
        if op == "=":
            return actual == operand
        if op == "!=":
            return actual != operand
        if op == "<":
            return actual < operand  # type: ignore[operator]  # same types: checked
        return actual > operand  # type: ignore[operator]

    def _store(self, key: str, value: str, index: int, current: KeyState | None) -> KeyState:
        """Set ``key`` (now at ``current``) to ``value`` at its next version, at ``index``."""
        if current is None:
            state = (value, 1, index, index)
            if self._sorted is not None:
                self._sorted.add(key)
        else:
            state = (value, current[1] + 1, index, current[3])
        self._data[key] = state
        if self.changes is not None:
            self.changes.append(Change(index, key, "put", value, state[1], state[3]))
        return state

    def remove(self, key: str, index: int) -> bool:
        """Delete ``key`` whatever its version (a lease's expiry); whether it was there."""
        if key not in self._data:
            return False
        self._remove(key, index)
        return True

    def deleted_after(self, key: str, index: int) -> bool:
        """Whether ``key`` may have been deleted after ``index``."""
        return self.forgotten_through > index or self.tombstones.get(key, -1) > index

    def _remove(self, key: str, index: int) -> None:
        self.removed_chars += len(key) + len(self._data.pop(key)[0])
        self.tombstones.pop(key, None)
        self.tombstones[key] = index
        if len(self.tombstones) > self.max_tombstones:
            oldest = next(iter(self.tombstones))
            self.forgotten_through = max(self.forgotten_through, self.tombstones.pop(oldest))
        if self._sorted is not None:
            self._sorted.remove(key)
        if self.changes is not None:
            self.changes.append(Change(index, key, "delete", "", 0, 0))

    def _sorted_keys(self) -> SortedList:
        if self._sorted is None:
            self._sorted = SortedList(self._data)
        return self._sorted

    def __len__(self) -> int:
        return len(self._data)

    def items(self) -> dict[str, KeyState]:
        return dict(self._data)

    def replace(
        self, items: dict[str, KeyState], tombstones: dict[str, int], forgotten_through: int
    ) -> None:
        self._data = dict(items)
        self._sorted = None
        self.tombstones = dict(tombstones)
        self.forgotten_through = forgotten_through


class KVMachine:
    """The replicated KV's state machine: ops are dicts as the servers log them (see
    :func:`~trioraft.kv.messages.log_op`): ``get``, ``put``, ``delete``, ``range``, ``txn``,
    ``open`` and ``append``; ``apply(op, index)`` returns the reply. ``max_sessions`` must be
    the same on every replica.
    """

    def __init__(
        self,
        *,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_leases: int = DEFAULT_MAX_LEASES,
        history: WatchHistory | None = None,
        keep_changes: bool = True,
    ) -> None:
        """``keep_changes=False`` (a server without watches or leases) records no changes."""
        self.kv = VersionedKV()
        # Drained after every op into the history and the leases.
        self.kv.changes = [] if keep_changes else None
        # session -> (last seq, its reply), least recently used first
        self.sessions: dict[str, tuple[int, str]] = {}
        self.opened = 0  # sessions ever opened: numbers the next one
        self.max_sessions = max_sessions
        self.leases = LeaseTable(max_leases=max_leases)
        self.history = history if history is not None else WatchHistory()
        # The index of the last change (what a restored history starts over at: nothing
        # changed between it and the snapshot's index).
        self.changed_at = 0
        # (key, lease) for each key the op being applied leaves tied to a lease.
        self._attach: list[tuple[str, int]] = []

    def apply(self, op: Any, index: int = 0) -> Reply:
        """Apply ``op``, logged at ``index``; its reply (``BadOp`` if it is not an op)."""
        reply = self._apply(op, index)
        changes = self.kv.changes
        if changes:
            for change in changes:
                self.leases.detach(change.key)  # a write without a lease, or a delete
            for key, lease in self._attach:
                self.leases.attach(key, lease)
            self.history.record(index, changes)
            self.changed_at = index
            changes.clear()
        self._attach.clear()
        return reply

    def _apply(self, op: Any, index: int) -> Reply:
        if type(op) is not dict or type(op.get("key")) is not str:
            return PutReply(BAD_OP)
        kind = op.get("op")
        retry_after = op.get("retry_after")
        if kind not in ("put", "delete", "txn"):
            retry_after = None  # only these writes are retried with it
        elif retry_after is not None and not _is_version(retry_after):
            return PutReply(BAD_OP)
        if kind == "get":
            return self.kv.get(op["key"], index)
        if kind == "put":
            value, version, lease = op.get("value"), op.get("version"), op.get("lease", 0)
            if type(value) is not str or not _is_version(version) or not _is_version(lease):
                return PutReply(BAD_OP)
            if self._deleted_since([op["key"]], retry_after, index):
                return PutReply(VERSION)
            if lease and lease not in self.leases.leases:
                return PutReply(NO_LEASE)
            reply = self.kv.put(op["key"], value, version, index)
            if lease and reply.err == OK:
                self._attach.append((op["key"], lease))
            return reply
        if kind == "delete":
            version = op.get("version")
            if not _is_version(version):
                return DeleteReply(BAD_OP)
            if self._deleted_since([op["key"]], retry_after, index):
                return DeleteReply(VERSION)
            return self.kv.delete(op["key"], version, index)
        if kind == "append":
            value, session, seq = op.get("value"), op.get("session"), op.get("seq")
            if type(value) is not str or type(session) is not str or type(seq) is not int:
                return AppendReply(BAD_OP)
            return self._append(op["key"], value, session, seq, index)
        if kind == "range":
            prefix, start, end, limit = (op.get(f) for f in ("prefix", "start", "end", "limit"))
            if (
                type(prefix) is not str
                or type(start) is not str
                or type(end) is not str
                or type(limit) is not int
                or not 1 <= limit <= MAX_RANGE_LIMIT
            ):
                return RangeReply(BAD_OP)
            return self.kv.range(prefix, start, end, limit, index)
        if kind == "txn":
            parsed = _parse_txn(op)
            if parsed is None:
                return TxnReply(BAD_OP)
            compares, success, failure = parsed
            retried = retry_after is not None
            keys = _txn_keys(compares, success + failure) if retried else []
            if self._deleted_since(keys, retry_after, index):  # its compares may hold again
                return TxnReply(OK, False, [], index)  # as if they failed: nothing runs
            leases = {lease for _, _, _, lease in success + failure if lease}
            if any(lease not in self.leases.leases for lease in leases):
                return TxnReply(NO_LEASE)  # nothing applies
            if retry_after is not None and not self.kv.holds(compares):
                # Its compares may fail because its first attempt applied (either branch):
                # the failure branch must not run again. Its client reports Maybe.
                return TxnReply(OK, False, [], index)
            reply = self.kv.txn(compares, success, failure, index)
            last_write: dict[str, int] = {}  # key -> the lease its last write in the branch names
            for kind_, key, _, lease in success if reply.succeeded else failure:
                if kind_ != "get":
                    last_write[key] = lease if kind_ == "put" else 0
            self._attach += [(key, lease) for key, lease in last_write.items() if lease]
            return reply
        if kind == "lease_grant":
            ttl = op.get("ttl")
            if type(ttl) is not int or not 1 <= ttl <= MAX_LEASE_TTL:
                return LeaseReply(BAD_OP)
            lease = self.leases.grant(ttl)
            return LeaseReply(NO_SPACE) if lease is None else LeaseReply(OK, lease, ttl)
        if kind in ("lease_revoke", "lease_ttl"):
            lease = op.get("lease")
            if type(lease) is not int:
                return LeaseReply(BAD_OP)
            known = self.leases.leases.get(lease)
            if known is None:
                return LeaseReply(NO_LEASE, lease)
            if kind == "lease_revoke":
                self._revoke(lease, index)
            return LeaseReply(OK, lease, known.ttl)
        if kind == "open" and type(op.get("nonce")) is str:
            lease = op.get("lease", 0)
            if not _is_version(lease):
                return OpenSessionReply(BAD_OP)
            if lease and lease not in self.leases.leases:
                return OpenSessionReply(NO_LEASE)
            self.opened += 1
            session = f"{self.opened}-{op['nonce']}"
            self._remember(session, (0, OK))
            if lease:
                self.leases.attach_session(session, lease)
            return OpenSessionReply(OK, session)
        return PutReply(BAD_OP)

    def _deleted_since(self, keys: list[str], retry_after: int | None, index: int) -> bool:
        """Whether one of a retried write's ``keys`` (a txn's: every key it writes or
        compares) may have been deleted after ``retry_after`` (``None``: not a retry), the
        retry applying at ``index``. A client cannot have seen ``index`` or later before its
        first attempt: if it claims to, its history is not this one (a store restored from a
        backup, or restarted empty, after the client saw later indexes), and any key may
        have been."""
        if retry_after is None:
            return False
        if 0 < index <= retry_after:
            return True
        return any(self.kv.deleted_after(key, retry_after) for key in keys)

    def _revoke(self, lease: int, index: int) -> None:
        gone = self.leases.revoke(lease)
        if gone is not None:
            for key in sorted(gone.keys):
                self.kv.remove(key, index)
            for session in sorted(gone.sessions):
                self.sessions.pop(session, None)

    def _append(self, key: str, value: str, session: str, seq: int, index: int) -> AppendReply:
        last = self.sessions.pop(session, None)
        if last is None:
            return AppendReply(SESSION_EXPIRED)  # forgotten (or never opened)
        if seq <= last[0]:
            self.sessions[session] = last  # now the most recently used
            return AppendReply(last[1])  # a retry of an append already applied
        reply = self.kv.append(key, value, index)
        self._remember(session, (seq, reply.err))
        return reply

    def _remember(self, session: str, last: tuple[int, str]) -> None:
        self.sessions[session] = last
        if len(self.sessions) > self.max_sessions:
            forgotten = next(iter(self.sessions))  # the least recently used
            del self.sessions[forgotten]
            self.leases.detach_session(forgotten)

    def copy(self) -> KVMachine:
        """A machine in the same state (no watch history), to snapshot away from this one."""
        copy = KVMachine(max_sessions=self.max_sessions, max_leases=self.leases.max_leases)
        copy.kv.replace(self.kv.items(), self.kv.tombstones, self.kv.forgotten_through)
        copy.kv.max_tombstones = self.kv.max_tombstones
        copy.sessions = dict(self.sessions)
        copy.opened = self.opened
        copy.leases.replace_from_wire(self.leases.to_wire())
        copy.changed_at = self.changed_at
        return copy

    def snapshot(self) -> bytes:
        return b"".join(self.snapshot_pieces())

    def snapshot_pieces(self) -> Iterator[bytes]:
        """The snapshot's JSON in pieces, each encoded by one short call. In a worker thread
        the event loop gets the GIL back between pieces: the state encoded in one call held
        it throughout (half a second for 100 MB, past an election timeout: a backup or a
        compaction cost the leader its leadership)."""
        rest = {
            "format": SNAPSHOT_FORMAT,
            "tombstones": self.kv.tombstones,
            "forgotten_through": self.kv.forgotten_through,
            "sessions": self.sessions,
            "opened": self.opened,
            "leases": self.leases.to_wire(),
            "changed_at": self.changed_at,
        }
        yield stdlib_json(rest).encode()[:-1] + b',"kv":{'
        separator = b""
        piece: dict[str, KeyState] = {}
        size = 0
        ascii_only = True
        for key, state in self.kv.items().items():
            piece[key] = state
            size += len(key) + len(state[0])
            ascii_only = ascii_only and key.isascii() and state[0].isascii()
            if size >= _SNAPSHOT_PIECE_CHARS:
                yield separator + _piece_json(piece, ascii_only)[1:-1]
                separator, piece, size, ascii_only = b",", {}, 0, True
        if piece:
            yield separator + _piece_json(piece, ascii_only)[1:-1]
        yield b"}}"

    def restore(self, data: bytes) -> None:
        kv, tombstones, forgotten_through, sessions, opened, leases, changed_at = _parse_snapshot(
            data
        )
        self.kv.replace(kv, tombstones, forgotten_through)
        self.sessions = sessions
        self.opened = opened
        self.leases = leases
        leases.keep_sessions(sessions)
        self.changed_at = changed_at
        self.history.reset(changed_at)

    @staticmethod
    def check_snapshot(data: bytes) -> None:
        """Raise ``ValueError`` unless ``data`` restores into a machine."""
        _parse_snapshot(data)


def _piece_json(piece: dict[str, KeyState], ascii_only: bool) -> bytes:
    """A piece of a snapshot as JSON. orjson only for ASCII: for any other string it keeps
    the UTF-8 form it makes inside the string object, for good, and a snapshot's strings
    are the live machine's (its copy shares them): 2-3 x their memory."""
    return dump_json(piece) if ascii_only else stdlib_json(piece).encode()


def _is_version(version: object) -> bool:
    return type(version) is int and version >= 0


def _txn_keys(
    compares: list[tuple[str, str, str, str | int]], branches: list[TxnBranchOp]
) -> list[str]:
    """The keys a parsed txn compares or writes."""
    return [compare[0] for compare in compares] + [op[1] for op in branches]


def _parse_txn(
    op: dict[str, Any],
) -> tuple[list[tuple[str, str, str, str | int]], list[TxnBranchOp], list[TxnBranchOp]] | None:
    """A logged txn's compares and branches, or ``None`` if any part is malformed."""
    compares_in, success_in, failure_in = op.get("compare"), op.get("success"), op.get("failure")
    if (
        type(compares_in) is not list
        or type(success_in) is not list
        or type(failure_in) is not list
    ):
        return None
    compares: list[tuple[str, str, str, str | int]] = []
    for compare in compares_in:
        if type(compare) is not dict:
            return None
        key, target, how, operand = (compare.get(f) for f in ("key", "target", "op", "operand"))
        if type(key) is not str or target not in COMPARE_TARGETS or how not in COMPARE_OPS:
            return None
        if type(operand) is not (str if target == "value" else int):
            return None
        compares.append((key, target, how, operand))
    branches: list[list[TxnBranchOp]] = [[], []]
    for branch, ops in zip(branches, (success_in, failure_in), strict=True):
        for txn_op in ops:
            if type(txn_op) is not dict:
                return None
            kind, key, value = txn_op.get("op"), txn_op.get("key"), txn_op.get("value", "")
            lease = txn_op.get("lease", 0)
            if kind not in TXN_OPS or type(key) is not str or type(value) is not str:
                return None
            if not _is_version(lease) or (lease and kind != "put"):
                return None
            branch.append((kind, key, value, lease))
    return compares, branches[0], branches[1]


def _parse_snapshot(
    data: bytes,
) -> tuple[
    dict[str, KeyState], dict[str, int], int, dict[str, tuple[int, str]], int, LeaseTable, int
]:
    try:
        state = json.loads(data)
        opened = state["opened"]
        indexed = state.get("format") == SNAPSHOT_FORMAT  # else the format before indexes
        kv = {
            key: (entry[0], entry[1], *((entry[2], entry[3]) if indexed else (0, 0)))
            for key, entry in state["kv"].items()
            if len(entry) == (4 if indexed else 2)
            and type(entry[0]) is str
            and all(type(n) is int for n in entry[1:])
            and entry[1] > 0
        }
        sessions = {
            client: (seq, err)
            for client, (seq, err) in state["sessions"].items()
            if type(seq) is int and type(err) is str
        }
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ValueError(f"not a KV snapshot: {exc!r}") from None
    if len(kv) != len(state["kv"]) or len(sessions) != len(state["sessions"]):
        raise ValueError("not a KV snapshot: a value, version or session of the wrong type")
    if type(opened) is not int or state.get("format", SNAPSHOT_FORMAT) != SNAPSHOT_FORMAT:
        raise ValueError("not a KV snapshot: an unknown format or a session count not an integer")
    leases = LeaseTable()
    if "leases" in state:
        leases.replace_from_wire(state["leases"])
        if any(key not in kv for key in leases.owner):
            raise ValueError("not a KV snapshot: a lease holds a key that does not exist")
    changed_at = state.get("changed_at", 0)
    if type(changed_at) is not int or changed_at < 0:
        raise ValueError("not a KV snapshot: the last change's index is not a natural number")
    # A snapshot from before tombstones: any key may have been deleted up to its index.
    tombstones = state.get("tombstones", {})
    forgotten_through = state.get("forgotten_through", changed_at)
    if (
        type(tombstones) is not dict
        or not all(_is_version(index) for index in tombstones.values())
        or not _is_version(forgotten_through)
    ):
        raise ValueError("not a KV snapshot: a tombstone's index is not a natural number")
    return kv, tombstones, forgotten_through, sessions, opened, leases, changed_at
