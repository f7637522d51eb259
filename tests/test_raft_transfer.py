"""Leadership transfer (TimeoutNow), on virtual time."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.raft_harness import rand_cmd, start_cluster
from trioraft import NotLeader, RaftConfig
from trioraft.raft.node import TransferAbandoned

pytestmark = pytest.mark.usefixtures("seeded_scheduler")
Clock = trio.testing.MockClock

CONFIG = RaftConfig(election_timeout=(0.3, 0.6), leader_noop=True)


async def test_transfer_to_a_chosen_follower(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    c = await start_cluster(nursery, 3, seed, config=CONFIG)
    old_id = await c.check_one_leader()
    await c.one("x", 3, retry=True)
    old = c.node(old_id)
    target = next(i for i in c.ids if i != old_id)
    term = old.term
    started = trio.current_time()
    assert await old.transfer_leadership(target) == target
    with trio.fail_after(CONFIG.election_timeout[0]):  # no election timeout to wait out
        await c.node(target).wait_until(lambda n: n.is_leader)
    assert trio.current_time() - started < CONFIG.election_timeout[0]
    assert c.node(target).term == term + 1 and not old.is_leader
    await c.one("y", 3, retry=True)
    assert await c.check_one_leader() == target
    c.check_errors()


async def test_transfer_picks_the_most_caught_up_follower(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    c = await start_cluster(nursery, 3, seed, config=CONFIG)
    old = c.node(await c.check_one_leader())
    await c.one("x", 3, retry=True)
    target = await old.transfer_leadership()
    assert target != old.id
    with trio.fail_after(1):
        await c.node(target).wait_until(lambda n: n.is_leader)


async def test_transfer_under_load_loses_no_acknowledged_write(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    # (Three clients on five nodes stall the in-memory harness, before this change too.)
    c = await start_cluster(nursery, 3, seed, config=CONFIG)
    await c.check_one_leader()
    acknowledged: list[tuple[int, str]] = []
    stop = trio.Event()

    async def client() -> None:
        while not stop.is_set():
            command = rand_cmd(c)
            acknowledged.append((await c.one(command, 3, retry=True), command))

    async with trio.open_nursery() as load:
        load.start_soon(client)
        for _ in range(3):
            await trio.sleep(0.5)
            leader = c.node(await c.check_one_leader())
            before = leader.term
            target = await leader.transfer_leadership()
            with trio.fail_after(1):
                await c.node(target).wait_until(lambda n, t=before: n.is_leader and n.term > t)
        stop.set()
    assert len(acknowledged) > 10
    await c.one("last", 3, retry=True)
    for index, command in acknowledged:
        assert c.n_committed(index) == (3, command)
    c.check_errors()


async def test_transfer_to_a_partitioned_target_is_abandoned(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    c = await start_cluster(nursery, 3, seed, config=CONFIG)
    old_id = await c.check_one_leader()
    old = c.node(old_id)
    await c.one("x", 3, retry=True)
    target = next(i for i in c.ids if i != old_id)
    c.disconnect(target)
    await c.one("y", 2, retry=True)  # the target lacks it: it cannot be told to campaign
    term = old.term
    abandoned = []

    async def attempt() -> None:
        with pytest.raises(TransferAbandoned):
            await old.transfer_leadership(target)
        abandoned.append(trio.current_time())

    started = trio.current_time()
    with trio.fail_after(2 * CONFIG.election_timeout[1]):
        async with trio.open_nursery() as transfer:
            transfer.start_soon(attempt)
            await old.wait_until(lambda n: n.transferring_to == target)
            assert old.submit("z") == (0, term, False)  # proposals are refused meanwhile
            with pytest.raises(NotLeader):
                old.submit_many(["z"])
    assert abandoned[0] - started <= CONFIG.election_timeout[1] + 0.01
    assert old.transferring_to is None
    assert old.is_leader and old.term == term  # the old leader resumes
    index, _, ok = old.submit("z")
    assert ok
    await c.wait_committed(index, 2)
    c.connect(target)
    await c.one("w", 3, retry=True)
    c.check_errors()
