"""The replicated KV's hand-written scenarios (docs/scenarios.md: kvraft) and the
Janus KV list (docs/scenarios.md: janus-kv), over real HTTP through fault proxies."""

from __future__ import annotations

import random
import time

import pytest
import trio

from tests.kv_cluster import KVCluster, check_get, isolate, rejoin, wait_leader
from tests.kvtest import put_at_least_once
from trioraft import ClusterClient
from trioraft.testing import MIT_UNRELIABLE

#: Real clusters over HTTP are timing-sensitive: they share one xdist worker (--dist loadgroup)
#: rather than run against each other on a 2-core machine.
pytestmark = pytest.mark.xdist_group("http-cluster")

ELECTION_TIMEOUT = 1.0


async def test_one_partition(make_kv_cluster) -> None:
    c = await make_kv_cluster(5)
    ck = c.clerk()
    ver1 = await put_at_least_once(ck, "1", "13", 0)
    leader = await wait_leader(c)
    majority, minority = c.make_partition(leader)
    c.partition(majority, minority)
    ckp1, ckp2a, ckp2b = c.clerk(majority), c.clerk(minority), c.clerk(minority)
    ver2 = await put_at_least_once(ckp1, "1", "14", ver1)
    await check_get(ckp1, "1", "14", ver2)
    put_done, get_done = trio.Event(), trio.Event()
    ver15 = 0

    async def minority_put() -> None:
        nonlocal ver15
        ver15 = await put_at_least_once(ckp2a, "1", "15", ver1)
        put_done.set()

    async def minority_get() -> None:
        await ckp2b.get("1")
        get_done.set()

    async with trio.open_nursery() as minority_ops:
        minority_ops.start_soon(minority_put)
        minority_ops.start_soon(minority_get)
        await trio.sleep(1.0)
        assert not put_done.is_set(), "Put in minority completed"
        assert not get_done.is_set(), "Get in minority completed"
        await check_get(ckp1, "1", "14", ver2)
        ver3 = await put_at_least_once(ckp1, "1", "16", ver2)
        await check_get(ckp1, "1", "16", ver3)
        c.heal()
        with trio.fail_after(4.0):
            await put_done.wait()
    await check_get(ck, "1", "15", ver15)


async def test_snapshot_rpc(make_kv_cluster) -> None:
    max_raft_state = 1000
    c = await make_kv_cluster(3, max_raft_state=max_raft_state)
    ck = c.clerk()
    vera = await put_at_least_once(ck, "a", "A", 0)
    await check_get(ck, "a", "A", vera)
    c.partition(["0", "1"], ["2"])
    ck1 = c.clerk(["0", "1"])
    for i in range(50):
        await put_at_least_once(ck1, str(i), str(i), 0)
    await trio.sleep(ELECTION_TIMEOUT)
    verb = await put_at_least_once(ck1, "b", "B", 0)
    assert c.log_size() <= 8 * max_raft_state, f"log size {c.log_size()}"
    c.partition(["0", "2"], ["1"])  # server 2 must catch up, from a snapshot
    ck2 = c.clerk(["0", "2"])
    verc = await put_at_least_once(ck2, "c", "C", 0)
    await put_at_least_once(ck2, "d", "D", 0)
    await check_get(ck2, "a", "A", vera)
    await check_get(ck2, "b", "B", verb)
    await check_get(ck2, "1", "1", 1)
    await check_get(ck2, "49", "49", 1)
    c.heal()
    vere = await put_at_least_once(ck, "e", "E", 0)
    await check_get(ck, "c", "C", verc)
    await check_get(ck, "e", "E", vere)
    await check_get(ck, "1", "1", 1)
    assert c.nodes["2"] is not None and c.nodes["2"].raft.log.snapshot_index > 0


async def test_snapshot_size(make_kv_cluster) -> None:
    max_raft_state, max_snapshot = 1000, 500
    c = await make_kv_cluster(3, max_raft_state=max_raft_state)
    ck = c.clerk()
    version = 0
    for _ in range(200):
        for value in ("0", "1"):
            # One writer: a put whose reply a busy machine's election lost (Maybe) is
            # settled by reading it back.
            version = await put_at_least_once(ck, "x", value, version)
            await check_get(ck, "x", value, version)
    assert c.log_size() <= 8 * max_raft_state, f"logs were not trimmed ({c.log_size()})"
    assert c.snapshot_size() <= max_snapshot, f"snapshot too large ({c.snapshot_size()})"


@pytest.mark.slow
@pytest.mark.parametrize("max_raft_state", [-1, 1000], ids=["4B", "4C"])
async def test_speed(make_kv_cluster, max_raft_state: int) -> None:
    """1000 sequential puts, each OK, in far less than 1000 x 33.3 ms: commits do not wait
    for the next heartbeat."""
    c = await make_kv_cluster(3, max_raft_state=max_raft_state)
    ck = c.clerk()
    await ck.get("x")
    start = time.monotonic()
    for i in range(1000):
        assert await put_at_least_once(ck, "k", str(i), i) == i + 1
    elapsed = time.monotonic() - start
    assert await ck.get("k") == (str(999), 1000)
    print(f"1000 puts in {elapsed:.2f} s ({elapsed:.1f} ms/op)")
    assert elapsed < 1000 * 0.1 / 3, f"Operations completed too slowly: {elapsed:.1f} s"


