"""Raft persistence and churn (docs/scenarios.md: raft-persist, raft-figure8,
raft-unreliable-agree, raft-churn), on virtual time with crashes that keep only synced storage."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.raft_harness import (
    ELECTION_TIMEOUT,
    RaftCluster,
    figure8,
    rand_cmd,
    start_cluster,
    with_long_delays,
)
from trioraft import MemoryStorage
from trioraft.testing import MIT_UNRELIABLE, RELIABLE

pytestmark = pytest.mark.usefixtures("seeded_scheduler")
Clock = trio.testing.MockClock


async def test_persist1(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await start_cluster(nursery, 3, seed)
    await c.one("11", 3, retry=True)
    for i in c.ids:
        await c.restart(i)
    c.connect_all()
    await c.one("12", 3, retry=True)
    leader1 = await c.check_one_leader()
    await c.restart(leader1)
    await c.one("13", 3, retry=True)
    leader2 = await c.check_one_leader()
    c.crash(leader2)
    await c.one("14", 2, retry=True)
    await c.start(leader2)
    await c.wait(4, 3, -1)
    leader3 = await c.check_one_leader()
    victim = str((int(leader3) + 1) % 3)
    c.crash(victim)
    await c.one("15", 2, retry=True)
    await c.start(victim)
    await c.one("16", 3, retry=True)


async def test_persist2(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await start_cluster(nursery, 5, seed)
    index = 1
    for _ in range(5):
        await c.one(str(10 + index), 5, retry=True)
        index += 1
        leader1 = int(await c.check_one_leader())
        c.crash(str((leader1 + 1) % 5))
        c.crash(str((leader1 + 2) % 5))
        await c.one(str(10 + index), 3, retry=True)
        index += 1
        for k in (0, 3, 4):
            c.crash(str((leader1 + k) % 5))
        await c.start(str((leader1 + 1) % 5))
        await c.start(str((leader1 + 2) % 5))
        await trio.sleep(ELECTION_TIMEOUT)
        await c.start(str((leader1 + 3) % 5))
        await c.one(str(10 + index), 3, retry=True)
        index += 1
        await c.start(str((leader1 + 4) % 5))
        await c.start(str(leader1))
    await c.one("1000", 5, retry=True)


async def test_persist3(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await start_cluster(nursery, 3, seed)
    await c.one("101", 3, retry=False)
    leader = int(await c.check_one_leader())
    c.disconnect(str((leader + 2) % 3))
    await c.one("102", 2, retry=False)
    c.crash(str(leader % 3))
    c.crash(str((leader + 1) % 3))
    c.connect(str((leader + 2) % 3))
    await c.start(str(leader % 3))
    c.connect(str(leader % 3))
    await c.one("103", 2, retry=True)
    await c.start(str((leader + 1) % 3))
    c.connect(str((leader + 1) % 3))
    await c.one("104", 3, retry=True)


async def test_figure8(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await start_cluster(nursery, 5, seed)
    await c.one(rand_cmd(c), 1, retry=True)
    await figure8(c, 1000, unreliable=False)


async def test_figure8_unreliable(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await start_cluster(nursery, 5, seed, profile=MIT_UNRELIABLE)
    await c.one(str(c.rng.randrange(10000)), 1, retry=True)
    await figure8(c, 1000, unreliable=True)


async def test_unreliable_agree(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await start_cluster(nursery, 5, seed, profile=MIT_UNRELIABLE)
    for iters in range(1, 50):
        async with trio.open_nursery() as ones:
            for j in range(4):
                ones.start_soon(c.one, str(100 * iters + j), 1, True)
            await c.one(str(iters), 1, retry=True)
    c.network.set_profile(with_long_delays(RELIABLE))
    await c.one("100", 5, retry=True)


async def churn(c: RaftCluster, *, unreliable: bool) -> None:
    stop = trio.Event()
    seen: list[list[str]] = [[], [], []]

    async def client(me: int) -> None:
        while not stop.is_set():
            value = rand_cmd(c)
            index = -1
            for i in c.ids:
                node = c.nodes[i]
                if node is not None:
                    idx, _, ok = node.submit(value)
                    if ok:
                        index = idx
            if index > 0:
                for pause in (0.01, 0.02, 0.05, 0.1, 0.2):
                    count, committed = c.n_committed(index)
                    if count > 0:
                        if committed == value:
                            seen[me].append(value)
                        break
                    await trio.sleep(pause)
            else:
                await trio.sleep((79 + me * 17) / 1000)

    async with trio.open_nursery() as clients:
        for me in range(3):
            clients.start_soon(client, me)
        for _ in range(20):
            if c.rng.randrange(1000) < 200:
                c.disconnect(c.rng.choice(c.ids))
            if c.rng.randrange(1000) < 500:
                i = c.rng.choice(c.ids)
                if not c.alive(i):
                    await c.start(i)
                c.connect(i)
            if c.rng.randrange(1000) < 200:
                i = c.rng.choice(c.ids)
                c.crash(i)
            await trio.sleep(ELECTION_TIMEOUT * 7 / 10)
        await trio.sleep(ELECTION_TIMEOUT)
        c.network.set_profile(with_long_delays(RELIABLE))
        for i in c.ids:
            if not c.alive(i):
                await c.start(i)
        c.connect_all()
        stop.set()
    await trio.sleep(ELECTION_TIMEOUT)
    last = await c.one(rand_cmd(c), 5, retry=True)
    final = {c.n_committed(index)[1] for index in range(1, last + 1)}
    for values in seen:
        for value in values:
            assert value in final, f"didn't find a value ({value}) that a client saw committed"
    assert sum(map(len, seen)) > 0


@pytest.mark.parametrize("unreliable", [False, True], ids=["reliable", "unreliable"])
async def test_churn(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock, unreliable: bool
) -> None:
    c = await start_cluster(nursery, 5, seed, profile=MIT_UNRELIABLE if unreliable else RELIABLE)
    await churn(c, unreliable=unreliable)


def test_a_seed_replays_the_same_run(seed: int) -> None:
    """The same seed gives the same run: faults, timeouts and Trio's scheduling all replay."""
    import trio._core._run as trio_run

    def run_once() -> tuple[int, int, float, int]:
        trio_run._r.seed(seed)

        async def main() -> tuple[int, int, float, int]:
            async with trio.open_nursery() as nursery:
                c = RaftCluster(nursery, 5, seed, profile=MIT_UNRELIABLE)
                await c.start_all()
                await c.one("first", 1, retry=True)
                await figure8(c, 200, unreliable=True)
                last = max(max(log) for log in c.logs.values())
                nursery.cancel_scope.cancel()
            return c.network.rpc_total, c.network.bytes_total, trio.current_time(), last

        return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    assert run_once() == run_once()


