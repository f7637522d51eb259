"""The KV wire protocol: one frozen dataclass per request and reply body.

``POST /get {"key"}`` → ``{"value", "version", "err"}``;
``POST /put {"key", "value", "version"}`` → ``{"err"}``.
``POST /open_session {}`` → ``{"err", "session"}`` and
``POST /append {"key", "value", "session", "seq"}`` → ``{"err"}`` (replicated KV only): a
client opens a session once, then numbers its appends in it from 1; a retried append (same
session and seq) is applied once.
``POST /batch {"ops": [op, ...]}`` → ``{"results": [result, ...]}``: each op is an object
``{"op": "get" | "put" | "append" | "open", ...}`` with the fields of that call (``open``
takes none but ``key``, which it ignores), each result has ``err`` and, for a get, ``value``
and ``version`` (for an open, ``value`` is the session); ops are independent (not a
transaction) and answered in order, as if sent one by one, concurrently.
Error strings on the wire are ``OK``, ``NoKey``, ``Version`` and, from a replicated server,
``WrongLeader`` (it cannot serve the call: try another), ``NoSpace`` (its storage quota is
used up: writes are refused) and ``SessionExpired`` (an append's session is not, or no
longer, known: open a new one); ``Maybe`` never travels (only a client reports it). Version
0 means "the key does not exist". Keys are at most :data:`MAX_KEY_BYTES` bytes.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Final

from .._errors import BadRequest
from ..rpc.codec import non_negative

OK: Final = "OK"
NO_KEY: Final = "NoKey"
VERSION: Final = "Version"
WRONG_LEADER: Final = "WrongLeader"
SESSION_EXPIRED: Final = "SessionExpired"
NO_SPACE: Final = "NoSpace"
#: The answer to a logged op that is not one (only a faulty peer could have logged it).
BAD_OP: Final = "BadOp"

#: The longest key any KV server accepts, in UTF-8 bytes.
MAX_KEY_BYTES = 4096


def check_key(key: str, where: str = "key") -> None:
    """Refuse (400) a key longer than :data:`MAX_KEY_BYTES`."""
    if len(key) > MAX_KEY_BYTES // 4:
        # JSON may carry lone surrogates ("\ud800"): count them as UTF-8 would, 3 bytes.
        size = len(key.encode("utf-8", "surrogatepass"))
        if size > MAX_KEY_BYTES:
            raise BadRequest(f"{where}: {size} bytes, at most {MAX_KEY_BYTES}")


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
    session: str
    seq: int = non_negative()


@dataclass(frozen=True, slots=True)
class AppendReply:
    err: str


@dataclass(frozen=True, slots=True)
class OpenSessionArgs:
    pass


@dataclass(frozen=True, slots=True)
class OpenSessionReply:
    err: str
    session: str = ""


#: Most ops one ``/batch`` request may carry.
MAX_BATCH_OPS = 10_000


@dataclass(frozen=True, slots=True)
class BatchOp:
    """One op of a batch: ``get`` uses ``key``; ``put`` adds ``value`` and ``version``;
    ``append`` adds ``value``, ``session`` and ``seq``; ``open`` opens a session."""

    op: str
    key: str
    value: str = ""
    version: int = non_negative(0)
    session: str = ""
    seq: int = non_negative(0)

    def validate(self, where: str) -> None:
        if self.op not in BATCH_OPS:
            raise BadRequest(f"{where}.op: expected one of {', '.join(BATCH_OPS)}, not {self.op!r}")
        if self.op == "append" and not self.session:
            raise BadRequest(f"{where}.session: an append needs a session (open one first)")
        check_key(self.key, f"{where}.key")


BATCH_OPS = ("get", "put", "append", "open")


@dataclass(frozen=True, slots=True)
class BatchArgs:
    ops: list[BatchOp]

    def validate(self) -> None:
        if len(self.ops) > MAX_BATCH_OPS:
            raise BadRequest(f"ops: {len(self.ops)} ops, at most {MAX_BATCH_OPS} per batch")
        for i, op in enumerate(self.ops):
            op.validate(f"ops[{i}]")


@dataclass(frozen=True, slots=True)
class OpResult:
    err: str
    value: str = ""
    version: int = 0


@dataclass(frozen=True, slots=True)
class BatchReply:
    results: list[OpResult]


def as_result(reply: GetReply | PutReply | AppendReply | OpenSessionReply) -> OpResult:
    """A single call's reply as the result of the same op in a batch."""
    if isinstance(reply, GetReply):
        return OpResult(reply.err, reply.value, reply.version)
    if isinstance(reply, OpenSessionReply):
        return OpResult(reply.err, reply.session)
    return OpResult(reply.err)


def json_size_bound(ops: list[BatchOp]) -> int:
    """At least the bytes ``ops`` take as logged JSON: a character escapes to 12 bytes at
    most (a non-BMP one, as two \\u escapes); the rest is bounded per op."""
    return sum(12 * (len(op.key) + len(op.value) + len(op.session)) + 128 for op in ops)


def log_op(op: BatchOp) -> dict[str, object]:
    """The op as the replicated KV logs it: only the fields its kind uses. (An ``open`` gets
    a random nonce here, on the server that proposes it, so session ids cannot be guessed.)"""
    if op.op == "get":
        return {"op": "get", "key": op.key}
    if op.op == "put":
        return {"op": "put", "key": op.key, "value": op.value, "version": op.version}
    if op.op == "open":
        return {"op": "open", "key": "", "nonce": secrets.token_hex(8)}
    return {"op": "append", "key": op.key, "value": op.value, "session": op.session, "seq": op.seq}
