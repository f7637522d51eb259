"""The KV wire protocol: one dataclass per request and reply body, frozen but for the three
made once per op of every batch (:class:`BatchOp`, :class:`OpResult` and the
:class:`GetReply` a get's result is made from), whose construction costs a seventh of a
frozen one's; those are never changed once made either (``dataclasses.replace`` makes a
changed copy), and are not hashable.

``POST /get {"key"}`` → ``{"value", "version", "mod_index", "create_index", "err"}``;
``POST /put {"key", "value", "version"}`` → ``{"err"}``;
``POST /delete {"key", "version"}`` → ``{"err"}`` (conditional on the version, like put);
``POST /range {"prefix"} | {"start", "end"}, "limit"`` → ``{"err", "items", "index", "more",
"next"}``: keys in code point order, each with its value, version and indexes, all as of log
index ``index``; when ``more``, ask again from ``"start": next`` for the rest;
``POST /txn {"compare", "success", "failure"}`` → ``{"err", "succeeded", "results",
"index"}``: if every compare holds, the ``success`` ops run, else the ``failure`` ops, all in
one entry (see :class:`TxnArgs`).
``POST /open_session {}`` → ``{"err", "session"}`` and
``POST /append {"key", "value", "session", "seq"}`` → ``{"err"}`` (replicated KV only): a
client opens a session once, then numbers its appends in it from 1; a retried append (same
session and seq) is applied once.
``POST /batch {"ops": [op, ...]}`` → ``{"results": [result, ...]}``: each op is an object
``{"op": "get" | "put" | "delete" | "append" | "open" | "range" | "txn", "key", ...}`` with
the fields of that call (``open``, ``range`` and ``txn`` ignore ``key``; a range carries its
request in ``range``, a txn in ``txn``), each result has ``err`` and, for a get, ``value``,
``version``, ``mod_index`` and ``create_index`` (for an open, ``value`` is the session; for
a range, ``range`` holds the page; for a txn, ``txn`` the outcome); ops are independent (not
a transaction) and answered in order, as if sent one by one, concurrently.
Error strings on the wire are ``OK``, ``NoKey``, ``Version`` and, from a replicated server,
``WrongLeader`` (it cannot serve the call: try another; such a reply is
:class:`WrongLeaderReply`, whose ``leader`` names the leader's client URL when the server
knows it), ``NoSpace`` (its storage quota is used up: writes are
refused), ``SessionExpired`` (an append's session is not, or no longer, known: open a new
one) and ``ReplyTooLarge`` (a read its reply had no room for: :func:`bound_reply`);
``Maybe`` never travels (only a client reports it). Version 0 means "the key does not
exist"; ``mod_index`` is the log index of the entry that last changed the key,
``create_index`` that of the entry that created it (0 for both when absent). Keys are at
most :data:`MAX_KEY_BYTES` bytes.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from .._errors import BadRequest
from ..rpc.codec import json_string_bytes, non_negative, omit_defaults

OK: Final = "OK"
NO_KEY: Final = "NoKey"
VERSION: Final = "Version"
WRONG_LEADER: Final = "WrongLeader"
SESSION_EXPIRED: Final = "SessionExpired"
NO_SPACE: Final = "NoSpace"
#: The answer to a logged op that is not one (only a faulty peer could have logged it).
BAD_OP: Final = "BadOp"
#: A read whose data did not fit its reply (:data:`MAX_REPLY_BYTES`): ask again.
REPLY_TOO_LARGE: Final = "ReplyTooLarge"

#: The longest key any KV server accepts, in UTF-8 bytes.
MAX_KEY_BYTES = 4096
#: Keys a range answers when its request names no ``limit``, and the most it may name.
DEFAULT_RANGE_LIMIT = 1000
MAX_RANGE_LIMIT = 10_000
#: A range page stops before this many characters of keys and values (it always holds at
#: least one key): a reply stays small whatever the values weigh.
MAX_RANGE_CHARS = 1 << 20
#: Most range ops in one ``/batch`` (each answers up to :data:`MAX_RANGE_CHARS`).
MAX_BATCH_RANGES = 16
#: A reply (``/batch``, ``/txn``) carries at most this many bytes of keys and values as
#: sent (JSON-escaped: see :func:`~trioraft.rpc.codec.json_string_bytes`): past them, gets,
#: ranges and a transaction's gets answer :data:`REPLY_TOO_LARGE` without their data (see
#: :func:`bound_reply`).
MAX_REPLY_BYTES = 16 << 20
#: Most compares, and most ops per branch, of one transaction.
MAX_TXN_COMPARES = 64
MAX_TXN_OPS = 256
#: What a compare may look at, and how it may compare.
COMPARE_TARGETS = ("value", "version", "mod_index", "create_index")
COMPARE_OPS = ("=", "!=", "<", ">")
#: The ops a transaction's branches may run (a txn's writes take no version: its compares
#: are their condition).
TXN_OPS = ("get", "put", "delete")
#: Longest TTL a lease may have, in seconds.
MAX_LEASE_TTL = 24 * 3600
#: Changes a watch answers by default, and at most (one entry's changes may add to it).
DEFAULT_WATCH_LIMIT = 1000
MAX_WATCH_LIMIT = 10_000


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


@dataclass(slots=True)
class GetReply:
    value: str
    version: int
    err: str
    mod_index: int = 0
    create_index: int = 0
    #: The index of the state it was read from (a stale read says how far behind it may be).
    index: int = 0


@dataclass(frozen=True, slots=True)
class WrongLeaderReply:
    """What any route answers when this server cannot serve the call: ``leader`` is the
    leader's client URL when the server knows another one leads, else ``""``."""

    err: str
    leader: str = ""


