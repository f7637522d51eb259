"""The raft tester on virtual time, on the test kit's cluster (``trioraft.testing.RaftCluster``:
in-memory transport, seeded faults, crash and restart).

The harness follows the raft tester (docs/scenarios.md: raft): ``check_one_leader``,
``n_committed``, ``one``, ``wait``; each node's applied entries are checked in order and
against every other node's, and in snapshot mode every node snapshots each 10 entries.
A crash cancels the node and keeps only what its storage had synced; a restart builds a new
node from that.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable

import trio

from trioraft import testing
from trioraft.raft.node import Applied, RaftConfig, RaftNode, SnapshotApplied
from trioraft.raft.storage import MemoryStorage
from trioraft.testing import MIT_UNRELIABLE, RELIABLE, Profile

#: The scenarios' election allowance and snapshot interval.
ELECTION_TIMEOUT = 1.0
SNAPSHOT_INTERVAL = 10
#: Long delays: a call to an unreachable node fails after 0-7 s (the raft suites' setting).
LONG_DELAYS = (0.0, 7.0)


def with_long_delays(profile: Profile) -> Profile:
    return Profile(
        profile.request_drop,
        profile.reply_drop,
        profile.delay,
        profile.long_reorder,
        profile.long_delay,
        LONG_DELAYS,
    )


class RaftCluster(testing.RaftCluster):
    """``n`` Raft nodes named "0".."n-1" in ``nursery``: the test kit's cluster with long
    delays for calls to unreachable nodes, plus the raft tester's applier and checks (see
    the module docstring)."""

    def __init__(
        self,
        nursery: trio.Nursery,
        n: int,
        seed: int,
        *,
        profile: Profile = RELIABLE,
        snapshot: bool = False,
        config: RaftConfig | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        profile = with_long_delays(profile)
        super().__init__(nursery, n, seed, profile=profile, config=config, log=log)
        self.rng = random.Random(seed)
        self.snapshot_mode = snapshot
        self.logs: dict[str, dict[int, str]] = {i: {} for i in self.ids}
        self.errors: list[str] = []
        self.applied_event = trio.Event()

    # -- applying ------------------------------------------------------------------------

    async def start(self, i: str) -> None:
        self.logs[i] = {}  # a restarted node applies its log again, from its snapshot
        await super().start(i)

    async def consume(self, i: str, node: RaftNode) -> None:
        """Check and keep what ``i`` applies."""
        last = 0
        async for message in node.applied:
            if isinstance(message, SnapshotApplied):
                state = json.loads(message.data)
                if state["index"] != message.index:
                    self.errors.append(f"{i}: snapshot index {state['index']} != {message.index}")
                self.logs[i] = {k + 1: v for k, v in enumerate(state["log"])}
                last = message.index
            else:
                assert isinstance(message, Applied)
                # A leader's no-op (RaftConfig.leader_noop) takes an index but is never applied.
                in_order = last < message.index if self.config.leader_noop else False
                if message.index != last + 1 and not in_order:
                    self.errors.append(f"{i}: applied {message.index} out of order after {last}")
                for other in self.ids:
                    theirs = self.logs[other].get(message.index)
                    if theirs is not None and theirs != message.command:
                        self.errors.append(
                            f"commit index={message.index} server={i} {message.command!r} != "
                            f"server={other} {theirs!r}"
                        )
                self.logs[i][message.index] = message.command
                last = message.index
                if self.snapshot_mode and (message.index + 1) % SNAPSHOT_INTERVAL == 0:
                    log = [self.logs[i][k] for k in range(1, message.index + 1)]
                    data = json.dumps({"index": message.index, "log": log}).encode()
                    await node.snapshot(message.index, data)
            self.applied_event.set()
            self.applied_event = trio.Event()

    def check_errors(self) -> None:
        assert not self.errors, "\n".join(self.errors[:10])

    # -- the tester's checks -------------------------------------------------------------

    async def check_one_leader(self) -> str:
        for _ in range(10):
            await trio.sleep(0.45 + self.rng.random() * 0.1)
            leaders: dict[int, list[str]] = defaultdict(list)
            for i in self.connected:
                node = self.nodes[i]
                if node is not None and node.is_leader:
                    leaders[node.term].append(i)
            for term, who in leaders.items():
                assert len(who) <= 1, f"term {term} has {len(who)} (>1) leaders: {who}"
            if leaders:
                return leaders[max(leaders)][0]
        raise AssertionError("expected one leader, got none")

    def check_terms(self) -> int:
        terms = {self.node(i).term for i in self.connected if self.alive(i)}
        assert len(terms) == 1, f"servers disagree on term: {terms}"
        return terms.pop()

    def check_no_leader(self) -> None:
        for i in self.connected:
            node = self.nodes[i]
            assert node is None or not node.is_leader, f"server {i} is leader, expected none"

    def n_committed(self, index: int) -> tuple[int, str | None]:
        self.check_errors()
        count, command = 0, None
        for i in self.ids:
            value = self.logs[i].get(index)
            if value is not None:
                assert command is None or command == value, f"values differ at {index}"
                count, command = count + 1, value
        return count, command

    async def wait_committed(self, index: int, n: int) -> None:
        """Wait (on the appliers' events) until ``n`` servers applied ``index``."""
        while self.n_committed(index)[0] < n:
            await self.applied_event.wait()

    async def one(self, command: str, expected: int, retry: bool) -> int:
        """Get ``command`` committed by ``expected`` servers within 10 s; returns its index."""
        with trio.move_on_after(10):
            start = 0
            while True:
                index = -1
                for k in range(len(self.ids)):
                    i = self.ids[(start + k) % len(self.ids)]
                    node = self.nodes[i]
                    if i in self.connected and node is not None:
                        index, _, ok = node.submit(command)
                        if ok:
                            break
                        index = -1
                start = (start + 1) % len(self.ids)
                if index != -1:
                    with trio.move_on_after(2.0):
                        await self.wait_committed(index, expected)
                    count, value = self.n_committed(index)
                    if count >= expected and value == command:
                        return index
                    if not retry:
                        raise AssertionError(f"one({command}) failed to reach agreement")
                else:
                    await trio.sleep(0.05)
        raise AssertionError(f"one({command}) failed to reach agreement")

    async def wait(self, index: int, n: int, start_term: int) -> str | None:
        """The scenarios' wait(): -1-like ``None`` if a term moved past ``start_term``."""
        pause = 0.01
        for _ in range(30):
            count, _ = self.n_committed(index)
            if count >= n:
                break
            await trio.sleep(pause)
            pause = min(pause * 2, 1.0)
            if start_term > -1:
                for i in self.ids:
                    node = self.nodes[i]
                    if node is not None and node.term > start_term:
                        return None
        count, value = self.n_committed(index)
        assert count >= n, f"only {count} decided for index {index}; wanted {n}"
        return value

    def raft_state_size(self) -> int:
        return max(self.storages[i].raft_state_size() for i in self.ids)


async def start_cluster(nursery: trio.Nursery, n: int, seed: int, **kwargs) -> RaftCluster:
    """A started :class:`RaftCluster`."""
    cluster = RaftCluster(nursery, n, seed, **kwargs)
    await cluster.start_all()
    return cluster


class SlowSnapshotDisk(MemoryStorage):
    """Like the file storage's worker threads, slowly: the snapshot's bytes take a second to
    write (the node goes on meanwhile), and a log rewrite reads the log when it starts and
    finishes half a second later, while the leader goes on appending."""

    async def save_snapshot_file(self, snapshot) -> bool:
        await trio.sleep(1)
        return await super().save_snapshot_file(snapshot)

    async def compact_log(self, log) -> None:
        seen = log.copy()
        await trio.sleep(0.5)
        await super().compact_log(seen)


def rand_cmd(c: RaftCluster) -> str:
    return str(c.rng.randrange(1 << 30))


async def figure8(c: RaftCluster, iterations: int, *, unreliable: bool) -> None:
    """The Figure 8 churn (docs/scenarios.md: raft-figure8): each round every live node is
    offered a command, then the leader is crashed (or, unreliable, cut off), and nodes come
    back so that at least 3 of 5 run; at the end all return and must agree."""
    n = len(c.ids)
    up = n
    for it in range(iterations):
        if unreliable and it == 200:
            c.network.set_profile(with_long_delays(MIT_UNRELIABLE).with_long_reordering())
        leader = None
        for i in c.ids:
            node = c.nodes[i]
            if node is not None and node.submit(rand_cmd(c))[2] and i in c.connected:
                leader = i
        if c.rng.randrange(1000) < 100:
            await trio.sleep(c.rng.randrange(500) / 1000)
        else:
            await trio.sleep(c.rng.randrange(13) / 1000)
        if unreliable:
            if leader is not None and c.rng.randrange(1000) < 500:
                c.disconnect(leader)
                up -= 1
            if up < 3:
                down = [i for i in c.ids if i not in c.connected]
                c.connect(c.rng.choice(down))
                up += 1
        else:
            if leader is not None:
                c.crash(leader)
                up -= 1
            if up < 3:
                dead = [i for i in c.ids if not c.alive(i)]
                await c.start(c.rng.choice(dead))
                up += 1
    for i in c.ids:
        if not c.alive(i):
            await c.start(i)
    c.network.set_profile(with_long_delays(RELIABLE))
    c.connect_all()
    await c.one(rand_cmd(c), n, retry=True)
