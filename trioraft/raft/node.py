"""A Raft node: the pure Raft rules (:mod:`trioraft.raft.core`) driven by a Trio nursery tree.

    RaftNode.run                    lives as long as the node
    ├─ election timer               sleeps to the core's election deadline, which valid leader
    │                               contact pushes back; ticks the core when it passes
    ├─ applier                      hands committed entries, in order, to ``applied`` (on
    │                               the leader with ``apply_with``, the task that commits
    │                               them applies a run at once: one hand-off less)
    ├─ message senders              one per vote request or TimeoutNow the core sends
    └─ leader term t                a new CancelScope per term, cancelled on step-down
       ├─ syncer                    writes the leader's new entries, a batch at a time, and
       │                            fsyncs each unless the followers commit it first
       │                            (the timing: :mod:`trioraft.raft.group_commit`)
       ├─ quorum check              steps down if a majority is silent for an election timeout
       └─ replicator(peer) ...      one per follower (learners too), one RPC in flight, each
                                    under a deadline; started and ended as members come and go

The core decides; this module carries out its actions (persist, send, reply, lead, step
down, wake waiters), in the order given, and feeds it what happened and when.

The syncer and the replicators call the proposer registered with :meth:`RaftNode.propose_with`
(if any) right before they read the log, so what an application queued since their last look
joins the log then, with no task of its own in between.

Invariants:
- Every change of term, vote or log happens under ``_lock`` together with its persistence,
  and is durable before any reply or message that depends on it goes out (the core lists
  persistence first). Storage is only touched under ``_lock`` (so a snapshot's log rewrite
  never races an append). A leader steps the core on its followers' replies without the
  lock unless the reply carries a newer term (then under it, as that change is persisted).
- The leader appends proposals to its in-memory log at once (so replicators can ship them
  while it syncs) but counts itself towards a quorum only up to its durable index. So an
  entry that the followers commit without it is durable on a majority without its fsync.
- At most one leader per term: a vote is granted once per term and persisted before the reply.
- A successful AppendEntries reply vouches that the log is durable up to its ``match_index``
  (a deposed leader first writes the proposals its syncer had not written yet).
- Entries reach ``applied`` exactly once, in index order, after they are committed; a
  snapshot (installed from the leader, or found at start) is delivered before any entry
  after it. A leader's no-op entry is never handed out (``applied`` skips its index).
  Entries go to ``apply_with``'s callback only from code that never awaits, and snapshot
  data it returns is taken (the log compacted) before the next entry goes to it.
- Every message fits the peers' limit (``RaftConfig.max_message_bytes``): AppendEntries
  carries as many entries as fit in ``max_batch_bytes`` (at least one), ``submit``
  refuses a command that could never fit, and a snapshot chunk fits by construction
  (``RaftConfig`` checks it). So a follower never refuses a message for its size, which
  it would otherwise do forever while elections follow.
- A failed write or fsync is fail-stop: the node records :class:`StorageFailed`, stops
  answering, cancels its tasks and ``run`` raises it. Nothing that was not persisted is
  ever acknowledged.
- A snapshot travels in chunks of ``RaftConfig.chunk_bytes``, one RPC at a time per
  follower (:mod:`trioraft.raft.transfer`): the leader resumes where the follower says, and
  the follower keeps one transfer, in ``storage.open_incoming()``. Each chunk is stepped
  through the core as word from its leader (term rules, election timer); the election
  timer waits while a complete snapshot is checked and saved.
- An installed snapshot is checked (each chunk's CRC-32, the whole's SHA-256, then the
  application's check, in a worker thread when large) and made durable before anything
  else changes: a bad one is refused with a 400 and changes nothing.
- :meth:`RaftNode.read_index` returns only while this node leads the term it started in,
  after a majority answered a message sent after the read was queued (or, opted in, within
  the lease), and only once an entry of that term committed.
- Membership (:mod:`trioraft.raft.membership`): the configuration comes from the log and
  the snapshot (the static ``peers`` only until one is found; none for a node started with
  ``joining=True``). On each change the transport is told the members' addresses, and a
  leader starts a replicator for each peer the core keeps progress for; a replicator ends
  once its peer has none. Configuration entries are never handed to ``applied``. A leader
  asked to remove itself proposes nothing: it hands leadership over and names the new
  leader, which removes it (the one place that does so: :meth:`RaftNode.change_membership`).
- ``metrics`` (:class:`~trioraft.raft.metrics.RaftMetrics`) only records: once per batch,
  message or event, and one ``int`` per proposed entry. Nothing the node does depends on it.
"""

from __future__ import annotations

import binascii
import collections
import json
import math
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import trio

from .._errors import BadRequest, LeadershipLost, NotLeader, RaftError, StorageFailed
from .._logging import Throttled, logger
from ..metrics import Histogram
from ..rpc.http import Route
from ..rpc.transport import PeerDirectory, Transport
from .config import RaftConfig
from .core import (
    NOOP_COMMAND,
    Action,
    BecomeLeader,
    ConfigurationChanged,
    LostEntries,
    Outgoing,
    PersistHardState,
    PersistLog,
    RaftCore,
    Reply,
    Role,
    SaveSnapshot,
    Send,
    StateChanged,
    StepDown,
)
from .group_commit import KEPT, GroupCommit
from .log import Log
from .membership import (
    Configuration,
    MembershipChange,
    MembershipChangeRefused,
    is_configuration_command,
)
from .messages import (
    AppendEntriesArgs,
    AppendEntriesReply,
    InstallSnapshotArgs,
    InstallSnapshotReply,
    RequestVoteArgs,
    RequestVoteReply,
    TimeoutNowArgs,
    TimeoutNowReply,
    command_wire_bytes,
)
from .metrics import RaftMetrics
from .storage import HardState, Snapshot, Storage
from .transfer import Outbound, Receiver, check_chunk, sha256_of

__all__ = [
    "Applied",
    "CommandTooLarge",
    "Configuration",
    "MembershipChange",
    "MembershipChangeRefused",
    "RaftConfig",
    "RaftNode",
    "RaftStatistics",
    "Role",
    "SnapshotApplied",
    "TransferAbandoned",
]

#: Entries applied through ``apply_with`` between two checkpoints of the applier.
_APPLY_RUN = 256
#: Snapshot data of at least this many bytes is hashed and checked in a worker thread.
_THREAD_BYTES = 1 << 20
#: A read round unconfirmed this fraction of a heartbeat interval after it was sent to the
#: quickest followers goes to every follower.
_READ_ROUND_PATIENCE = 0.5

_log_lost_entries = Throttled(logger)


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


class _FailStop:
    """``RaftNode._writing``'s context manager. A class, not a generator: several are
    entered per put, and a generator-based one costs four times as much."""

    __slots__ = ("_node", "_what")

    def __init__(self, node: RaftNode, what: str) -> None:
        self._node = node
        self._what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        if isinstance(exc, OSError):
            raise self._node._fail_stop(self._what, exc) from exc


