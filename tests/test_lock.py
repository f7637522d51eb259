"""Lock scenarios over the single-server KV (docs/scenarios.md: lock).

Mutual exclusion is checked twice, as the ports do: by the ``l0`` KV probe (the holder finds
it empty, writes its id, and clears it) and by an in-process counter of tasks inside the
critical section.
"""

from __future__ import annotations

import random
from contextlib import AsyncExitStack

import pytest
import trio
import trio.testing

from tests.kvtest import InMemoryKV, SingleKV, start_single_kv
from tests.locktest import random_name, run_lock_clients
from trioraft import KeyValue, KVClient, Lock, Versioned
from trioraft.testing import MIT_UNRELIABLE, RELIABLE, UNRELIABLE, Network


class WatchedKV:
    """Forwards to ``kv`` and keeps every value its gets returned, so a test can wait until
    a lock's user has seen the lock in some state."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.seen: list[str] = []
        self._got = trio.Event()

    async def get(self, key: str) -> Versioned:
        result = await self.kv.get(key)
        self.seen.append(result.value)
        self._got.set()
        self._got = trio.Event()
        return result

    async def put(self, key: str, value: str, version: int) -> None:
        await self.kv.put(key, value, version)

    async def wait_seen(self, value: str, *, times: int = 1) -> None:
        while self.seen.count(value) < times:
            await self._got.wait()


async def make_clerks(stack: AsyncExitStack, url: str, n: int) -> list[KeyValue]:
    return [await stack.enter_async_context(KVClient(url, client_id=f"c{i}")) for i in range(n)]


async def test_basic_and_reacquire(single_kv: SingleKV, rng: random.Random) -> None:
    async with KVClient(single_kv.url) as kv:
        lock = Lock(kv, random_name(rng))
        for _ in range(20):
            async with lock:
                assert (await kv.get(lock.name)).value == lock.holder
            assert (await kv.get(lock.name)).value == ""


async def test_nested_locks_are_independent(single_kv: SingleKV, rng: random.Random) -> None:
    async with KVClient(single_kv.url) as kv:
        a, b = Lock(kv, random_name(rng)), Lock(kv, random_name(rng))
        async with a, b:  # nested
            pass
        await a.acquire()  # interleaved
        await b.acquire()
        await a.release()
        other = Lock(kv, a.name)
        with trio.fail_after(5):
            async with other:  # a is free while b is still held
                assert b.locked
        await b.release()


async def test_waiter_gets_lock_after_release(single_kv: SingleKV) -> None:
    async with KVClient(single_kv.url) as kv:
        watched = WatchedKV(kv)
        first, second = Lock(kv, "l", holder="first"), Lock(watched, "l", holder="second")
        await first.acquire()
        acquired = trio.Event()

        async def take_second() -> None:
            async with second:
                acquired.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(take_second)
            with trio.move_on_after(5):  # it found the lock held, waited, and found it held again
                await watched.wait_seen("first", times=2)
            assert not acquired.is_set(), "second holder got a held lock"
            assert watched.seen.count("first") >= 2, "second holder stopped polling"
            await first.release()
        assert acquired.is_set()


async def test_shared_lock_object_serializes_local_tasks() -> None:
    """Tasks sharing one Lock (one holder id) take it one at a time. The KV is in memory, so
    once every other task is blocked, none can still be on its way into the lock."""
    lock = Lock(InMemoryKV(), "shared")
    inside = 0

    async def worker() -> None:
        nonlocal inside
        for _ in range(5):
            async with lock:
                inside += 1
                await trio.testing.wait_all_tasks_blocked()
                assert inside == 1, "two tasks inside the lock"
                inside -= 1

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(worker)


async def test_cancelled_acquire_leaves_lock_free(single_kv: SingleKV) -> None:
    async with KVClient(single_kv.url) as kv:
        holder = Lock(kv, "c", holder="holder")
        await holder.acquire()
        watched = WatchedKV(kv)
        waiter = Lock(watched, "c", holder="waiter")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter.acquire)
            with trio.fail_after(5):  # cancel it while it waits for the held lock
                await watched.wait_seen("holder")
            nursery.cancel_scope.cancel()
        assert not waiter.locked
        await holder.release()
        assert await kv.get("c") == ("", 2)
        with pytest.raises(RuntimeError):
            await waiter.release()


async def test_release_completes_when_body_is_cancelled(single_kv: SingleKV) -> None:
    async with KVClient(single_kv.url) as kv:
        lock = Lock(kv, "r")
        with trio.CancelScope() as scope:
            async with lock:
                scope.cancel()  # the body is cancelled while the lock is held
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert (await kv.get("r")).value == ""


@pytest.mark.parametrize("n", [1, 2, 5, 10])
async def test_clients_reliable(single_kv: SingleKV, rng: random.Random, n: int) -> None:
    """MIT's 1 and 10 clients (2 s) and the C port's 1, 2 and 5 clients, all run for C's 4 s."""
    async with AsyncExitStack() as stack:
        await run_lock_clients(await make_clerks(stack, single_kv.url, n), 4.0, rng)


@pytest.mark.slow
async def test_32_clients_reliable(single_kv: SingleKV, rng: random.Random) -> None:
    async with AsyncExitStack() as stack:
        await run_lock_clients(await make_clerks(stack, single_kv.url, 32), 6.0, rng, hold=0.005)


#: (profile, clients, seconds): MIT's 1 and 10 clients at 10% loss for 2 s; the C port's 1 and
#: 2 clients at 50% loss, and the Rust port's 8 clients at 50% loss for 8 s. MIT's runs ask
#: for mutual exclusion and no deadlock, not that each of 10 clients contending for one lock
#: wins it within 2 s at 10% loss (docs/scenarios.md section 5): on a busy machine one may not.
#: Each client's first pass is waited for (``run_lock_clients``), however long it takes.
UNRELIABLE_LOCK_RUNS = [
    ("mit-unreliable", 1, 2.0),
    ("mit-unreliable", 10, 2.0),
    ("seeds-unreliable", 1, 4.0),
    ("seeds-unreliable", 2, 4.0),
    pytest.param("seeds-unreliable", 8, 8.0, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("profile", "n", "duration"), UNRELIABLE_LOCK_RUNS)
async def test_clients_unreliable(
    nursery: trio.Nursery, seed: int, rng: random.Random, profile: str, n: int, duration: float
) -> None:
    network = Network(
        seed, {"seeds-unreliable": UNRELIABLE, "mit-unreliable": MIT_UNRELIABLE}[profile]
    )
    service = await start_single_kv(nursery, network)
    async with AsyncExitStack() as stack:
        clerks = await make_clerks(stack, service.url, n)
        await run_lock_clients(clerks, duration, rng)
    assert network.lost, "nothing was dropped"
    network.set_profile(RELIABLE)