# Without the fix the leader re-sends rejected AppendEntries in a tight loop: virtual time
# stands still, so the wall-clock limit is what fails it.
@pytest.mark.timeout(60)
@pytest.mark.parametrize("keep", [0, 3], ids=["wiped", "cut-short"])
async def test_a_follower_that_lost_acknowledged_entries_catches_up(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock, keep: int
) -> None:
    """An operator wipes a follower's data directory, or cuts its log short, and restarts it
    under the same leader. The leader counted it as holding those entries: it must notice
    the follower's rejection below what it acknowledged, and send them again."""
    c = RaftCluster(nursery, 3, seed)
    await c.start_all()
    leader = await c.check_one_leader()
    for k in range(1, 11):
        await c.one(f"before-{k}", 3, retry=True)
    follower = next(i for i in c.ids if i != leader)
    c.crash(follower)
    kept = c.storages[follower]._durable[:keep]
    c.storages[follower] = MemoryStorage(c.storages[follower]._hard_state, None, kept)
    await c.start(follower)
    with trio.fail_after(30):  # virtual seconds: 60 election timeouts
        last = await c.one("after", 3, retry=True)
        await c.node(follower).wait_until(lambda n: n.commit_index >= last)
    assert await c.check_one_leader() == leader
    assert c.logs[follower].get(last) == "after"
    c.check_errors()
