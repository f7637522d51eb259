"""A Raft cluster in one Trio nursery, over the in-memory network: the test kit's harness.

:class:`RaftCluster` starts ``n`` :class:`~trioraft.RaftNode`\\ s named ``"0"`` .. ``"n-1"``,
each with a :class:`~trioraft.MemoryStorage` and a transport of one
:class:`~trioraft.testing.MemoryNetwork`, whose calls go through one seeded
:class:`~trioraft.testing.Network` (the fault plan). It crashes, restarts, partitions and
heals them. Run it with :func:`~trioraft.testing.run_simulation` (virtual time, Trio
scheduled from the seed) and a seed replays the same run, in any process.

Invariants:
- A node's randomness is ``random.Random(f"{seed}-{id}-{start number}")``; the network's
  is the seed's: nothing else is drawn.
- :meth:`RaftCluster.crash` takes the node off the network first (its calls in flight
  fail, none is answered), then cancels it, and keeps only what its storage had synced
  (``MemoryStorage.crashed``); :meth:`RaftCluster.start` builds a new node on that.
- Each new node is handed to :meth:`RaftCluster.prepare` before it runs, and has one
  companion task, :meth:`RaftCluster.consume`, in the node's own cancel scope: by default
  it drains ``node.applied``; subclasses read it there (or run a state machine).
- Partitions block node-to-node calls only; ``connected`` lists the nodes not cut off by
  :meth:`RaftCluster.disconnect`.
- A node added with :meth:`RaftCluster.add` starts with empty storage and no configuration
  (``joining``): it takes part once a leader adds it with ``change_membership``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import trio

from ..raft.node import RaftConfig, RaftNode
from ..raft.storage import MemoryStorage
from ..rpc.transport import MemoryNetwork
from ._network import RELIABLE, Network, Profile


class RaftCluster:
    """``n`` Raft nodes in ``nursery`` (see the module docstring). Not started: call
    :meth:`start_all` (or :meth:`start` per node)."""

    def __init__(
        self,
        nursery: trio.Nursery,
        n: int,
        seed: int,
        *,
        profile: Profile = RELIABLE,
        config: RaftConfig | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """``log``, if given, receives the network's decision about every call."""
        self.nursery = nursery
        self.seed = seed
        self.network = Network(seed, profile, log=log)
        self.memory = MemoryNetwork(self.network)
        self.ids = [str(i) for i in range(n)]
        self.config = config or RaftConfig()
        self.storages: dict[str, MemoryStorage] = {i: MemoryStorage() for i in self.ids}
        self.nodes: dict[str, RaftNode | None] = dict.fromkeys(self.ids)
        self.scopes: dict[str, trio.CancelScope] = {}
        self.connected = set(self.ids)
        self.starts = 0
        #: Nodes added after the cluster was built: they start without a configuration.
        self.joining: set[str] = set()

    # -- lifecycle -----------------------------------------------------------------------

    async def start_all(self) -> None:
        for i in self.ids:
            await self.start(i)

    async def start(self, i: str) -> None:
        """Build node ``i`` from its storage, put it on the network and run it; returns once
        it runs."""
        self.starts += 1
        joining = i in self.joining
        node = RaftNode(
            i,
            [] if joining else self.ids,
            self.storages[i],
            self.memory.transport(i),
            config=self.config,
            rng=random.Random(f"{self.seed}-{i}-{self.starts}"),
            joining=joining,
        )
        self.nodes[i] = node
        self.prepare(i, node)
        self.memory.register(i, node.routes())
        self.network.restart(i)
        scope = self.scopes[i] = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[None]) -> None:
            with scope:
                async with trio.open_nursery() as inner:
                    await inner.start(node.run)
                    inner.start_soon(self.consume, i, node)
                    task_status.started()

        await self.nursery.start(run)

    async def add(self, i: str) -> None:
        """Start a new node ``i`` with empty storage that joins the cluster once a leader
        adds it (``change_membership(add_learner=(i, f"mem://{i}"))``)."""
        assert i not in self.ids, f"node {i} exists already"
        self.ids.append(i)
        self.joining.add(i)
        self.storages[i] = MemoryStorage()
        self.nodes[i] = None
        self.connected.add(i)
        await self.start(i)

    def wipe(self, i: str) -> None:
        """Crash ``i`` and lose its data directory: it restarts empty, as a joining node."""
        self.crash(i)
        self.storages[i] = MemoryStorage()
        self.joining.add(i)

    def prepare(self, i: str, node: RaftNode) -> None:
        """Called with each new node before it runs (to attach a state machine with
        ``apply_with``, say); does nothing here."""

    async def consume(self, i: str, node: RaftNode) -> None:
        """Read what node ``i`` applies; this one discards it. Runs while the node runs."""
        async for _ in node.applied:
            pass

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

    # -- the network ---------------------------------------------------------------------

    def disconnect(self, i: str) -> None:
        """Cut ``i`` off from every other node."""
        self.network.disconnect(i, self.ids)
        self.connected.discard(i)

    def connect(self, i: str) -> None:
        """Reconnect ``i`` to every connected node."""
        self.connected.add(i)
        self.network.connect(i, self.connected)

    def connect_all(self) -> None:
        for i in self.ids:
            self.connect(i)

    def partition(self, *groups: Iterable[str]) -> None:
        """Only nodes in the same group reach each other (everything else heals first)."""
        self.network.partition(*groups)

    def heal(self) -> None:
        """Every node reaches every other again (crashed ones stay down)."""
        self.network.heal()
        self.connected = set(self.ids)

    # -- looking -------------------------------------------------------------------------

    def alive(self, i: str) -> bool:
        return self.nodes[i] is not None

    def node(self, i: str) -> RaftNode:
        node = self.nodes[i]
        assert node is not None, f"node {i} is down"
        return node

    def leaders(self) -> list[str]:
        """The running nodes that believe they lead, in id order."""
        return [i for i in self.ids if (node := self.nodes[i]) is not None and node.is_leader]

    async def wait_leader(self, *, among: Iterable[str] | None = None) -> str:
        """Wait (on the nodes' change events) until one of ``among`` (default: the connected
        nodes) leads; its id. Bound it with ``trio.fail_after``."""
        candidates = sorted(self.connected if among is None else set(among))
        found: list[str] = []
        elected = trio.Event()

        async def watch(i: str, node: RaftNode) -> None:
            await node.wait_until(lambda n: n.is_leader)
            found.append(i)
            elected.set()

        async with trio.open_nursery() as watchers:
            for i in candidates:
                if (node := self.nodes[i]) is not None:
                    watchers.start_soon(watch, i, node)
            await elected.wait()
            watchers.cancel_scope.cancel()
        return found[0]