@dataclass(frozen=True, slots=True)
class PutArgs:
    key: str
    value: str
    version: int = non_negative()
    lease: int = non_negative(0)  # 0: none (a put without a lease detaches the key)


@dataclass(frozen=True, slots=True)
class PutReply:
    err: str


@dataclass(frozen=True, slots=True)
class DeleteArgs:
    key: str
    version: int = non_negative()


@dataclass(frozen=True, slots=True)
class DeleteReply:
    err: str


@dataclass(frozen=True, slots=True)
class AppendArgs:
    key: str
    value: str
    session: str
    seq: int = field(metadata={"min": 1})  # from 1: a new session has seen 0


@dataclass(frozen=True, slots=True)
class AppendReply:
    err: str


@dataclass(frozen=True, slots=True)
class OpenSessionArgs:
    lease: int = non_negative(0)  # 0: none; else the session ends with this lease


@dataclass(frozen=True, slots=True)
class OpenSessionReply:
    err: str
    session: str = ""


@dataclass(frozen=True, slots=True)
class RangeArgs:
    """Keys ``k`` with ``start <= k``, ``k < end`` (no bound when ``end`` is empty) and
    ``k.startswith(prefix)``, in code point order, at most ``limit`` of them."""

    prefix: str = ""
    start: str = ""
    end: str = ""
    limit: int = field(default=DEFAULT_RANGE_LIMIT, metadata={"min": 1})

    def validate(self, where: str = "body") -> None:
        if self.limit > MAX_RANGE_LIMIT:
            raise BadRequest(f"{where}.limit: {self.limit}, at most {MAX_RANGE_LIMIT}")
        for name in ("prefix", "start", "end"):
            check_key(getattr(self, name), f"{where}.{name}")


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key of a range, with everything a get answers about it."""

    key: str
    value: str
    version: int
    mod_index: int
    create_index: int


@dataclass(frozen=True, slots=True)
class RangeReply:
    err: str
    items: list[KeyRecord] = field(default_factory=list)
    index: int = 0  # the log index the page is as of
    more: bool = False  # keys past this page remain: ask again from "start": next
    next: str = ""


@dataclass(frozen=True, slots=True)
class RangePage:
    """A range's answer as one result of a batch."""

    items: list[KeyRecord]
    index: int
    more: bool
    next: str


