"""A replicated state machine: operations go through the Raft log and are applied in order.

``submit(op)`` and ``submit_many(ops)`` queue operations; right before the leader's tasks
next read the log (see ``RaftNode.propose_with``), everything queued since the last look
becomes one log entry (tagged with this server's id and a unique number), so concurrent
callers share one entry, one fsync and one apply, and no task hop of its own. The node's applier
task applies each committed entry's ops by calling this machine directly (see
``RaftNode.apply_with``), then sets the entry's ``trio.Event``, on which its callers wait for
their own ops' results. Every replica applies every committed entry's ops, in order.

Invariants:
- A caller learns its results only from the entry at its own index carrying its own tag; if
  another entry lands there, or this node's term moves on first, it gets
  :class:`LeadershipLost` (its ops may still commit under the new leader, or not).
- The ops of one ``submit_many`` call are applied together, in the order given, in one entry.
- A leader that merely stops leading (check-quorum) keeps its waiters until its term changes:
  nothing can commit at their indexes in the meantime.
- A caller waits at most ``op_timeout`` from when its entry was opened, then gets
  :class:`ProposalTimedOut` (one timer task serves every waiter: entries open in order, so
  the oldest one unanswered is always the next to expire).
- When the persisted Raft state exceeds ``max_raft_state`` bytes, the machine is
  snapshotted and Raft compacts its log, once that frees at least half the limit (not
  while the log holds mostly entries still to apply); ``-1`` disables snapshots. A
  machine with ``copy()`` whose last snapshot, or log, is large
  (:data:`THREAD_SNAPSHOT_BYTES`) is copied on the applier (the state as of that entry's
  index) and the copy serialized in a thread while the applier goes on applying; at most
  one such job runs at a time. Otherwise (a small state, or a machine without
  ``copy()``), the applier serializes it at once.
- Every entry fits a message to the peers: ops are encoded when submitted, an entry takes
  ops only while its command stays within ``max_entry_bytes`` (4 MiB, and at most half the
  node's message limit: escaping can double JSON text), and ops that alone exceed it are
  refused at once with a 413 (:class:`EntryTooLarge`), never proposed.
- Applying never raises: an entry that is not one of ours (undecodable, or an op the
  machine raises on) is logged and applied as nothing, every op answered ``None``, the same
  on every replica. Snapshot data from the leader is checked (``machine.check_snapshot``)
  before Raft saves it.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from .._errors import (
    BadRequest,
    LeadershipLost,
    NotLeader,
    ProposalTimedOut,
    RaftError,
    StorageCorrupt,
    StorageFailed,
)
from .._logging import Throttled, logger
from ..raft.node import Applied, RaftNode, SnapshotApplied
from ..rpc.codec import compact_json

#: Most ops packed into one log entry (a bound on entry size, not on throughput).
MAX_OPS_PER_ENTRY = 4096
#: Most bytes of ops (as JSON) in one log entry. An entry must reach a follower, be parsed,
#: written and fsynced well within one RPC timeout (0.5 s): a much larger one would hold
#: back the heartbeats that travel in the same stream and bring elections.
DEFAULT_MAX_ENTRY_BYTES = 4 << 20
#: A submission whose size bound is under this part of ``max_entry_bytes`` shares an entry
#: and is encoded with it; a larger one is encoded (measured) at once, in an entry of its own.
_SMALL_PART = 64
#: A machine whose last snapshot was at least this large is serialized in a worker thread
#: (if it has ``copy()``); below it, serializing costs less than the hand-off.
THREAD_SNAPSHOT_BYTES = 1 << 20


class StateMachine(Protocol):
    """What the RSM replicates: deterministic ``apply`` and a snapshot of the whole state.
    ``apply`` is given the index of the log entry that carries the op (ops of one entry
    share it)."""

    def apply(self, op: Any, index: int) -> Any: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...

    # Optional: ``check_snapshot(data: bytes) -> None`` raises ``ValueError`` unless
    # ``data`` would restore; without it, snapshots from the leader are not vetted. It
    # may run in a worker thread (for large snapshots).
    # Optional: ``copy() -> StateMachine``, a machine in the same state that the applier's
    # later applies do not change, whose ``snapshot()`` may run in a worker thread.


class EntryTooLarge(BadRequest):
    """Ops too large to ever fit one log entry (413)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes of ops cannot fit one log entry (limit {limit})", 413)


