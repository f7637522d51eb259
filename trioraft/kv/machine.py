"""The versioned key/value state machine: pure, deterministic, no I/O.

Rules (the whole protocol):
- Every key has a version; version 0 means the key is absent, and a get of an absent key
  answers ``NoKey`` with value ``""`` and version 0.
- ``put(key, value, version)`` applies only when ``version`` equals the key's current version;
  it then stores ``value`` and increments the version (so a put at version 0 creates a key at
  version 1). Otherwise it changes nothing and answers ``NoKey`` when the key is absent
  (``version > 0``), ``Version`` when it exists.
- ``append(key, arg)`` adds ``arg`` to the end of the value (an absent key acts like a put
  at version 0) and increments the version.
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
- ``apply`` never raises for a malformed op (an entry from a faulty peer, say): it answers
  ``BadOp`` and changes nothing, identically on every replica. ``restore`` (and
  ``check_snapshot``) raise ``ValueError`` for data that is not a snapshot of this machine.
"""

from __future__ import annotations

import json
from typing import Any

from .messages import (
    BAD_OP,
    NO_KEY,
    OK,
    SESSION_EXPIRED,
    VERSION,
    AppendReply,
    GetReply,
    OpenSessionReply,
    PutReply,
)

#: Clients whose last append the replicated KV remembers (each costs ~100-300 bytes).
DEFAULT_MAX_SESSIONS = 100_000


class VersionedKV:
    """The KV state machine. ``get`` and ``put`` return the wire replies."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[str, tuple[str, int]] = {}

    def get(self, key: str) -> GetReply:
        entry = self._data.get(key)
        if entry is None:
            return GetReply("", 0, NO_KEY)
        return GetReply(entry[0], entry[1], OK)

    def put(self, key: str, value: str, version: int) -> PutReply:
        current = self._data.get(key)
        current_version = 0 if current is None else current[1]
        if version != current_version:
            return PutReply(NO_KEY if current is None else VERSION)
        self._data[key] = (value, current_version + 1)
        return PutReply(OK)

    def append(self, key: str, arg: str) -> AppendReply:
        value, version = self._data.get(key, ("", 0))
        self._data[key] = (value + arg, version + 1)
        return AppendReply(OK)

    def __len__(self) -> int:
        return len(self._data)

    def items(self) -> dict[str, tuple[str, int]]:
        return dict(self._data)

    def replace(self, items: dict[str, tuple[str, int]]) -> None:
        self._data = dict(items)


class KVMachine:
    """The replicated KV's state machine: ops are dicts as the servers log them.

    ``{"op": "get", "key"}``, ``{"op": "put", "key", "value", "version"}``,
    ``{"op": "open", "key", "nonce"}``, ``{"op": "append", "key", "value", "session", "seq"}``;
    ``apply`` returns the reply. ``max_sessions`` must be the same on every replica.
    """

    def __init__(self, *, max_sessions: int = DEFAULT_MAX_SESSIONS) -> None:
        self.kv = VersionedKV()
        # session -> (last seq, its reply), least recently used first
        self.sessions: dict[str, tuple[int, str]] = {}
        self.opened = 0  # sessions ever opened: numbers the next one
        self.max_sessions = max_sessions

    def apply(self, op: Any) -> GetReply | PutReply | AppendReply | OpenSessionReply:
        if type(op) is not dict or type(op.get("key")) is not str:
            return PutReply(BAD_OP)
        kind = op.get("op")
        if kind == "get":
            return self.kv.get(op["key"])
        if kind == "put":
            value, version = op.get("value"), op.get("version")
            if type(value) is not str or type(version) is not int or version < 0:
                return PutReply(BAD_OP)
            return self.kv.put(op["key"], value, version)
        if kind == "append":
            value, session, seq = op.get("value"), op.get("session"), op.get("seq")
            if type(value) is not str or type(session) is not str or type(seq) is not int:
                return AppendReply(BAD_OP)
            return self._append(op["key"], value, session, seq)
        if kind == "open" and type(op.get("nonce")) is str:
            self.opened += 1
            session = f"{self.opened}-{op['nonce']}"
            self._remember(session, (0, OK))
            return OpenSessionReply(OK, session)
        return PutReply(BAD_OP)

    def _append(self, key: str, value: str, session: str, seq: int) -> AppendReply:
        last = self.sessions.pop(session, None)
        if last is None:
            return AppendReply(SESSION_EXPIRED)  # forgotten (or never opened)
        if seq <= last[0]:
            self.sessions[session] = last  # now the most recently used
            return AppendReply(last[1])  # a retry of an append already applied
        reply = self.kv.append(key, value)
        self._remember(session, (seq, reply.err))
        return reply

    def _remember(self, session: str, last: tuple[int, str]) -> None:
        self.sessions[session] = last
        if len(self.sessions) > self.max_sessions:
            del self.sessions[next(iter(self.sessions))]  # the least recently used

    def snapshot(self) -> bytes:
        state = {"kv": self.kv.items(), "sessions": self.sessions, "opened": self.opened}
        return json.dumps(state, separators=(",", ":")).encode()

    def restore(self, data: bytes) -> None:
        kv, sessions, opened = _parse_snapshot(data)
        self.kv.replace(kv)
        self.sessions = sessions
        self.opened = opened

    @staticmethod
    def check_snapshot(data: bytes) -> None:
        """Raise ``ValueError`` unless ``data`` restores into a machine."""
        _parse_snapshot(data)


def _parse_snapshot(
    data: bytes,
) -> tuple[dict[str, tuple[str, int]], dict[str, tuple[int, str]], int]:
    try:
        state = json.loads(data)
        opened = state["opened"]
        kv = {
            key: (value, version)
            for key, (value, version) in state["kv"].items()
            if type(value) is str and type(version) is int and version > 0
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
    if type(opened) is not int:
        raise ValueError("not a KV snapshot: the session count is not an integer")
    return kv, sessions, opened
