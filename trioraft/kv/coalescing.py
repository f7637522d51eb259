"""Clients that send many operations per request: the coalescing client of ``POST /batch``.

    async with open_coalescing_client(urls) as kv:     # share it among all your tasks
        await kv.put("k", "v", 0)

Every task's call joins a queue; one sender task takes everything queued into one ``/batch``
request while no other is in flight (up to what a server takes in one: ``max_ops_per_request``
ops, of them at most ``MAX_BATCH_RANGES`` ranges), so N concurrent callers cost about one
HTTP round trip, not N. It speaks to a replicated cluster (finding
the leader as :class:`ClusterClient` does) or to a single :class:`KVServer` (all but
append). Its ops are :class:`OpsClient`'s.

Invariants:
- At most one request is in flight, and ops that must be retried go back to the head of the
  queue in their order. So a client's appends are applied in the order they were queued, and
  a retried append is recognised by the server's duplicate table (which keeps only the last
  sequence number per client): exactly once.
- An op whose attempt failed (lost call, timeout, ``WrongLeader``) is marked retried, so a
  put then rejected with ``Version`` reports :class:`~trioraft.MaybeApplied`. Requests go
  through :class:`~trioraft.kv.clients.Servers`, the retry loop every HTTP client shares.
- A request the server refuses whole (400, say a key too long) is sent again op by op, so
  only the ops at fault raise :class:`~trioraft.BadRequest`; a *retry* refused whole (it
  carries ``retry_after``, which can cross a size limit) raises
  :class:`~trioraft.MaybeApplied` for its writes (never sent again unmarked) and sends its
  reads again.
- A read answered ``ReplyTooLarge`` (its reply had no room for it: ``MAX_REPLY_BYTES``) goes
  back to the head of the queue; each reply holds at least one read whole, so reads progress.
- A caller that is cancelled before its op is sent removes it; once sent, the op may apply.
- When the client closes, every call still waiting raises ``trio.ClosedResourceError``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from .._errors import BadRequest, MaybeApplied
from ..rpc.tls import ClientTls
from .clients import OpsClient, Servers
from .messages import (
    MAX_BATCH_RANGES,
    READ_OPS,
    REPLY_TOO_LARGE,
    BatchOp,
    OpResult,
    WatchArgs,
    WatchReply,
)


@dataclass(eq=False)
class _Queued:
    op: BatchOp
    why: str = ""  # how the attempts before the answered one failed
    abandoned: bool = False
    result: OpResult | None = None
    error: BadRequest | MaybeApplied | None = None
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
        super().__init__(client_id)
        self.servers = Servers(urls, self.client_id, rpc_timeout=rpc_timeout, token=token, tls=tls)
        self.max_ops_per_request = max_ops_per_request
        self._queue: list[_Queued] = []
        self._queue_grew = trio.Event()
        self._in_flight: list[_Queued] = []
        self._closed = False

    @property
    def requests(self) -> int:
        """``/batch`` requests sent, for statistics."""
        return self.servers.requests

    async def poll_watch(self, request: WatchArgs) -> WatchReply:
        return await self.servers.watch(request)

    async def run(self, op: BatchOp) -> tuple[OpResult, str]:
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
        if queued.error is not None:
            raise queued.error
        if queued.result is None:
            raise trio.ClosedResourceError("the coalescing client closed before the op's answer")
        return queued.result, queued.why

    async def send_forever(self) -> None:
        """The sender: one ``/batch`` request at a time, while anything is queued."""
        while True:
            if not self._queue:
                await self._queue_grew.wait()
                self._queue_grew = trio.Event()
                continue
            batch = self._take_batch()
            if not batch:
                continue
            self._in_flight = batch
            try:
                await self._send(batch)
            except MaybeApplied as exc:
                # A retry was refused: its writes may have applied, its reads go again.
                self._queue[:0] = [q for q in batch if q.op.op in READ_OPS]
                for queued in batch:
                    if queued.op.op not in READ_OPS:
                        queued.error = MaybeApplied(str(exc))
                        queued.done.set()
            except BadRequest as exc:
                # Refused whole, before any op ran: find the culprits, one op at a time.
                if len(batch) == 1:
                    batch[0].error = exc
                    batch[0].done.set()
                for queued in batch if len(batch) > 1 else []:
                    try:
                        await self._send([queued])
                    except (BadRequest, MaybeApplied) as alone:
                        queued.error = alone
                        queued.done.set()
            self._in_flight = []

    def _take_batch(self) -> list[_Queued]:
        """Take the next batch off the queue's head: at most ``max_ops_per_request`` ops and
        :data:`MAX_BATCH_RANGES` ranges (a server refuses a batch of more whole). Ops whose
        callers went away are dropped."""
        batch, ranges, taken = [], 0, 0
        for queued in self._queue[: self.max_ops_per_request]:
            if queued.op.op == "range" and not queued.abandoned:
                if ranges == MAX_BATCH_RANGES:
                    break
                ranges += 1
            taken += 1
            if not queued.abandoned:
                batch.append(queued)
        del self._queue[:taken]
        return batch

    async def _send(self, batch: list[_Queued]) -> None:
        results, failures = await self.servers.call([q.op for q in batch])
        why = ", ".join(failures)
        again = []
        for queued, result in zip(batch, results, strict=True):
            if result.err == REPLY_TOO_LARGE:
                again.append(queued)  # a read the reply had no room for: it goes next
                continue
            queued.result, queued.why = result, why
            queued.done.set()
        self._queue[:0] = again

    async def aclose(self) -> None:
        self._closed = True
        for queued in [*self._in_flight, *self._queue]:
            queued.done.set()  # with no result: the caller raises ClosedResourceError
        self._in_flight, self._queue = [], []
        await self.servers.aclose()


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
