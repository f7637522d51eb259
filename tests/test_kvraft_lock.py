"""The lock over the replicated KV (the C and Rust ports' kvraft lock lists, the seed's
"lock over the cluster"): mutual exclusion by the KV probe and an in-process counter."""

from __future__ import annotations

import random

import pytest
import trio

from tests.kv_cluster import wait_leader
from tests.locktest import random_name, run_lock_clients
from trioraft import Lock
from trioraft.testing import MIT_UNRELIABLE

#: Real clusters over HTTP are timing-sensitive: they share one xdist worker (--dist loadgroup)
#: rather than run against each other on a 2-core machine.
pytestmark = pytest.mark.xdist_group("http-cluster")


async def test_lock_basic_and_reacquire(make_kv_cluster, rng: random.Random) -> None:
    c = await make_kv_cluster(3)
    kv = c.clerk()
    lock = Lock(kv, random_name(rng))
    for _ in range(10):
        async with lock:
            assert (await kv.get(lock.name)).value == lock.holder
    assert (await kv.get(lock.name)).value == ""


#: (clients, seconds, unreliable): the C port's 3 clients for 3 s (Rust: 6 s), 1/2/5 clients
#: reliable and 1/2 unreliable for 4 s, and 8 unreliable clients for 8 s.
RUNS = [
    pytest.param(3, 6.0, False, id="mutual-exclusion-3"),
    pytest.param(1, 4.0, False, id="reliable-1"),
    pytest.param(2, 4.0, False, id="reliable-2"),
    pytest.param(5, 4.0, False, id="reliable-5"),
    pytest.param(1, 4.0, True, id="unreliable-1"),
    pytest.param(2, 4.0, True, id="unreliable-2"),
    pytest.param(8, 8.0, True, id="unreliable-8", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("clients", "duration", "unreliable"), RUNS)
async def test_lock_clients(
    make_kv_cluster, rng: random.Random, clients: int, duration: float, unreliable: bool
) -> None:
    c = await make_kv_cluster(5, profile=MIT_UNRELIABLE if unreliable else None)
    await run_lock_clients([c.clerk() for _ in range(clients)], duration, rng)


async def test_lock_with_leader_failure(make_kv_cluster, rng: random.Random) -> None:
    """Kill the leader while holding the lock; release, reacquire, and a second clerk too."""
    c = await make_kv_cluster(5)
    name = random_name(rng)
    first = Lock(c.clerk(), name, holder="first")
    await first.acquire()
    await trio.sleep(1.0)
    await c.stop(await wait_leader(c))
    await first.release()
    async with first:
        pass
    async with Lock(c.clerk(), name, holder="second"):
        pass


async def test_lock_with_crash_chaos(make_kv_cluster, rng: random.Random) -> None:
    """Every 200-499 ms a random server is killed (keeping 3 of 5 alive) or restarted,
    while two clients use the lock (the C port's test; the Rust port runs it 10 s)."""
    c = await make_kv_cluster(5)
    stop = trio.Event()

    async def chaos() -> None:
        while not stop.is_set():
            i = rng.choice(c.ids)
            if c.alive(i) and sum(map(c.alive, c.ids)) > 3:
                await c.stop(i)
            elif not c.alive(i):
                await c.start(i)
            with trio.move_on_after(0.2 + rng.randrange(300) / 1000):
                await stop.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(chaos)
        await run_lock_clients([c.clerk(), c.clerk()], 10.0, rng)
        stop.set()
