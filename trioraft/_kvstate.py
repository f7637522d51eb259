"""The versioned key/value state machine: pure, deterministic, no I/O.

Rules (the whole protocol):
- Every key has a version; version 0 means the key is absent, and a get of an absent key
  answers ``NoKey`` with value ``""`` and version 0.
- ``put(key, value, version)`` applies only when ``version`` equals the key's current version;
  it then stores ``value`` and increments the version (so a put at version 0 creates a key at
  version 1). Otherwise it changes nothing and answers ``NoKey`` when the key is absent
  (``version > 0``), ``Version`` when it exists.
- The machine holds only the keys: nothing grows with the number of clients.
"""

from __future__ import annotations

from ._messages import NO_KEY, OK, VERSION, GetReply, PutReply


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

    def __len__(self) -> int:
        return len(self._data)
