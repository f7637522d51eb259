"""The lease lock over a real 3-node cluster (docs/scenarios.md: lease lock).

Holders never overlap, even while partitions come and go and servers crash: a guarded
resource refuses a token lower than one it has seen and counts who is inside. A holder cut
off from the majority has its body cancelled before anyone else gets the lock.
"""

from __future__ import annotations

import random

import pytest
import trio

from tests.kv_cluster import wait_leader
from trioraft import LockLost, lease_lock

pytestmark = pytest.mark.xdist_group("http-cluster")


class GuardedResource:
    """Refuses a stale fencing token; fails the test if two holders are inside at once."""

    def __init__(self) -> None:
        self.highest = 0
        self.inside = 0
        self.uses: list[int] = []

    async def use(self, token: int, seconds: float) -> None:
        assert token > self.highest, f"stale token {token} after {self.highest}"
        self.highest = token
        self.inside += 1
        try:
            assert self.inside == 1, "two holders at once"
            self.uses.append(token)
            await trio.sleep(seconds)
        finally:
            self.inside -= 1


async def test_holders_never_overlap_while_partitions_come_and_go(make_kv_cluster, seed):
    c = await make_kv_cluster(3)
    await wait_leader(c)
    resource = GuardedResource()
    rng = random.Random(seed)
    lost = 0

    async def contender(name: str) -> None:
        nonlocal lost
        kv = c.clerk(name=name)
        done = 0
        while done < 3:
            try:
                async with lease_lock(kv, "res", ttl=2, holder=name, cleanup_timeout=2) as token:
                    await resource.use(token, 0.2)
                    done += 1
            except LockLost:
                lost += 1

    async def nemesis() -> None:
        while True:
            await trio.sleep(rng.uniform(0.5, 1.5))
            leader = c.leader()
            if leader is not None and rng.random() < 0.5:
                c.partition(*c.make_partition(leader))
            else:
                victim = rng.choice(c.ids)
                await c.restart(victim)
            await trio.sleep(rng.uniform(0.5, 1.5))
            c.heal()

    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(nemesis)
            async with trio.open_nursery() as contenders:
                for k in range(3):
                    contenders.start_soon(contender, f"c{k}")
            nursery.cancel_scope.cancel()
    c.heal()
    assert len(resource.uses) == 9
    assert resource.uses == sorted(resource.uses)


async def test_a_holder_cut_off_is_cancelled_before_anyone_else_acquires(make_kv_cluster):
    c = await make_kv_cluster(3)
    leader = await wait_leader(c)
    holder_kv = c.clerk(servers=[leader], name="holder")  # reaches the old leader only
    other_kv = c.clerk(name="other")
    acquired = trio.Event()
    times: dict[str, float] = {}
    tokens: dict[str, int] = {}

    async def holder() -> None:
        with pytest.raises(LockLost):
            async with lease_lock(holder_kv, "job", ttl=3, cleanup_timeout=1) as token:
                tokens["holder"] = token
                acquired.set()
                try:
                    await trio.sleep_forever()
                finally:
                    times["holder cancelled"] = trio.current_time()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder)
            await acquired.wait()
            c.partition(*c.make_partition(leader))
            async with lease_lock(other_kv, "job", ttl=3) as token:
                times["other acquired"] = trio.current_time()
                tokens["other"] = token
    c.heal()
    assert times["holder cancelled"] < times["other acquired"]
    assert tokens["other"] > tokens["holder"]
