"""A Raft cluster of real nodes over real HTTP on loopback, each behind a fault proxy.

Same checks as :class:`RaftCluster`; nodes use :class:`FileStorage` in a temporary directory
and :class:`HttpTransport` to reach each other's proxies. A crash cancels the node; a restart
waits until the old node has fully stopped (its disk writes finished) and starts a new one
from the same directory on a new port, which its proxy then forwards to.
"""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path

import trio

from tests.raft_harness import RaftCluster
from trioraft.raft.node import RaftConfig, RaftNode
from trioraft.raft.serve import serve_node
from trioraft.raft.storage import FileStorage
from trioraft.rpc.auth import PeerAuth
from trioraft.rpc.transport import HttpTransport
from trioraft.testing import RELIABLE, HttpProxy, Network, Profile


class HttpRaftCluster(RaftCluster):
    def __init__(
        self,
        nursery: trio.Nursery,
        n: int,
        seed: int,
        directory: Path,
        *,
        profile: Profile = RELIABLE,
        snapshot: bool = False,
        config: RaftConfig | None = None,
    ) -> None:
        super().__init__(nursery, n, seed, snapshot=snapshot, config=config)
        self.network = Network(seed, profile)  # real time: lost calls fail within 0.1 s
        self.directory = directory
        self.proxies = {i: HttpProxy(self.network, i) for i in self.ids}
        self.proxy_urls: dict[str, str] = {}
        self.stopped: dict[str, trio.Event] = {}
        self.peer_auth = PeerAuth(random.Random(seed).randbytes(32))

    async def start_all(self) -> None:
        for i in self.ids:
            self.proxy_urls[i] = await self.nursery.start(self.proxies[i].run)
        for i in self.ids:
            await self.start(i)

    async def start(self, i: str) -> None:
        self.starts += 1
        storage = FileStorage(self.directory / f"node-{i}")
        self.storages[i] = storage  # type: ignore[assignment]
        peers = {j: self.proxy_urls[j] for j in self.ids if j != i}
        transport = HttpTransport(
            i, peers, timeout=self.config.transport_timeout, peer_auth=self.peer_auth
        )
        node = RaftNode(
            i,
            self.ids,
            storage,
            transport,
            config=self.config,
            rng=random.Random(f"{self.seed}-{i}-{self.starts}"),
        )
        self.nodes[i] = node
        self.logs[i] = {}
        scope = trio.CancelScope()
        self.scopes[i] = scope
        stopped = self.stopped[i] = trio.Event()

        async def run(task_status: trio.TaskStatus[None]) -> None:
            try:
                with scope:
                    async with trio.open_nursery() as inner:
                        url = await inner.start(partial(serve_node, node, peer_auth=self.peer_auth))
                        self.proxies[i].set_backend(url)
                        self.network.restart(i)
                        inner.start_soon(self.consume, i, node)
                        task_status.started()
            finally:
                with trio.CancelScope(shield=True):
                    await transport.aclose()
                storage.close()
                stopped.set()

        await self.nursery.start(run)

    def crash(self, i: str) -> None:
        if self.nodes[i] is None:
            return
        self.network.crash(i)
        self.scopes[i].cancel()
        self.nodes[i] = None

    async def stop(self, i: str) -> None:
        self.crash(i)
        await self.stopped[i].wait()

    async def restart(self, i: str) -> None:
        await self.stop(i)
        await self.start(i)
