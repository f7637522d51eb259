"""Raft log agreement (docs/scenarios.md: raft; raft-partition for the partition tests), on
virtual time. Includes the four scenarios a public solution failed: no agreement when too
many followers disconnect, concurrent starts, rejoin of a partitioned leader, and fast back-up
over incorrect follower logs.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.raft_harness import ELECTION_TIMEOUT, rand_cmd, start_cluster

pytestmark = pytest.mark.usefixtures("seeded_scheduler")
Clock = trio.testing.MockClock


async def test_basic_agree(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await start_cluster(nursery, 3, seed)
    for index in range(1, 4):
        assert c.n_committed(index)[0] == 0, "some have committed before Start()"
        assert await c.one(str(index * 100), 3, retry=False) == index


async def test_rpc_bytes(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await start_cluster(nursery, 3, seed)
    await c.one("99", 3, retry=False)
    before = c.network.bytes_total
    sent = 0
    for index in range(2, 12):
        command = "x" * 5000 + str(index)
        sent += len(command)
        assert await c.one(command, 3, retry=False) == index
    used = c.network.bytes_total - before
    assert used <= 3 * sent + 50_000, f"too many RPC bytes: {used} for {sent} sent"


async def test_follower_failure(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await start_cluster(nursery, 3, seed)
    await c.one("101", 3, retry=False)
    leader1 = await c.check_one_leader()
    c.disconnect(str((int(leader1) + 1) % 3))
    await c.one("102", 2, retry=False)
    await trio.sleep(ELECTION_TIMEOUT)
    await c.one("103", 2, retry=False)
    leader2 = await c.check_one_leader()
    for i in c.ids:
        if i != leader2:
            c.disconnect(i)
    index, _, ok = c.node(leader2).submit("104")
    assert ok and index == 4
    await trio.sleep(2 * ELECTION_TIMEOUT)
    assert c.n_committed(index)[0] == 0, "committed without a majority"


async def test_leader_failure(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await start_cluster(nursery, 3, seed)
    await c.one("101", 3, retry=False)
    leader1 = await c.check_one_leader()
    c.disconnect(leader1)
    await c.one("102", 2, retry=False)
    await trio.sleep(ELECTION_TIMEOUT)
    await c.one("103", 2, retry=False)
    leader2 = await c.check_one_leader()
    c.disconnect(leader2)
    for i in c.ids:
        c.node(i).submit("104")
    await trio.sleep(2 * ELECTION_TIMEOUT)
    assert c.n_committed(4)[0] == 0, "committed without a majority"


async def test_fail_agree(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await start_cluster(nursery, 3, seed)
    await c.one("101", 3, retry=False)
    leader = await c.check_one_leader()
    c.disconnect(str((int(leader) + 1) % 3))
    for cmd in ("102", "103"):
        await c.one(cmd, 2, retry=False)
    await trio.sleep(ELECTION_TIMEOUT)
    for cmd in ("104", "105"):
        await c.one(cmd, 2, retry=False)
    c.connect(str((int(leader) + 1) % 3))
    await c.one("106", 3, retry=True)
    await trio.sleep(ELECTION_TIMEOUT)
    await c.one("107", 3, retry=True)


async def test_fail_no_agree(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    """No agreement if too many followers disconnect (Janus #5)."""
    c = await start_cluster(nursery, 5, seed)
    await c.one("10", 5, retry=False)
    leader = await c.check_one_leader()
    for k in (1, 2, 3):
        c.disconnect(str((int(leader) + k) % 5))
    index, _, ok = c.node(leader).submit("20")
    assert ok and index == 2, f"expected index 2, got {index}"
    await trio.sleep(2 * ELECTION_TIMEOUT)
    assert c.n_committed(index)[0] == 0, f"{c.n_committed(index)[0]} committed without majority"
    for k in (1, 2, 3):
        c.connect(str((int(leader) + k) % 5))
    leader2 = await c.check_one_leader()
    index2, _, ok2 = c.node(leader2).submit("30")
    assert ok2 and 2 <= index2 <= 3, f"unexpected index {index2}"
    await c.one("1000", 5, retry=True)


async def test_concurrent_starts(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    """Concurrently started agreements all commit (Janus #7)."""
    c = await start_cluster(nursery, 3, seed)
    for attempt in range(5):
        if attempt:
            await trio.sleep(3)
        leader = await c.check_one_leader()
        _, term, ok = c.node(leader).submit("1")
        if not ok:
            continue
        indexes: list[int] = []

        async def start(
            i: int, leader: str = leader, term: int = term, indexes: list[int] = indexes
        ) -> None:
            index, term1, ok = c.node(leader).submit(str(100 + i))
            if ok and term1 == term:
                indexes.append(index)

        async with trio.open_nursery() as starters:
            for i in range(5):
                starters.start_soon(start, i)
        if any(c.node(i).term != term for i in c.ids) or len(indexes) < 5:
            continue
        committed = set()
        for index in indexes:
            value = await c.wait(index, 3, term)
            if value is None:
                break
            committed.add(value)
        else:
            assert committed == {str(100 + i) for i in range(5)}
            return
    raise AssertionError("term changed too often")


async def test_rejoin(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    """Rejoin of a partitioned leader (Janus #6): its uncommitted entries are discarded."""
    c = await start_cluster(nursery, 3, seed)
    await c.one("101", 3, retry=True)
    leader1 = await c.check_one_leader()
    c.disconnect(leader1)
    for cmd in ("102", "103", "104"):
        c.node(leader1).submit(cmd)
    await c.one("103", 2, retry=True)
    leader2 = await c.check_one_leader()
    c.disconnect(leader2)
    c.connect(leader1)
    await c.one("104", 2, retry=True)
    c.connect(leader2)
    await c.one("105", 3, retry=True)


async def test_backup(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    """Leader backs up quickly over incorrect follower logs (Janus #8)."""
    c = await start_cluster(nursery, 5, seed)
    await c.one(rand_cmd(c), 5, retry=True)
    leader1 = int(await c.check_one_leader())
    for k in (2, 3, 4):
        c.disconnect(str((leader1 + k) % 5))
    for _ in range(50):
        c.node(str(leader1)).submit(rand_cmd(c))
    await trio.sleep(ELECTION_TIMEOUT / 2)
    c.disconnect(str(leader1 % 5))
    c.disconnect(str((leader1 + 1) % 5))
    for k in (2, 3, 4):
        c.connect(str((leader1 + k) % 5))
    for _ in range(50):
        await c.one(rand_cmd(c), 3, retry=True)
    leader2 = int(await c.check_one_leader())
    other = (leader1 + 2) % 5
    if leader2 == other:
        other = (leader2 + 1) % 5
    c.disconnect(str(other))
    for _ in range(50):
        c.node(str(leader2)).submit(rand_cmd(c))
    await trio.sleep(ELECTION_TIMEOUT / 2)
    for i in c.ids:
        c.disconnect(i)
    c.connect(str(leader1 % 5))
    c.connect(str((leader1 + 1) % 5))
    c.connect(str(other))
    for _ in range(50):
        await c.one(rand_cmd(c), 3, retry=True)
    c.connect_all()
    await c.one(rand_cmd(c), 5, retry=True)


async def test_rpc_counts(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    """RPC counts aren't too high (Janus #9, MIT TestCount3B)."""
    c = await start_cluster(nursery, 3, seed)
    leader = await c.check_one_leader()
    total1 = c.network.rpc_total
    assert 1 <= total1 <= 30, f"too many or few RPCs ({total1}) to elect initial leader"
    for attempt in range(5):
        if attempt:
            await trio.sleep(3)
        leader = await c.check_one_leader()
        total1 = c.network.rpc_total
        iters = 10
        start, term, ok = c.node(leader).submit("1")
        if not ok:
            continue
        cmds = []
        failed = False
        for i in range(1, iters + 2):
            cmd = str(c.rng.randrange(1 << 30))
            index, term1, ok = c.node(leader).submit(cmd)
            if term1 != term or not ok:
                failed = True
                break
            assert index == start + i, "Start() failed"
            cmds.append(cmd)
        if failed:
            continue
        for i in range(1, iters + 1):
            value = await c.wait(start + i, 3, term)
            if value is None:
                failed = True
                break
            assert value == cmds[i - 1], f"wrong value {value} committed for index {start + i}"
        if failed or any(c.node(i).term != term for i in c.ids):
            continue
        total2 = c.network.rpc_total
        assert total2 - total1 <= (iters + 1 + 3) * 3, f"too many RPCs ({total2 - total1})"
        break
    else:
        raise AssertionError("term changed too often")
    await trio.sleep(ELECTION_TIMEOUT)
    before = c.network.rpc_total
    await trio.sleep(1.0)
    assert c.network.rpc_total - before <= 3 * 20, "too many RPCs for 1 second of idleness"


# -- the C port's partition scenarios ---------------------------------------------------


async def test_partition_majority_commits(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    c = await start_cluster(nursery, 5, seed)
    await c.check_one_leader()
    c.network.partition(["0", "1", "2"], ["3", "4"])
    c.connected = {"0", "1", "2"}
    index = await c.one("majority-cmd", 3, retry=True)
    for i in ("3", "4"):
        c.node(i).submit("minority-cmd")
    await trio.sleep(ELECTION_TIMEOUT)
    c.network.heal()
    c.connected = set(c.ids)
    await c.one("after-heal", 5, retry=True)
    assert c.n_committed(index) == (5, "majority-cmd")


async def test_partition_leader_alone(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    c = await start_cluster(nursery, 3, seed)
    leader = await c.check_one_leader()
    c.disconnect(leader)
    assert c.node(leader).submit("will-be-lost")[2]
    await c.one("majority", 2, retry=True)
    c.connect(leader)
    await c.one("after-heal", 3, retry=True)
    for i in c.ids:
        assert "will-be-lost" not in c.logs[i].values()


async def test_partition_repeated_and_conflicting(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    """Four rounds of (leader + partner) in the minority: the minority's entries are lost,
    the majority's committed entries survive every heal."""
    c = await start_cluster(nursery, 5, seed)
    kept = []
    for round_ in range(4):
        leader = await c.check_one_leader()
        partner = str((int(leader) + 1) % 5)
        majority = [i for i in c.ids if i not in (leader, partner)]
        c.network.partition([leader, partner], majority)
        c.connected = set(majority)
        for k in range(2):
            c.node(leader).submit(f"minority-{round_}-{k}")
        for k in range(2):
            cmd = f"majority-{round_}-{k}"
            kept.append((await c.one(cmd, 3, retry=True), cmd))
        c.network.heal()
        c.connected = set(c.ids)
        await c.one(f"heal-{round_}", 5, retry=True)
        await trio.sleep(0.5)
    for index, cmd in kept:
        assert c.n_committed(index) == (5, cmd)
    assert not any(v.startswith("minority") for i in c.ids for v in c.logs[i].values())
