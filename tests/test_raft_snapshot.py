"""Raft snapshots (docs/scenarios.md: raft-snapshot): compaction, InstallSnapshot to a lagging
follower, restarts from snapshot + log. Every node snapshots each 10 applied entries."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.raft_harness import SNAPSHOT_INTERVAL, RaftCluster, SlowSnapshotDisk, rand_cmd
from trioraft import MemoryStorage
from trioraft.testing import MIT_UNRELIABLE, RELIABLE

pytestmark = pytest.mark.usefixtures("seeded_scheduler")
Clock = trio.testing.MockClock
MAX_LOG_SIZE = 2000


async def snapcommon(
    nursery: trio.Nursery, seed: int, *, disconnect: bool, reliable: bool, crash: bool
) -> RaftCluster:
    c = RaftCluster(
        nursery, 3, seed, profile=RELIABLE if reliable else MIT_UNRELIABLE, snapshot=True
    )
    await c.start_all()
    await c.one(rand_cmd(c), 3, retry=True)
    leader1 = int(await c.check_one_leader())
    for i in range(30):
        victim, sender = (leader1 + 1) % 3, leader1
        if i % 3 == 1:
            victim, sender = leader1, (leader1 + 1) % 3
        if disconnect:
            c.disconnect(str(victim))
            await c.one(rand_cmd(c), 2, retry=True)
        if crash:
            c.crash(str(victim))
            await c.one(rand_cmd(c), 2, retry=True)
        nn = SNAPSHOT_INTERVAL // 2 + c.rng.randrange(SNAPSHOT_INTERVAL)
        for _ in range(nn):
            node = c.nodes[str(sender)]
            if node is not None:
                node.submit(rand_cmd(c))
        if not disconnect and not crash:
            await c.one(rand_cmd(c), 3, retry=True)
        else:
            await c.one(rand_cmd(c), 2, retry=True)
        assert c.raft_state_size() < MAX_LOG_SIZE, f"log size too large: {c.raft_state_size()}"
        if disconnect:
            c.connect(str(victim))
            await c.one(rand_cmd(c), 3, retry=True)
            leader1 = int(await c.check_one_leader())
        if crash:
            await c.start(str(victim))
            await c.one(rand_cmd(c), 3, retry=True)
            leader1 = int(await c.check_one_leader())
    c.check_errors()
    return c


@pytest.mark.parametrize(
    ("disconnect", "reliable", "crash"),
    [
        pytest.param(False, True, False, id="basic"),
        pytest.param(True, True, False, id="install"),
        pytest.param(True, False, False, id="install-unreliable"),
        pytest.param(False, True, True, id="install-crash"),
        pytest.param(False, False, True, id="install-uncrash"),
    ],
)
async def test_snapshots(
    nursery: trio.Nursery,
    seed: int,
    autojump_clock: Clock,
    disconnect: bool,
    reliable: bool,
    crash: bool,
) -> None:
    c = await snapcommon(nursery, seed, disconnect=disconnect, reliable=reliable, crash=crash)
    snapshots = [c.storages[i]._snapshot for i in c.ids]
    assert all(s is not None and s.index > 0 for s in snapshots), "no snapshot was taken"


async def test_snapshot_all_crash(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = RaftCluster(nursery, 3, seed, profile=MIT_UNRELIABLE, snapshot=True)
    await c.start_all()
    await c.one(rand_cmd(c), 3, retry=True)
    for _ in range(5):
        for _ in range(SNAPSHOT_INTERVAL // 2 + c.rng.randrange(SNAPSHOT_INTERVAL)):
            await c.one(rand_cmd(c), 3, retry=True)
        index1 = await c.one(rand_cmd(c), 3, retry=True)
        for i in c.ids:
            await c.restart(i)
        index2 = await c.one(rand_cmd(c), 3, retry=True)
        assert index2 >= index1 + 1, f"index decreased from {index1} to {index2}"


async def test_snapshot_init(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    """The in-memory snapshot is initialised from storage: later saves must not lose it."""
    c = RaftCluster(nursery, 3, seed, profile=MIT_UNRELIABLE, snapshot=True)
    await c.start_all()
    await c.one(rand_cmd(c), 3, retry=True)
    for _ in range(SNAPSHOT_INTERVAL + 1):
        await c.one(rand_cmd(c), 3, retry=True)
    for i in c.ids:
        await c.restart(i)
    await c.one(rand_cmd(c), 3, retry=True)
    for i in c.ids:
        await c.restart(i)
    await c.one(rand_cmd(c), 3, retry=True)
    c.check_errors()


async def test_follower_far_behind_gets_the_snapshot(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    c = RaftCluster(nursery, 3, seed, snapshot=True)
    await c.start_all()
    leader = await c.check_one_leader()
    lagging = next(i for i in c.ids if i != leader)
    c.disconnect(lagging)
    for _ in range(5 * SNAPSHOT_INTERVAL):
        await c.one(rand_cmd(c), 2, retry=True)
    assert c.node(leader).log.snapshot_index > c.node(lagging).log.last_index
    before = c.network.rpc_count[lagging]
    c.connect(lagging)
    last = await c.one(rand_cmd(c), 3, retry=True)
    assert c.logs[lagging].get(last) == c.logs[leader][last]
    assert c.node(lagging).log.snapshot_index >= SNAPSHOT_INTERVAL
    assert c.network.rpc_count[lagging] - before < 20, "catching up took too many RPCs"


async def test_follower_catches_up_while_the_leader_saves_a_snapshot(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    """The leader compacts its log before its (slow) snapshot save finishes: a follower that
    needs the snapshot meanwhile must get it, not find the leader without one."""
    c = RaftCluster(nursery, 3, seed, snapshot=True)
    c.storages = {i: SlowSnapshotDisk() for i in c.ids}
    await c.start_all()
    leader = await c.check_one_leader()
    lagging = next(i for i in c.ids if i != leader)
    c.disconnect(lagging)
    for k in range(SNAPSHOT_INTERVAL):
        await c.one(f"cmd-{k}", 2, retry=True)
    with trio.fail_after(1):  # the leader's first snapshot save has started and lasts 1 s
        await c.node(leader).wait_until(lambda n: n.log.snapshot_index > 0)
    c.connect(lagging)
    last = await c.one("after", 3, retry=True)
    assert c.logs[lagging][last] == "after"
    c.check_errors()


class SlowSnapshotFile(MemoryStorage):
    """A snapshot's bytes take 5 s to write (a large state on a slow disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = trio.Event()

    async def save_snapshot_file(self, snapshot) -> bool:
        self.writing.set()
        await trio.sleep(5)
        return await super().save_snapshot_file(snapshot)


