"""Recording what clients observe, for the linearizability checker.

:class:`History` hands out :class:`RecordingKV` wrappers around any
:class:`~trioraft.KeyValue` client; each wrapper times every call on one monotonic clock and
appends an :class:`Operation`. An operation cancelled before it returned is recorded with
``ret=None`` (it may or may not have taken effect).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

from .._errors import KVError
from ..kv.clients import KeyValue, Versioned
from ._linearizability import OK, Operation, Result, check


class History:
    """A shared, append-only list of operations with one clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.operations: list[Operation] = []

    def recording(self, kv: KeyValue, client: str) -> RecordingKV:
        return RecordingKV(self, kv, client)

    def check(self, *, timeout: float = 60.0) -> Result:
        return check(self.operations, timeout=timeout)


class RecordingKV:
    """A :class:`~trioraft.KeyValue` that records every call it forwards to ``kv``."""

    def __init__(self, history: History, kv: KeyValue, client: str) -> None:
        self.history = history
        self.kv = kv
        self.client = client

    async def get(self, key: str) -> Versioned:
        start = self.history.clock()
        try:
            result = await self.kv.get(key)
        except trio.Cancelled:
            self._record("get", key, "", 0, "", start, None)
            raise
        err = OK if result.version > 0 else "NoKey"
        self._record("get", key, result.value, result.version, err, start, self.history.clock())
        return result

    async def put(self, key: str, value: str, version: int) -> None:
        start = self.history.clock()
        try:
            await self.kv.put(key, value, version)
        except KVError as exc:
            self._record("put", key, value, version, exc.wire, start, self.history.clock())
            raise
        except trio.Cancelled:
            self._record("put", key, value, version, "", start, None)
            raise
        self._record("put", key, value, version, OK, start, self.history.clock())

    def _record(
        self,
        kind: str,
        key: str,
        value: str,
        version: int,
        err: str,
        call: float,
        ret: float | None,
    ) -> None:
        self.history.operations.append(
            Operation(self.client, kind, key, value, version, err, call, ret)
        )