@dataclass(frozen=True, slots=True)
class Compare:
    """``key``'s target ``op`` the given operand, e.g. ``{"key": "a", "op": "=",
    "version": 3}``: exactly one of ``value``, ``version``, ``mod_index`` and
    ``create_index`` names both the target and the operand. An absent key has value ``""``
    and 0 for the others."""

    key: str
    op: str
    value: str | None = None
    version: int | None = None
    mod_index: int | None = None
    create_index: int | None = None

    def target(self) -> tuple[str, str | int]:
        """The one field given, and its operand (call after :meth:`validate`)."""
        for name in COMPARE_TARGETS:
            operand = getattr(self, name)
            if operand is not None:
                return name, operand
        raise AssertionError("validated compares name a target")

    def validate(self, where: str) -> None:
        if self.op not in COMPARE_OPS:
            raise BadRequest(
                f"{where}.op: expected one of {', '.join(COMPARE_OPS)}, not {self.op!r}"
            )
        given = [name for name in COMPARE_TARGETS if getattr(self, name) is not None]
        if len(given) != 1:
            raise BadRequest(
                f"{where}: give exactly one of {', '.join(COMPARE_TARGETS)} (got {len(given)})"
            )
        check_key(self.key, f"{where}.key")


@dataclass(frozen=True, slots=True)
class TxnArgs:
    """If every compare holds, run the ``success`` ops, else the ``failure`` ops: all in one
    log entry, in order, each with its own result. Branch ops are ``get``, ``put`` (stores
    the value at the key's next version) and ``delete`` (``NoKey`` if absent), with no
    version: the compares are their condition. Nothing nests: a branch holds no txn."""

    compare: list[Compare] = field(default_factory=list)
    success: list[TxnOp] = field(default_factory=list)
    failure: list[TxnOp] = field(default_factory=list)

    def validate(self, where: str = "body") -> None:
        if len(self.compare) > MAX_TXN_COMPARES:
            raise BadRequest(f"{where}.compare: {len(self.compare)}, at most {MAX_TXN_COMPARES}")
        for i, compare in enumerate(self.compare):
            compare.validate(f"{where}.compare[{i}]")
        for name in ("success", "failure"):
            ops = getattr(self, name)
            if len(ops) > MAX_TXN_OPS:
                raise BadRequest(f"{where}.{name}: {len(ops)} ops, at most {MAX_TXN_OPS}")
            for i, op in enumerate(ops):
                op.validate(f"{where}.{name}[{i}]")


@dataclass(frozen=True, slots=True)
class TxnOp:
    """One op of a transaction's branch: ``get``, ``put`` (of ``value``, tied to ``lease``
    when not 0, as a put's) or ``delete``."""

    op: str
    key: str
    value: str = ""
    lease: int = non_negative(0)

    def validate(self, where: str) -> None:
        if self.op not in TXN_OPS:
            raise BadRequest(f"{where}.op: expected one of {', '.join(TXN_OPS)}, not {self.op!r}")
        check_key(self.key, f"{where}.key")
        if self.lease and self.op != "put":
            raise BadRequest(f"{where}.lease: only a put takes a lease")


@dataclass(frozen=True, slots=True)
class KeyResult:
    """The result of one op of a transaction: for a get, what a get answers; for a put, the
    key's new version and indexes; for a delete, only ``err``."""

    err: str
    value: str = ""
    version: int = 0
    mod_index: int = 0
    create_index: int = 0


@dataclass(frozen=True, slots=True)
class TxnReply:
    err: str
    succeeded: bool = False
    results: list[KeyResult] = field(default_factory=list)
    index: int = 0  # the log index of the entry the txn applied in


@dataclass(frozen=True, slots=True)
class TxnOutcome:
    """A txn's answer as one result of a batch."""

    succeeded: bool
    results: list[KeyResult]
    index: int


