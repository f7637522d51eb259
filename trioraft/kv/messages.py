"""The KV wire protocol: one frozen dataclass per request and reply body.

``POST /get {"key"}`` → ``{"value", "version", "err"}``;
``POST /put {"key", "value", "version"}`` → ``{"err"}``.
``POST /append {"key", "value", "client_id", "seq"}`` → ``{"err"}`` (replicated KV only).
``POST /batch {"ops": [op, ...]}`` → ``{"results": [result, ...]}``: each op is an object
``{"op": "get" | "put" | "append", ...}`` with the fields of that call, each result has
``err`` and, for a get, ``value`` and ``version``; ops are independent (not a transaction)
and answered in order, as if sent one by one, concurrently.
Error strings on the wire are ``OK``, ``NoKey``, ``Version`` and, from a replicated server
that cannot serve the call, ``WrongLeader``; ``Maybe`` never travels (only a client reports
it). Version 0 means "the key does not exist".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .._errors import BadRequest
from ..rpc.codec import non_negative

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


#: Most ops one ``/batch`` request may carry.
MAX_BATCH_OPS = 10_000


@dataclass(frozen=True, slots=True)
class BatchOp:
    """One op of a batch: ``get`` uses ``key``; ``put`` adds ``value`` and ``version``;
    ``append`` adds ``value``, ``client_id`` and ``seq``."""

    op: str
    key: str
    value: str = ""
    version: int = non_negative(0)
    client_id: str = ""
    seq: int = non_negative(0)

    def validate(self, where: str) -> None:
        if self.op not in ("get", "put", "append"):
            raise BadRequest(f"{where}.op: expected 'get', 'put' or 'append', got {self.op!r}")
        if self.op == "append" and not self.client_id:
            raise BadRequest(f"{where}.client_id: an append needs a client id")


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


def as_result(reply: GetReply | PutReply | AppendReply) -> OpResult:
    """A single call's reply as the result of the same op in a batch."""
    if isinstance(reply, GetReply):
        return OpResult(reply.err, reply.value, reply.version)
    return OpResult(reply.err)


def log_op(op: BatchOp) -> dict[str, object]:
    """The op as the replicated KV logs it: only the fields its kind uses."""
    if op.op == "get":
        return {"op": "get", "key": op.key}
    if op.op == "put":
        return {"op": "put", "key": op.key, "value": op.value, "version": op.version}
    return {
        "op": "append",
        "key": op.key,
        "value": op.value,
        "client_id": op.client_id,
        "seq": op.seq,
    }
