"""A replicated state machine: operations go through the Raft log and are applied in order.

``submit(op)`` proposes ``op`` (tagged with this server's id and a unique number), waits on a
``trio.Event`` that the applier sets when the entry at its index is applied, and returns the
state machine's result. Every replica applies every committed entry, in order.

Invariants:
- A waiter learns its result only from the entry at its own index carrying its own tag; if
  another entry lands there, or this node's term moves on first, it gets
  :class:`LeadershipLost` (the op may still commit under the new leader, or not).
- A leader that merely stops leading (check-quorum) keeps its waiters until its term changes:
  nothing can commit at their indexes in the meantime.
- When the persisted Raft state exceeds ``max_raft_state`` bytes, the applier snapshots the
  machine and Raft compacts its log; ``-1`` disables snapshots.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from ._errors import LeadershipLost, NotLeader
from ._node import Applied, RaftNode


class StateMachine(Protocol):
    """What the RSM replicates: deterministic ``apply`` and a snapshot of the whole state."""

    def apply(self, op: Any) -> Any: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


@dataclass(eq=False)
class _Waiter:
    tag: int
    term: int
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    lost: bool = False


class ReplicatedStateMachine:
    """Runs ``machine`` on every member of ``node``'s cluster. Start :meth:`run` in a nursery."""

    def __init__(self, node: RaftNode, machine: StateMachine, *, max_raft_state: int = -1):
        self.node = node
        self.machine = machine
        self.max_raft_state = max_raft_state
        self._tags = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        self.applied_index = 0
        self._applied = trio.Event()  # set (and replaced) after every entry or snapshot applied

    async def wait_until(self, predicate: Callable[[ReplicatedStateMachine], bool]) -> None:
        """Return once ``predicate(rsm)`` holds; re-checked after every apply."""
        while not predicate(self):
            await self._applied.wait()

    async def submit(self, op: Any) -> Any:
        """Replicate and apply ``op``; its result. Raises :class:`NotLeader` at once on a
        follower, and :class:`LeadershipLost` if the op's fate could not be seen here."""
        tag = next(self._tags)
        index, term, ok = self.node.submit(json.dumps({"o": self.node.id, "t": tag, "op": op}))
        if not ok:
            raise NotLeader(self.node.leader_id)
        superseded = self._waiters.get(index)
        if superseded is not None:  # an op of an older term was given this index
            self._fail(superseded)
        waiter = self._waiters[index] = _Waiter(tag, term)
        try:
            await waiter.done.wait()
        finally:
            if self._waiters.get(index) is waiter:
                del self._waiters[index]
        if waiter.lost:
            raise LeadershipLost(f"op at index {index} of term {term} did not commit here")
        return waiter.result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Apply committed entries and fail waiters that can no longer succeed."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_terms)
            task_status.started()
            try:
                await self._apply_all()
            finally:
                for waiter in list(self._waiters.values()):
                    self._fail(waiter)  # the node stopped
                nursery.cancel_scope.cancel()

    async def _apply_all(self) -> None:
        async for message in self.node.applied:
            if not isinstance(message, Applied):
                self.machine.restore(message.data)
                self.applied_index = message.index
                for index in [i for i in self._waiters if i <= message.index]:
                    self._fail(self._waiters[index])
                self._applied.set()
                self._applied = trio.Event()
                continue
            entry = json.loads(message.command)
            result = self.machine.apply(entry["op"])
            self.applied_index = message.index
            waiter = self._waiters.get(message.index)
            if waiter is not None:
                if entry["o"] == self.node.id and entry["t"] == waiter.tag:
                    waiter.result = result
                    waiter.done.set()
                else:
                    self._fail(waiter)
            self._applied.set()
            self._applied = trio.Event()
            if 0 <= self.max_raft_state < self.node.raft_state_size():
                await self.node.snapshot(message.index, self.machine.snapshot())

    async def _watch_terms(self) -> None:
        while True:
            term = self.node.term
            await self.node.wait_until(lambda n, term=term: n.term != term)
            for waiter in list(self._waiters.values()):
                if waiter.term != self.node.term:
                    self._fail(waiter)

    def _fail(self, waiter: _Waiter) -> None:
        waiter.lost = True
        waiter.done.set()
