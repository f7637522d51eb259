"""The lease lock over a real 3-node cluster.

docs/scenarios.md: lease-lock, lease-lock-cut-off.

Holders never overlap, even while partitions come and go and servers crash: a guarded
resource refuses a token lower than one it has seen and counts who is inside. A holder cut
off from the majority has its body cancelled before anyone else gets the lock.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
import trio

from tests.kv_cluster import wait_leader
from trioraft import LockLost, lease_lock

pytestmark = pytest.mark.xdist_group("http-cluster")


async def read_line(stream: trio.abc.ReceiveStream) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        assert chunk, f"the stream ended after {line!r}"
        line += chunk
    return line


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
    # Each contender finished three uses; a use whose lock was lost before the block's end
    # (LockLost on the way out, on a loaded machine) was made again.
    assert 9 <= len(resource.uses) <= 9 + lost, (resource.uses, lost)
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
            majority, minority = c.make_partition(leader)
            c.partition(majority, minority)  # which heals first: cut the holder off again
            for i in majority:
                c.network.block("holder", i)
            async with lease_lock(other_kv, "job", ttl=3) as token:
                times["other acquired"] = trio.current_time()
                tokens["other"] = token
    c.heal()
    assert times["holder cancelled"] < times["other acquired"]
    assert tokens["other"] > tokens["holder"]


async def note_elections(c, times: list[float]) -> None:
    """Append the time whenever a server becomes leader, until cancelled. A new leader
    restarts every lease at its full TTL, so a lock's expiry counts from the latest one."""

    async def watch(node) -> None:
        while True:
            await node.raft.wait_until(lambda n: n.is_leader)
            times.append(trio.current_time())
            await node.raft.wait_until(lambda n: not n.is_leader)

    async with trio.open_nursery() as nursery:
        for node in c.nodes.values():
            nursery.start_soon(watch, node)


@contextlib.asynccontextmanager
async def lock_process(c, name: str, ttl: int) -> AsyncIterator[trio.Process]:
    """A `trioraft lock NAME --ttl TTL` process (in a session of its own) whose command
    holds the lock, once it says so; its whole process group is killed at the end."""
    servers = ",".join(c.urls[i] for i in c.ids)
    holding = "import time; print('held', flush=True); time.sleep(120)"
    command = [sys.executable, "-m", "trioraft", "lock", name, "--ttl", str(ttl),
               "--servers", servers, "--", sys.executable, "-c", holding]  # fmt: skip
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, start_new_session=True
    )
    assert process.stdout is not None
    try:
        with trio.fail_after(30):
            assert await read_line(process.stdout) == b"held\n"
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with trio.CancelScope(shield=True):
            await process.wait()
            await process.stdout.aclose()


async def test_a_lock_process_killed_with_sigkill_frees_the_lock_within_its_ttl(
    make_kv_cluster,
):
    """`trioraft lock NAME --ttl 2 -- CMD` is killed with SIGKILL while CMD runs: the lock
    is free again within its TTL plus 2 s (docs/scenarios.md: lease-lock-process), counted
    from the kill or from a later election (which restarts the lease: a busy machine can
    stall the nodes' loop past an election timeout)."""
    c = await make_kv_cluster(3)
    await wait_leader(c)
    elections: list[float] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(note_elections, c, elections)
            async with lock_process(c, "job", ttl=2) as process:
                process.send_signal(signal.SIGKILL)  # the lock process, not its command
                killed = trio.current_time()
                await process.wait()
                async with lease_lock(c.clerk(), "job", ttl=2):
                    acquired = trio.current_time()
            nursery.cancel_scope.cancel()
    assert acquired - max(killed, *elections) <= 2 + 2


async def test_a_lock_process_stops_its_command_when_the_lock_is_lost(make_kv_cluster):
    """The lock's lease is revoked behind the holder's back: CMD is stopped and
    `trioraft lock` exits 75."""
    c = await make_kv_cluster(3)
    await wait_leader(c)
    kv = c.clerk()
    with trio.fail_after(60):
        async with lock_process(c, "job", ttl=2) as process:
            page = await kv.range(prefix="\x00lock/job/")
            (holder,) = page.items
            assert await kv.lease_revoke(int(holder.key.rsplit("/", 1)[1], 16))
            assert await process.wait() == 75
            # Its command was stopped with it: nothing is left in its process group.
            with pytest.raises(ProcessLookupError):
                os.killpg(process.pid, 0)
