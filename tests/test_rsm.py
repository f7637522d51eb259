"""The replicated state machine (docs/scenarios.md: rsm), on virtual time.

The machine is a counter: ``inc`` adds one and returns the count, ``null`` does nothing, and
applying anything else (the minority's ``dec``) is recorded as a fatal error.
"""

from __future__ import annotations

import json
import math

import pytest
import trio
import trio.testing

from trioraft import (
    LeadershipLost,
    NotLeader,
    ProposalTimedOut,
    RaftError,
    RaftNode,
)
from trioraft.kv.rsm import ReplicatedStateMachine
from trioraft.testing import RaftCluster

pytestmark = pytest.mark.usefixtures("seeded_scheduler")
Clock = trio.testing.MockClock
NSEC = 10


class Counter:
    def __init__(self, errors: list[str]) -> None:
        self.n = 0
        self.errors = errors

    def apply(self, op: str, index: int) -> int | None:
        if op == "inc":
            self.n += 1
            return self.n
        if op == "null":
            return None
        self.errors.append(f"applied {op!r}: only inc and null may ever execute")
        return None

    def snapshot(self) -> bytes:
        return json.dumps(self.n).encode()

    def restore(self, data: bytes) -> None:
        self.n = json.loads(data)


class RSMCluster(RaftCluster):
    """The test kit's cluster with a counter in a replicated state machine on every node."""

    def __init__(
        self,
        nursery: trio.Nursery,
        seed: int,
        n: int = 3,
        max_raft_state: int = -1,
        op_timeout: float = math.inf,
    ) -> None:
        super().__init__(nursery, n, seed)
        self.rsms: dict[str, ReplicatedStateMachine | None] = dict.fromkeys(self.ids)
        self.counters: dict[str, Counter] = {}
        self.errors: list[str] = []
        self.max_raft_state = max_raft_state
        self.op_timeout = op_timeout
        self.leader = "0"

    def prepare(self, i: str, node: RaftNode) -> None:
        counter = self.counters[i] = Counter(self.errors)
        self.rsms[i] = ReplicatedStateMachine(
            node, counter, max_raft_state=self.max_raft_state, op_timeout=self.op_timeout
        )

    async def consume(self, i: str, node: RaftNode) -> None:
        rsm = self.rsms[i]
        assert rsm is not None
        await rsm.run()

    def shutdown(self, i: str) -> None:
        self.crash(i)
        self.rsms[i] = None

    def shutdown_all(self) -> None:
        for i in self.ids:
            self.shutdown(i)

    async def one_partition(self, servers: list[str], op: str):
        """Submit ``op`` to the partition's servers, starting at the last leader, until one
        answers; its result, or None once NSEC seconds have passed.

        The time limit is checked between submits, never during one: a submit that does not
        return keeps its caller waiting, so a test that bounds the caller sees it hang.
        """
        deadline = trio.current_time() + NSEC
        while trio.current_time() < deadline:
            order = sorted(servers, key=lambda s: s != self.leader)
            for i in order:
                rsm = self.rsms[i]
                if rsm is None:
                    continue
                try:
                    result = await rsm.submit(op)
                except (NotLeader, LeadershipLost):
                    continue
                self.leader = i
                return result
            await trio.sleep(0.05)
        return None

    async def one_inc(self) -> int:
        result = await self.one_partition(self.ids, "inc")
        assert result is not None, "no server accepted the inc"
        return result

    async def check_counter(self, value: int, n: int) -> None:
        """Wait until at least ``n`` servers' counters equal ``value``."""
        reached = 0
        enough = trio.Event()

        async def watch(rsm: ReplicatedStateMachine) -> None:
            nonlocal reached
            await rsm.wait_until(lambda r: r.machine.n == value)
            reached += 1
            if reached >= n:
                enough.set()

        with trio.fail_after(NSEC):
            async with trio.open_nursery() as watchers:
                for rsm in self.rsms.values():
                    if rsm is not None:
                        watchers.start_soon(watch, rsm)
                await enough.wait()
                watchers.cancel_scope.cancel()
        assert not self.errors, self.errors

    def log_size(self) -> int:
        return max(self.storages[i].raft_state_size() for i in self.ids)


async def cluster(nursery: trio.Nursery, seed: int, **kwargs) -> RSMCluster:
    c = RSMCluster(nursery, seed, **kwargs)
    await c.start_all()
    return c


