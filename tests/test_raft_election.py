"""Raft elections (docs/scenarios.md: raft-initial-election, raft-re-election,
raft-many-elections, raft-rpc-count; and pre-vote and check-quorum), on virtual time."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
import trio.testing

from tests.raft_harness import ELECTION_TIMEOUT, start_cluster
from trioraft import MemoryStorage, RaftNode
from trioraft.rpc.transport import MemoryNetwork, MemoryTransport
from trioraft.testing import RELIABLE, Network, Profile

#: Virtual time (pytest-trio installs a clock only if the test takes it as an argument).
pytestmark = pytest.mark.usefixtures("seeded_scheduler")
Clock = trio.testing.MockClock


async def test_initial_election(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await start_cluster(nursery, 3, seed)
    await c.check_one_leader()
    await trio.sleep(0.05)
    term1 = c.check_terms()
    assert term1 >= 1
    await trio.sleep(5 * ELECTION_TIMEOUT)  # the C port and Janus hold it for 2 and 5 s
    assert c.check_terms() == term1, "term changed even though there were no failures"
    await c.check_one_leader()


async def test_re_election(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await start_cluster(nursery, 3, seed)
    leader1 = await c.check_one_leader()
    c.disconnect(leader1)
    leader2 = await c.check_one_leader()
    assert leader2 != leader1
    c.connect(leader1)
    assert await c.check_one_leader() == leader2
    c.disconnect(leader2)
    other = str((int(leader2) + 1) % 3)
    c.disconnect(other)
    await trio.sleep(2 * ELECTION_TIMEOUT)
    c.check_no_leader()
    c.connect(other)
    await c.check_one_leader()
    c.connect(leader2)
    await c.check_one_leader()


async def test_many_elections(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await start_cluster(nursery, 7, seed)
    await c.check_one_leader()
    for _ in range(9):
        victims = [c.rng.choice(c.ids) for _ in range(3)]
        for v in victims:
            c.disconnect(v)
        await c.check_one_leader()
        for v in victims:
            c.connect(v)
    await c.check_one_leader()


async def test_election_rpc_count(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await start_cluster(nursery, 3, seed)
    await c.check_one_leader()
    assert 1 <= c.network.rpc_total <= 30, f"{c.network.rpc_total} RPCs to elect"


async def test_idle_heartbeats_are_rate_limited(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    c = await start_cluster(nursery, 3, seed)
    await c.check_one_leader()
    before = c.network.rpc_total
    await trio.sleep(1.0)
    assert c.network.rpc_total - before <= 60, "too many RPCs for 1 second of idleness"


async def test_isolated_follower_does_not_disrupt(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    """Pre-vote: a follower cut off for many election timeouts rejoins without deposing
    the leader or raising the term."""
    c = await start_cluster(nursery, 3, seed)
    leader = await c.check_one_leader()
    term = c.node(leader).term
    follower = next(i for i in c.ids if i != leader)
    c.disconnect(follower)
    await trio.sleep(5 * ELECTION_TIMEOUT)
    assert c.node(follower).term == term, "an isolated follower inflated its term"
    c.connect(follower)
    await trio.sleep(2 * ELECTION_TIMEOUT)
    assert await c.check_one_leader() == leader
    assert {c.node(i).term for i in c.ids} == {term}


async def test_isolated_leader_steps_down(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    """Check-quorum: a leader that hears from no majority steps down within an election
    timeout and stops taking proposals."""
    c = await start_cluster(nursery, 3, seed)
    leader = await c.check_one_leader()
    node = c.node(leader)
    c.disconnect(leader)
    start = trio.current_time()
    with trio.fail_after(c.config.election_timeout[1] * 2):
        await node.wait_until(lambda n: not n.is_leader)
    assert trio.current_time() - start <= c.config.election_timeout[1] * 1.5
    assert node.submit("x")[2] is False
    new_leader = await c.check_one_leader()
    assert new_leader != leader


async def test_lost_calls_neither_silence_a_follower_nor_depose_the_leader(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    """A lost call holds its replicator for ``rpc_timeout`` (0.5 s, most of an election
    timeout): heartbeats go beside it, so neither side counts the other silent."""
    c = await start_cluster(nursery, 3, seed)
    leader = await c.check_one_leader()
    term = c.node(leader).term
    lose_everything = Profile(request_drop=1.0, fail_delay=(10.0, 10.0))
    for _ in range(5):
        # Every call made in a heartbeat interval (and a bit) is lost, so each replicator
        # waits on a lost one: without heartbeats beside it, followers hear nothing for
        # 0.6 s and campaign, and the leader hears from no majority and steps down.
        c.network.set_profile(lose_everything)
        await trio.sleep(c.config.heartbeat_interval * 1.1)
        c.network.set_profile(RELIABLE)
        await trio.sleep(2 * ELECTION_TIMEOUT)
        assert c.node(leader).is_leader, "the leader stepped down"
        assert {c.node(i).term for i in c.ids} == {term}, "a follower campaigned"


async def test_many_elections_five(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    """The C port's variant: five times, cut the leader and one other; a new leader appears."""
    c = await start_cluster(nursery, 5, seed)
    for _ in range(5):
        leader = await c.check_one_leader()
        other = c.rng.choice([i for i in c.ids if i != leader])
        c.disconnect(leader)
        c.disconnect(other)
        assert await c.check_one_leader() not in (leader, other)
        c.connect(leader)
        c.connect(other)
    await c.check_one_leader()


