"""Clients that send many operations per request: the coalescing client of ``POST /batch``.

    async with open_coalescing_client(urls) as kv:     # share it among all your tasks
        await kv.put("k", "v", 0)

Every task's call joins a queue; one sender task takes everything queued into one ``/batch``
request while no other is in flight, so N concurrent callers cost about one HTTP round trip,
not N. It speaks to a replicated cluster (finding the leader as :class:`ClusterClient` does)
or to a single :class:`KVServer` (get and put only).

Invariants:
- At most one request is in flight, and ops that must be retried go back to the head of the
  queue in their order. So a client's appends are applied in the order they were queued, and
  a retried append is recognised by the server's duplicate table (which keeps only the last
  sequence number per client): exactly once.
- An op whose attempt failed (lost call, timeout, ``WrongLeader``) is marked retried, so a
  put then rejected with ``Version`` reports :class:`~trioraft.MaybeApplied`.
- A caller that is cancelled before its op is sent removes it; once sent, the op may apply.
- When the client closes, every call still waiting raises ``trio.ClosedResourceError``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from ..rpc.http import RpcClient
from ..rpc.tls import ClientTls
from .clients import (
    SESSION_ATTEMPTS,
    Backoff,
    Versioned,
    raise_append_error,
    raise_put_error,
)
from .messages import (
    SESSION_EXPIRED,
    WRONG_LEADER,
    BatchArgs,
    BatchOp,
    BatchReply,
    OpResult,
)


class OpsClient:
    """The KV client API (get, put, append) over one method, :meth:`run`, that executes an op
    and tells whether an earlier attempt of it failed."""

    def __init__(self, client_id: str | None = None) -> None:
        self.client_id = client_id or uuid.uuid4().hex
        self._session: str | None = None  # opened before the first append
        self._opening = trio.Lock()
        self._seq = 0

    async def run(self, op: BatchOp) -> tuple[OpResult, bool]:
        raise NotImplementedError

    async def get(self, key: str) -> Versioned:
        result, _ = await self.run(BatchOp("get", key))
        return Versioned(result.value, result.version)

    async def put(self, key: str, value: str, version: int) -> None:
        result, retried = await self.run(BatchOp("put", key, value, version))
        raise_put_error(result.err, retried=retried)

    async def append(self, key: str, value: str) -> None:
        for _ in range(SESSION_ATTEMPTS):
            session = await self._open_session()
            self._seq += 1
            op = BatchOp("append", key, value, session=session, seq=self._seq)
            result, retried = await self.run(op)
            if result.err != SESSION_EXPIRED:
                break
            if self._session == session:
                self._session = None  # the next attempt opens a new one
            if retried:
                break  # an earlier attempt may have applied: only the caller can tell
            # The first attempt met a forgotten session: it did not apply. Go on in a new one.
        raise_append_error(result.err)

    async def _open_session(self) -> str:
        async with self._opening:
            if self._session is None:
                result, _ = await self.run(BatchOp("open", ""))
                raise_append_error(result.err)
                self._session, self._seq = result.value, 0
            return self._session


@dataclass(eq=False)
class _Queued:
    op: BatchOp
    retried: bool = False
    abandoned: bool = False
    result: OpResult | None = None
    done: trio.Event = field(default_factory=trio.Event)


class CoalescingClient(OpsClient):
    """Coalesces the concurrent calls of many tasks into ``/batch`` requests. Create it with
    :func:`open_coalescing_client`, which runs its sender task."""

    def __init__(
        self,
        urls: list[str],
        *,
        client_id: str | None = None,
        rpc_timeout: float = 1.0,
        max_ops_per_request: int = 2000,
        token: str | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        if not urls:
            raise ValueError("a client needs at least one server URL")
        super().__init__(client_id)
        self._rpcs = [
            RpcClient(url, self.client_id, timeout=rpc_timeout, token=token, tls=tls)
            for url in urls
        ]
        self.leader = 0  # index of the server that last answered as leader
        self.max_ops_per_request = max_ops_per_request
        self._queue: list[_Queued] = []
        self._queue_grew = trio.Event()
        self._in_flight: list[_Queued] = []
        self._closed = False
        self.requests = 0  # /batch requests sent, for statistics

    async def run(self, op: BatchOp) -> tuple[OpResult, bool]:
        if self._closed:
            raise trio.ClosedResourceError("the coalescing client is closed")
        queued = _Queued(op)
        self._queue.append(queued)
        self._queue_grew.set()
        try:
            await queued.done.wait()
        except BaseException:
            queued.abandoned = True
            raise
        if queued.result is None:
            raise trio.ClosedResourceError("the coalescing client closed before the op's answer")
        return queued.result, queued.retried

    async def send_forever(self) -> None:
        """The sender: one ``/batch`` request at a time, while anything is queued."""
        failures_in_a_row = 0
        backoff = Backoff()
        while True:
            if not self._queue:
                await self._queue_grew.wait()
                self._queue_grew = trio.Event()
                continue
            batch = [q for q in self._queue[: self.max_ops_per_request] if not q.abandoned]
            del self._queue[: self.max_ops_per_request]
            if not batch:
                continue
            self._in_flight = batch
            failed = await self._send(self.leader, batch)
            self._in_flight = []
            if not failed:
                failures_in_a_row = 0
                backoff = Backoff()
                continue
            for queued in failed:
                queued.retried = True
            self._queue[:0] = failed
            self.leader = (self.leader + 1) % len(self._rpcs)
            failures_in_a_row += 1
            if failures_in_a_row % len(self._rpcs) == 0:
                await backoff.wait()

    async def _send(self, server: int, batch: list[_Queued]) -> list[_Queued]:
        """Send ``batch`` to ``server``; settle the ops it answered, return the others."""
        self.requests += 1
        args = BatchArgs([q.op for q in batch])
        reply = await self._rpcs[server].call("batch", args, BatchReply)
        if reply is None or len(reply.results) != len(batch):
            return batch
        failed = []
        for queued, result in zip(batch, reply.results, strict=True):
            if result.err == WRONG_LEADER:
                failed.append(queued)
            else:
                queued.result = result
                queued.done.set()
        return failed

    async def aclose(self) -> None:
        self._closed = True
        for queued in [*self._in_flight, *self._queue]:
            queued.done.set()  # with no result: the caller raises ClosedResourceError
        self._in_flight, self._queue = [], []
        for rpc in self._rpcs:
            await rpc.aclose()


@asynccontextmanager
async def open_coalescing_client(
    urls: list[str],
    *,
    client_id: str | None = None,
    rpc_timeout: float = 1.0,
    max_ops_per_request: int = 2000,
    token: str | None = None,
    tls: ClientTls | None = None,
) -> AsyncIterator[CoalescingClient]:
    """A :class:`CoalescingClient` of the servers at ``urls``, its sender running until the
    block exits (calls still waiting then are cancelled with it)."""
    client = CoalescingClient(
        urls,
        client_id=client_id,
        rpc_timeout=rpc_timeout,
        max_ops_per_request=max_ops_per_request,
        token=token,
        tls=tls,
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_forever)
            yield client
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await client.aclose()