#: Most ops one ``/batch`` request may carry.
MAX_BATCH_OPS = 10_000


@omit_defaults  # a get sends its key, not the ten fields other kinds use
@dataclass(slots=True)
class BatchOp:
    """One op of any client, the vocabulary every KV client speaks: ``get`` uses ``key``;
    ``put`` adds ``value`` and ``version``; ``delete`` adds ``version``; ``append`` adds
    ``value``, ``session`` and ``seq``; ``open`` opens a session; ``range`` carries its
    request in ``range``, ``txn`` in ``txn``. A ``put`` may name a ``lease``;
    ``lease_grant`` takes a ``ttl``, ``lease_keepalive`` and ``lease_revoke`` a ``lease``.
    A client sets ``retry_after`` on every attempt after the first of a ``put``, ``delete``
    or ``txn``: the greatest index it had seen (:attr:`BatchReply.index`) before the first
    (see ``trioraft/kv/machine.py`` for why). A ``get`` or ``range`` marked ``stale`` may be
    answered by any server from what it has applied, without asking the leader; a batch is
    served so only if all its ops are."""

    op: str
    key: str
    value: str = ""
    version: int = non_negative(0)
    session: str = ""
    seq: int = non_negative(0)
    range: RangeArgs | None = None
    txn: TxnArgs | None = None
    lease: int = non_negative(0)
    ttl: int = non_negative(0)
    retry_after: int | None = non_negative(None)
    stale: bool = False

    def validate(self, where: str) -> None:
        if self.op not in BATCH_OPS:
            raise BadRequest(f"{where}.op: expected one of {', '.join(BATCH_OPS)}, not {self.op!r}")
        if self.stale and self.op not in ("get", "range"):
            raise BadRequest(f"{where}.stale: only a get or a range may read stale")
        if self.op == "append" and not self.session:
            raise BadRequest(f"{where}.session: an append needs a session (open one first)")
        if self.op == "append" and self.seq < 1:
            raise BadRequest(f"{where}.seq: an append's sequence number, from 1")
        if self.op == "range":
            if self.range is None:
                raise BadRequest(f"{where}.range: a range op carries its request here")
            self.range.validate(f"{where}.range")
        if self.op == "txn":
            if self.txn is None:
                raise BadRequest(f"{where}.txn: a txn op carries its request here")
            self.txn.validate(f"{where}.txn")
        if self.op == "lease_grant" and not 1 <= self.ttl <= MAX_LEASE_TTL:
            raise BadRequest(f"{where}.ttl: {self.ttl}, from 1 to {MAX_LEASE_TTL} seconds")
        if self.op in ("lease_keepalive", "lease_revoke") and self.lease < 1:
            raise BadRequest(f"{where}.lease: a lease id (from 1)")
        check_key(self.key, f"{where}.key")


BATCH_OPS = (
    "get",
    "put",
    "delete",
    "append",
    "open",
    "range",
    "txn",
    "lease_grant",
    "lease_keepalive",
    "lease_revoke",
)
#: Ops that change nothing: a batch of only these is a read. (A keepalive changes only the
#: leader's clock, after a read confirms the lease.)
READ_OPS = frozenset({"get", "range", "lease_keepalive"})
#: The writes a retry could apply twice but for ``BatchOp.retry_after``.
RETRIED_WRITES = frozenset({"put", "delete", "txn"})


def frees_space(op: BatchOp) -> bool:
    """Whether ``op`` only removes (a delete, a lease revocation, a txn that puts nothing):
    what still runs a little past the storage quota, the way back under it."""
    if op.op in ("delete", "lease_revoke"):
        return True
    if op.op == "txn" and op.txn is not None:
        return all(t.op != "put" for t in (*op.txn.success, *op.txn.failure))
    return False


