"""A Raft node: the Raft rules (from the pure modules) driven by a Trio nursery tree.

    RaftNode.run                    lives as long as the node
    ├─ election timer               sleeps to a deadline that valid leader contact pushes back;
    │                               campaigns (pre-vote, then vote) when it passes
    ├─ applier                      hands committed entries, in order, to ``applied``
    └─ leader term t                a new CancelScope per term, cancelled on step-down
       ├─ syncer                    writes the leader's new entries, a batch at a time, and
       │                            fsyncs each unless the followers commit it first
       ├─ quorum check              steps down if a majority is silent for an election timeout
       └─ replicator(peer) ...      one per follower, one RPC in flight, each under a deadline

The syncer and the replicators call the proposer registered with :meth:`RaftNode.propose_with`
(if any) right before they read the log, so what an application queued since their last look
joins the log then, with no task of its own in between.

Invariants:
- Every change of term, vote or log happens under ``_lock`` together with its persistence,
  and is durable before any reply or message that depends on it goes out. Storage is only
  touched under ``_lock`` (so a snapshot's log rewrite never races an append).
- The leader appends proposals to its in-memory log at once (so replicators can ship them
  while it syncs) but counts itself towards a quorum only up to its durable index. So an
  entry that the followers commit without it is durable on a majority without its fsync.
- At most one leader per term: a vote is granted once per term and persisted before the reply.
- A successful AppendEntries reply vouches that the log is durable up to its ``match_index``
  (a deposed leader first writes the proposals its syncer had not written yet).
- Entries reach ``applied`` exactly once, in index order, after they are committed; a
  snapshot (installed from the leader, or found at start) is delivered before any entry
  after it.
- Every message fits the peers' limit (``RaftConfig.max_message_bytes``): AppendEntries
  carries as many entries as fit in ``max_batch_bytes`` (at least one), and ``submit``
  refuses a command that could never fit. So a follower never refuses a message for its
  size, which it would otherwise do forever while elections follow.
- A failed write or fsync is fail-stop: the node records :class:`StorageFailed`, stops
  answering, cancels its tasks and ``run`` raises it. Nothing that was not persisted is
  ever acknowledged.
- An installed snapshot is checked (its CRC-32, then the application's check) and made
  durable before anything else changes: a bad one is refused with a 400 and changes nothing.
- ``metrics`` (:class:`~trioraft.raft.metrics.RaftMetrics`) only records: once per batch,
  message or event, and one ``int`` per proposed entry. Nothing the node does depends on it.
"""

from __future__ import annotations

import base64
import binascii
import collections
import enum
import math
import random
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import trio

from .._errors import BadRequest, LeadershipLost, NotLeader, StorageFailed
from .._logging import Throttled, logger
from ..rpc.http import Route
from ..rpc.transport import Transport
from .log import Entry, is_up_to_date, match_append, next_index_after_reject
from .messages import (
    AppendEntriesArgs,
    AppendEntriesReply,
    InstallSnapshotArgs,
    InstallSnapshotReply,
    RequestVoteArgs,
    RequestVoteReply,
    command_wire_bytes,
)
from .metrics import RaftMetrics
from .quorum import committed_index, quorum_index, won
from .storage import HardState, Snapshot, Storage


@dataclass(frozen=True)
class RaftConfig:
    """Timing and batching. Times are seconds; the election timeout is drawn per wait."""

    election_timeout: tuple[float, float] = (0.3, 0.6)
    heartbeat_interval: float = 0.1
    rpc_timeout: float = 0.5
    max_batch_bytes: int = 512 * 1024
    pre_vote: bool = True
    check_quorum: bool = True
    #: A follower fsyncs what it appended on the event loop, not in a worker thread. Its reply
    #: waits for that fsync and it holds the node's lock meanwhile, so a thread would overlap
    #: nothing of Raft's, while the handoff costs 0.2-0.3 ms of CPU a round and, in a busy
    #: process, milliseconds of waiting (embedded writes, 3 nodes, 8,000 ops/s: p50 12.8 ms
    #: with the thread, 6.9 ms without; issue 5's notes). Turn it off if the process
    #: runs latency-sensitive work of its own beside a follower whose disk is slow. (A
    #: leader's fsync always runs in a thread: it overlaps with the followers' own.)
    follower_sync_inline: bool = True
    #: How long the leader's syncer waits, after writing a batch, for a majority of followers
    #: (whose replies vouch for their own fsync) to commit it before fsyncing it itself. A
    #: batch they commit needs no fsync here: it is durable on a majority without us, and we
    #: count ourselves towards a quorum only up to what we fsynced. The syncer waits only
    #: while enough followers are answering and caught up, and have lately been holding
    #: batches within the grace (slower peers, e.g. over HTTP, would make every batch wait
    #: in vain). 0 fsyncs every batch at once.
    leader_sync_grace: float = 0.005
    #: The largest message a peer accepts (its peer listener's body limit): every member of
    #: a cluster must use the same value. ``submit`` refuses a command that would not fit.
    max_message_bytes: int = 64 << 20

    @property
    def max_command_bytes(self) -> int:
        """The largest command (in JSON wire bytes) that fits one AppendEntries."""
        return self.max_message_bytes - _ENVELOPE_BYTES


