"""Recording what clients observe, for the linearizability checker.

:class:`History` hands out :class:`RecordingKV` wrappers around a KV client: any
:class:`~trioraft.KeyValue` (get and put), and the other ops (delete, append, range, txn) of
a client that has them (:class:`~trioraft.ClusterClient`, the coalescing client, an
embedded :class:`~trioraft.KVNode`'s). A wrapper passes each call through unchanged, so it
answers and raises what the client does, times it on the history's one clock and appends
an :class:`~trioraft.testing.Operation` of :data:`~trioraft.testing.KV_OPS_MODEL`
(:class:`KVInput` / :class:`KVOutput`).

Invariants: what a call's outcome tells is recorded, and never more.
- A call that returned, or a put or delete that raised ``Version`` or ``NoKey`` (it did
  not apply): its output.
- A write that raised :class:`~trioraft.MaybeApplied`, or an append that raised
  :class:`~trioraft.SessionExpired`: of unknown output, optional (it applied at some point
  between its call and its return, or never).
- A call cancelled before it returned, or a write that raised anything else (a server
  lost, a refusal): never returned (``ret=None``: it may take effect at any time after
  its call, or never).
- A read that raised is not recorded: it changed nothing and observed nothing.
- :meth:`History.check` decides with :data:`~trioraft.testing.VERSIONED_KV_MODEL` when
  only gets, puts and appends were recorded (the same rules, and it knows versions only
  grow: faster), with :data:`~trioraft.testing.KV_OPS_MODEL` otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from .._errors import KeyNotFound, MaybeApplied, SessionExpired, VersionConflict
from ..kv.clients import Versioned
from ..kv.messages import DEFAULT_RANGE_LIMIT, Compare, RangeArgs, TxnOp
from ._kv_model import check_kv_ops
from ._linearizability import Operation, Result
from ._models import NO_KEY, OK, KVInput, KVOperation, KVOutput, Txn, check

T = TypeVar("T")

#: Writes whose condition (a version) can fail: ``Version`` and ``NoKey`` are outcomes.
_CONDITIONAL_WRITES = frozenset({"put", "delete"})
#: Ops the versioned-KV model knows (it decides histories of only these faster).
_VERSIONED_OPS = frozenset({"get", "put", "append"})


class History:
    """A shared, append-only list of operations with one clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.operations: list[KVOperation] = []

    def recording(self, kv: Any, client: str) -> RecordingKV:
        """``kv``'s calls, recorded as made by ``client``."""
        return RecordingKV(self, kv, client)

    def check(self, *, timeout: float | None = 60.0) -> Result[Any, KVInput, KVOutput]:
        """Whether the history is linearizable (``.ok``; ``None``: ``timeout`` ran out)."""
        if all(op.input.op in _VERSIONED_OPS for op in self.operations):
            return check(self.operations, timeout=timeout)
        return check_kv_ops(self.operations, timeout=timeout)


class RecordingKV:
    """A KV client's calls, forwarded to ``kv`` and recorded in ``history``. The ops beyond
    get and put need a ``kv`` that has them."""

    def __init__(self, history: History, kv: Any, client: str) -> None:
        self.history = history
        self.kv = kv
        self.client = client

    async def get(self, key: str) -> Versioned:
        got: Versioned = await self._read(KVInput("get", key), lambda: self.kv.get(key))
        return got

    async def put(self, key: str, value: str, version: int) -> None:
        call = KVInput("put", key, value, version)
        await self._write(call, lambda: self.kv.put(key, value, version))

    async def delete(self, key: str, version: int) -> None:
        await self._write(KVInput("delete", key, "", version), lambda: self.kv.delete(key, version))

    async def append(self, key: str, value: str) -> None:
        await self._write(KVInput("append", key, value), lambda: self.kv.append(key, value))

    async def range(
        self, *, prefix: str = "", start: str = "", end: str = "", limit: int = DEFAULT_RANGE_LIMIT
    ) -> Any:
        """The wrapped client's range page (see :meth:`trioraft.ClusterClient.range`)."""
        query = RangeArgs(prefix, start, end, limit)
        return await self._read(
            KVInput("range", "", range=query),
            lambda: self.kv.range(prefix=prefix, start=start, end=end, limit=limit),
        )

    async def txn(
        self, compare: list[Compare], success: list[TxnOp], failure: list[TxnOp] | None = None
    ) -> Any:
        """The wrapped client's txn outcome (see :meth:`trioraft.ClusterClient.txn`)."""
        call = KVInput("txn", "", txn=Txn(tuple(compare), tuple(success), tuple(failure or ())))
        return await self._write(call, lambda: self.kv.txn(compare, success, failure))

    async def _read(self, call: KVInput, run: Callable[[], Awaitable[T]]) -> T:
        start = self.history.clock()
        try:
            answer = await run()
        except trio.Cancelled:
            self._record(call, start, None, None)
            raise
        self._record(call, start, _output_of(call, answer), self.history.clock())
        return answer

    async def _write(self, call: KVInput, run: Callable[[], Awaitable[T]]) -> T:
        start = self.history.clock()
        try:
            answer = await run()
        except (KeyNotFound, VersionConflict) as refused:
            if call.op not in _CONDITIONAL_WRITES:  # no such outcome: as any other error
                self._record(call, start, None, None)
                raise
            self._record(call, start, KVOutput(err=refused.wire), self.history.clock())
            raise
        except (MaybeApplied, SessionExpired):
            self._record(call, start, None, self.history.clock(), optional=True)
            raise
        except BaseException:
            self._record(call, start, None, None)
            raise
        self._record(call, start, _output_of(call, answer), self.history.clock())
        return answer

    def _record(
        self,
        call: KVInput,
        start: float,
        output: KVOutput | None,
        ret: float | None,
        *,
        optional: bool = False,
    ) -> None:
        operation = Operation(self.client, call, start, output, ret, optional)
        self.history.operations.append(operation)


def _output_of(call: KVInput, answer: Any) -> KVOutput:
    """What the model checks of an answer: a get's value and version, a range's page, a
    txn's branch and results (no log indexes: no model can know them)."""
    if call.op == "get":
        return KVOutput(answer.value, answer.version, OK if answer.version else NO_KEY)
    if call.op == "range":
        items = tuple((item.key, item.value, item.version) for item in answer.items)
        return KVOutput(items=items, more=answer.more, next=answer.next)
    if call.op == "txn":
        results = tuple((r.err, r.value, r.version) for r in answer.results)
        return KVOutput(succeeded=answer.succeeded, results=results)
    return KVOutput(err=OK)