class _WaitingOn:
    """``RaftNode._waiting_on``'s context manager: on the way out, the replicator no longer
    waits on a call."""

    __slots__ = ("_peer", "_waiting_since")

    def __init__(self, waiting_since: dict[str, float], peer: str) -> None:
        self._waiting_since = waiting_since
        self._peer = peer

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        self._waiting_since.pop(self._peer, None)


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


class TransferAbandoned(RaftError):
    """A leadership transfer did not complete within an election timeout: this node still
    leads and takes proposals again."""


@dataclass(frozen=True, slots=True)
class ReadStart:
    """A read's heartbeat round, started ahead of the read (:meth:`RaftNode.start_read`):
    the leader's term and commit index when it started, the round that confirms them, and
    when (``trio.current_time()``)."""

    term: int
    index: int
    round: int
    at: float


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
    #: Reads served as leader, by mode: ``read_index`` (a heartbeat round) or ``lease``.
    reads: dict[str, int] = field(default_factory=dict)


class RaftNode:
    """One member of a Raft cluster. Start it with ``await nursery.start(node.run)``.

    ``peers`` are the other members' ids; ``transport`` reaches them and ``routes()`` are
    the handlers they call. Read committed entries from ``applied``. ``peers`` are the
    configuration until the log or snapshot holds one. A node started with ``joining=True``
    (and an empty data directory) to join a running cluster starts with none: it never
    campaigns, and learns the configuration from the leader once a member adds it with
    :meth:`change_membership`.
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
        joining: bool = False,
    ) -> None:
        self.id = node_id
        self.config = config or RaftConfig()
        self._storage = storage
        self._transport = transport
        loaded = storage.load()
        configuration = loaded.snapshot.configuration if loaded.snapshot else None
        if configuration is None and joining:
            configuration = Configuration(())
        self._core = RaftCore(
            node_id,
            peers,
            term=loaded.hard_state.term,
            voted_for=loaded.hard_state.voted_for,
            log=loaded.log,
            config=self.config,
            rng=rng or random.Random(node_id),
            configuration=configuration,
        )
        #: The addresses told to the transport, by peer (see _reach_members).
        self._addresses_told: dict[str, str] = {}
        #: The peers the current leadership runs a replicator for.
        self._replicating: set[str] = set()
        #: The nursery of the current leadership's tasks, with its term.
        self._leader_nursery: tuple[int, trio.Nursery] | None = None
        self._snapshot = loaded.snapshot
        self._snapshot_to_deliver = loaded.snapshot
        self.last_applied = 0  # the snapshot found at start is delivered first
        self._handing_out = 0  # the index being handed to ``applied`` right now
        #: Snapshot data ``apply_with``'s callback returned at an index, until it is taken.
        self._snapshot_due: tuple[int, bytes] | None = None
        self._written_index = self.log.last_index
        self._lock = _Lock()
        self._changed = trio.Event()  # commit, term, role or applied moved: re-check
        #: Set (and replaced) by ``_notify`` only when the applier has work: it does not wake
        #: for every change (a leader applies in the task that commits, see _apply_at_once).
        self._applier_due = trio.Event()
        self._leading = trio.Event()  # set (and replaced) when this node starts leading a term
        self._term_moved = trio.Event()  # set (and replaced) when the term changes
        self._log_grew = trio.Event()  # the leader appended: its syncer wakes
        self._leader_scope: trio.CancelScope | None = None
        self._vote_requests: list[Send] = []  # what the core's campaign asks, to be sent
        self._nursery: trio.Nursery | None = None
        self._stopped = False
        self._stopped_event = trio.Event()
        self._group_commit = GroupCommit(self.config.leader_sync_grace)
        self._applied_send, self.applied = trio.open_memory_channel[Applied | SnapshotApplied](
            apply_buffer
        )
        self._apply: ApplyCallback | None = None
        self._propose: ProposeCallback = _nothing_queued
        self._check_snapshot: SnapshotCheck | None = None
        self.failure: StorageFailed | None = None  # set once a write or fsync failed
        self.metrics = RaftMetrics(self.peers)
        self._reach_members(self._core.configuration)
        self._leader_seen_in_term = -1  # the last term in which a leader was counted
        #: Batches the leader wrote, (last index, perf_counter), until they commit: timing only.
        self._written_at: collections.deque[tuple[int, float]] = collections.deque(maxlen=KEPT)
        #: Snapshots in chunks (:mod:`trioraft.raft.transfer`): the transfer this follower
        #: receives (one chunk handled at a time), what the leader sent each follower, and
        #: the SHA-256 of the snapshot it sends.
        self._receiver = Receiver(storage)
        self._receiving = trio.Lock()
        self._installing: trio.Event | None = None  # set once a complete one is installed
        self._outbound: dict[str, Outbound] = {}
        self._sha256: tuple[Snapshot, str] | None = None
        #: When each follower's replicator sent the call it waits on, and when the follower
        #: was last sent anything (that call or a heartbeat beside it): see _keep_alive.
        self._waiting_since: dict[str, float] = {}
        self._last_sent: dict[str, float] = {}
        #: Per peer, what its idle replicator waits on: set when the log grows (or a read
        #: wants a round), and by its _keep_alive when a heartbeat is due.
        self._replicator_wake: dict[str, trio.Event] = {}

    # -- the core's state, read-only here ------------------------------------------------

    @property
    def term(self) -> int:
        return self._core.term

    @property
    def voted_for(self) -> str | None:
        return self._core.voted_for

    @property
    def role(self) -> Role:
        return self._core.role

    @property
    def leader_id(self) -> str | None:
        return self._core.leader_id

    @property
    def commit_index(self) -> int:
        return self._core.commit_index

    @property
    def log(self) -> Log:
        return self._core.log

    @property
    def peers(self) -> list[str]:
        """The other members this node replicates to when it leads."""
        return self._core.peers

    @property
    def configuration(self) -> Configuration:
        """The configuration in effect: the latest in the log, committed or not
        (``voters``, ``learners`` and the members' peer ``addresses``)."""
        return self._core.configuration

    @property
    def transferring_to(self) -> str | None:
        """The follower this leader is handing its leadership to, if it is."""
        transfer = self._core.transfer
        return transfer.target if transfer is not None else None

    # -- public API ----------------------------------------------------------------------

    def routes(self) -> dict[str, Route]:
        return {
            "request_vote": Route(RequestVoteArgs, self.handle_request_vote),
            "append_entries": Route(AppendEntriesArgs, self.handle_append_entries),
            "install_snapshot": Route(InstallSnapshotArgs, self.handle_install_snapshot),
            "timeout_now": Route(TimeoutNowArgs, self.handle_timeout_now),
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
        """Propose ``command``: ``(index, term, True)`` if leader, else ``(0, term, False)``
        (also while it hands its leadership over).

        Returns at once; the entry is sent to followers right away and commits later (or
        never, if leadership is lost first). See :meth:`wait_committed`.
        """
        core = self._core
        if core.role is not Role.LEADER or core.transfer is not None or self._stopped:
            return 0, self.term, False
        self._check_fits(command)
        index = core.propose([command])
        self.metrics.entries_proposed += 1
        self._wake_leader_tasks()
        return index, self.term, True

    def submit_many(self, commands: list[str]) -> tuple[int, int]:
        """Propose several commands at once; returns the first index and the term."""
        if self._stopped:
            raise NotLeader(self.leader_id)
        for command in commands:
            self._check_fits(command)
        first = self._core.propose(commands)
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

    async def wait_leading(self) -> None:
        """Return once this node leads (at once if it does): unlike ``wait_until``, a
        follower waiting here does not wake for every entry it commits."""
        while not self.is_leader:
            await self._leading.wait()

    async def wait_term_change(self, term: int) -> None:
        """Return once the node's term is no longer ``term``."""
        while self.term == term:
            await self._term_moved.wait()

    async def wait_until(self, predicate: Callable[[RaftNode], bool]) -> None:
        """Return once ``predicate(node)`` holds; it is re-checked whenever the node's term,
        role, commit or applied index changes."""
        while not predicate(self):
            await self._changed.wait()

    def start_read(self) -> ReadStart | None:
        """Start the heartbeat round of a read that has arrived but is not yet ready to be
        asked for (its request still being parsed), so that the round overlaps the parsing;
        pass the result to :meth:`read_index`. ``None`` where there is nothing to start: this
        node does not lead, has yet to commit an entry of its term, or holds a lease (a
        lease read needs no round).

        As safe as a round started by :meth:`read_index` itself: the commit index is noted
        after the read arrived, so it covers every write acknowledged before, and the round
        confirms leadership with messages sent after that. A round started for a request
        that turns out not to read is one heartbeat round wasted. A read asked for more
        than a heartbeat interval after its round started (a request whose body came
        late) gets a round of its own, so that its answer is never older than that.
        """
        core = self._core
        if self._stopped or not core.committed_in_term():
            return None
        now = trio.current_time()
        if core.lease_valid(now):
            return None
        started = ReadStart(self.term, core.commit_index, core.queue_read(), now)
        self._send_read_round(now)
        return started

    async def read_index(self, *, lease: bool = False, started: ReadStart | None = None) -> int:
        """An index such that, once this node has applied it (:meth:`wait_applied`), its
        state reflects every write committed before this call (or before ``started``, a
        round :meth:`start_read` started for this read): a linearizable read point.

        The leader notes its commit index once an entry of its term has committed
        (``RaftConfig.leader_noop`` commits one at once), then confirms it still leads with
        one heartbeat round, shared by every read queued meanwhile, sent to the quickest
        followers that make a majority (to every follower once it has waited half a
        heartbeat interval). With ``lease`` (and ``RaftConfig.lease_duration`` set) it
        skips the round while its lease holds (see the clock assumption there). Raises
        :class:`NotLeader` (with the leader it knows) if this node does not lead, or stops
        leading first.
        """
        core = self._core
        term = self.term
        now = trio.current_time()
        if (
            started is not None
            and started.term == term
            and self._leads(term)
            and now - started.at <= self.config.heartbeat_interval
        ):
            index, read_round, sent_at = started.index, started.round, started.at
        else:
            await self._wait_commit_in_term(term)
            index = core.commit_index
            now = trio.current_time()
            if lease and core.lease_valid(now):
                self.metrics.reads["lease"] += 1
                return index
            read_round, sent_at = core.queue_read(), now
            self._send_read_round(now)
        # A round goes to the quickest followers only; if they are slow to confirm it, to
        # every follower (see RaftCore.read_round_peers).
        widen_at = sent_at + self.config.heartbeat_interval * _READ_ROUND_PATIENCE
        while True:
            changed = self._changed
            if not self._leads(term) or self._stopped:
                raise NotLeader(self.leader_id)
            if core.confirmed_round() >= read_round:
                self.metrics.reads["read_index"] += 1
                return index
            with trio.move_on_at(widen_at) as waited:
                await changed.wait()
            if waited.cancelled_caught:
                widen_at = math.inf
                self._wake_leader_tasks()

    async def _wait_commit_in_term(self, term: int) -> None:
        """Return once an entry of ``term`` has committed here, this node leading it;
        raise :class:`NotLeader` if it stops leading ``term`` (or stops) first."""
        while True:
            changed = self._changed
            if not self._leads(term) or self._stopped:
                raise NotLeader(self.leader_id)
            if self._core.committed_in_term():
                return
            await changed.wait()

    async def transfer_leadership(self, to: str | None = None) -> str:
        """Hand leadership to ``to`` (or the follower with the most of the log); returns it.

        Proposals are refused meanwhile; the target is brought up to date and told to
        campaign at once. Raises :class:`TransferAbandoned` (this node then leads on and
        takes proposals again) if it does not lose leadership within an election timeout,
        :class:`NotLeader` if it does not lead.
        """
        async with self._lock:
            self._refuse_if_failed()
            target, actions = self._core.start_transfer(to)
            term = self.term
            await self._execute(actions)
        logger.info("node %s: hands leadership of term %d to %s", self.id, term, target)
        self._wake_leader_tasks()
        with trio.move_on_after(self.config.election_timeout[1]):
            while self._leads(term):
                await self._changed.wait()
            return target
        async with self._lock:
            if self._leads(term):
                await self._execute(self._core.abandon_transfer())
        logger.info("node %s: gives up handing leadership to %s", self.id, target)
        raise TransferAbandoned(f"{target} did not take over term {term}'s leadership in time")

    async def change_membership(
        self,
        change: MembershipChange | None = None,
        *,
        add_learner: tuple[str, str] | None = None,
        promote: str | None = None,
        remove: str | None = None,
        client_url: str = "",
    ) -> Configuration:
        """Make one membership change (a :class:`MembershipChange`, or one of the keyword
        arguments): ``add_learner=(id, peer address)`` adds a member that receives the log
        without voting (start it with ``joining=True`` and an empty data directory), with
        ``client_url`` (if given) kept in the configuration for every node to know;
        ``promote=id`` makes a caught-up learner a voter; ``remove=id`` removes a member.
        Returns the new configuration once its entry has committed.

        Removing this node while it leads first hands leadership to the most up-to-date
        other voter (as :meth:`transfer_leadership`, so no election timeout passes without a
        leader), then raises :class:`NotLeader` naming the new leader: the caller retries
        there, as after any ``NotLeader``, and the new leader removes this node. (Checked
        first, so a change that would be refused or does not apply moves nothing.)

        A new leader first waits (an election timeout at most) for an entry of its term to
        commit (``RaftConfig.leader_noop`` commits one at once): a caller sent on by another
        node's ``NotLeader`` often arrives before that. A retried change that committed
        meanwhile is then found made: removing a member that is gone raises
        :class:`BadRequest`.

        Raises :class:`MembershipChangeRefused` while another change is uncommitted, if no
        entry of this leader's term committed within that wait, or during a leadership
        transfer; :class:`NotLeader` if this node does not
        lead; :class:`BadRequest` if the change does not apply (adding a member twice, or at
        an address this node's transport cannot reach; promoting a voter, removing the last
        voter); :class:`LeadershipLost` if leadership
        changed before the entry was known committed (it may still commit);
        :class:`TransferAbandoned` if removing this node, no voter took over in time (this
        node leads on, and nothing changed).
        """
        if change is None:
            change = MembershipChange(add_learner, promote, remove, client_url)
        if change.add_learner is not None and isinstance(self._transport, PeerDirectory):
            try:
                self._transport.check_peer_address(change.add_learner[1])
            except ValueError as exc:
                raise BadRequest(f"peer address: {exc}") from None
        if self.is_leader and not self._core.term_settled():
            with trio.move_on_after(self.config.election_timeout[1]):
                await self._wait_commit_in_term(self.term)
        removing_self = change.remove == self.id
        async with self._lock:
            self._refuse_if_failed()
            if self._stopped:
                raise NotLeader(self.leader_id)
            if removing_self:  # refused, or does not apply: nothing moves
                self._core.check_membership_change(change)
            else:
                index, actions = self._core.propose_membership_change(change)
                term = self.term
                await self._execute(actions)
        if removing_self:
            await self._hand_over_leadership()
        logger.info("node %s: %s (entry %d, term %d)", self.id, change.describe(), index, term)
        self._wake_leader_tasks()
        await self.wait_committed(index, term)
        return self._core.configuration_at(index)

    async def _hand_over_leadership(self) -> NoReturn:
        """Transfer leadership to the most up-to-date voter, wait (an election timeout at
        most) to hear from the new leader, and raise :class:`NotLeader` naming it."""
        await self.transfer_leadership()
        with trio.move_on_after(self.config.election_timeout[1]):
            await self.wait_until(lambda n: n.leader_id not in (None, n.id))
        raise NotLeader(self.leader_id)

    async def snapshot(self, index: int, data: bytes) -> None:
        """The application's state up to ``index`` is ``data``: discard the log before it.

        The snapshot's bytes are written without the node's lock (a large state takes
        seconds to write, and meanwhile this node goes on answering its peers and, leading,
        committing): only compacting the log file takes the lock. Until then the log file
        still holds the snapshot's prefix, which a restart after a crash drops. The save
        runs to the end even if the caller is cancelled.
        """
        async with self._lock:
            if index <= self.log.snapshot_index:
                return
            if index > max(self.last_applied, self._handing_out):
                raise ValueError(
                    f"cannot snapshot at {index}: only entries up to "
                    f"{max(self.last_applied, self._handing_out)} were handed to the application"
                )
            configuration = self._core.configuration_at(index)
            term = self._core.compact(index)
            snapshot = Snapshot(index, term, data, configuration)
            # Replicators see the compacted log at once, so they must see the snapshot that
            # replaces its prefix at once too; it holds committed state only, so sending it
            # before our own copy is on disk is safe.
            self._snapshot = snapshot
        started = time.perf_counter()
        with trio.CancelScope(shield=True):
            with self._writing("saving a snapshot"):
                await self._storage.save_snapshot_file(snapshot)
            async with self._lock:
                if self.log.snapshot_index == index:  # else a newer one replaced it meanwhile
                    await self._compact_log_file()
        self.metrics.snapshot_seconds["taken"].observe(time.perf_counter() - started)
        self.metrics.snapshot_bytes["taken"].observe(len(data))

    async def _compact_log_file(self) -> None:
        """Rewrite the log file as the (compacted) log is now. The storage writes a frozen
        copy: a leader keeps appending proposals to ``self.log`` while the rewrite runs in a
        worker thread, and those must be left to the syncer. Caller holds ``_lock``."""
        frozen = self.log.copy()
        try:
            with self._writing("compacting the log"):
                await self._storage.compact_log(frozen)
        finally:
            self._written_index = frozen.last_index
        await self._execute(self._core.persisted(frozen.last_index))

    def raft_state_size(self) -> int:
        return self._storage.raft_state_size()

    def log_bytes_through(self, index: int) -> int:
        """The bytes the log file holds up to ``index``: what a snapshot there would free."""
        return self._storage.log_bytes_through(index)

    def snapshot_size(self) -> int:
        return self._storage.snapshot_size()

    def leader_contact_age(self) -> float:
        """Seconds since this node last had word of a live leader: on a follower, since the
        last valid message from its term's leader (``inf`` if it knows none); on a leader,
        since a majority of the cluster, itself included, last answered it."""
        return self._core.leader_contact_age(trio.current_time())

    def match_indexes(self) -> dict[str, int]:
        """On the leader, how far each member's log is known to match this one's (its own:
        its last index); elsewhere empty."""
        if not self.is_leader:
            return {}
        return {
            **{peer: p.match for peer, p in self._core.progress.items()},
            self.id: self.log.last_index,
        }

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
            reads=dict(self.metrics.reads),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the node until cancelled (cancelling it is a crash: nothing is flushed).

        Raises :class:`StorageFailed` if a write or fsync failed (fail-stop)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._core.reset_election_deadline(trio.current_time())
                nursery.start_soon(self._election_timer)
                nursery.start_soon(self._applier)
                task_status.started()
        except* StorageFailed:
            pass  # recorded in self.failure, raised below
        finally:
            self._stopped = True
            self._receiver.close()
            self._stopped_event.set()
            self._notify()
            self._applied_send.close()
        if self.failure is not None:
            raise self.failure

    def _writing(self, what: str) -> _FailStop:
        """Around a write or fsync (``what``): a failure of it is the node's fail-stop."""
        return _FailStop(self, what)

    def _fail_stop(self, what: str, exc: OSError) -> StorageFailed:
        """Turn a failed write or fsync into a fail-stop: the node cannot know what reached
        the disk, so it stops before acknowledging anything more. The error to raise."""
        if self.failure is None:
            self.failure = StorageFailed(f"node {self.id}: {what} failed: {exc}")
            logger.critical("%s; the node stops (fail-stop)", self.failure)
        self._stopped = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        return self.failure

    def _refuse_if_failed(self) -> None:
        if self.failure is not None:
            raise self.failure

    # -- carrying out the core's actions -------------------------------------------------

    async def _execute(self, actions: list[Action], snapshot_data: bytes = b"") -> Any:
        """Carry out ``actions`` in order; the message of their ``Reply``, if any. Whatever
        persists must run under ``_lock`` (the callers see to it)."""
        reply = None
        for action in actions:
            if isinstance(action, StateChanged):
                self._state_changed(action.term_changed)
            elif isinstance(action, PersistHardState):
                with self._writing("saving the hard state"):
                    await self._storage.save_hard_state(HardState(action.term, action.voted_for))
            elif isinstance(action, PersistLog):
                await self._persist_log(action)
            elif isinstance(action, Reply):
                reply = action.message
            elif isinstance(action, Send):
                if isinstance(action.message, RequestVoteArgs):
                    self._vote_requests.append(action)  # sent by the campaign under way
                else:
                    assert self._nursery is not None
                    self._nursery.start_soon(self._send_timeout_now, action.to, action.message)
            elif isinstance(action, StepDown):
                logger.info("node %s: steps down in term %d", self.id, action.term)
                if self._leader_scope is not None:
                    self._leader_scope.cancel()
            elif isinstance(action, BecomeLeader):
                self._start_leading(action.term)
            elif isinstance(action, SaveSnapshot):
                await self._install_snapshot(action, snapshot_data)
            elif isinstance(action, ConfigurationChanged):
                self._configuration_changed(action.configuration)
            elif isinstance(action, LostEntries):
                _log_lost_entries(
                    "node %s: follower %s no longer holds entries up to %d that it "
                    "acknowledged (its log now differs from %d): re-sending them",
                    self.id,
                    action.peer,
                    action.acknowledged,
                    action.resent_from,
                )
        if self._apply_at_once():
            self._notify()
        return reply

    def _configuration_changed(self, configuration: Configuration) -> None:
        logger.info(
            "node %s: configuration: voters %s, learners %s",
            self.id,
            ",".join(configuration.voters) or "-",
            ",".join(configuration.learners) or "-",
        )
        self._reach_members(configuration)
        for peer in self.peers:
            self.metrics.append_entries_seconds.setdefault(peer, Histogram())
            self.metrics.append_entries_lost.setdefault(peer, 0)
        self._start_replicators()
        self._notify()

    def _reach_members(self, configuration: Configuration) -> None:
        """Tell the transport where the members are, and forget those it was told of that
        are members no more (peers given at start keep the address they were given)."""
        transport = self._transport
        if not isinstance(transport, PeerDirectory):
            return
        current = set(self.peers) | set(configuration.members)
        for peer, address in configuration.addresses.items():
            if peer != self.id and address and self._addresses_told.get(peer) != address:
                self._addresses_told[peer] = address
                try:
                    transport.set_peer_address(peer, address)
                except ValueError as exc:
                    # Refused when the change was made, so only an entry written elsewhere
                    # (another transport's cluster) gets here: never a reason to stop.
                    logger.error(
                        "node %s: member %s stays unreachable: its address %s (%s)",
                        self.id, peer, address, exc,
                    )  # fmt: skip
        for peer in [p for p in self._addresses_told if p not in current]:
            transport.forget_peer(peer)
            del self._addresses_told[peer]

    def _start_replicators(self) -> None:
        """While leading, run a replicator for every peer the core keeps progress for."""
        if self._leader_nursery is None:
            return
        term, nursery = self._leader_nursery
        if not self._leads(term):
            return
        for peer in self._core.progress:
            if peer not in self._replicating:
                self._replicating.add(peer)
                nursery.start_soon(self._replicate, peer, term)

    def _state_changed(self, term_changed: bool) -> None:
        core = self._core
        if term_changed:
            self._term_moved.set()
            self._term_moved = trio.Event()
            if core.voted_for == self.id:  # the term moved because this node campaigns
                self.metrics.elections += 1
                logger.info("node %s: campaigns in term %d", self.id, core.term)
        if core.leader_id is not None and self._leader_seen_in_term != core.term:
            self._leader_seen_in_term = core.term
            self.metrics.leaders_seen += 1
        written_at = self._written_at
        if written_at and written_at[0][0] <= core.commit_index:
            now = time.perf_counter()
            while written_at and written_at[0][0] <= core.commit_index:
                self.metrics.commit_seconds.observe(now - written_at.popleft()[1])
        self._apply_at_once()  # before the notification, so the applier is not woken for it
        self._notify()

    async def _persist_log(self, action: PersistLog) -> None:
        """Storage mirrors the log (a deposed leader may hold proposals its syncer never
        wrote) and is durable up to ``action.durable_through``."""
        truncate_from = action.truncate_from
        if truncate_from is not None:
            logger.info(
                "node %s: drops uncommitted entries from %d (term %d's leader differs)",
                self.id,
                truncate_from,
                self.term,
            )
            if truncate_from <= self._written_index:
                with self._writing("truncating the log"):
                    self._storage.truncate_from(truncate_from)
                self._written_index = truncate_from - 1
        self._write_unwritten()
        if truncate_from is not None or action.durable_through > self._core.durable_index:
            # A success reply vouches that the log is durable up to match_index.
            # Bookkeeping is exact at every checkpoint: a cancelled sync still finishes
            # (threads are not abandoned), it only leaves the durable index low.
            started = time.perf_counter()
            with self._writing("fsync of the log"):
                if self.config.sync_inline:
                    self._storage.sync_blocking()
                else:
                    await self._storage.sync()
            self.metrics.fsync_seconds.observe(time.perf_counter() - started)
            await self._execute(self._core.persisted(self._written_index))

    def _write_unwritten(self) -> int:
        """Write to storage the entries appended to the log but not written yet (a leader's
        proposals); the last index written. Caller holds ``_lock``."""
        first, last = self._written_index + 1, self.log.last_index
        if first <= last:
            with self._writing("appending to the log"):
                self._storage.append(first, self.log.slice(first, last + 1))
            self._written_index = last
        return last

    async def _campaign(self) -> None:
        """Ask for the votes the core's campaign wants (a pre-vote, then a vote) until it is
        decided, or the next campaign is due: one campaign at a time, each answer stepped.
        The calls get that whole window, not ``rpc_timeout`` (see ``RaftCore.campaign_now``)."""
        core = self._core
        with trio.move_on_at(core.election_deadline):
            async with trio.open_nursery() as nursery:

                async def ask(peer: str, args: RequestVoteArgs) -> None:
                    reply = await self._transport.call(peer, "request_vote", args, RequestVoteReply)
                    if reply is None:
                        return
                    async with self._lock:
                        now = trio.current_time()
                        await self._execute(core.step_vote_reply(peer, args, reply, now))
                    start_requests()
                    if core.campaign is None:
                        nursery.cancel_scope.cancel()  # won, or over

                def start_requests() -> None:
                    requests, self._vote_requests = self._vote_requests, []
                    for send in requests:
                        assert isinstance(send.message, RequestVoteArgs)
                        nursery.start_soon(ask, send.to, send.message)

                start_requests()

    async def _send_timeout_now(self, peer: str, args: TimeoutNowArgs) -> None:
        answer = await self._call(peer, "timeout_now", args, TimeoutNowReply)
        if answer is not None and answer.term > self.term:
            await self._adopt_newer_term(answer.term)

    async def _adopt_newer_term(self, term: int) -> None:
        async with self._lock:
            await self._execute(self._core.step_newer_term(term))

    async def _call(
        self, peer: str, method: str, args: Any, reply_type: type, wait: float | None = None
    ) -> Any:
        with trio.move_on_after(self.config.rpc_timeout if wait is None else wait):
            return await self._transport.call(peer, method, args, reply_type)
        return None

    # -- internal helpers ----------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
        if (
            self.last_applied < self.commit_index
            or self._snapshot_to_deliver is not None
            or self._snapshot_due is not None
        ):
            self._applier_due.set()
            self._applier_due = trio.Event()

    def _wake_leader_tasks(self) -> None:
        self._log_grew.set()
        self._log_grew = trio.Event()
        for wake in self._replicator_wake.values():
            wake.set()

    def _send_read_round(self, now: float) -> None:
        """Wake the replicators of the followers a read round needs (they send it as a
        heartbeat if they have nothing else to send)."""
        for peer in self._core.read_round_peers(now, self._waiting_since):
            wake = self._replicator_wake.get(peer)
            if wake is not None:
                wake.set()

    def _leads(self, term: int) -> bool:
        return self.term == term and self.role is Role.LEADER

    # -- elections -----------------------------------------------------------------------

    async def _election_timer(self) -> None:
        core = self._core
        while True:
            await trio.sleep_until(core.election_deadline)
            if trio.current_time() < core.election_deadline:
                continue  # pushed back by a leader's message meanwhile
            installing = self._installing
            if installing is not None:
                # The leader's last chunk came in: the snapshot is being checked and saved.
                await installing.wait()
                continue
            async with self._lock:
                await self._execute(core.tick(trio.current_time()))
            await self._campaign()

    async def handle_request_vote(self, args: RequestVoteArgs) -> RequestVoteReply:
        self._refuse_if_failed()
        async with self._lock:
            actions = self._core.step_request_vote(args, trio.current_time())
            return await self._execute(actions)

    async def handle_timeout_now(self, args: TimeoutNowArgs) -> TimeoutNowReply:
        self._refuse_if_failed()
        async with self._lock:
            actions = self._core.step_timeout_now(args, trio.current_time())
            reply = await self._execute(actions)
        if self._vote_requests:
            logger.info(
                "node %s: campaigns at once: %s hands its leadership over", self.id, args.leader
            )
            assert self._nursery is not None
            self._nursery.start_soon(self._campaign)
        return reply

    # -- leading -------------------------------------------------------------------------

    def _start_leading(self, term: int) -> None:
        assert self._nursery is not None
        logger.info("node %s: leads in term %d", self.id, term)
        self.metrics.elections_won += 1
        self._group_commit.new_term()
        self._written_at.clear()
        scope = trio.CancelScope()
        self._leader_scope = scope
        self._nursery.start_soon(self._lead, term, scope)
        self._leading.set()
        self._leading = trio.Event()
        if self.log.last_index > self._written_index:
            self._wake_leader_tasks()  # the no-op entry

    async def _lead(self, term: int, scope: trio.CancelScope) -> None:
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._syncer, term)
                    if self.config.check_quorum:
                        nursery.start_soon(self._check_quorum, term)
                    self._replicating = set()
                    self._leader_nursery = (term, nursery)
                    self._start_replicators()
        finally:
            if self._leader_nursery is not None and self._leader_nursery[0] == term:
                self._leader_nursery = None
            self._propose()  # what is still queued is refused (or joins a newer term's log)

    async def _syncer(self, term: int) -> None:
        """Group commit: write every entry appended since the last batch, then fsync it
        unless the followers commit it first (see :mod:`trioraft.raft.group_commit`)."""
        core = self._core
        while True:
            self._propose()
            grew = self._log_grew
            if self._written_index >= self.log.last_index:
                await grew.wait()
                continue
            # One proposal at a leader with nothing else uncommitted: one client's op at a time.
            lone = self.commit_index >= self._written_index == self.log.last_index - 1
            async with self._lock:
                if not self._leads(term):
                    return
                last = self._write_unwritten()
            self._written_at.append((last, time.perf_counter()))
            if lone and self.config.sync_inline:
                # Its AppendEntries leave first; the fsync on the loop then ends before the
                # followers answer, and the commit needs the faster one only (the grace
                # would wait for both). There is nothing else for the loop to do meanwhile.
                await trio.lowlevel.checkpoint()
                await self._sync_through(term, last, inline=True)
                continue
            now = trio.current_time()
            followers_can_commit = core.followers_form_quorum(
                now, 2 * self.config.heartbeat_interval
            )
            grace = self._group_commit.wait_for_followers(last, now, followers_can_commit)
            if grace > 0:
                with trio.move_on_after(grace):
                    while self.commit_index < last and self._leads(term):
                        await self._changed.wait()
                if self.commit_index >= last:
                    continue  # committed by the followers alone: no fsync needed for it
            await self._sync_through(term, last, inline=False)

    async def _sync_through(self, term: int, last: int, inline: bool) -> None:
        """The leader fsyncs its log (written through ``last``), on the event loop if
        ``inline``, else in a worker thread, unless the followers committed it meanwhile."""
        async with self._lock:
            if not self._leads(term) or self.commit_index >= last:
                return
            started = time.perf_counter()
            with self._writing("fsync of the log"):
                if inline:
                    self._storage.sync_blocking()
                else:
                    await self._storage.sync()
            self.metrics.fsync_seconds.observe(time.perf_counter() - started)
            await self._execute(self._core.persisted(last))

    async def _check_quorum(self, term: int) -> None:
        timeout = self.config.election_timeout[1]
        while self._leads(term):
            await trio.sleep(timeout / 2)
            async with self._lock:
                if self._leads(term):
                    await self._execute(self._core.check_quorum(trio.current_time()))

    async def _replicate(self, peer: str, term: int) -> None:
        """Keep ``peer`` caught up: send what it lacks at once, else a heartbeat per interval
        (_keep_alive wakes it for that: an idle wait under a timeout of its own would cost a
        cancel scope per put); one call at a time, and heartbeats beside a call that takes
        longer (_keep_alive)."""
        interval = self.config.heartbeat_interval
        core = self._core
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep_alive, peer, term)
                while True:
                    self._propose()
                    wake = self._replicator_wake[peer] = trio.Event()
                    ok = await self._send_to(peer, term)
                    if not self._leads(term) or peer not in core.progress:
                        break  # leadership over, or the peer left the cluster
                    if not ok:
                        await trio.sleep(interval)  # a failed peer is retried per interval
                    elif core.progress[peer].next > self.log.last_index:
                        await wake.wait()  # the log grew, a read wants a round, or a heartbeat
                nursery.cancel_scope.cancel()
        finally:
            self._outbound.pop(peer, None)  # a later replicator starts its transfer over
            self._waiting_since.pop(peer, None)
            self._last_sent.pop(peer, None)
            self._replicator_wake.pop(peer, None)
            if self._leads(term):
                self._replicating.discard(peer)

    async def _keep_alive(self, peer: str, term: int) -> None:
        """Once nothing went to ``peer`` for an interval: wake its replicator if it is idle
        (it sends what the peer lacks, else a heartbeat), or, while it waits on a call,
        send the peer a heartbeat beside it. A lost call holds the replicator for
        ``rpc_timeout``: without these the follower would hear nothing for that long (and
        campaign), nor the leader from it (check-quorum counts it silent). Heartbeats in
        flight are bounded: one per interval, each bounded by ``rpc_timeout``."""
        interval = self.config.heartbeat_interval
        core = self._core
        async with trio.open_nursery() as heartbeats:
            while True:
                await trio.sleep_until(self._last_sent.get(peer, trio.current_time()) + interval)
                now = trio.current_time()
                # The same sum as the deadline just slept to (``now - last < interval`` can
                # hold at that very deadline, by rounding: a loop that never sleeps).
                if self._last_sent.get(peer, -math.inf) + interval > now:
                    continue  # something went meanwhile
                if not self._leads(term) or peer not in core.progress:
                    return
                self._last_sent[peer] = now
                if peer in self._waiting_since:
                    heartbeats.start_soon(self._heartbeat, peer, core.heartbeat_message(peer, now))
                elif (wake := self._replicator_wake.get(peer)) is not None:
                    wake.set()

    async def _heartbeat(self, peer: str, sent: Outgoing) -> None:
        reply = await self._call(peer, "append_entries", sent.args, AppendEntriesReply)
        if reply is not None:
            core = self._core
            now = trio.current_time()
            await self._step_reply(
                reply.term, lambda: core.step_progressless_reply(peer, sent, reply.term, now)
            )

    async def _send_to(self, peer: str, term: int) -> bool:
        """One AppendEntries (or InstallSnapshot) to ``peer``; whether it answered."""
        core = self._core
        if not self._leads(term) or peer not in core.progress:
            # Stepped down since this replicator last looked (its scope's cancellation
            # may not have reached it yet): the core keeps no progress for followers.
            # Or the peer left the cluster.
            return False
        sent = core.replication_message(peer, trio.current_time())
        args = sent.args
        if args is None:
            return await self._send_snapshot(peer, sent)
        metrics = self.metrics
        if args.entries:
            metrics.entries_per_append.observe(len(args.entries))
        started = time.perf_counter()
        with self._waiting_on(peer, sent.sent_at):
            wait = self.config.append_wait(sent.entry_bytes)
            reply = await self._call(peer, "append_entries", args, AppendEntriesReply, wait)
        if reply is None:
            metrics.append_entries_lost[peer] += 1
            return False
        metrics.append_entries_seconds[peer].observe(time.perf_counter() - started)
        progress = core.progress.get(peer) if self._leads(term) else None
        match_before = progress.match if progress is not None else 0
        await self._step_reply(
            reply.term, lambda: core.step_append_reply(peer, sent, reply, trio.current_time())
        )
        if not self._leads(term):
            return False
        progress = core.progress.get(peer)
        if progress is not None and progress.match > match_before:
            self._group_commit.followers_hold(core.followers_quorum_index(), trio.current_time())
        return True

    async def _send_snapshot(self, peer: str, sent: Outgoing) -> bool:
        """One chunk of the snapshot to ``peer``, from where it wants the next (see
        :mod:`trioraft.raft.transfer`); whether it answered. The last chunk's call of a
        large snapshot may take ``longest_call``: the follower checks and saves the whole
        snapshot first. (Not a small one's: meanwhile this follower hears no heartbeat,
        and a lost call would silence it for that long.)"""
        snapshot = self._snapshot
        assert snapshot is not None
        outbound = self._outbound.get(peer)
        if outbound is None or outbound.snapshot is not snapshot:
            outbound = Outbound(snapshot, await self._sha256_of(snapshot))
            self._outbound[peer] = outbound
        args = outbound.chunk(sent.term, self.id, self.config.chunk_bytes)
        wait = self.config.longest_call if args.done and args.total >= _THREAD_BYTES else None
        with self._waiting_on(peer, sent.sent_at):
            reply = await self._call(peer, "install_snapshot", args, InstallSnapshotReply, wait)
        if reply is None:
            return False  # the same chunk goes again: a follower that has it says so
        core = self._core
        now = trio.current_time()
        if reply.installed:
            if self._outbound.get(peer) is outbound:
                del self._outbound[peer]
                self.metrics.snapshots_sent += 1  # a whole transfer, however many chunks
            index = snapshot.index
            step = lambda: core.step_snapshot_reply(peer, sent, index, reply, now)  # noqa: E731
        else:
            wanted = reply.next_offset
            outbound.offset = wanted if 0 <= wanted <= args.total else 0
            step = lambda: core.step_progressless_reply(peer, sent, reply.term, now)  # noqa: E731
        await self._step_reply(reply.term, step)
        return self._leads(sent.term)

    def _waiting_on(self, peer: str, sent_at: float) -> _WaitingOn:
        """Mark ``peer``'s replicator as waiting on a call sent at ``sent_at``."""
        self._waiting_since[peer] = self._last_sent[peer] = sent_at
        return _WaitingOn(self._waiting_since, peer)

    async def _sha256_of(self, snapshot: Snapshot) -> str:
        """The SHA-256 of ``snapshot``'s data, computed once per snapshot."""
        cached = self._sha256
        if cached is None or cached[0] is not snapshot:
            if len(snapshot.data) >= _THREAD_BYTES:
                digest = await trio.to_thread.run_sync(sha256_of, snapshot.data)
            else:
                digest = sha256_of(snapshot.data)
            cached = self._sha256 = (snapshot, digest)
        return cached[1]

    async def _step_reply(self, reply_term: int, step: Callable[[], list[Action]]) -> None:
        """Step the core with a follower's reply: under the lock only if it brings a newer
        term (persisted), so replies never wait for the leader's own fsync."""
        if reply_term > self.term:
            async with self._lock:
                await self._execute(step())
        else:
            actions = step()
            assert not any(isinstance(a, PersistHardState | PersistLog) for a in actions)
            await self._execute(actions)

    # -- following -----------------------------------------------------------------------

    async def handle_append_entries(self, args: AppendEntriesArgs) -> AppendEntriesReply:
        self._refuse_if_failed()
        async with self._lock:
            reply = await self._execute(self._core.step_append_entries(args, trio.current_time()))
            if reply.term == args.term:
                self._core.heard_from_leader(trio.current_time())  # the disk may have been slow
            return reply

    async def handle_install_snapshot(self, args: InstallSnapshotArgs) -> InstallSnapshotReply:
        """One chunk of a snapshot (see :mod:`trioraft.raft.transfer`). Anything a chunk
        cannot be is refused (400) before anything changes; chunks are handled one at a
        time, each counting as contact from the leader; the last one, once the bytes match
        their SHA-256 and the application's check, installs the snapshot durably."""
        self._refuse_if_failed()
        if args.leader == self.id:
            raise BadRequest("leader: a peer cannot speak for this node")
        try:
            data = binascii.a2b_base64(args.chunk, strict_mode=True)
        except (binascii.Error, ValueError):
            raise BadRequest("chunk: expected base64") from None
        if zlib.crc32(data) != args.crc32:
            raise BadRequest("chunk: the chunk fails its CRC-32")
        check_chunk(args, len(data), self.config)
        configuration = None
        if args.configuration:
            try:
                configuration = Configuration.from_json(json.loads(args.configuration))
            except (ValueError, TypeError, RecursionError) as exc:
                raise BadRequest(f"configuration: {exc}") from None
        async with self._receiving:
            return await self._take_chunk(args, data, configuration)

    async def _take_chunk(
        self, args: InstallSnapshotArgs, data: bytes, configuration: Configuration | None
    ) -> InstallSnapshotReply:
        core = self._core
        async with self._lock:
            reply = await self._execute(
                core.step_snapshot_chunk(args.term, args.leader, trio.current_time())
            )
        if reply.term != args.term:
            return reply  # a deposed leader's chunk: nothing kept
        receiving = self._receiver.receiving
        if receiving is not None and receiving.index <= self.commit_index:
            self._receiver.drop()  # this node has moved past it
        if args.last_included_index <= self.commit_index:
            return InstallSnapshotReply(self.term)  # it holds that state or a later one
        with self._writing("writing a snapshot chunk from the leader"):
            next_offset, complete = await self._receiver.take(args, data)
        if self.term == args.term:
            core.heard_from_leader(trio.current_time())  # the disk may have been slow
        if not complete:
            return InstallSnapshotReply(self.term, installed=False, next_offset=next_offset)
        installing = self._installing = trio.Event()
        try:
            data = await self._receiver.finish()
            if self._check_snapshot is not None:
                try:
                    if len(data) >= _THREAD_BYTES:
                        await trio.to_thread.run_sync(self._check_snapshot, data)
                    else:
                        self._check_snapshot(data)
                except ValueError as exc:
                    raise BadRequest(f"chunk: the snapshot cannot be restored: {exc}") from None
            async with self._lock:
                actions = core.step_install_snapshot(
                    args.term,
                    args.leader,
                    args.last_included_index,
                    args.last_included_term,
                    trio.current_time(),
                    configuration,
                )
                reply = await self._execute(actions, snapshot_data=data)
                if reply.term == args.term:
                    core.heard_from_leader(trio.current_time())
            return reply
        finally:
            self._receiver.drop()
            self._installing = None
            installing.set()

    async def _install_snapshot(self, action: SaveSnapshot, data: bytes) -> None:
        snapshot = Snapshot(action.index, action.term, data, action.configuration)
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
            changed = self._core.snapshot_installed(
                snapshot.index, snapshot.term, snapshot.configuration
            )
            self._snapshot = snapshot
            self._written_index = self.log.last_index
            self._snapshot_to_deliver = snapshot
            await self._execute(changed)
        logger.info(
            "node %s: installed a snapshot up to %d (%d bytes) from %s",
            self.id,
            snapshot.index,
            len(data),
            self.leader_id,
        )

    # -- applying ------------------------------------------------------------------------

    async def _applier(self) -> None:
        while True:
            due = self._applier_due
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
            elif self._snapshot_due is not None:
                index, data = self._snapshot_due
                try:
                    await self.snapshot(index, data)
                finally:
                    self._snapshot_due = None
                self._notify()
            elif self.last_applied < self.commit_index:
                await self._deliver_committed()
                self._notify()
            else:
                await due.wait()

    def _apply_at_once(self) -> bool:
        """On the leader, once the commit index moved: apply what committed in the calling
        task, through ``apply_with``'s callback, instead of waking the applier for it (one
        task hand-off less between a follower's reply and the client's answer). Not while a
        snapshot waits to be delivered or taken: the applier does those, in order. At most
        a run of ``_APPLY_RUN`` entries: the applier, which yields, takes the rest. Whether
        it applied any: the caller notifies."""
        if (
            self._apply is not None
            and self.last_applied < self.commit_index
            and self._core.role is Role.LEADER
            and self._snapshot_to_deliver is None
            and self._snapshot_due is None
        ):
            self._apply_committed(self.last_applied + _APPLY_RUN)
            return True
        return False

    def _apply_committed(self, limit: int) -> None:
        """Apply the committed entries up to ``limit`` not yet applied, in order, through
        ``apply_with``'s callback; stops early at an entry whose callback returned snapshot
        data, left in ``_snapshot_due`` for the applier to take before anything else. A
        leader's no-op is skipped. Never awaits, so two tasks never interleave in it."""
        apply = self._apply
        assert apply is not None
        limit = min(limit, self.commit_index)
        while self.last_applied < limit and self._snapshot_due is None:
            index = self.last_applied + 1
            entry = self.log.entry(index)
            if entry.command == NOOP_COMMAND or is_configuration_command(entry.command):
                self.last_applied = index  # Raft's own: never the application's
                continue
            # The consumer may snapshot at ``index`` as soon as it has received it.
            self._handing_out = index
            snapshot = apply(Applied(index, entry.term, entry.command))
            self.last_applied = index
            if snapshot is not None:
                self._snapshot_due = (index, snapshot)

    async def _deliver_committed(self) -> None:
        """Hand out the committed entries not yet handed out, in order: to ``apply_with``'s
        callback (a run of ``_APPLY_RUN`` entries at a time; the applier loop takes a
        snapshot the callback asked for), or straight into the channel's buffer while it has
        room (the reader wakes once for the whole run), else waiting for the reader. A
        leader's no-op is skipped. The caller notifies once the run is out."""
        if self._apply is not None:
            self._apply_committed(self.last_applied + _APPLY_RUN)
            if self.last_applied < self.commit_index and self._snapshot_due is None:
                await trio.lowlevel.checkpoint()  # a long replay must not starve the loop
            return
        while self.last_applied < self.commit_index and self._snapshot_to_deliver is None:
            index = self.last_applied + 1
            entry = self.log.entry(index)
            if entry.command == NOOP_COMMAND or is_configuration_command(entry.command):
                self.last_applied = index  # Raft's own: never the application's
                continue
            message = Applied(index, entry.term, entry.command)
            # The consumer may snapshot at ``index`` as soon as it has received it.
            self._handing_out = index
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