@dataclass(frozen=True, slots=True)
class BatchArgs:
    ops: list[BatchOp]

    def validate(self, *, reads_only: bool = False) -> None:
        """Check the batch's bounds and each op; ``reads_only`` (``/read``): every op a read."""
        if len(self.ops) > MAX_BATCH_OPS:
            raise BadRequest(f"ops: {len(self.ops)} ops, at most {MAX_BATCH_OPS} per batch")
        ranges = 0
        for i, op in enumerate(self.ops):
            op.validate(f"ops[{i}]")
            if reads_only and op.op not in READ_OPS:
                raise BadRequest(f"ops[{i}].op: {op.op!r} is not a read (send it to /batch)")
            ranges += op.op == "range"
        if ranges > MAX_BATCH_RANGES:
            raise BadRequest(f"ops: {ranges} ranges, at most {MAX_BATCH_RANGES} per batch")

    def reads_with_round(self) -> bool:
        """Whether these ops go to ``/read``, whose heartbeat round starts as the request
        arrives: reads only, not every one of them stale (a stale read needs no round)."""
        return all(op.op in READ_OPS for op in self.ops) and not all(op.stale for op in self.ops)


@omit_defaults  # a put's result is {"err": "OK"} (the README's wire protocol)
@dataclass(slots=True)
class OpResult:
    err: str
    value: str = ""
    version: int = 0
    mod_index: int = 0
    create_index: int = 0
    range: RangePage | None = None
    txn: TxnOutcome | None = None
    lease: int = 0
    ttl: int = 0
    #: A get's: the index of the state it was read from.
    index: int = 0


@dataclass(frozen=True, slots=True)
class BatchReply:
    results: list[OpResult]
    leader: str = ""  # when every result is WrongLeader: the leader's client URL, if known
    index: int = 0  # the greatest index the answering server had applied, 0 if unknown
    #: With WrongLeader results: the server refused every op before proposing it (it was
    #: not the leader), so none applied; ``False`` when it cannot tell.
    refused: bool = False


def as_result(reply: Reply | None) -> OpResult:
    """A single call's reply as the result of the same op in a batch (``BadOp`` for
    ``None``, the RSM's answer to an op the machine raised on)."""
    if reply is None:
        return OpResult(BAD_OP)
    if isinstance(reply, GetReply):
        return OpResult(
            reply.err, reply.value, reply.version, reply.mod_index, reply.create_index,
            index=reply.index,
        )  # fmt: skip
    if isinstance(reply, OpenSessionReply):
        return OpResult(reply.err, reply.session)
    if isinstance(reply, RangeReply) and reply.err == OK:
        return OpResult(
            reply.err, range=RangePage(reply.items, reply.index, reply.more, reply.next)
        )
    if isinstance(reply, TxnReply) and reply.err == OK:
        return OpResult(reply.err, txn=TxnOutcome(reply.succeeded, reply.results, reply.index))
    if isinstance(reply, LeaseReply):
        return OpResult(reply.err, lease=reply.lease, ttl=reply.ttl)
    return OpResult(reply.err)


