"""The replicated state machine snapshots off its applier: a copy of the machine is
serialized in a worker thread while entries keep being applied (real time: threads)."""

from __future__ import annotations

import json
import threading

import trio

from trioraft.kv.rsm import THREAD_SNAPSHOT_BYTES, ReplicatedStateMachine
from trioraft.raft.node import RaftConfig, RaftNode
from trioraft.raft.storage import MemoryStorage
from trioraft.rpc.transport import HttpTransport

PADDING = "x" * THREAD_SNAPSHOT_BYTES  # every snapshot is large enough for a thread


class Gate:
    """Holds a copy's serialization in its worker thread until the test opens it."""

    def __init__(self) -> None:
        self.armed = False
        self.entered = trio.Event()
        self.open = threading.Event()

    def pass_through(self) -> None:
        if self.armed:
            assert threading.current_thread() is not threading.main_thread(), (
                "the snapshot is serialized on the event loop's thread, holding up applies"
            )
            trio.from_thread.run_sync(self.entered.set)
            self.open.wait()


class Counter:
    def __init__(self, gate: Gate, n: int = 0) -> None:
        self.n = n
        self.gate = gate
        self.copies = 0

    def apply(self, op: str, index: int) -> int:
        self.n += 1
        return self.n

    def copy(self) -> Counter:
        self.copies += 1
        return Counter(self.gate, self.n)

    def snapshot(self) -> bytes:
        self.gate.pass_through()
        return json.dumps({"n": self.n, "padding": PADDING}).encode()

    def restore(self, data: bytes) -> None:
        self.n = json.loads(data)["n"]


class PlainCounter(Counter):
    """A machine without ``copy()``: serialized on the applier, as before."""

    copy = None  # type: ignore[assignment]


async def start(
    nursery: trio.Nursery, machine: Counter, max_raft_state: int = 2000
) -> ReplicatedStateMachine:
    node = RaftNode("a", ["a"], MemoryStorage(), HttpTransport("a", {}), config=RaftConfig())
    rsm = ReplicatedStateMachine(node, machine, max_raft_state=max_raft_state)
    await nursery.start(node.run)
    await nursery.start(rsm.run)
    with trio.fail_after(5):
        await node.wait_until(lambda n: n.is_leader)
    return rsm


async def test_applies_keep_flowing_while_a_snapshot_is_serialized(
    nursery: trio.Nursery,
) -> None:
    gate = Gate()
    machine = Counter(gate)
    rsm = await start(nursery, machine)
    node = rsm.node
    with trio.fail_after(20):
        while node.snapshot_size() < THREAD_SNAPSHOT_BYTES:  # the first one, on the applier
            await rsm.submit("inc")
        gate.armed = True
        while not gate.entered.is_set():  # the log grows past the limit: a job starts
            await rsm.submit("inc")
        job = rsm.snapshotting
        assert job is not None
        compacted_at = node.log.snapshot_index
        applied_before = rsm.applied_index
        for _ in range(50):  # the serialization is stuck in its thread; applies go on
            await rsm.submit("inc")
        assert rsm.applied_index == applied_before + 50
        assert node.log.snapshot_index == compacted_at  # not compacted yet
        assert machine.copies == 1  # every apply is over the limit, but one job at a time
        gate.armed = False
        gate.open.set()
        await job.wait()
        index = node.log.snapshot_index  # where the job's copy was taken
        assert compacted_at < index <= applied_before
        # The state as of that index (one op per entry), not as of the end of the job.
        assert json.loads(node._snapshot.data)["n"] == index  # type: ignore[union-attr]
        assert rsm.snapshotting is None
        await rsm.submit("inc")
    assert machine.n == applied_before + 51


async def test_the_first_snapshot_of_a_large_log_is_serialized_off_the_applier(
    nursery: trio.Nursery,
) -> None:
    """No snapshot yet, but a log past THREAD_SNAPSHOT_BYTES (a large max_raft_state): the
    state it holds is large too, so the first snapshot is taken off the applier as well."""
    gate = Gate()
    gate.armed = True
    machine = Counter(gate)
    rsm = await start(nursery, machine, max_raft_state=THREAD_SNAPSHOT_BYTES)
    with trio.fail_after(20):
        while not gate.entered.is_set():
            await rsm.submit("inc " + "x" * 100_000)
        job = rsm.snapshotting
        assert job is not None and rsm.node.snapshot_size() == 0
        gate.armed = False
        gate.open.set()
        await job.wait()
    assert rsm.node.log.snapshot_index > 0


async def test_a_machine_without_copy_is_snapshotted_on_the_applier(
    nursery: trio.Nursery,
) -> None:
    machine = PlainCounter(Gate())
    rsm = await start(nursery, machine)
    node = rsm.node
    with trio.fail_after(20):
        for _ in range(200):
            await rsm.submit("inc")
            assert rsm.snapshotting is None
    assert node.log.snapshot_index > 0
    assert node.raft_state_size() < 4000


async def test_a_backlog_of_committed_entries_is_not_snapshotted_entry_by_entry(
    nursery: trio.Nursery,
) -> None:
    """A node that finds many committed entries to apply at once (here: restarted on a log
    of 300 entries, ~40 times ``max_raft_state``) cannot compact the entries it has not
    applied yet, so the log stays over the limit however often it snapshots. It snapshots
    once a snapshot would free half the limit, not after every entry: under a slow disk,
    a snapshot per entry made applying slower than committing, and the backlog (and the
    clients' waits) grew without end."""
    op = "inc " + "x" * 80
    storage = MemoryStorage()
    first = RaftNode("a", ["a"], storage, HttpTransport("a", {}), config=RaftConfig())
    rsm = ReplicatedStateMachine(first, PlainCounter(Gate()), max_raft_state=-1)
    with trio.fail_after(20):
        async with trio.open_nursery() as inner:
            await inner.start(first.run)
            await inner.start(rsm.run)
            await first.wait_until(lambda n: n.is_leader)
            for _ in range(300):
                await rsm.submit(op)
            inner.cancel_scope.cancel()
    log_bytes = storage.log_bytes_through(300)
    config = RaftConfig(leader_noop=True)  # commits the old term's entries at once
    restarted = RaftNode("a", ["a"], storage.crashed(), HttpTransport("a", {}), config=config)
    machine = PlainCounter(Gate())
    rsm = ReplicatedStateMachine(restarted, machine, max_raft_state=1000)
    await nursery.start(restarted.run)
    await nursery.start(rsm.run)
    with trio.fail_after(20):
        await restarted.wait_until(lambda n: n.last_applied >= 300)
    assert machine.n == 300
    taken = restarted.metrics.snapshot_seconds["taken"].count
    # One snapshot per half limit of entries applied (~4 entries), not one per entry.
    assert 0 < taken <= log_bytes // 500 + 1 < 300 // 2, (taken, log_bytes)
    assert restarted.raft_state_size() <= 2 * 1000
