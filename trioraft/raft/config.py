"""A Raft node's settings, as a pure value shared by the core and its Trio driver.

Invariants:
- Nothing here imports Trio or the HTTP stack: :mod:`trioraft.raft.core` reads it.
- ``0 < heartbeat_interval < election_timeout[0] <= election_timeout[1]``.
- ``lease_duration`` (when set) is shorter than the shortest election timeout, and lease
  reads need ``check_quorum`` (a voter's leader stickiness is what makes the lease hold).
- A snapshot chunk, as base64 with its envelope, fits ``max_message_bytes``; so a snapshot
  of any size up to ``max_snapshot_bytes`` reaches a follower.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Room left in a message for everything but the commands: ids, indexes and JSON syntax.
ENVELOPE_BYTES = 64 * 1024
#: Per entry in an AppendEntries beside its command: ``{"term":N,"command":}`` and a comma.
ENTRY_OVERHEAD_BYTES = 40
#: At most this many election timeouts between two campaigns of a node whose campaigns keep
#: failing (see :meth:`trioraft.raft.core.RaftCore.campaign_now`).
CAMPAIGN_BACKOFF_CAP = 4
#: The size of a snapshot chunk unless told otherwise (``RaftConfig.snapshot_chunk_bytes``).
DEFAULT_CHUNK_BYTES = 1 << 20
#: The slowest rate at which a live peer takes in AppendEntries (both sides encode, tag,
#: send, check, decode and write it): a call waits a second more per this many bytes of
#: entries, so that a large entry on a loaded machine is not cut off, and sent again, each
#: time (6 MB took over ``rpc_timeout`` with two busy processes per core).
SLOWEST_PEER_BYTES_PER_SECOND = 2 << 20


def base64_bytes(n: int) -> int:
    """The length of ``n`` bytes as base64 (padded)."""
    return 4 * ((n + 2) // 3)


@dataclass(frozen=True)
class RaftConfig:
    """Timing and batching. Times are seconds; the election timeout is drawn per wait."""

    election_timeout: tuple[float, float] = (0.3, 0.6)
    heartbeat_interval: float = 0.1
    rpc_timeout: float = 0.5
    max_batch_bytes: int = 512 * 1024
    pre_vote: bool = True
    check_quorum: bool = True
    #: Fsync on the event loop, not in a worker thread, where the node waits for the fsync
    #: anyway: a follower before its reply (it holds the node's lock meanwhile, so a thread
    #: would overlap nothing of Raft's, while the handoff costs 0.2-0.3 ms of CPU a round
    #: and, in a busy process, milliseconds of waiting: embedded writes, 3 nodes, 8,000
    #: ops/s, p50 12.8 ms with the thread, 6.9 ms without; issue 5's notes), and a leader a
    #: lone entry (one proposal with nothing else uncommitted, fsynced as soon as its
    #: AppendEntries left, so that its commit needs the faster follower only). Turn it off
    #: if the process runs latency-sensitive work of its own beside a node whose disk is
    #: slow. (Any other fsync of a leader runs in a thread: it overlaps its followers'.)
    sync_inline: bool = True
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
    #: A new leader appends an empty entry of its term at once, so that an entry of its term
    #: commits without waiting for a proposal (ReadIndex needs one). The applier never hands
    #: a no-op to the application. Off by default: the raw Raft tests expect the indexes of
    #: their own commands.
    leader_noop: bool = False
    #: Lease reads: for this many seconds after a majority acknowledged a message the leader
    #: sent, it answers ``read_index(lease=True)`` without a heartbeat round. Safe only if
    #: no follower's clock runs so much faster than the leader's that it times out its
    #: leader within this span: keep it below ``election_timeout[0]`` by the drift you allow
    #: (0.9 of it tolerates clocks 10% apart). ``None``: lease reads are refused.
    lease_duration: float | None = None
    #: InstallSnapshot sends the snapshot in chunks of at most this many bytes (before
    #: base64), one RPC each, so a snapshot of any size reaches a lagging follower: each
    #: chunk must fit ``max_message_bytes`` as base64 with its envelope. ``None``: 1 MiB,
    #: or as much as fits (see :attr:`chunk_bytes`).
    snapshot_chunk_bytes: int | None = None
    #: The largest snapshot a follower takes from its leader (what it writes to its data
    #: directory while the chunks arrive): a transfer announcing more is refused (400).
    max_snapshot_bytes: int = 2 << 30
    #: The most learners a configuration holds at once (etcd's default too): adding one
    #: more is refused until one is promoted or removed. Each costs the leader a replicator
    #: (hundreds of unreachable learners made it miss its heartbeats).
    max_learners: int = 1

    def __post_init__(self) -> None:
        shortest, longest = self.election_timeout
        if not 0 < self.heartbeat_interval < shortest <= longest:
            raise ValueError(
                "need 0 < heartbeat_interval < election_timeout[0] <= election_timeout[1]"
            )
        if self.max_learners < 0:
            raise ValueError("max_learners must not be negative")
        if self.lease_duration is not None:
            if not 0 < self.lease_duration < self.election_timeout[0]:
                raise ValueError("lease_duration must be positive and below election_timeout[0]")
            if not self.check_quorum:
                raise ValueError("lease reads need check_quorum (the voters' leader stickiness)")
        if self.chunk_bytes < 1:
            raise ValueError("snapshot_chunk_bytes must be positive")
        if base64_bytes(self.chunk_bytes) + ENVELOPE_BYTES > self.max_message_bytes:
            raise ValueError(
                f"snapshot_chunk_bytes {self.chunk_bytes} does not fit a message of "
                f"max_message_bytes {self.max_message_bytes} as base64 with its envelope"
            )
        if self.max_snapshot_bytes < 0:
            raise ValueError("max_snapshot_bytes must not be negative")

    @property
    def longest_call(self) -> float:
        """The longest a node waits for one call: a vote request, for its whole campaign
        (up to :data:`CAMPAIGN_BACKOFF_CAP` election timeouts); any other call,
        ``rpc_timeout`` (an AppendEntries, more: :meth:`append_wait`)."""
        return max(self.rpc_timeout, self.election_timeout[1] * CAMPAIGN_BACKOFF_CAP)

    def append_wait(self, entry_bytes: int) -> float:
        """How long the leader waits for the answer to an AppendEntries carrying
        ``entry_bytes`` of entries (as sent): ``rpc_timeout``, and a second more per
        :data:`SLOWEST_PEER_BYTES_PER_SECOND`."""
        return self.rpc_timeout + entry_bytes / SLOWEST_PEER_BYTES_PER_SECOND

    @property
    def transport_timeout(self) -> float:
        """The longest any call may take: :attr:`longest_call`, or an AppendEntries of
        ``max_message_bytes``. The node bounds every call itself: a transport's own
        timeout must not be shorter than this."""
        return max(self.longest_call, self.append_wait(self.max_message_bytes))

    @property
    def chunk_bytes(self) -> int:
        """The size of a snapshot chunk: ``snapshot_chunk_bytes`` if set, else
        :data:`DEFAULT_CHUNK_BYTES` or, under a smaller message limit, as much as fits."""
        if self.snapshot_chunk_bytes is not None:
            return self.snapshot_chunk_bytes
        fits = (self.max_message_bytes - ENVELOPE_BYTES) // 4 * 3
        return min(DEFAULT_CHUNK_BYTES, fits)

    @property
    def max_command_bytes(self) -> int:
        """The largest command (in JSON wire bytes) that fits one AppendEntries."""
        return self.max_message_bytes - ENVELOPE_BYTES