#: Logged at most once per interval: a faulty peer's entries could otherwise flood the log.
_log_bad_entry = Throttled(logger, logging.ERROR)


@dataclass(eq=False)
class _Proposal:
    """The ops of one log entry, from every caller that queued them before it was proposed."""

    tag: int
    ops: list[Any] = field(default_factory=list)  # encoded when proposed, all at once
    encoded: str | None = None  # or: one large submission's ops, already JSON (no brackets)
    count: int = 0  # ops
    size: int = 0  # bytes of the ops as JSON, or a bound on them
    term: int = 0
    done: trio.Event = field(default_factory=trio.Event)
    results: list[Any] = field(default_factory=list)
    error: RaftError | None = None
    deadline: float = math.inf
    index: int = 0


class ReplicatedStateMachine:
    """Runs ``machine`` on every member of ``node``'s cluster. Start :meth:`run` in a nursery."""

    def __init__(
        self,
        node: RaftNode,
        machine: StateMachine,
        *,
        max_raft_state: int = -1,
        op_timeout: float = math.inf,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    ) -> None:
        self.node = node
        self.machine = machine
        self.max_raft_state = max_raft_state
        #: The application's own reason to snapshot now, with snapshots on (``KVNode``:
        #: deletions past the storage quota, which only a snapshot turns into free space).
        self.snapshot_due: Callable[[], bool] = lambda: False
        self.op_timeout = op_timeout
        #: Room for the ops of one entry (what the JSON around them needs is kept apart):
        #: within half the peers' message limit (escaping can double JSON text), and within
        #: what a follower takes in well inside one RPC timeout.
        self.max_entry_bytes = min(max_entry_bytes, node.config.max_command_bytes // 2 - 1024)
        self._unanswered: collections.deque[_Proposal] = collections.deque()  # oldest first
        self._first_unanswered = trio.Event()  # set when _unanswered stops being empty
        self._tags = itertools.count(1)
        self._queued: list[_Proposal] = []  # not proposed yet; only the last one grows
        self._waiters: dict[int, _Proposal] = {}  # by log index
        self.applied_index = 0
        self._applied = trio.Event()  # set (and replaced) after every entry or snapshot applied
        #: The snapshot job under way (set once it ends), if any; see :meth:`_snapshot_job`.
        self.snapshotting: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        node.apply_with(self._apply)
        node.propose_with(self._propose_queued)
        check = getattr(machine, "check_snapshot", None)  # optional for a machine
        if check is not None:
            node.check_snapshot_with(check)

    async def wait_until(self, predicate: Callable[[ReplicatedStateMachine], bool]) -> None:
        """Return once ``predicate(rsm)`` holds; re-checked after every apply."""
        while not predicate(self):
            await self._applied.wait()

    async def submit(self, op: Any) -> Any:
        """Replicate and apply ``op``; its result. Raises :class:`NotLeader` on a follower,
        :class:`LeadershipLost` if the op's fate could not be seen here, and
        :class:`ProposalTimedOut` if it had no result within ``op_timeout``."""
        (result,) = await self.submit_many([op])
        return result

    async def submit_many(self, ops: list[Any], *, size_bound: int | None = None) -> list[Any]:
        """Replicate and apply ``ops``, in order, in one log entry; their results.

        ``size_bound``, if given, is at least the bytes ``ops`` take as JSON: when it is
        small, the ops are encoded with the rest of their entry, once, when it is proposed
        (the common case: many small ops share an entry). Otherwise they are encoded now, to
        be measured, and refused with :class:`EntryTooLarge` if they could never fit."""
        if not self.node.is_leader:
            raise NotLeader(self.node.leader_id)
        if not ops:
            return []
        if not self._queued:
            # A leader task takes the whole queue each time it looks, so a queue that is not
            # empty has had its wake-up since that last look: only the first caller wakes.
            self.node.wake_leader()
        if size_bound is None or size_bound > self.max_entry_bytes // _SMALL_PART:
            encoded = compact_json(ops)[1:-1]
            if len(encoded) + 1 > self.max_entry_bytes:
                raise EntryTooLarge(len(encoded) + 1, self.max_entry_bytes)
            proposal = self._open_proposal()  # an entry of its own: nothing joins it
            proposal.encoded, proposal.count, proposal.size = encoded, len(ops), len(encoded) + 1
            start = 0
        else:
            last = self._queued[-1] if self._queued else None
            if (
                last is None
                or last.encoded is not None
                or last.count + len(ops) > MAX_OPS_PER_ENTRY
                or last.size + size_bound > self.max_entry_bytes
            ):
                last = self._open_proposal()
            proposal = last
            start = proposal.count
            proposal.ops.extend(ops)
            proposal.count += len(ops)
            proposal.size += size_bound
        await proposal.done.wait()
        if proposal.error is not None:
            raise proposal.error
        return proposal.results[start : start + len(ops)]

    def _open_proposal(self) -> _Proposal:
        proposal = _Proposal(next(self._tags), deadline=trio.current_time() + self.op_timeout)
        self._queued.append(proposal)
        if self.op_timeout < math.inf:
            self._unanswered.append(proposal)
            if len(self._unanswered) == 1:
                self._first_unanswered.set()
        return proposal

    async def _expire_overdue(self) -> None:
        while True:
            while self._unanswered and self._unanswered[0].done.is_set():
                self._unanswered.popleft()
            if not self._unanswered:
                self._first_unanswered = trio.Event()
                await self._first_unanswered.wait()
                continue
            oldest = self._unanswered[0]
            await trio.sleep_until(oldest.deadline)
            if not oldest.done.is_set():
                if self._waiters.get(oldest.index) is oldest:
                    del self._waiters[oldest.index]
                timeout = ProposalTimedOut(f"no result within {self.op_timeout} s")
                self._fail(oldest, timeout)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Expire overdue ops and fail the waiters of a term that ended or a stopped node.
        (The node's tasks propose queued ops and apply committed entries, through
        ``propose_with`` and ``apply_with``.)"""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._watch_terms)
            nursery.start_soon(self._expire_overdue)
            task_status.started()
            try:
                await self.node.wait_stopped()
            finally:
                for proposal in [*self._waiters.values(), *self._queued]:
                    self._fail(proposal, LeadershipLost("the node stopped"))
                nursery.cancel_scope.cancel()

    def _propose_queued(self) -> None:
        """Called by the node's leader tasks: each queued proposal becomes a log entry, or
        fails with :class:`NotLeader` once the node no longer leads."""
        queued, self._queued = self._queued, []
        for proposal in queued:
            if proposal.done.is_set():
                continue  # expired while queued
            # The same text as json.dumps({"o", "t", "ops"}) with compact separators.
            origin = json.dumps(self.node.id)
            ops = proposal.encoded
            if ops is None:
                ops = compact_json(proposal.ops)[1:-1]
            command = f'{{"o":{origin},"t":{proposal.tag},"ops":[{ops}]}}'
            index, proposal.term, ok = self.node.submit(command)
            if not ok:
                self._fail(proposal, NotLeader(self.node.leader_id))
                continue
            superseded = self._waiters.get(index)
            if superseded is not None:  # an entry of an older term was given this index
                self._fail(superseded, LeadershipLost(f"entry {index} was overwritten"))
            proposal.index = index
            self._waiters[index] = proposal

    def _apply(self, message: Applied | SnapshotApplied) -> bytes | None:
        """Called by the node's applier for each committed entry or snapshot, in order;
        snapshot data when the log has grown past ``max_raft_state``."""
        if not isinstance(message, Applied):
            self._restore(message)
            self._announce_applied()
            return None  # the log is already compacted at an installed snapshot
        self._apply_entry(message)
        self._announce_applied()
        if self.max_raft_state >= 0 and (self._log_too_large(message.index) or self.snapshot_due()):
            return self._snapshot(message.index)
        return None

    def _log_too_large(self, index: int) -> bool:
        """Whether the Raft state is over ``max_raft_state`` and a snapshot at ``index``
        would free at least half of that. A snapshot frees only what has been applied: with
        a backlog of committed entries (a restart, a slow disk) the log can stay over the
        limit after any snapshot, and one per entry applied made applying slower than
        committing, the backlog ever longer."""
        limit = self.max_raft_state
        return (
            self.node.raft_state_size() > limit and self.node.log_bytes_through(index) >= limit // 2
        )

    def _snapshot(self, index: int) -> bytes | None:
        """The machine's snapshot at ``index`` for the applier to hand to Raft, or ``None``
        if a job takes it off the applier (or one is already under way)."""
        if self.snapshotting is not None:
            return None  # one at a time: the log is compacted when it ends
        copy = getattr(self.machine, "copy", None)
        nursery = self._nursery
        # The state's size, guessed: its last snapshot, or (the first one) the log that
        # holds it, which a large max_raft_state lets grow large before any snapshot.
        size = max(self.node.snapshot_size(), self.node.raft_state_size())
        if copy is None or nursery is None or size < THREAD_SNAPSHOT_BYTES:
            return self.machine.snapshot()
        done = self.snapshotting = trio.Event()
        nursery.start_soon(self._snapshot_job, index, copy(), done)
        return None

    async def _snapshot_job(self, index: int, machine: StateMachine, done: trio.Event) -> None:
        """Serialize ``machine`` (a copy as of ``index``) in a worker thread, then have Raft
        compact its log at ``index`` (nothing, if it moved past it meanwhile)."""
        try:
            data = await trio.to_thread.run_sync(machine.snapshot)
            await self.node.snapshot(index, data)
        except StorageFailed:
            pass  # the node stopped (fail-stop), and so does ``run``
        finally:
            self.snapshotting = None
            done.set()

    def _restore(self, message: SnapshotApplied) -> None:
        try:
            self.machine.restore(message.data)
        except ValueError as exc:
            # Checked before it was saved, so only a snapshot damaged on disk gets here.
            raise StorageCorrupt(
                f"node {self.node.id}: the snapshot at index {message.index} cannot be "
                f"restored ({exc}); restore this node from a backup, or wipe its data "
                "directory and let it rejoin"
            ) from None
        self.applied_index = message.index
        for index in [i for i in self._waiters if i <= message.index]:
            lost = LeadershipLost(f"entry {index} was replaced by a snapshot")
            self._fail(self._waiters.pop(index), lost)

    def _apply_entry(self, message: Applied) -> None:
        origin, tag, results = self._apply_ops(message)
        self.applied_index = message.index
        proposal = self._waiters.pop(message.index, None)
        if proposal is not None:
            if origin == self.node.id and tag == proposal.tag:
                proposal.results = results
                proposal.done.set()
            else:
                lost = LeadershipLost(f"another entry committed at {message.index}")
                self._fail(proposal, lost)

    def _apply_ops(self, message: Applied) -> tuple[object, object, list[Any]]:
        """Apply one entry's ops; its origin, tag and results. Never raises: an entry that is
        not ours, or an op the machine raises on, is answered ``None`` on every replica."""
        try:
            entry = json.loads(message.command)
            origin, tag, ops = entry["o"], entry["t"], entry["ops"]
            if not isinstance(ops, list):
                raise TypeError(f"ops is a {type(ops).__name__}")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            _log_bad_entry(
                "entry %d is not a state machine entry (%r): applied as nothing", message.index, exc
            )
            return None, None, []
        results: list[Any] = []
        for op in ops:
            try:
                results.append(self.machine.apply(op, message.index))
            except Exception as exc:  # a bug or a faulty peer's op: the same on every replica
                _log_bad_entry("entry %d: an op failed (%r): answered None", message.index, exc)
                results.append(None)
        return origin, tag, results

    async def wait_next_apply(self) -> None:
        """Return once the applier has applied another entry or snapshot."""
        await self._applied.wait()

    def _announce_applied(self) -> None:
        self._applied.set()
        self._applied = trio.Event()

    async def _watch_terms(self) -> None:
        while True:
            await self.node.wait_term_change(self.node.term)
            for index, proposal in list(self._waiters.items()):
                if proposal.term != self.node.term:
                    del self._waiters[index]
                    lost = LeadershipLost(f"term {proposal.term} ended before entry {index}")
                    self._fail(proposal, lost)

    @staticmethod
    def _fail(proposal: _Proposal, error: RaftError) -> None:
        if not proposal.done.is_set():
            proposal.error = error
            proposal.done.set()