# -- Janus KV tests (docs/scenarios.md: janus-kv) -----------------------------------------


async def generic_kv(c: KVCluster, clients: int, *, within: float, start_at: str | None = None):
    """Each client: put v1 at its own key, append v2, get must be v1 + v2; all in ``within``."""
    rng = random.Random(c.seed)

    async def client(i: int) -> None:
        ck = c.clerk()  # a new client id: appends of an old one would be deduplicated
        if start_at is not None:
            ck.leader = c.ids.index(start_at)
        key, v1, v2 = str(i), str(rng.randrange(10000)), str(rng.randrange(10000))
        _, version = await ck.get(key)
        await put_at_least_once(ck, key, v1, version)
        await ck.append(key, v2)
        assert (await ck.get(key)).value == v1 + v2

    with trio.fail_after(within):
        async with trio.open_nursery() as group:
            for i in range(clients):
                group.start_soon(client, i)


@pytest.mark.parametrize("clients", [1, 5], ids=["basic", "concurrent"])
async def test_janus_basic_and_concurrent(make_kv_cluster, clients: int) -> None:
    c = await make_kv_cluster(5)
    await wait_leader(c)
    await generic_kv(c, clients, within=3.0)


async def test_janus_progress_with_a_majority(
    make_kv_cluster,
) -> None:
    c = await make_kv_cluster(5)
    leader = int(await wait_leader(c))
    cut = [str((leader + k) % 5) for k in (1, 2)]
    isolate(c, cut)
    await generic_kv(c, 1, within=3.0, start_at="0")  # the client must find the leader
    await generic_kv(c, 5, within=3.0, start_at=str(leader))
    rejoin(c, cut)


async def test_janus_no_progress_with_a_minority(
    make_kv_cluster,
) -> None:
    c = await make_kv_cluster(5)
    leader = int(await wait_leader(c))
    cut = [str((leader + k) % 5) for k in (1, 2, 3)]
    isolate(c, cut)
    ck = c.clerk()
    # Each op stays unfinished for the scenario's 10 s (a Janus client's give-up time).
    with trio.move_on_after(10.0) as put_scope:
        await ck.put("minority", "x", 0)
    assert put_scope.cancelled_caught, "a put completed without a majority"
    with trio.move_on_after(10.0) as get_scope:
        await ck.get("minority")
    assert get_scope.cancelled_caught, "a get completed without a majority"
    rejoin(c, cut)
    await generic_kv(c, 1, within=10.0)


async def test_janus_through_re_election(make_kv_cluster) -> None:
    c = await make_kv_cluster(5)
    old = await wait_leader(c)
    ck = c.clerk()
    await ck.put("k5", "v1", 0)
    isolate(c, [old])
    with trio.fail_after(5):  # the scenario's bound on a re-election
        new = await wait_leader(c, exclude=(old,))
    assert new != old, "no re-election despite the leader being disconnected"
    await ck.append("k5", "v2")
    assert (await ck.get("k5")).value == "v1v2"
    rejoin(c, [old])
    await trio.sleep(5.0)  # the scenario's: 5 s after the old leader rejoined, one leader
    leaders = [i for i in c.ids if c.nodes[i] and c.nodes[i].raft.is_leader]
    assert len(leaders) == 1
    await ck.append("k5", "v4")
    assert (await ck.get("k5")).value == "v1v2v4"


async def test_janus_same_key_and_sequential_clients(
    make_kv_cluster,
) -> None:
    """Exactly-once appends with two followers cut off: five concurrent appenders give
    "11111"; five fresh clients in sequence give "01234"."""
    c = await make_kv_cluster(5)
    leader = int(await wait_leader(c))
    isolate(c, [str((leader + k) % 5) for k in (1, 2)])
    with trio.fail_after(10):
        async with trio.open_nursery() as appenders:
            for i in range(5):
                appenders.start_soon(c.clerk(name=f"appender-{i}").append, "test_key_7", "1")
    assert (await c.clerk().get("test_key_7")).value == "11111"
    for i in range(5):
        await c.clerk(name=f"sequential-{i}").append("test_key_8", str(i))
    assert (await c.clerk().get("test_key_8")).value == "01234"


async def test_janus_unreliable(make_kv_cluster) -> None:
    """Every 0.1 s each server is cut off with probability 1/10, else reconnected; calls are
    slowed by up to 26 ms. One client must still finish (Janus allows 300 s)."""
    c = await make_kv_cluster(5, profile=MIT_UNRELIABLE)
    rng = random.Random(c.seed)
    stop = trio.Event()

    async def netctl() -> None:
        while not stop.is_set():
            for i in c.ids:
                if rng.random() < 0.1:
                    isolate(c, [i])
                else:
                    rejoin(c, [i])
            with trio.move_on_after(0.1):
                await stop.wait()

    async with trio.open_nursery() as chaos:
        chaos.start_soon(netctl)
        await generic_kv(c, 1, within=300.0)
        for round_ in range(5):
            ck: ClusterClient = c.clerk(name=f"unreliable-{round_}")
            await ck.append("journal", str(round_))
        stop.set()
    rejoin(c, c.ids)
    assert (await c.clerk().get("journal")).value == "01234"