def bound_reply(ops: list[BatchOp], results: list[OpResult]) -> list[OpResult]:
    """``results`` (of ``ops``) with at most :data:`MAX_REPLY_BYTES` of keys and values: in
    op order, each get, range page and transaction get that would cross it answers
    :data:`REPLY_TOO_LARGE` instead (a transaction's writes keep their results). The first
    of them is always whole, so sending the rest again makes progress. A small request
    asking the same large value many times would otherwise build a reply hundreds of
    times its size."""
    # JSON escaping makes a character at most 12 bytes (beyond the BMP: two \uXXXX):
    # results that could not reach the bound, whatever they hold, need no measuring.
    if all(result.range is None and result.txn is None for result in results) and (
        sum(len(result.value) for result in results) * 12 <= MAX_REPLY_BYTES
    ):
        return results
    budget = MAX_REPLY_BYTES
    first = True
    bounded: list[OpResult] | None = None
    for i, (op, result) in enumerate(zip(ops, results, strict=True)):
        if op.op == "get":
            size = json_string_bytes(result.value)
        elif op.op == "range" and result.range is not None:
            size = sum(
                json_string_bytes(item.key) + json_string_bytes(item.value)
                for item in result.range.items
            )
        elif op.op == "txn" and result.txn is not None and any(r.value for r in result.txn.results):
            kept: list[KeyResult] = []
            for item in result.txn.results:
                size = json_string_bytes(item.value)
                if size and not first and size > budget:
                    item = KeyResult(REPLY_TOO_LARGE)
                elif size:
                    budget, first = budget - size, False
                kept.append(item)
            if kept != result.txn.results:
                bounded = bounded or list(results)
                txn = dataclasses.replace(result.txn, results=kept)
                bounded[i] = dataclasses.replace(result, txn=txn)
            continue
        else:
            continue
        if first or size <= budget:
            budget, first = budget - size, False
        else:
            bounded = bounded or list(results)
            bounded[i] = OpResult(REPLY_TOO_LARGE, index=result.index)
    return results if bounded is None else bounded


def range_reply(result: OpResult) -> RangeReply:
    """A range's batch result as the reply of ``/range``."""
    page = result.range
    if page is None:
        return RangeReply(result.err)
    return RangeReply(result.err, page.items, page.index, page.more, page.next)


def txn_reply(result: OpResult) -> TxnReply:
    """A txn's batch result as the reply of ``/txn``."""
    outcome = result.txn
    if outcome is None:
        return TxnReply(result.err)
    return TxnReply(result.err, outcome.succeeded, outcome.results, outcome.index)


def json_sizes(ops: list[BatchOp]) -> tuple[int, int]:
    """About the bytes ``ops`` take as logged JSON when JSON escapes none of their
    characters, and at least the bytes they take: a character escapes to 12 bytes at most
    (a non-BMP one, as two \\u escapes); the rest is bounded per op. One pass for both."""
    chars = fixed = 0
    for op in ops:
        op_chars, op_fixed = _size_parts(op)
        chars += op_chars
        fixed += op_fixed
    return chars + fixed, 12 * chars + fixed


def _size_parts(op: BatchOp) -> tuple[int, int]:
    """The characters of ``op``'s strings, and a bound on the rest of its JSON."""
    chars, fixed = len(op.key) + len(op.value) + len(op.session), 128
    if op.range is not None:
        chars += len(op.range.prefix) + len(op.range.start) + len(op.range.end)
        fixed += 64
    if op.txn is not None:
        for compare in op.txn.compare:
            chars += len(compare.key) + len(compare.value or "")
            fixed += 96
        for txn_op in (*op.txn.success, *op.txn.failure):
            chars += len(txn_op.key) + len(txn_op.value)
            fixed += 64
    return chars, fixed


def log_op(op: BatchOp) -> dict[str, object]:
    """The op as the replicated KV logs it: only the fields its kind uses. (An ``open`` gets
    a random nonce here, on the server that proposes it, so session ids cannot be guessed.)"""
    if op.op == "get":
        return {"op": "get", "key": op.key}
    if op.retry_after is not None and op.op in RETRIED_WRITES:
        return {**log_op(dataclasses.replace(op, retry_after=None)), "retry_after": op.retry_after}
    if op.op == "put":
        if op.lease:
            return {"op": "put", "key": op.key, "value": op.value, "version": op.version,
                    "lease": op.lease}  # fmt: skip
        return {"op": "put", "key": op.key, "value": op.value, "version": op.version}
    if op.op == "lease_grant":
        return {"op": "lease_grant", "key": "", "ttl": op.ttl}
    if op.op == "lease_revoke":
        return {"op": "lease_revoke", "key": "", "lease": op.lease}
    if op.op == "lease_keepalive":  # logged (or read) as a check that the lease exists
        return {"op": "lease_ttl", "key": "", "lease": op.lease}
    if op.op == "delete":
        return {"op": "delete", "key": op.key, "version": op.version}
    if op.op == "open":
        if op.lease:
            return {"op": "open", "key": "", "nonce": secrets.token_hex(8), "lease": op.lease}
        return {"op": "open", "key": "", "nonce": secrets.token_hex(8)}
    if op.op == "range":
        assert op.range is not None  # validated
        r = op.range
        return {"op": "range", "key": "", "prefix": r.prefix, "start": r.start, "end": r.end,
                "limit": r.limit}  # fmt: skip
    if op.op == "txn":
        assert op.txn is not None  # validated
        compares = []
        for compare in op.txn.compare:
            target, operand = compare.target()
            compares.append({"key": compare.key, "op": compare.op, "target": target,
                             "operand": operand})  # fmt: skip
        return {
            "op": "txn",
            "key": "",
            "compare": compares,
            "success": [_log_txn_op(o) for o in op.txn.success],
            "failure": [_log_txn_op(o) for o in op.txn.failure],
        }
    return {"op": "append", "key": op.key, "value": op.value, "session": op.session, "seq": op.seq}


