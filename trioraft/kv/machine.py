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
  :class:`KVMachine` (the replicated one) also remembers, per client that appends, its last
  sequence number and reply, so a retried append is applied exactly once; clients that only
  get and put are never in that table.
"""

from __future__ import annotations

import json
from typing import Any

from .messages import NO_KEY, OK, VERSION, AppendReply, GetReply, PutReply


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
    ``{"op": "append", "key", "value", "client_id", "seq"}``; ``apply`` returns the reply.
    """

    def __init__(self) -> None:
        self.kv = VersionedKV()
        self.sessions: dict[str, tuple[int, str]] = {}  # client id -> (last seq, its reply)

    def apply(self, op: dict[str, Any]) -> GetReply | PutReply | AppendReply:
        kind = op["op"]
        if kind == "get":
            return self.kv.get(op["key"])
        if kind == "put":
            return self.kv.put(op["key"], op["value"], op["version"])
        if kind == "append":
            client, seq = op["client_id"], op["seq"]
            last = self.sessions.get(client)
            if last is not None and seq <= last[0]:
                return AppendReply(last[1])  # a retry of an append already applied
            reply = self.kv.append(op["key"], op["value"])
            self.sessions[client] = (seq, reply.err)
            return reply
        raise ValueError(f"unknown op {kind!r}")

    def snapshot(self) -> bytes:
        state = {"kv": self.kv.items(), "sessions": self.sessions}
        return json.dumps(state, separators=(",", ":")).encode()

    def restore(self, data: bytes) -> None:
        state = json.loads(data)
        self.kv.replace({k: (v[0], v[1]) for k, v in state["kv"].items()})
        self.sessions = {c: (s[0], s[1]) for c, s in state["sessions"].items()}