async def test_janus_rpc_bounds(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    """Janus #9 with its five servers: an election within 3 x 5 RPCs, and n commands
    committed within (n + 1) x 5."""
    c = await start_cluster(nursery, 5, seed)
    elected = trio.Event()

    async def watch(node) -> None:
        await node.wait_until(lambda n: n.is_leader)
        elected.set()

    async with trio.open_nursery() as watchers:
        for i in c.ids:
            watchers.start_soon(watch, c.node(i))
        await elected.wait()
        assert c.network.rpc_total <= 3 * 5, f"{c.network.rpc_total} RPCs to elect"
        watchers.cancel_scope.cancel()
    leader = await c.check_one_leader()
    for n in (1, 5, 10):
        before = c.network.rpc_total
        node = c.node(leader)
        first, term = node.submit_many([f"{n}-{k}" for k in range(n)])
        with trio.fail_after(5):
            await node.wait_committed(first + n - 1, term)
        assert c.network.rpc_total - before <= (n + 1) * 5, "too many RPCs to commit"


async def test_failover_is_well_under_a_second(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    c = await start_cluster(nursery, 3, seed)
    for _ in range(5):
        leader = await c.check_one_leader()
        survivors = [c.node(i) for i in c.ids if i != leader]
        c.crash(leader)
        start = trio.current_time()
        elected = trio.Event()

        async def watch(node, elected: trio.Event = elected) -> None:
            await node.wait_until(lambda n: n.is_leader)
            elected.set()

        async with trio.open_nursery() as watchers:
            for node in survivors:
                watchers.start_soon(watch, node)
            await elected.wait()
            watchers.cancel_scope.cancel()
        # An election timeout (at most 0.6 s) passes, then a pre-vote and a vote round.
        assert trio.current_time() - start < 1.0
        await c.start(leader)


async def test_new_entries_are_sent_at_once(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    """On a network without delay, a commit takes no time: nothing waits for a heartbeat."""
    c = await start_cluster(nursery, 3, seed)
    node = c.node(await c.check_one_leader())
    for k in range(20):
        start = trio.current_time()
        index, term, ok = node.submit(f"now-{k}")
        assert ok
        await node.wait_committed(index, term)
        assert trio.current_time() - start < c.config.heartbeat_interval / 10


class SharedCpu:
    """The one CPU of an overloaded process that hosts a whole cluster: each RPC waits its
    turn, then takes ``cost`` seconds of it. A call whose caller gives up still takes its
    turn, as a server still handles a request whose client has hung up."""

    def __init__(self, cost: float) -> None:
        self.cost = cost
        self.free_at = 0.0

    def stall(self, seconds: float) -> None:
        """Give the process no CPU for ``seconds`` from now (a burst of load beside it)."""
        self.free_at = max(self.free_at, trio.current_time()) + seconds

    async def handle(self) -> None:
        self.free_at = max(self.free_at, trio.current_time()) + self.cost
        await trio.sleep_until(self.free_at)


class OverloadedTransport:
    def __init__(self, inner: MemoryTransport, cpu: SharedCpu) -> None:
        self.inner = inner
        self.cpu = cpu

    async def call(self, peer: str, method: str, args: Any, reply_type: type) -> Any:
        await self.cpu.handle()
        return await self.inner.call(peer, method, args, reply_type)


async def test_an_overloaded_cluster_still_elects_a_leader(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    """Campaigns that keep failing back off, and wait for their votes until the next one
    is due. Five nodes share a CPU that handles 25 calls a second; it stalls for 3 s at the
    start, so every node's first campaigns time out. Were each node to campaign again at
    once, cutting its calls at the RPC timeout, their vote requests (40 a second) would
    keep the CPU's queue growing and every call slower than its timeout: no leader, ever.
    (The same load, with a new connection for each timed-out call, kept a cluster of real
    servers in one busy process leaderless until its test timed out.)"""
    ids = [str(i) for i in range(5)]
    memory = MemoryNetwork(Network(seed, RELIABLE))
    cpu = SharedCpu(cost=0.04)
    cpu.stall(3.0)
    nodes = []
    for i in ids:
        node = RaftNode(
            i,
            ids,
            MemoryStorage(),
            OverloadedTransport(memory.transport(i), cpu),
            rng=random.Random(f"{seed}-{i}"),
        )
        memory.register(i, node.routes())
        nodes.append(node)
        await nursery.start(node.run)
        nursery.start_soon(_drain, node)
    elected = trio.Event()

    async def watch(node: RaftNode) -> None:
        await node.wait_until(lambda n: n.is_leader)
        elected.set()

    with trio.fail_after(60):
        async with trio.open_nursery() as watchers:
            for node in nodes:
                watchers.start_soon(watch, node)
            await elected.wait()
            watchers.cancel_scope.cancel()


async def _drain(node: RaftNode) -> None:
    async for _ in node.applied:
        pass