def _log_txn_op(op: TxnOp) -> dict[str, object]:
    if op.op == "put":
        if op.lease:
            return {"op": "put", "key": op.key, "value": op.value, "lease": op.lease}
        return {"op": "put", "key": op.key, "value": op.value}
    return {"op": op.op, "key": op.key}


# Leases and watches (issue 14 items 5 and 6).

#: A put names a lease that does not exist (revoked or expired), or a keepalive's lease is gone.
NO_LEASE: Final = "NoLease"
#: A watch asks for changes the node no longer keeps: read the state again, then watch on.
COMPACTED: Final = "Compacted"
#: A watch asked of a node that has lost touch with the leader: ask another server.
NO_LEADER: Final = "NoLeader"
#: Longest a long-polled watch waits for a change before answering with none, in seconds.
MAX_WATCH_WAIT = 60.0


@dataclass(frozen=True, slots=True)
class LeaseGrantArgs:
    ttl: int = field(metadata={"min": 1})

    def validate(self, where: str = "body") -> None:
        if self.ttl > MAX_LEASE_TTL:
            raise BadRequest(f"{where}.ttl: {self.ttl}, at most {MAX_LEASE_TTL}")


@dataclass(frozen=True, slots=True)
class LeaseArgs:
    """Names a lease, to keep alive or revoke."""

    lease: int = field(metadata={"min": 1})


@dataclass(frozen=True, slots=True)
class LeaseReply:
    err: str
    lease: int = 0
    ttl: int = 0


@dataclass(frozen=True, slots=True)
class WatchArgs:
    """Changes under ``prefix`` after index ``after``, waiting up to ``wait`` seconds."""

    prefix: str = ""
    after: int = non_negative(0)
    limit: int = field(default=DEFAULT_WATCH_LIMIT, metadata={"min": 1})
    wait: float = 10.0

    def validate(self, where: str = "body") -> None:
        check_key(self.prefix, f"{where}.prefix")
        if self.limit > MAX_WATCH_LIMIT:
            raise BadRequest(f"{where}.limit: {self.limit}, at most {MAX_WATCH_LIMIT}")
        if not 0 <= self.wait <= MAX_WATCH_WAIT:
            raise BadRequest(f"{where}.wait: {self.wait}, from 0 to {MAX_WATCH_WAIT}")


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """One change a watch answers: the key's new state, or its deletion, at ``index``."""

    index: int
    key: str
    kind: str
    value: str
    version: int
    create_index: int


@dataclass(frozen=True, slots=True)
class WatchReply:
    err: str
    changes: list[ChangeRecord] = field(default_factory=list)
    through: int = 0  # ask again with "after": through
    compacted_through: int = 0  # with Compacted: changes after this index are kept


#: Every reply the replicated state machine gives.
Reply = (
    GetReply
    | PutReply
    | DeleteReply
    | AppendReply
    | OpenSessionReply
    | RangeReply
    | TxnReply
    | LeaseReply
)