#: Weight of each new sample in the leader's estimate of its followers' delay, and how many
#: batches it times at once (a batch the followers never come to hold is forgotten).
_DELAY_WEIGHT = 0.125
_UNVOUCHED_KEPT = 64

#: Entries applied through ``apply_with`` between two checkpoints of the applier.
_APPLY_RUN = 256

_log_lost_entries = Throttled(logger)

#: Room left in a message for everything but the commands: ids, indexes and JSON syntax.
_ENVELOPE_BYTES = 64 * 1024
#: Per entry in an AppendEntries beside its command: ``{"term":N,"command":}`` and a comma.
_ENTRY_OVERHEAD_BYTES = 40


class _Lock:
    """``trio.Lock`` whose uncontended acquire does not yield. The node takes its lock for
    every append and sync; a yield there would cost a pass of the scheduler each time."""

    def __init__(self) -> None:
        self._lock = trio.Lock()

    async def __aenter__(self) -> None:
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()


class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True)
class Applied:
    """A committed entry, delivered to the application exactly once, in order."""

    index: int
    term: int
    command: str


@dataclass(frozen=True)
class SnapshotApplied:
    """The application must replace its state with ``data`` (the state up to ``index``)."""

    index: int
    term: int
    data: bytes


#: Takes each committed entry (or snapshot to install), in order; returns snapshot data to
#: compact the log at that entry's index, or ``None``. See :meth:`RaftNode.apply_with`.
ApplyCallback = Callable[[Applied | SnapshotApplied], bytes | None]

#: Submits what the application has queued. See :meth:`RaftNode.propose_with`.
ProposeCallback = Callable[[], None]

#: Raises ``ValueError`` if snapshot data from the leader cannot be restored.
SnapshotCheck = Callable[[bytes], None]


