"""A replicated KV cluster of real servers on loopback, each behind a stable address.

Servers are :class:`KVNode`\\ s named "0".."n-1" with file storage in a temporary directory.
Clients reach each through an :class:`HttpProxy` on the cluster's one network plan. Peers talk
framed TCP by default (the recommended transport): each node's :class:`TcpTransport` applies
the same plan to its own calls, and a :class:`TcpForwarder` gives each peer listener an
address that survives restarts; with ``peer_transport="http"`` peers talk HTTP through an
:class:`HttpProxy` each instead. Either way partitions and loss apply to peers and clerks
alike (a partition blocks only server-to-server traffic, as docs/scenarios.md: harness says).
Peers share a cluster secret drawn from the seed.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Literal

import trio

from trioraft import ClusterClient, RaftConfig
from trioraft.kv.node import KVNode
from trioraft.rpc.auth import PeerAuth
from trioraft.rpc.tcp import TcpTransport
from trioraft.testing import RELIABLE, HttpProxy, Network, Profile, TcpForwarder


class KVCluster:
    def __init__(
        self,
        nursery: trio.Nursery,
        n: int,
        seed: int,
        directory: Path,
        *,
        profile: Profile | None = None,
        max_raft_state: int = -1,
        config: RaftConfig | None = None,
        peer_transport: Literal["tcp", "http"] = "tcp",
    ) -> None:
        self.nursery = nursery
        self.peer_transport = peer_transport
        self.seed = seed
        self.rng = random.Random(seed)
        self.network = Network(seed, profile or RELIABLE)
        self.directory = directory
        self.max_raft_state = max_raft_state
        # The nodes share one event loop: a follower's fsync on it (the default, right for
        # a node with a process of its own) would stall the other nodes meanwhile.
        self.config = dataclasses.replace(config or RaftConfig(), sync_inline=False)
        self.ids = [str(i) for i in range(n)]
        #: The founding servers: every server's peer and client URL flags name them (and only
        #: them); a server added later is known to the others by the configuration alone.
        self.founders = list(self.ids)
        self.proxies = {i: HttpProxy(self.network, i) for i in self.ids}  # clients
        self.peer_proxies = {i: self._peer_proxy(i) for i in self.ids}
        self.urls: dict[str, str] = {}  # clients reach server i here
        self.peer_urls: dict[str, str] = {}  # peers reach server i here
        self.secret = random.Random(seed).randbytes(32)
        self.nodes: dict[str, KVNode | None] = dict.fromkeys(self.ids)
        self.scopes: dict[str, trio.CancelScope] = {}
        self.stopped: dict[str, trio.Event] = {}
        self.starts = 0
        self.clerks: list[ClusterClient] = []

    def _peer_proxy(self, i: str) -> HttpProxy | TcpForwarder:
        return HttpProxy(self.network, i) if self.peer_transport == "http" else TcpForwarder()

    async def start_all(self) -> None:
        for i in self.ids:
            self.urls[i] = await self.nursery.start(self.proxies[i].run)
            self.peer_urls[i] = await self.nursery.start(self.peer_proxies[i].run)
        for i in self.ids:
            await self.start(i)

    async def add_server(self, i: str) -> None:
        """Start a new server ``i`` with an empty data directory and ``joining=True``: it
        knows the founding servers (to reach them) but not the configuration, and waits to be
        added (its peer URL for that is ``peer_urls[i]``); the others' flags never name it."""
        self.proxies[i] = HttpProxy(self.network, i)
        self.peer_proxies[i] = self._peer_proxy(i)
        self.urls[i] = await self.nursery.start(self.proxies[i].run)
        self.peer_urls[i] = await self.nursery.start(self.peer_proxies[i].run)
        self.ids.append(i)
        await self.start(i, joining=True)

    async def start(self, i: str, *, joining: bool = False) -> None:
        self.starts += 1
        peers = {j: self.peer_urls[j] for j in self.founders if j != i}
        transport = None
        if self.peer_transport == "tcp":
            auth = PeerAuth(self.secret)
            transport = TcpTransport(i, peers, network=self.network, peer_auth=auth)
        node = KVNode(
            i,
            peers,
            self.directory / f"server-{i}",
            client_urls={j: self.urls[j] for j in self.founders if j != i},
            cluster_secret=self.secret,
            max_raft_state=self.max_raft_state,
            config=self.config,
            rng=random.Random(f"{self.seed}-{i}-{self.starts}"),
            joining=joining,
            transport=transport,
        )
        self.nodes[i] = node
        scope = self.scopes[i] = trio.CancelScope()
        stopped = self.stopped[i] = trio.Event()

        async def run(task_status: trio.TaskStatus[None]) -> None:
            try:
                with scope:
                    async with trio.open_nursery() as inner:
                        url = await inner.start(node.serve)
                        self.proxies[i].set_backend(url)
                        assert node.peer_url is not None
                        self.peer_proxies[i].set_backend(node.peer_url)
                        self.network.restart(i)
                        task_status.started()
            finally:
                stopped.set()

        await self.nursery.start(run)

    async def stop(self, i: str) -> None:
        """Crash ``i``: off the network at once, cancelled, and wait until its disk is quiet."""
        if self.nodes[i] is None:
            return
        self.network.crash(i)
        self.scopes[i].cancel()
        self.nodes[i] = None
        await self.stopped[i].wait()

    async def restart(self, i: str) -> None:
        await self.stop(i)
        await self.start(i)

    async def stop_all(self) -> None:
        for i in self.ids:
            await self.stop(i)

    async def start_all_again(self) -> None:
        for i in self.ids:
            await self.start(i)

    def alive(self, i: str) -> bool:
        return self.nodes[i] is not None

    def partition(self, *groups: list[str]) -> None:
        self.network.partition(*groups)

    def heal(self) -> None:
        self.network.heal()

    def make_partition(self, leader: str) -> tuple[list[str], list[str]]:
        """A majority without ``leader`` and a minority ending with it
        (docs/scenarios.md: harness)."""
        others = [i for i in self.ids if i != leader]
        majority = others[: len(self.ids) // 2 + 1]
        minority = [i for i in others if i not in majority] + [leader]
        return majority, minority

    def clerk(self, servers: list[str] | None = None, name: str | None = None) -> ClusterClient:
        """A clerk that knows every server but reaches only ``servers`` (all by default),
        until :meth:`heal` connects it to all, as docs/scenarios.md: harness says."""
        name = name or f"clerk-{len(self.clerks)}"
        for i in self.ids:
            if servers is not None and i not in servers:
                self.network.block(name, i)
        clerk = ClusterClient([self.urls[i] for i in self.ids], client_id=name)
        self.clerks.append(clerk)
        return clerk

    async def close(self) -> None:
        for clerk in self.clerks:
            await clerk.aclose()

    def leader(self) -> str | None:
        for i in self.ids:
            node = self.nodes[i]
            if node is not None and node.raft.is_leader:
                return i
        return None

    def highest_term(self) -> int:
        """The highest term among the running servers (it grows with every election)."""
        return max((node.raft.term for node in self.nodes.values() if node), default=0)

    def log_size(self) -> int:
        return max(node.raft.raft_state_size() for node in self.nodes.values() if node)

    def snapshot_size(self) -> int:
        return max(node.raft.snapshot_size() for node in self.nodes.values() if node)


def isolate(c: KVCluster, servers: list[str]) -> None:
    """Cut each of ``servers`` from every other server (clients still reach them)."""
    for i in servers:
        c.network.disconnect(i, c.ids)


def rejoin(c: KVCluster, servers: list[str]) -> None:
    for i in servers:
        c.network.connect(i, c.ids)


async def check_get(kv, key: str, value: str, version: int) -> None:
    got = await kv.get(key)
    assert (got.value, got.version) == (value, version), f"get({key!r}) = {got}"


async def wait_leader(c: KVCluster, *, exclude: tuple[str, ...] = ()) -> str:
    """Wait (on the nodes' own change events) until a server not in ``exclude`` leads."""
    found: list[str] = []
    elected = trio.Event()

    async def watch(i: str, node: KVNode) -> None:
        await node.raft.wait_until(lambda n: n.is_leader)
        found.append(i)
        elected.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as watchers:
            for i in c.ids:
                node = c.nodes[i]
                if node is not None and i not in exclude:
                    watchers.start_soon(watch, i, node)
            await elected.wait()
            watchers.cancel_scope.cancel()
    return found[0]


async def partitioner(c: KVCluster, stop: trio.Event) -> None:
    """Until stopped: put every server on a random side; hold it 1.0-1.2 s."""
    while not stop.is_set():
        sides: tuple[list[str], list[str]] = ([], [])
        for i in c.ids:
            sides[c.rng.randrange(2)].append(i)
        c.partition(*sides)
        with trio.move_on_after(1.0 + c.rng.randrange(200) / 1000):
            await stop.wait()