async def test_basic(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await cluster(nursery, seed)
    for i in range(10):
        assert await c.one_inc() == i + 1
        await c.check_counter(i + 1, 3)


async def test_concurrent(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await cluster(nursery, seed)
    async with trio.open_nursery() as incs:
        for _ in range(50):
            incs.start_soon(c.one_inc)
    await c.check_counter(50, 3)


async def test_leader_failure(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await cluster(nursery, seed)
    n = await c.one_inc()
    await c.check_counter(n, 3)
    old = c.leader
    c.network.disconnect(old, c.ids)
    n = await c.one_partition([i for i in c.ids if i != old], "inc")
    await c.check_counter(n, 2)
    c.network.connect(old, c.ids)
    await c.check_counter(n, 3)


async def test_leader_partition(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await cluster(nursery, seed)
    await c.one_inc()
    old = c.leader
    majority = [i for i in c.ids if i != old]
    c.network.partition(majority, [old])
    returned: list[str] = []
    all_returned = trio.Event()

    async def dec(k: int) -> None:
        rsm = c.rsms[old]
        assert rsm is not None
        try:
            await rsm.submit("dec")
            returned.append("OK")
        except (NotLeader, LeadershipLost):
            returned.append("WrongLeader")
        if len(returned) == 100:
            all_returned.set()

    async with trio.open_nursery() as decs:
        for k in range(100):
            decs.start_soon(dec, k)
        await trio.sleep(0.01)
        n = await c.one_partition(majority, "inc")
        assert n is not None
        await trio.sleep(1.0)
        assert returned == [], "Decs in the minority completed"
        c.network.heal()
        with trio.fail_after(1.0):
            await all_returned.wait()
    assert "OK" not in returned, "a Dec in the minority completed"
    await c.check_counter(n, 3)


async def test_op_timeout_answers_a_minority_leader_s_callers(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    c = await cluster(nursery, seed, op_timeout=1.0)
    await c.one_inc()
    old = c.leader
    rsm = c.rsms[old]
    assert rsm is not None
    c.network.partition([i for i in c.ids if i != old], [old])
    started = trio.current_time()
    outcomes: list[type[Exception]] = []

    async def dec() -> None:
        with pytest.raises(RaftError) as raised:
            await rsm.submit("dec")
        outcomes.append(type(raised.value))

    with trio.fail_after(5):
        async with trio.open_nursery() as decs:
            for _ in range(20):
                decs.start_soon(dec)
    # Check-quorum deposes the isolated leader only after an election timeout, and its term
    # stays put: the timeout is what answers its callers, after op_timeout and not before.
    assert set(outcomes) == {ProposalTimedOut}
    assert 1.0 - 1e-9 <= trio.current_time() - started < 1.5  # virtual time: float sums
    assert not rsm._waiters and not rsm._unanswered
    c.network.heal()
    assert await c.one_inc() == 2  # and no dec ever applies (the counter records it if so)
    await c.check_counter(2, 3)


async def incs_then_replay(c: RSMCluster) -> None:
    """100 incs, a restart of every server, and the next inc must find all 100 (replay)."""
    for i in range(100):
        assert await c.one_inc() == i + 1
    c.shutdown_all()
    await trio.sleep(1)
    await c.start_all()
    assert await c.one_inc() == 101
    await trio.sleep(1)


async def test_restart_replay(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await cluster(nursery, seed)
    await incs_then_replay(c)
    await c.check_counter(101, 3)


async def submit_nulls_then_shutdown(c: RSMCluster) -> None:
    """100 concurrent nulls, then every server shuts down while they wait; each must return
    (with an error: none committed) within 11 s.

    The leader is cut off from its followers first, so no null can commit: all 100 are
    still waiting at the leader when it stops. (On virtual time with no delays they would
    otherwise commit within microseconds, long before the scenario's 20 ms, and a submit
    that shutdown leaves hanging would go unseen.)
    """
    await c.one_partition(c.ids, "null")  # a leader, known to the harness
    leader = c.rsms[c.leader]
    assert leader is not None
    c.network.disconnect(c.leader, c.ids)
    outcomes: list[str] = []

    async def null() -> None:
        try:
            await leader.submit("null")
            outcomes.append("OK")
        except RaftError as exc:
            outcomes.append(type(exc).__name__)

    with trio.move_on_after(NSEC + 1):
        async with trio.open_nursery() as nulls:
            for _ in range(100):
                nulls.start_soon(null)
            await trio.sleep(0.02)
            assert outcomes == [], "a null returned before the shutdown"
            c.shutdown_all()
    assert len(outcomes) == 100, f"Submit didn't stop after shutdown: {100 - len(outcomes)} hang"
    assert set(outcomes) == {"LeadershipLost"}, outcomes
    c.network.heal()


async def test_shutdown(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await cluster(nursery, seed)
    await submit_nulls_then_shutdown(c)


async def test_restart_submit(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await cluster(nursery, seed)
    await incs_then_replay(c)
    await submit_nulls_then_shutdown(c)
    await c.start_all()
    n = await c.one_inc()
    await c.check_counter(n, 3)


async def test_snapshot(nursery: trio.Nursery, seed: int, autojump_clock: Clock) -> None:
    c = await cluster(nursery, seed, max_raft_state=1000)
    for i in range(100):
        assert await c.one_inc() == i + 1
    await c.check_counter(100, 3)
    assert c.log_size() <= 2 * 1000, f"logs were not trimmed ({c.log_size()} > 2 * 1000)"
    c.shutdown_all()
    await c.start_all()
    assert await c.one_inc() == 101
    await c.check_counter(101, 3)