class CommandTooLarge(BadRequest):
    """A command that could never fit a message to the peers (413)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"an entry of {size} bytes cannot be replicated (limit {limit})", 413)


@dataclass(frozen=True)
class RaftStatistics:
    id: str
    role: str
    term: int
    leader: str | None
    commit_index: int
    last_applied: int
    last_index: int
    log_length: int
    snapshot_index: int


class RaftNode:
    """One member of a Raft cluster. Start it with ``await nursery.start(node.run)``.

    ``peers`` are the other members' ids; ``transport`` reaches them and ``routes()`` are
    the handlers they call. Read committed entries from ``applied``.
    """

    def __init__(
        self,
        node_id: str,
        peers: list[str],
        storage: Storage,
        transport: Transport,
        *,
        config: RaftConfig | None = None,
        rng: random.Random | None = None,
        apply_buffer: int = 0,
    ) -> None:
        self.id = node_id
        self.peers = [p for p in peers if p != node_id]
        self.config = config or RaftConfig()
        self._storage = storage
        self._transport = transport
        self._rng = rng or random.Random(node_id)
        loaded = storage.load()
        self.term = loaded.hard_state.term
        self.voted_for = loaded.hard_state.voted_for
        self.log = loaded.log
        self._snapshot = loaded.snapshot
        self._snapshot_to_deliver = loaded.snapshot
        self.role = Role.FOLLOWER
        self.leader_id: str | None = None
        self.commit_index = self.log.snapshot_index
        self.last_applied = 0  # the snapshot found at start is delivered first
        self._handing_out = 0  # the index being handed to ``applied`` right now
        self._written_index = self._durable_index = self.log.last_index
        self._lock = _Lock()
        self._changed = trio.Event()  # commit, term, role or applied moved: re-check
        self._term_moved = trio.Event()  # set (and replaced) when the term changes
        self._log_grew = trio.Event()  # the leader appended: replicators and syncer wake
        self._leader_contacts = 0  # valid messages from a current leader, ever
        self._last_leader_contact = -math.inf
        self._election_deadline = math.inf
        self._leader_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._stopped = False
        self._stopped_event = trio.Event()
        self.next_index: dict[str, int] = {}
        self.match_index: dict[str, int] = {}
        self._last_ack: dict[str, float] = {}
        #: Batches the leader wrote, (last index, when), until followers hold them on a majority.
        self._unvouched: collections.deque[tuple[int, float]] = collections.deque(
            maxlen=_UNVOUCHED_KEPT
        )
        self._follower_delay = 0.0  # see _time_followers
        self._applied_send, self.applied = trio.open_memory_channel[Applied | SnapshotApplied](
            apply_buffer
        )
        self._apply: ApplyCallback | None = None
        self._propose: ProposeCallback = _nothing_queued
        self._check_snapshot: SnapshotCheck | None = None
        self.failure: StorageFailed | None = None  # set once a write or fsync failed
        self.metrics = RaftMetrics(self.peers)
        self._leader_seen_in_term = -1  # the last term in which a leader was counted
        #: Batches the leader wrote, (last index, perf_counter), until they commit: timing only.
        self._written_at: collections.deque[tuple[int, float]] = collections.deque(
            maxlen=_UNVOUCHED_KEPT
        )

    # -- public API ----------------------------------------------------------------------

    def routes(self) -> dict[str, Route]:
        return {
            "request_vote": Route(RequestVoteArgs, self.handle_request_vote),
            "append_entries": Route(AppendEntriesArgs, self.handle_append_entries),
            "install_snapshot": Route(InstallSnapshotArgs, self.handle_install_snapshot),
        }

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER and not self._stopped

    async def wait_stopped(self) -> None:
        """Return once :meth:`run` has ended."""
        await self._stopped_event.wait()

    def apply_with(self, apply: ApplyCallback) -> None:
        """Hand committed entries and snapshots to ``apply``, called in the applier task,
        instead of through ``applied``: no task switch per run of entries. ``apply`` must
        not block; if it returns snapshot data, the log is compacted at that entry's index
        before the next entry is applied. Call it before :meth:`run`."""
        self._apply = apply

    def propose_with(self, propose: ProposeCallback) -> None:
        """Have the leader's tasks call ``propose`` right before each time they read the log
        (to send it or to write it), and once more when leadership ends; ``propose`` submits
        whatever the application queued (with :meth:`submit`, which fails once this node no
        longer leads). Call :meth:`wake_leader` after queueing. Call it before :meth:`run`."""
        self._propose = propose

    def check_snapshot_with(self, check: SnapshotCheck) -> None:
        """Have ``check`` vet snapshot data from the leader before it is saved or anything
        changes; it raises ``ValueError`` for data that cannot be restored (the
        InstallSnapshot is then refused). Call it before :meth:`run`."""
        self._check_snapshot = check

    def wake_leader(self) -> None:
        """Tell the leader's tasks that something was queued for the ``propose_with`` callback."""
        self._wake_leader_tasks()

    def state(self) -> tuple[int, bool]:
        """The current term and whether this node believes it is the leader."""
        return self.term, self.is_leader

    def submit(self, command: str) -> tuple[int, int, bool]:
        """Propose ``command``: ``(index, term, True)`` if leader, else ``(0, term, False)``.

        Returns at once; the entry is sent to followers right away and commits later (or
        never, if leadership is lost first). See :meth:`wait_committed`.
        """
        if self.role is not Role.LEADER or self._stopped:
            return 0, self.term, False
        self._check_fits(command)
        self.log.append([Entry(self.term, command)])
        self.metrics.entries_proposed += 1
        self._wake_leader_tasks()
        return self.log.last_index, self.term, True

    def submit_many(self, commands: list[str]) -> tuple[int, int]:
        """Propose several commands at once; returns the first index and the term."""
        if self.role is not Role.LEADER or self._stopped:
            raise NotLeader(self.leader_id)
        for command in commands:
            self._check_fits(command)
        first = self.log.last_index + 1
        self.log.append([Entry(self.term, c) for c in commands])
        self.metrics.entries_proposed += len(commands)
        self._wake_leader_tasks()
        return first, self.term

    def _check_fits(self, command: str) -> None:
        size = command_wire_bytes(command)
        if size > self.config.max_command_bytes:
            raise CommandTooLarge(size, self.config.max_command_bytes)

    async def wait_committed(self, index: int, term: int) -> None:
        """Return once the entry proposed at (``index``, ``term``) is committed.

        Raises :class:`LeadershipLost` if it was overwritten, if this node left ``term``
        (or stopped) before seeing it committed: it may still commit under the next leader.
        """
        while True:
            changed = self._changed
            if self.commit_index >= index:
                if self.log.term_at(index) == term:
                    return
                raise LeadershipLost(f"entry {index} of term {term} was not the one committed")
            if self.term != term or self.role is not Role.LEADER or self._stopped:
                raise LeadershipLost(f"left term {term} before entry {index} committed")
            await changed.wait()

    async def wait_applied(self, index: int) -> None:
        """Return once the entry at ``index`` has been handed to ``applied``."""
        await self.wait_until(lambda node: node.last_applied >= index)

    async def wait_term_change(self, term: int) -> None:
        """Return once the node's term is no longer ``term``."""
        while self.term == term:
            await self._term_moved.wait()

    async def wait_until(self, predicate: Callable[[RaftNode], bool]) -> None:
        """Return once ``predicate(node)`` holds; it is re-checked whenever the node's term,
        role, commit or applied index changes."""
        while not predicate(self):
            await self._changed.wait()

    async def snapshot(self, index: int, data: bytes) -> None:
        """The application's state up to ``index`` is ``data``: discard the log before it."""
        async with self._lock:
            if index <= self.log.snapshot_index:
                return
            if index > max(self.last_applied, self._handing_out):
                raise ValueError(
                    f"cannot snapshot at {index}: only entries up to "
                    f"{max(self.last_applied, self._handing_out)} were handed to the application"
                )
            term = self.log.term_at(index)
            assert term is not None
            snapshot = Snapshot(index, term, data)
            self.log.compact(index, term)
            started = time.perf_counter()
            await self._save_snapshot(snapshot)
            self.metrics.snapshot_seconds["taken"].observe(time.perf_counter() - started)
            self.metrics.snapshot_bytes["taken"].observe(len(data))

    async def _save_snapshot(self, snapshot: Snapshot) -> None:
        """Persist ``snapshot`` and the compacted log; the save runs to the end even if the
        caller is cancelled.

        The storage writes a frozen copy: a leader keeps appending proposals to ``self.log``
        while the save runs in a worker thread, and those must be left to the syncer.
        """
        frozen = self.log.copy()
        # Replicators see the compacted log at once, so they must see the snapshot that
        # replaces its prefix at once too; it holds committed state only, so sending it
        # before our own copy is on disk is safe.
        self._snapshot = snapshot
        try:
            with self._writing("saving a snapshot"):
                await self._storage.save_snapshot(snapshot, frozen)
        finally:
            self._written_index = self._durable_index = frozen.last_index

    def raft_state_size(self) -> int:
        return self._storage.raft_state_size()

    def snapshot_size(self) -> int:
        return self._storage.snapshot_size()

    def leader_contact_age(self) -> float:
        """Seconds since this node last had word of a live leader: on a follower, since the
        last valid message from its term's leader (``inf`` if it knows none); on a leader,
        since a majority of the cluster, itself included, last answered it."""
        now = trio.current_time()
        if self.role is Role.LEADER:
            needed = (len(self.peers) + 1) // 2  # followers that make a majority with us
            if needed == 0:
                return 0.0
            acks = sorted((self._last_ack.get(p, -math.inf) for p in self.peers), reverse=True)
            return now - acks[needed - 1]
        if self.leader_id is None:
            return math.inf
        return now - self._last_leader_contact

    def statistics(self) -> RaftStatistics:
        return RaftStatistics(
            id=self.id,
            role=self.role.value,
            term=self.term,
            leader=self.leader_id,
            commit_index=self.commit_index,
            last_applied=self.last_applied,
            last_index=self.log.last_index,
            log_length=len(self.log.entries),
            snapshot_index=self.log.snapshot_index,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the node until cancelled (cancelling it is a crash: nothing is flushed).

        Raises :class:`StorageFailed` if a write or fsync failed (fail-stop)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._reset_election_deadline()
                nursery.start_soon(self._election_timer)
                nursery.start_soon(self._applier)
                task_status.started()
        except* StorageFailed:
            pass  # recorded in self.failure, raised below
        finally:
            self._stopped = True
            self._stopped_event.set()
            self._notify()
            self._applied_send.close()
        if self.failure is not None:
            raise self.failure

    @contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Turn a failed write or fsync into a fail-stop: the node cannot know what reached
        the disk, so it stops before acknowledging anything more."""
        try:
            yield
        except OSError as exc:
            if self.failure is None:
                self.failure = StorageFailed(f"node {self.id}: {what} failed: {exc}")
                logger.critical("%s; the node stops (fail-stop)", self.failure)
            self._stopped = True
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
            raise self.failure from exc

    def _refuse_if_failed(self) -> None:
        if self.failure is not None:
            raise self.failure

    # -- internal helpers ----------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _enter_term(self, term: int, voted_for: str | None) -> None:
        self.term, self.voted_for = term, voted_for
        self._term_moved.set()
        self._term_moved = trio.Event()

    def _wake_leader_tasks(self) -> None:
        self._log_grew.set()
        self._log_grew = trio.Event()

    def _random_timeout(self) -> float:
        return self._rng.uniform(*self.config.election_timeout)

    def _reset_election_deadline(self) -> None:
        self._election_deadline = trio.current_time() + self._random_timeout()

    async def _persist_hard_state(self) -> None:
        with self._writing("saving the hard state"):
            await self._storage.save_hard_state(HardState(self.term, self.voted_for))

    def _become_follower(self, term: int, leader: str | None) -> bool:
        """Adopt ``term`` (a newer one clears the vote) and follow. Returns whether the hard
        state changed and must be persisted before replying."""
        changed = term > self.term
        if changed:
            self._enter_term(term, None)
        if self.role is Role.LEADER:
            logger.info("node %s: steps down in term %d", self.id, self.term)
            if self._leader_scope is not None:
                self._leader_scope.cancel()
        before = (self.role, self.leader_id)
        self.role = Role.FOLLOWER
        if leader is not None or changed:
            self.leader_id = leader
        if leader is not None and self._leader_seen_in_term != self.term:
            self._leader_seen_in_term = self.term
            self.metrics.leaders_seen += 1
        if changed or before != (self.role, self.leader_id):
            self._notify()
        return changed

    async def _adopt_newer_term(self, term: int) -> None:
        async with self._lock:
            if term > self.term:
                self._become_follower(term, None)
                await self._persist_hard_state()

    def _leader_recently_heard(self) -> bool:
        if self.role is Role.LEADER:
            return True
        elapsed = trio.current_time() - self._last_leader_contact
        return self.leader_id is not None and elapsed < self.config.election_timeout[0]

    def _heard_from_leader(self) -> None:
        self._leader_contacts += 1
        self._last_leader_contact = trio.current_time()
        self._reset_election_deadline()

    # -- elections -----------------------------------------------------------------------

    async def _election_timer(self) -> None:
        while True:
            await trio.sleep_until(self._election_deadline)
            if trio.current_time() < self._election_deadline:
                continue  # pushed back by a leader's message meanwhile
            if self.role is Role.LEADER:
                self._reset_election_deadline()
                continue
            await self._campaign()

    async def _campaign(self) -> None:
        self._reset_election_deadline()  # if this campaign fails, try again after a while
        contacts = self._leader_contacts
        if self.config.pre_vote and not await self._collect_votes(self.term + 1, pre_vote=True):
            return
        async with self._lock:
            if self._leader_contacts != contacts or self.role is Role.LEADER:
                return  # a leader spoke up meanwhile
            self._enter_term(self.term + 1, self.id)
            self.metrics.elections += 1
            logger.info("node %s: campaigns in term %d", self.id, self.term)
            self.role = Role.CANDIDATE
            self.leader_id = None
            await self._persist_hard_state()
            term = self.term
            self._notify()
        if await self._collect_votes(term, pre_vote=False):
            async with self._lock:
                if self.term == term and self.role is Role.CANDIDATE:
                    self._become_leader()

    async def _collect_votes(self, term: int, *, pre_vote: bool) -> bool:
        """Ask every peer for a (pre-)vote at ``term``; True once a majority granted."""
        granted = 1  # our own
        if won(granted, len(self.peers) + 1):
            return True
        args = RequestVoteArgs(term, self.id, self.log.last_index, self.log.last_term, pre_vote)
        result = False
        with trio.move_on_after(self.config.election_timeout[1]):
            async with trio.open_nursery() as nursery:

                async def ask(peer: str) -> None:
                    nonlocal granted, result
                    reply = await self._call(peer, "request_vote", args, RequestVoteReply)
                    if reply is None:
                        return
                    if reply.term > self.term:
                        await self._adopt_newer_term(reply.term)
                        nursery.cancel_scope.cancel()
                    elif reply.granted:
                        granted += 1
                        if won(granted, len(self.peers) + 1):
                            result = True
                            nursery.cancel_scope.cancel()

                for peer in self.peers:
                    nursery.start_soon(ask, peer)
        expected_term = term - 1 if pre_vote else term
        return result and self.term == expected_term

    async def handle_request_vote(self, args: RequestVoteArgs) -> RequestVoteReply:
        self._refuse_if_failed()
        async with self._lock:
            up_to_date = is_up_to_date(
                args.last_log_index, args.last_log_term, self.log.last_index, self.log.last_term
            )
            if args.pre_vote:
                grant = args.term > self.term and up_to_date and not self._leader_recently_heard()
                return RequestVoteReply(self.term, grant)
            if args.term < self.term:
                return RequestVoteReply(self.term, False)
            if args.term > self.term and self.config.check_quorum and self._leader_recently_heard():
                return RequestVoteReply(self.term, False)  # our leader is alive: no disruption
            changed = self._become_follower(args.term, None) if args.term > self.term else False
            grant = up_to_date and self.voted_for in (None, args.candidate)
            if grant and self.voted_for is None:
                self.voted_for = args.candidate
                changed = True
            if grant:
                self._reset_election_deadline()
            if changed:
                await self._persist_hard_state()
            return RequestVoteReply(self.term, grant)

    # -- leading -------------------------------------------------------------------------

    def _become_leader(self) -> None:
        assert self._nursery is not None
        self.role = Role.LEADER
        self.leader_id = self.id
        logger.info("node %s: leads in term %d", self.id, self.term)
        self.metrics.elections_won += 1
        self._leader_seen_in_term = self.term
        self.metrics.leaders_seen += 1
        now = trio.current_time()
        self._unvouched.clear()
        self._written_at.clear()
        for peer in self.peers:
            self.next_index[peer] = self.log.last_index + 1
            self.match_index[peer] = 0
            self._last_ack[peer] = now
        scope = trio.CancelScope()
        self._leader_scope = scope
        self._nursery.start_soon(self._lead, self.term, scope)
        self._notify()

    async def _lead(self, term: int, scope: trio.CancelScope) -> None:
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._syncer, term)
                    if self.config.check_quorum:
                        nursery.start_soon(self._check_quorum, term)
                    for peer in self.peers:
                        nursery.start_soon(self._replicate, peer, term)
                    self._advance_commit()  # a one-node cluster commits by itself
        finally:
            self._propose()  # what is still queued is refused (or joins a newer term's log)

    async def _syncer(self, term: int) -> None:
        """Group commit: write every entry appended since the last batch, then fsync it
        unless the followers commit it first (see ``RaftConfig.leader_sync_grace``)."""
        while True:
            self._propose()
            grew = self._log_grew
            if self._written_index >= self.log.last_index:
                await grew.wait()
                continue
            async with self._lock:
                if not self._leads(term):
                    return
                last = self._write_unwritten()
            self._written_at.append((last, time.perf_counter()))
            followers_can_commit = self._followers_form_quorum()
            if followers_can_commit:
                self._unvouched.append((last, trio.current_time()))
            if followers_can_commit and self._follower_delay < self.config.leader_sync_grace:
                with trio.move_on_after(self.config.leader_sync_grace):
                    while self.commit_index < last and self._leads(term):
                        await self._changed.wait()
                if self.commit_index >= last:
                    continue  # committed by the followers alone: no fsync needed for it
            async with self._lock:
                if not self._leads(term):
                    return
                started = time.perf_counter()
                with self._writing("fsync of the log"):
                    await self._storage.sync()
                self.metrics.fsync_seconds.observe(time.perf_counter() - started)
                self._durable_index = max(self._durable_index, last)
            self._advance_commit()

    def _leads(self, term: int) -> bool:
        return self.term == term and self.role is Role.LEADER

    def _followers_form_quorum(self) -> bool:
        """Whether enough followers are answering and caught up to commit without us."""
        recent = trio.current_time() - 2 * self.config.heartbeat_interval
        caught_up = sum(
            1
            for p in self.peers
            if self._last_ack[p] > recent and self.match_index[p] >= self.commit_index
        )
        return won(caught_up, len(self.peers) + 1)

    def _time_followers(self) -> None:
        """Update the estimate of how long the followers alone take to hold a written batch
        on a majority (a moving average over the batches they came to hold)."""
        held = quorum_index([0, *self.match_index.values()])  # counting ourselves as empty
        now = trio.current_time()
        while self._unvouched and self._unvouched[0][0] <= held:
            _, written = self._unvouched.popleft()
            self._follower_delay += (now - written - self._follower_delay) * _DELAY_WEIGHT

    def _write_unwritten(self) -> int:
        """Write to storage the entries appended to the log but not written yet (a leader's
        proposals); the last index written. Caller holds ``_lock``."""
        first, last = self._written_index + 1, self.log.last_index
        if first <= last:
            with self._writing("appending to the log"):
                self._storage.append(first, self.log.slice(first, last + 1))
            self._written_index = last
        return last

    async def _check_quorum(self, term: int) -> None:
        timeout = self.config.election_timeout[1]
        while True:
            await trio.sleep(timeout / 2)
            now = trio.current_time()
            recent = 1 + sum(1 for p in self.peers if now - self._last_ack[p] < timeout)
            if not won(recent, len(self.peers) + 1):
                async with self._lock:
                    if self._leads(term):
                        self._become_follower(term, None)
                        self.leader_id = None
                return

    async def _replicate(self, peer: str, term: int) -> None:
        """Keep ``peer`` caught up: send what it lacks at once, else a heartbeat per interval."""
        interval = self.config.heartbeat_interval
        while True:
            self._propose()
            grew = self._log_grew
            ok = await self._send_to(peer, term)
            if not self._leads(term):
                return
            if ok and self.next_index[peer] <= self.log.last_index:
                continue  # more to send right away
            with trio.move_on_after(interval):
                if ok:
                    await grew.wait()
                else:
                    await trio.sleep_forever()  # a failed peer is retried once an interval

    async def _send_to(self, peer: str, term: int) -> bool:
        """One AppendEntries (or InstallSnapshot) to ``peer``; whether it answered."""
        next_index = self.next_index[peer]
        if next_index <= self.log.snapshot_index:
            return await self._send_snapshot(peer, term)
        prev_index = next_index - 1
        prev_term = self.log.term_at(prev_index)
        assert prev_term is not None
        entries = self._batch(next_index)
        args = AppendEntriesArgs(term, self.id, prev_index, prev_term, entries, self.commit_index)
        metrics = self.metrics
        if entries:
            metrics.entries_per_append.observe(len(entries))
        started = time.perf_counter()
        reply = await self._call(peer, "append_entries", args, AppendEntriesReply)
        if reply is None:
            metrics.append_entries_lost[peer] += 1
            return False
        metrics.append_entries_seconds[peer].observe(time.perf_counter() - started)
        if not await self._still_leading_after(reply.term, term):
            return False
        self._last_ack[peer] = trio.current_time()
        if reply.success:
            match = min(reply.match_index, prev_index + len(entries))
            if match > self.match_index[peer]:
                self.match_index[peer] = match
                self._advance_commit()
                self._time_followers()
            self.next_index[peer] = max(self.next_index[peer], self.match_index[peer] + 1)
        else:
            hint = next_index_after_reject(self.log, reply.conflict_term, reply.conflict_index)
            if hint <= self.match_index[peer]:
                # A follower never rejects below what it acknowledged unless it lost it (its
                # data directory wiped or damaged by hand): count it as holding nothing, and
                # bring it back up from where it is.
                _log_lost_entries(
                    "node %s: follower %s no longer holds entries up to %d that it "
                    "acknowledged (its log now differs from %d): re-sending them",
                    self.id,
                    peer,
                    self.match_index[peer],
                    hint,
                )
                self.match_index[peer] = 0
            self.next_index[peer] = max(
                self.match_index[peer] + 1, min(hint, self.log.last_index + 1)
            )
        return True

    def _batch(self, start: int) -> list[Entry]:
        """Entries from ``start``, as many as fit in ``max_batch_bytes`` as sent (at least
        one, which fits a message: ``submit`` saw to that)."""
        entries = self.log.entries
        first = start - self.log.snapshot_index - 1
        budget = min(self.config.max_batch_bytes, self.config.max_command_bytes)
        end = first
        while end < len(entries):
            budget -= command_wire_bytes(entries[end].command) + _ENTRY_OVERHEAD_BYTES
            if end > first and budget < 0:
                break
            end += 1
        return entries[first:end]

    async def _send_snapshot(self, peer: str, term: int) -> bool:
        snapshot = self._snapshot
        assert snapshot is not None
        data = base64.b64encode(snapshot.data).decode()
        args = InstallSnapshotArgs(
            term, self.id, snapshot.index, snapshot.term, data, zlib.crc32(snapshot.data)
        )
        self.metrics.snapshots_sent += 1
        reply = await self._call(peer, "install_snapshot", args, InstallSnapshotReply)
        if reply is None or not await self._still_leading_after(reply.term, term):
            return False
        self._last_ack[peer] = trio.current_time()
        self.match_index[peer] = max(self.match_index[peer], snapshot.index)
        self.next_index[peer] = max(self.next_index[peer], snapshot.index + 1)
        return True

    async def _still_leading_after(self, reply_term: int, term: int) -> bool:
        """Adopt a newer term seen in a follower's reply; whether we still lead ``term``."""
        if reply_term > term:
            await self._adopt_newer_term(reply_term)
            return False
        return self._leads(term)

    def _advance_commit(self) -> None:
        if self.role is not Role.LEADER:
            return
        matches = [self._durable_index, *(self.match_index[p] for p in self.peers)]
        new = committed_index(matches, self.log.term_at, self.term, self.commit_index)
        if new > self.commit_index:
            self.commit_index = new
            self._notify()
            written_at = self._written_at
            if written_at and written_at[0][0] <= new:
                now = time.perf_counter()
                while written_at and written_at[0][0] <= new:
                    self.metrics.commit_seconds.observe(now - written_at.popleft()[1])

    async def _call(self, peer: str, method: str, args: Any, reply_type: type) -> Any:
        with trio.move_on_after(self.config.rpc_timeout):
            return await self._transport.call(peer, method, args, reply_type)
        return None

    # -- following -----------------------------------------------------------------------

    async def handle_append_entries(self, args: AppendEntriesArgs) -> AppendEntriesReply:
        self._refuse_if_failed()
        _check_entry_terms(args)
        if args.leader == self.id:
            raise BadRequest("leader: a peer cannot speak for this node")
        async with self._lock:
            if args.term < self.term:
                return AppendEntriesReply(self.term, False)
            changed = self._become_follower(args.term, args.leader)
            self._heard_from_leader()
            if changed:
                await self._persist_hard_state()
            # A deposed leader may hold proposals its syncer never wrote: storage must mirror
            # the log before it is matched, truncated or extended.
            self._write_unwritten()
            result = match_append(self.log, args.prev_log_index, args.prev_log_term, args.entries)
            if not result.success:
                return AppendEntriesReply(
                    self.term, False, 0, result.conflict_term, result.conflict_index
                )
            if result.truncate_from is not None:
                if result.truncate_from <= self.commit_index:
                    raise BadRequest("AppendEntries would remove committed entries")
                logger.info(
                    "node %s: drops uncommitted entries from %d to %d (term %d's leader differs)",
                    self.id,
                    result.truncate_from,
                    self.log.last_index,
                    self.term,
                )
                self.log.truncate_from(result.truncate_from)
                with self._writing("truncating the log"):
                    self._storage.truncate_from(result.truncate_from)
                self._written_index = min(self._written_index, result.truncate_from - 1)
                self._durable_index = min(self._durable_index, result.truncate_from - 1)
            if result.new_entries:
                self.log.append(list(result.new_entries))
                self._write_unwritten()
            if result.truncate_from is not None or result.match_index > self._durable_index:
                # A success reply vouches that the log is durable up to match_index.
                # Bookkeeping above is exact at every checkpoint: a cancelled sync still
                # finishes (threads are not abandoned), it only leaves durable_index low.
                started = time.perf_counter()
                with self._writing("fsync of the log"):
                    if self.config.follower_sync_inline:
                        self._storage.sync_blocking()
                    else:
                        await self._storage.sync()
                self.metrics.fsync_seconds.observe(time.perf_counter() - started)
                self._durable_index = self._written_index
            new_commit = min(args.leader_commit, result.match_index)
            if new_commit > self.commit_index:
                self.commit_index = new_commit
                self._notify()
            self._heard_from_leader()  # the disk may have been slow
            return AppendEntriesReply(self.term, True, result.match_index)

    async def handle_install_snapshot(self, args: InstallSnapshotArgs) -> InstallSnapshotReply:
        self._refuse_if_failed()
        if args.leader == self.id:
            raise BadRequest("leader: a peer cannot speak for this node")
        try:
            data = base64.b64decode(args.data, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("data: expected base64") from None
        if zlib.crc32(data) != args.crc32:
            raise BadRequest("data: the snapshot fails its CRC-32")
        if self._check_snapshot is not None:
            try:
                self._check_snapshot(data)
            except ValueError as exc:
                raise BadRequest(f"data: the snapshot cannot be restored: {exc}") from None
        async with self._lock:
            if args.term < self.term:
                return InstallSnapshotReply(self.term)
            changed = self._become_follower(args.term, args.leader)
            self._heard_from_leader()
            if changed:
                await self._persist_hard_state()
            if args.last_included_index <= self.commit_index:
                return InstallSnapshotReply(self.term)  # nothing new in it
            snapshot = Snapshot(args.last_included_index, args.last_included_term, data)
            # Durable first: until it is saved, nothing (log, commit index) may move, or a
            # retry after a failed save would be answered as if it had been installed. And
            # once saved, memory must follow the disk even if the caller went away.
            compacted = self.log.copy()
            compacted.compact(snapshot.index, snapshot.term)
            with trio.CancelScope(shield=True):
                started = time.perf_counter()
                with self._writing("saving an installed snapshot"):
                    await self._storage.save_snapshot(snapshot, compacted)
                self.metrics.snapshot_seconds["installed"].observe(time.perf_counter() - started)
                self.metrics.snapshot_bytes["installed"].observe(len(data))
                self.log.compact(snapshot.index, snapshot.term)
                self._snapshot = snapshot
                self._written_index = self._durable_index = self.log.last_index
                self._snapshot_to_deliver = snapshot
                self.commit_index = snapshot.index
            logger.info(
                "node %s: installed a snapshot up to %d (%d bytes) from %s",
                self.id,
                snapshot.index,
                len(data),
                args.leader,
            )
            self._heard_from_leader()
            self._notify()
            return InstallSnapshotReply(self.term)

    # -- applying ------------------------------------------------------------------------

    async def _applier(self) -> None:
        while True:
            changed = self._changed
            snapshot = self._snapshot_to_deliver
            if snapshot is not None:
                self._snapshot_to_deliver = None
                if snapshot.index > self.last_applied:
                    message = SnapshotApplied(snapshot.index, snapshot.term, snapshot.data)
                    if self._apply is None:
                        await self._deliver(message)
                    else:
                        self._apply(message)
                    self.last_applied = max(self.last_applied, snapshot.index)
                    self._notify()
            elif self.last_applied < self.commit_index:
                await self._deliver_committed()
                self._notify()
            else:
                await changed.wait()

    async def _deliver_committed(self) -> None:
        """Hand out the committed entries not yet handed out, in order: to ``apply_with``'s
        callback, or straight into the channel's buffer while it has room (the reader wakes
        once for the whole run), else waiting for the reader. The caller notifies once the
        run is out."""
        while self.last_applied < self.commit_index and self._snapshot_to_deliver is None:
            index = self.last_applied + 1
            entry = self.log.entry(index)
            message = Applied(index, entry.term, entry.command)
            # The consumer may snapshot at ``index`` as soon as it has received it.
            self._handing_out = index
            if self._apply is not None:
                snapshot = self._apply(message)
                self.last_applied = index
                if snapshot is not None:
                    await self.snapshot(index, snapshot)
                elif index % _APPLY_RUN == 0:
                    await trio.lowlevel.checkpoint()  # a long replay must not starve the loop
                continue
            try:
                self._applied_send.send_nowait(message)
            except trio.WouldBlock:
                self._notify()  # what was handed out so far, before waiting for the reader
                await self._deliver(message)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # nobody is reading: the application does not want them
            self.last_applied = index

    async def _deliver(self, message: Applied | SnapshotApplied) -> None:
        try:
            await self._applied_send.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # nobody is reading: the application does not want them


def _nothing_queued() -> None:
    pass


def _check_entry_terms(args: AppendEntriesArgs) -> None:
    """Entries a leader sends have terms from ``prev_log_term`` up to its own, in order."""
    previous = args.prev_log_term
    for i, entry in enumerate(args.entries):
        if not previous <= entry.term <= args.term:
            raise BadRequest(
                f"entries[{i}].term: {entry.term} breaks the order "
                f"(after term {previous}, in a term-{args.term} message)"
            )
        previous = entry.term
