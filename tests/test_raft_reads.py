"""The leader's no-op and reads without the log (ReadIndex, lease), on virtual time."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.raft_harness import RaftCluster, start_cluster
from trioraft import NotLeader, RaftConfig, RaftNode
from trioraft.raft.node import ReadStart

pytestmark = pytest.mark.usefixtures("seeded_scheduler")
Clock = trio.testing.MockClock

READS = RaftConfig(leader_noop=True)
LEASE = RaftConfig(election_timeout=(0.3, 0.6), leader_noop=True, lease_duration=0.25)


async def leader_with_noop_committed(c: RaftCluster) -> RaftNode:
    leader = c.node(await c.check_one_leader())
    with trio.fail_after(5):
        await leader.wait_until(lambda n: n.log.term_at(n.commit_index) == n.term)
    return leader


async def test_a_new_leader_commits_a_noop_that_is_never_applied(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    c = await start_cluster(nursery, 3, seed, config=READS)
    leader = await leader_with_noop_committed(c)
    assert leader.commit_index == 1 and leader.log.entry(1).command == ""
    index = await c.one("x", 3, retry=True)
    assert index == 2
    for i in c.ids:
        assert c.logs[i] == {2: "x"}  # the no-op at 1 was never handed out
        assert c.node(i).last_applied == 2
    c.check_errors()


async def test_noop_is_off_by_default(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    c = await start_cluster(nursery, 3, seed)
    leader = c.node(await c.check_one_leader())
    assert leader.log.last_index == 0


async def test_reads_queued_together_share_one_heartbeat_round(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    c = await start_cluster(nursery, 3, seed, config=READS)
    leader = await leader_with_noop_committed(c)
    await c.one("x", 3, retry=True)
    rounds_before = leader._core.read_round
    indexes: list[int] = []

    async def read() -> None:
        indexes.append(await leader.read_index())

    with trio.fail_after(1):
        async with trio.open_nursery() as reads:
            for _ in range(20):
                reads.start_soon(read)
    assert indexes == [leader.commit_index] * 20
    assert leader._core.read_round == rounds_before + 1  # one round for all twenty
    assert leader.statistics().reads == {"read_index": 20, "lease": 0}


async def test_a_follower_refuses_read_index_with_the_leader_hint(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    c = await start_cluster(nursery, 3, seed, config=READS)
    leader = await leader_with_noop_committed(c)
    follower = next(c.node(i) for i in c.ids if i != leader.id)
    with trio.fail_after(2):
        await follower.wait_until(lambda n: n.leader_id == leader.id)
    with pytest.raises(NotLeader) as refused:
        await follower.read_index()
    assert refused.value.leader == leader.id


async def test_a_deposed_leader_never_returns_a_read_index(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    """Partition the leader; the majority elects another and commits a write; every read
    the old leader was asked for (before, during and after) is refused, none answered."""
    c = await start_cluster(nursery, 5, seed, config=READS)
    old = await leader_with_noop_committed(c)
    await c.one("before", 5, retry=True)
    outcomes: list[str] = []

    async def read_on_old_leader() -> None:
        try:
            index = await old.read_index()
        except NotLeader:
            outcomes.append("refused")
        else:
            outcomes.append(f"answered {index}")

    c.disconnect(old.id)
    async with trio.open_nursery() as reads:
        reads.start_soon(read_on_old_leader)  # queued at once: no majority will answer
        new_leader = await c.check_one_leader()
        assert new_leader != old.id
        after = await c.one("after", 4, retry=True)
        reads.start_soon(read_on_old_leader)
        with trio.fail_after(5):
            await old.wait_until(lambda n: not n.is_leader)
    reads_after = len(outcomes)
    await read_on_old_leader()  # and once it knows it lost
    assert outcomes == ["refused"] * (reads_after + 1)
    assert old.statistics().reads == {"read_index": 0, "lease": 0}
    # The new leader's read covers the write.
    leader = c.node(new_leader)
    assert await leader.read_index() >= after


async def test_lease_reads_skip_the_round_until_the_lease_lapses(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    c = await start_cluster(nursery, 3, seed, config=LEASE)
    leader = await leader_with_noop_committed(c)
    await c.one("x", 3, retry=True)
    rounds = leader._core.read_round
    assert await leader.read_index(lease=True) == leader.commit_index
    assert leader._core.read_round == rounds  # answered on the lease: no round
    c.disconnect(leader.id)
    # Still within the lease (a heartbeat was answered less than 0.25 s ago).
    assert await leader.read_index(lease=True) == leader.commit_index
    assert leader.statistics().reads["lease"] == 2
    await trio.sleep(0.25)  # the lease lapses (virtual time: the clock is the input here)
    with pytest.raises(NotLeader), trio.fail_after(2):
        await leader.read_index(lease=True)  # falls back to a round nobody answers
    assert leader.statistics().reads == {"read_index": 0, "lease": 2}


async def test_a_read_started_early_answers_from_its_start(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    """``start_read`` notes the commit index and queues the round when the read arrives;
    ``read_index(started=)`` then waits for that round only and answers that index, even
    if writes committed in between (they came after the read: either answer is fine, the
    earlier one is what it promised)."""
    c = await start_cluster(nursery, 3, seed, config=READS)
    leader = await leader_with_noop_committed(c)
    await c.one("x", 3, retry=True)
    started = leader.start_read()
    assert started is not None
    assert (started.term, started.index) == (leader.term, leader.commit_index)
    later, _, _ = leader.submit("y")
    with trio.fail_after(1):
        await leader.wait_until(lambda n: n.commit_index >= later)
    assert later > started.index
    assert trio.current_time() - started.at <= READS.heartbeat_interval  # not asked late
    with trio.fail_after(1):
        assert await leader.read_index(started=started) == started.index
    assert leader._core.read_round == started.round  # no second round
    assert leader.statistics().reads == {"read_index": 1, "lease": 0}


async def test_nothing_is_started_where_no_round_is_needed_or_could_answer(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    """A follower starts nothing, nor does a leader whose lease holds (it needs no round)."""
    c = await start_cluster(nursery, 3, seed, config=LEASE)
    leader = await leader_with_noop_committed(c)
    await c.one("x", 3, retry=True)
    follower = next(c.node(i) for i in c.ids if i != leader.id)
    assert follower.start_read() is None
    assert leader.start_read() is None  # the lease holds
    assert await leader.read_index(lease=True) == leader.commit_index


async def test_a_round_started_in_another_term_is_not_used(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    c = await start_cluster(nursery, 3, seed, config=READS)
    leader = await leader_with_noop_committed(c)
    index = await c.one("x", 3, retry=True)
    older = ReadStart(leader.term - 1, index - 1, leader._core.read_round, trio.current_time())
    with trio.fail_after(1):
        assert await leader.read_index(started=older) == index  # a round of its own


async def test_a_round_started_on_a_partitioned_leader_is_never_answered(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    c = await start_cluster(nursery, 5, seed, config=READS)
    old = await leader_with_noop_committed(c)
    c.disconnect(old.id)
    started = old.start_read()
    assert started is not None  # it still believes it leads
    with pytest.raises(NotLeader), trio.fail_after(10):
        await old.read_index(started=started)  # until it learns it does not
    assert old.statistics().reads == {"read_index": 0, "lease": 0}


async def test_a_read_asked_for_late_gets_a_round_of_its_own(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    """A request whose body comes more than a heartbeat interval after its head (a slow
    client, a proxy) does not use the round its head started: that round was confirmed,
    then the leader was cut off and a new one committed a write; the old leader (no
    check-quorum here, so it never learns) must not answer the read from before."""
    config = RaftConfig(leader_noop=True, check_quorum=False)
    c = await start_cluster(nursery, 3, seed, config=config)
    old = await leader_with_noop_committed(c)
    started = old.start_read()
    assert started is not None
    with trio.fail_after(1):
        await old.wait_until(lambda n: n._core.confirmed_round() >= started.round)
    c.disconnect(old.id)
    await c.check_one_leader()  # another, on the other side
    await c.one("after", 2, retry=True)
    assert old.is_leader  # as far as it knows
    with trio.move_on_after(5) as unanswered:
        await old.read_index(started=started)
    assert unanswered.cancelled_caught


async def test_a_round_goes_to_the_quickest_follower_and_to_every_one_if_it_is_slow(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    """Of three voters, a read round needs one follower's answer: it is sent to the one
    that answered quickest lately. Cut off from it, the round goes to the other follower
    half a heartbeat interval later, not at that follower's next heartbeat."""
    config = RaftConfig(heartbeat_interval=0.5, election_timeout=(1.0, 2.0), leader_noop=True)
    c = await start_cluster(nursery, 3, seed, config=config)
    leader = await leader_with_noop_committed(c)
    await c.one("x", 3, retry=True)

    async def just_after_a_heartbeat_to(peer: str) -> float:
        """Sleep until ``peer`` was just sent a heartbeat and answered it; when it is sent
        the next one (if nothing else goes to it)."""
        await trio.sleep_until(leader._last_sent[peer] + config.heartbeat_interval + 0.05)
        return leader._last_sent[peer] + config.heartbeat_interval

    (quickest,) = leader._core.read_round_peers(trio.current_time(), leader._waiting_since)
    other = next(p for p in leader.peers if p != quickest)
    next_beat = await just_after_a_heartbeat_to(other)
    assert leader._core.read_round_peers(trio.current_time(), leader._waiting_since) == [quickest]
    calls = c.network.rpc_count.copy()
    with trio.fail_after(0.1):
        await leader.read_index()
    assert trio.current_time() < next_beat
    assert c.network.rpc_count[other] == calls[other]  # not asked
    assert c.network.rpc_count[quickest] == calls[quickest] + 1

    next_beat = await just_after_a_heartbeat_to(other)
    # (Calls take no time here: every follower answers as quickly, the first by id goes.)
    assert leader._core.read_round_peers(trio.current_time(), leader._waiting_since) == [quickest]
    c.network.block(leader.id, quickest)
    asked = trio.current_time()
    index = await leader.read_index()
    answered = trio.current_time()
    assert index == leader.commit_index
    patience = config.heartbeat_interval / 2
    assert asked + patience <= answered < min(next_beat, asked + patience + 0.1)
