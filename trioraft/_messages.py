"""The KV wire protocol: one frozen dataclass per request and reply body.

``POST /get {"key"}`` → ``{"value", "version", "err"}``;
``POST /put {"key", "value", "version"}`` → ``{"err"}``.
``POST /append {"key", "value", "client_id", "seq"}`` → ``{"err"}`` (replicated KV only).
Error strings on the wire are ``OK``, ``NoKey``, ``Version`` and, from a replicated server
that cannot serve the call, ``WrongLeader``; ``Maybe`` never travels (only a client reports
it). Version 0 means "the key does not exist".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ._codec import non_negative

OK: Final = "OK"
NO_KEY: Final = "NoKey"
VERSION: Final = "Version"
WRONG_LEADER: Final = "WrongLeader"


@dataclass(frozen=True, slots=True)
class GetArgs:
    key: str


@dataclass(frozen=True, slots=True)
class GetReply:
    value: str
    version: int
    err: str


@dataclass(frozen=True, slots=True)
class PutArgs:
    key: str
    value: str
    version: int = non_negative()


@dataclass(frozen=True, slots=True)
class PutReply:
    err: str


@dataclass(frozen=True, slots=True)
class AppendArgs:
    key: str
    value: str
    client_id: str
    seq: int = non_negative()


@dataclass(frozen=True, slots=True)
class AppendReply:
    err: str
