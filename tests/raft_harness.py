"""A Raft cluster on virtual time: in-memory transport, seeded faults, crash and restart.

The harness follows the scenario catalogue's raft tester (§6.2): ``check_one_leader``,
``n_committed``, ``one``, ``wait``; each node's applied entries are checked in order and
against every other node's, and in snapshot mode every node snapshots each 10 entries.
A crash cancels the node and keeps only what its storage had synced; a restart builds a new
node from that.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict

import trio

from trioraft.raft.node import Applied, RaftConfig, RaftNode, SnapshotApplied
from trioraft.raft.storage import MemoryStorage
from trioraft.rpc.transport import MemoryNetwork
from trioraft.testing import RELIABLE, Network, Profile

#: The catalogue's election allowance and snapshot interval.
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


class RaftCluster:
    """``n`` Raft nodes named "0".."n-1" in ``nursery`` (see the module docstring)."""

    def __init__(
        self,
        nursery: trio.Nursery,
        n: int,
        seed: int,
        *,
        profile: Profile = RELIABLE,
        snapshot: bool = False,
        config: RaftConfig | None = None,
    ) -> None:
        self.nursery = nursery
        self.seed = seed
        self.rng = random.Random(seed)
        self.network = Network(seed, with_long_delays(profile))
        self.memory = MemoryNetwork(self.network)
        self.ids = [str(i) for i in range(n)]
        self.snapshot_mode = snapshot
        self.config = config or RaftConfig()
        self.storages = {i: MemoryStorage() for i in self.ids}
        self.nodes: dict[str, RaftNode | None] = dict.fromkeys(self.ids)
        self.scopes: dict[str, trio.CancelScope] = {}
        self.logs: dict[str, dict[int, str]] = {i: {} for i in self.ids}
        self.connected = set(self.ids)
        self.errors: list[str] = []
        self.applied_event = trio.Event()
        self.starts = 0

    # -- membership ----------------------------------------------------------------------

    async def start_all(self) -> None:
        for i in self.ids:
            await self.start(i)

    async def start(self, i: str) -> None:
        self.starts += 1
        storage = self.storages[i]
        node = RaftNode(
            i,
            self.ids,
            storage,
            self.memory.transport(i),
            config=self.config,
            rng=random.Random(f"{self.seed}-{i}-{self.starts}"),
        )
        self.nodes[i] = node
        self.logs[i] = {}
        self.memory.register(i, node.routes())
        self.network.restart(i)
        scope = trio.CancelScope()
        self.scopes[i] = scope

        async def run() -> None:
            with scope:
                async with trio.open_nursery() as inner:
                    await inner.start(node.run)
                    inner.start_soon(self._consume, i, node)

        self.nursery.start_soon(run)

    def crash(self, i: str) -> None:
        """Take ``i`` off the network and stop it; only its synced storage survives."""
        if self.nodes[i] is None:
            return
        self.network.crash(i)
        self.scopes[i].cancel()
        self.memory.unregister(i)
        self.storages[i] = self.storages[i].crashed()
        self.nodes[i] = None

    async def restart(self, i: str) -> None:
        self.crash(i)
        await self.start(i)

    def disconnect(self, i: str) -> None:
        self.network.disconnect(i, self.ids)
        self.connected.discard(i)

    def connect(self, i: str) -> None:
        """Reconnect ``i`` to every connected node."""
        self.connected.add(i)
        self.network.connect(i, self.connected)

    def connect_all(self) -> None:
        for i in self.ids:
            self.connect(i)

    def alive(self, i: str) -> bool:
        return self.nodes[i] is not None

    def node(self, i: str) -> RaftNode:
        node = self.nodes[i]
        assert node is not None, f"node {i} is down"
        return node

    # -- applying ------------------------------------------------------------------------

    async def _consume(self, i: str, node: RaftNode) -> None:
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
        """The catalogue's wait(): -1-like ``None`` if a term moved past ``start_term``."""
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


def rand_cmd(c: RaftCluster) -> str:
    return str(c.rng.randrange(1 << 30))
