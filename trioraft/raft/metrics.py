"""What a Raft node records for ``/metrics``, and the collector that exposes it.

:class:`RaftMetrics` holds the counters and histograms a :class:`~trioraft.RaftNode`
updates as it runs (plain ints and :class:`~trioraft.metrics.Histogram`\\ s: see
:mod:`trioraft.metrics`); :class:`RaftCollector` reads them, with the node's state (term,
role, indexes, log size), into ``trioraft_raft_*`` families at scrape time.

Invariants:
- The node updates these once per batch, message or event (an fsync, an AppendEntries
  round trip, an election), never per client operation, except one ``int`` increment per
  proposed entry; gauges of the node's state are read at scrape time, not kept up to date.
- Every counter only grows for the life of the process (Prometheus detects restarts).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..metrics import COUNT_BUCKETS, SIZE_BUCKETS, Histogram, histogram_family

if TYPE_CHECKING:
    from .node import RaftNode

#: The kinds of snapshot a node records: taken (its own log compacted) or installed (sent
#: by the leader).
SNAPSHOT_KINDS = ("taken", "installed")
#: How a leader confirmed a read: a heartbeat round (ReadIndex), or its lease.
READ_MODES = ("read_index", "lease")


class RaftMetrics:
    """The numbers a Raft node records (see the module docstring)."""

    def __init__(self, peers: list[str]) -> None:
        self.entries_proposed = 0
        self.elections = 0  # campaigns: terms this node stood for
        self.elections_won = 0
        self.leaders_seen = 0  # terms in which this node learned who leads
        self.snapshots_sent = 0
        #: Reads served as leader, by mode (see ``RaftNode.read_index``).
        self.reads = dict.fromkeys(READ_MODES, 0)
        self.commit_seconds = Histogram()
        self.fsync_seconds = Histogram()
        self.append_entries_seconds = {peer: Histogram() for peer in peers}
        self.append_entries_lost = dict.fromkeys(peers, 0)
        self.entries_per_append = Histogram(COUNT_BUCKETS)
        self.snapshot_seconds = {kind: Histogram() for kind in SNAPSHOT_KINDS}
        self.snapshot_bytes = {kind: Histogram(SIZE_BUCKETS) for kind in SNAPSHOT_KINDS}


class RaftCollector:
    """``trioraft_raft_*`` metrics of ``node``, read when scraped."""

    def __init__(self, node: RaftNode) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node, m = self.node, self.node.metrics
        stats = node.statistics()
        yield _gauge("term", "The current term.", stats.term)
        role = GaugeMetricFamily(
            "trioraft_raft_role", "1 for the role this node has now.", labels=["role"]
        )
        for name in ("follower", "candidate", "leader"):
            role.add_metric([name], 1.0 if stats.role == name else 0.0)
        yield role
        age = node.leader_contact_age()
        live = age <= node.config.election_timeout[1]
        yield _gauge(
            "has_leader", "1 if a leader reached this node within an election timeout.", live
        )
        yield _gauge(
            "leader_contact_age_seconds",
            "Since a leader last reached this node (on the leader: since a majority last "
            "answered it); +Inf if none has.",
            age if math.isfinite(age) else math.inf,
        )
        yield _gauge("commit_index", "The highest index known committed.", stats.commit_index)
        yield _gauge("applied_index", "The highest index applied.", stats.last_applied)
        yield _gauge("last_log_index", "The last index in the log.", stats.last_index)
        yield _gauge(
            "snapshot_index", "The index the latest snapshot covers.", stats.snapshot_index
        )
        yield _gauge("log_entries", "Entries in the log after the snapshot.", stats.log_length)
        yield _gauge(
            "log_bytes", "Bytes of the log and hard state on disk.", node.raft_state_size()
        )
        yield _gauge("snapshot_size_bytes", "Bytes of the latest snapshot.", node.snapshot_size())
        yield _counter(
            "entries_proposed", "Entries this node appended as leader.", m.entries_proposed
        )
        yield _counter(
            "elections", "Elections this node stood in (terms it campaigned for).", m.elections
        )
        yield _counter("elections_won", "Elections this node won.", m.elections_won)
        yield _counter(
            "leader_changes", "Terms in which this node learned of a leader.", m.leaders_seen
        )
        yield _counter("snapshots_sent", "Snapshots sent to followers.", m.snapshots_sent)
        reads = CounterMetricFamily(
            "trioraft_raft_reads",
            "Leader: reads confirmed without the log, by mode (a heartbeat round, or the lease).",
            labels=["mode"],
        )
        for mode, count in m.reads.items():
            reads.add_metric([mode], count)
        yield reads
        yield histogram_family(
            "trioraft_raft_commit_seconds",
            "Leader: from writing a batch of entries to their commit.",
            [((), m.commit_seconds)],
        )
        yield histogram_family(
            "trioraft_raft_fsync_seconds", "One fsync of the log.", [((), m.fsync_seconds)]
        )
        yield histogram_family(
            "trioraft_raft_append_entries_seconds",
            "Leader: round trip of an AppendEntries that was answered, per follower.",
            [((peer,), h) for peer, h in m.append_entries_seconds.items()],
            labels=["peer"],
        )
        lost = CounterMetricFamily(
            "trioraft_raft_append_entries_lost",
            "Leader: AppendEntries with no answer in time, per follower.",
            labels=["peer"],
        )
        for peer, count in m.append_entries_lost.items():
            lost.add_metric([peer], count)
        yield lost
        yield histogram_family(
            "trioraft_raft_append_entries_entries",
            "Leader: entries per AppendEntries that carried any.",
            [((), m.entries_per_append)],
        )
        yield histogram_family(
            "trioraft_raft_snapshot_seconds",
            "Time to save a snapshot: taken here, or installed from the leader.",
            [((kind,), h) for kind, h in m.snapshot_seconds.items()],
            labels=["kind"],
        )
        yield histogram_family(
            "trioraft_raft_snapshot_bytes",
            "Size of each snapshot saved: taken here, or installed from the leader.",
            [((kind,), h) for kind, h in m.snapshot_bytes.items()],
            labels=["kind"],
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"trioraft_raft_{name}", documentation, value=float(value))


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(f"trioraft_raft_{name}", documentation, value=value)
