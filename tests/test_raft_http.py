"""The key Raft scenarios with real nodes over real HTTP, through fault proxies, on the
real clock: election, agreement, failures, persistence, snapshots, partitions, loss."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import trio

from tests.raft_http_harness import HttpRaftCluster
from trioraft.raft.config import RaftConfig
from trioraft.rpc.transport import HttpTransport
from trioraft.testing import MIT_UNRELIABLE, RELIABLE

#: Real clusters over HTTP are timing-sensitive: they share one xdist worker (--dist loadgroup)
#: rather than run against each other on a 2-core machine.
pytestmark = pytest.mark.xdist_group("http-cluster")


async def cluster(
    nursery: trio.Nursery, n: int, seed: int, tmp_path: Path, **kw
) -> HttpRaftCluster:
    c = HttpRaftCluster(nursery, n, seed, tmp_path, **kw)
    await c.start_all()
    return c


async def test_election_and_agreement_over_http(
    nursery: trio.Nursery, seed: int, tmp_path: Path
) -> None:
    c = await cluster(nursery, 3, seed, tmp_path)
    leader = await c.check_one_leader()
    for index in range(1, 4):
        assert await c.one(str(index * 100), 3, retry=False) == index
    c.disconnect(leader)
    leader2 = await c.check_one_leader()
    assert leader2 != leader
    await c.one("after-failover", 2, retry=True)
    c.connect(leader)
    await c.one("all-back", 3, retry=True)
    async with httpx.AsyncClient() as http:  # the peer listener serves Raft routes only
        assert (await http.get(c.proxy_urls[leader2] + "/status")).status_code in (404, 405)
    status = c.node(leader2).statistics()
    assert status.role == "leader" and status.commit_index >= 5
    c.check_errors()


async def test_an_entry_slower_to_send_than_rpc_timeout_commits(
    nursery: trio.Nursery, seed: int, tmp_path: Path
) -> None:
    """Over a link of 2 MiB/s, one AppendEntries carrying a 1.5 MB entry takes 0.7 s to
    cross, above ``rpc_timeout`` (0.5 s): the leader's wait grows with the entries' size,
    so it commits. (Cut off at ``rpc_timeout``, the call was sent again forever.) The
    followers fsync it off the event loop the three nodes share, under election timeouts
    with room for that: on a busy machine an inline fsync of it held every node's timers."""
    config = RaftConfig(election_timeout=(1.0, 2.0), sync_inline=False)
    c = await cluster(
        nursery,
        3,
        seed,
        tmp_path,
        profile=replace(RELIABLE, bytes_per_second=2 << 20),
        config=config,
    )
    leader = await c.check_one_leader()
    assert c.config.rpc_timeout < 1_500_000 / (2 << 20)  # else this test shows nothing
    big = "x" * 1_500_000
    index = await c.one(big, 3, retry=True)
    assert c.n_committed(index) == (3, big)
    assert await c.check_one_leader() == leader  # and no election meanwhile
    c.check_errors()


def test_an_http_transport_waits_as_long_as_the_node_may() -> None:
    """Its default timeout covers a node's longest call (the largest AppendEntries): at
    1 s it cut off what ``RaftConfig.append_wait`` allows, for users who built their own."""
    transport = HttpTransport("a", {"b": "http://127.0.0.1:1"})
    assert transport._timeout >= RaftConfig().transport_timeout


async def test_persistence_over_http(nursery: trio.Nursery, seed: int, tmp_path: Path) -> None:
    c = await cluster(nursery, 3, seed, tmp_path)
    await c.one("11", 3, retry=True)
    for i in c.ids:
        await c.stop(i)
    for i in c.ids:
        await c.start(i)
    assert await c.one("12", 3, retry=True) == 2
    leader = await c.check_one_leader()
    await c.restart(leader)
    assert await c.one("13", 3, retry=True) == 3
    follower = next(i for i in c.ids if i != leader)
    await c.stop(follower)
    await c.one("14", 2, retry=True)
    await c.start(follower)
    await c.wait(4, 3, -1)
    assert [c.n_committed(k)[1] for k in range(1, 5)] == ["11", "12", "13", "14"]


async def test_snapshot_install_over_http(nursery: trio.Nursery, seed: int, tmp_path: Path) -> None:
    c = await cluster(nursery, 3, seed, tmp_path, snapshot=True)
    leader = await c.check_one_leader()
    lagging = next(i for i in c.ids if i != leader)
    c.disconnect(lagging)
    for k in range(40):
        await c.one(f"cmd-{k}", 2, retry=True)
    assert c.node(leader).log.snapshot_index >= 30
    c.connect(lagging)
    last = await c.one("caught-up", 3, retry=True)
    assert c.node(lagging).log.snapshot_index >= 30
    assert c.raft_state_size() < 2000
    for i in c.ids:
        await c.stop(i)
    for i in c.ids:
        await c.start(i)
    after = await c.one("after-restart", 3, retry=True)
    assert after == last + 1
    c.check_errors()


async def test_partition_over_http(nursery: trio.Nursery, seed: int, tmp_path: Path) -> None:
    c = await cluster(nursery, 5, seed, tmp_path)
    leader = await c.check_one_leader()
    minority = [leader, str((int(leader) + 1) % 5)]
    majority = [i for i in c.ids if i not in minority]
    c.network.partition(minority, majority)
    c.connected = set(majority)
    old = c.node(leader)
    minority_index, _, accepted = old.submit("minority-write")
    assert accepted
    index = await c.one("majority-write", 3, retry=True)
    # Without a quorum the old leader steps down (check-quorum); from then on no member of
    # the minority can lead, so none can ever commit: wait for that, not for a while.
    with trio.fail_after(5):
        await old.wait_until(lambda node: not node.is_leader)
    assert all(c.node(i).commit_index < minority_index for i in minority)
    assert all("minority-write" not in log.values() for log in c.logs.values())
    c.network.heal()
    c.connected = set(c.ids)
    await c.one("healed", 5, retry=True)
    assert c.n_committed(index) == (5, "majority-write")
    assert all("minority-write" not in log.values() for log in c.logs.values())


async def test_unreliable_agreement_over_http(
    nursery: trio.Nursery, seed: int, tmp_path: Path
) -> None:
    c = await cluster(nursery, 5, seed, tmp_path, profile=MIT_UNRELIABLE)
    # Batching makes few calls (about 37 for six rounds), and at 10% loss none is lost for
    # 2% of seeds: go on until one was, so the test always tries what it names.
    round_ = 0
    while round_ < 6 or not c.network.lost:
        async with trio.open_nursery() as ones:
            for j in range(4):
                ones.start_soon(c.one, f"{round_}-{j}", 1, True)
        round_ += 1
    c.network.set_profile(RELIABLE)
    await c.one("final", 5, retry=True)
    c.check_errors()