#: The longest member id the membership routes take (ids are short names: "1", "node-a").
MAX_MEMBER_ID_CHARS = 64
#: The longest peer or client URL they take.
MAX_MEMBER_URL_CHARS = 512


def check_member_id(node_id: str, where: str) -> None:
    """Refuse (400) an id that is empty, too long, or not ``[A-Za-z0-9._-]``."""
    if not 0 < len(node_id) <= MAX_MEMBER_ID_CHARS or not all(
        c.isascii() and (c.isalnum() or c in "._-") for c in node_id
    ):
        raise BadRequest(
            f"{where}: a member id is 1..{MAX_MEMBER_ID_CHARS} characters of "
            "A-Z, a-z, 0-9, '.', '_', '-'"
        )


def check_member_url(url: str, where: str, schemes: tuple[str, ...]) -> None:
    """Refuse (400) a URL that is too long, has another scheme, no host, a bad port, or
    anything after ``scheme://host[:port]`` but a path."""
    problem = ""
    if not 0 < len(url) <= MAX_MEMBER_URL_CHARS or not url.isascii() or not url.isprintable():
        problem = f"1..{MAX_MEMBER_URL_CHARS} printable ASCII characters"
    else:
        try:
            parts = urlsplit(url)
            port = parts.port  # raises ValueError when out of range or not a number
        except ValueError:
            parts, port = None, None
        if (
            parts is None
            or parts.scheme not in schemes
            or not parts.hostname
            or parts.username is not None
            or parts.password is not None
            or parts.query
            or parts.fragment
            or any(c.isspace() for c in url)
            or (port is not None and port == 0)
            or (parts.scheme == "tcp" and port is None)  # no default port to fall back on
        ):
            problem = f"a {'/'.join(schemes)}://HOST[:PORT] URL"
    if problem:
        raise BadRequest(f"{where}: expected {problem}")


@dataclass(frozen=True, slots=True)
class MemberListArgs:
    """``POST /member_list``: the configuration, as this server knows it."""


@dataclass(frozen=True, slots=True)
class MemberAddArgs:
    """``POST /member_add``: add ``id`` as a learner, reached by peers at ``peer_url``
    (``client_url``, if given, goes into the configuration entry: every server then points
    clients there)."""

    id: str
    peer_url: str
    client_url: str = ""

    def validate(self) -> None:
        check_member_id(self.id, "body.id")
        check_member_url(self.peer_url, "body.peer_url", ("http", "https", "tcp"))
        if self.client_url:
            check_member_url(self.client_url, "body.client_url", ("http", "https"))


@dataclass(frozen=True, slots=True)
class MemberArgs:
    """``POST /member_promote`` and ``POST /member_remove``: the member ``id``."""

    id: str

    def validate(self) -> None:
        check_member_id(self.id, "body.id")


@dataclass(frozen=True, slots=True)
class TransferLeaderArgs:
    """``POST /transfer_leader``: hand leadership to ``to`` ("" : the most up-to-date)."""

    to: str = ""

    def validate(self) -> None:
        if self.to:
            check_member_id(self.to, "body.to")


@dataclass(frozen=True, slots=True)
class MembershipReply:
    """What the membership routes answer: with ``err`` OK, the configuration (after the
    change) and ``leader``, the leader's id as this server knows it ("" if none);
    ``match`` (on the leader) is how far each peer's log is known to match its own, and
    ``commit_index`` the leader's; ``client_urls`` where clients reach each member, as far
    as this server knows (from the configuration, else its own flags). With ``err``
    WrongLeader, ``leader`` is the leader's client URL as in :class:`WrongLeaderReply`."""

    err: str
    leader: str = ""
    voters: list[str] = field(default_factory=list)
    learners: list[str] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)
    match: dict[str, int] = field(default_factory=dict)
    commit_index: int = 0
    client_urls: dict[str, str] = field(default_factory=dict)