async def test_a_node_writing_its_snapshot_goes_on_answering_and_committing(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    """Every node's own snapshot takes 5 s to write, over ten times an election timeout.
    With one follower cut off, the leader commits only with the other one's replies:
    both are writing their snapshots, and the leader must still commit (and lead) at
    once. (When the save held the node's lock, neither answered nor committed for 5 s,
    and the leader stepped down for want of a quorum.)"""
    c = RaftCluster(nursery, 3, seed, snapshot=True)
    c.storages = {i: SlowSnapshotFile() for i in c.ids}
    await c.start_all()
    leader = await c.check_one_leader()
    writer, cut = [i for i in c.ids if i != leader]
    c.disconnect(cut)
    for k in range(SNAPSHOT_INTERVAL - 2):
        await c.one(f"cmd-{k}", 2, retry=True)
    node = c.node(leader)
    term = node.term
    assert node.submit("the entry each node snapshots at")[2]
    with trio.fail_after(1):
        for i in (leader, writer):
            await c.storages[i].writing.wait()  # type: ignore[attr-defined]
    with trio.fail_after(1):  # well inside the 5 s writes
        index, at_term, ok = node.submit("during the writes")
        assert ok and at_term == term
        await node.wait_committed(index, term)
    assert node.is_leader and node.term == term
    c.check_errors()
