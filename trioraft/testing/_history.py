"""Recording what clients observe, for the linearizability checker.

:class:`History` hands out :class:`RecordingKV` wrappers around any
:class:`~trioraft.KeyValue` client; each wrapper times every call on one monotonic clock and
appends an :class:`~trioraft.testing.Operation` of the versioned KV model
(:class:`KVInput` / :class:`KVOutput`). An operation cancelled before it returned is
recorded with ``ret=None`` and ``output=None`` (it may or may not have taken effect). A put
that answered ``Maybe`` is recorded optional: it applies where its version matches, or
never (a retry refused whole, say, leaves even a matching put unapplied).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

from .._errors import KVError, MaybeApplied
from ..kv.clients import KeyValue, Versioned
from ._linearizability import Operation, Result
from ._models import NO_KEY, OK, KVInput, KVOperation, KVOutput, VersionedState, check


class History:
    """A shared, append-only list of operations with one clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.operations: list[KVOperation] = []

    def recording(self, kv: KeyValue, client: str) -> RecordingKV:
        return RecordingKV(self, kv, client)

    def check(self, *, timeout: float | None = 60.0) -> Result[VersionedState, KVInput, KVOutput]:
        return check(self.operations, timeout=timeout)


class RecordingKV:
    """A :class:`~trioraft.KeyValue` that records every call it forwards to ``kv``."""

    def __init__(self, history: History, kv: KeyValue, client: str) -> None:
        self.history = history
        self.kv = kv
        self.client = client

    async def get(self, key: str) -> Versioned:
        call = KVInput("get", key)
        start = self.history.clock()
        try:
            result = await self.kv.get(key)
        except trio.Cancelled:
            self._record(call, start, None, None)
            raise
        err = OK if result.version > 0 else NO_KEY
        output = KVOutput(result.value, result.version, err)
        self._record(call, start, output, self.history.clock())
        return result

    async def put(self, key: str, value: str, version: int) -> None:
        call = KVInput("put", key, value, version)
        start = self.history.clock()
        try:
            await self.kv.put(key, value, version)
        except MaybeApplied as exc:
            self._record(call, start, KVOutput(err=exc.wire), self.history.clock(), True)
            raise
        except KVError as exc:
            self._record(call, start, KVOutput(err=exc.wire), self.history.clock())
            raise
        except trio.Cancelled:
            self._record(call, start, None, None)
            raise
        self._record(call, start, KVOutput(err=OK), self.history.clock())

    def _record(
        self,
        call: KVInput,
        start: float,
        output: KVOutput | None,
        ret: float | None,
        optional: bool = False,
    ) -> None:
        operation = Operation(self.client, call, start, output, ret, optional)
        self.history.operations.append(operation)
