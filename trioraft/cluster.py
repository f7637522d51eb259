"""A server of the replicated KV: a Raft node, a replicated :class:`KVMachine`, one HTTP app.

    node = KVNode("a", {"b": url_b, "c": url_c}, "data/a", max_raft_state=1 << 20)
    url = await nursery.start(node.serve, "127.0.0.1", 9001)

Clients call ``/get``, ``/put`` and ``/append`` on any server; peers call the Raft routes on
the same app. Every operation, reads included, goes through the Raft log. A server that is
not the leader, or cannot tell whether the operation committed within ``op_timeout``,
answers ``WrongLeader`` and the client tries another.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from ._errors import RaftError
from ._kvstate import KVMachine
from ._messages import (
    WRONG_LEADER,
    AppendArgs,
    AppendReply,
    GetArgs,
    GetReply,
    PutArgs,
    PutReply,
)
from ._node import RaftConfig, RaftNode
from ._rpc import Route
from ._rsm import ReplicatedStateMachine
from ._storage import FileStorage, Storage
from ._transport import HttpTransport, Transport
from .raft import serve_node


class KVNode:
    """One server of a replicated KV cluster. ``peers`` maps the other servers' ids to URLs."""

    def __init__(
        self,
        node_id: str,
        peers: Mapping[str, str],
        storage: Storage | str | Path,
        *,
        max_raft_state: int = -1,
        config: RaftConfig | None = None,
        rng: random.Random | None = None,
        op_timeout: float = 2.0,
        transport: Transport | None = None,
    ) -> None:
        self.config = config or RaftConfig()
        if isinstance(storage, str | Path):
            storage = FileStorage(storage)
        self.storage = storage
        self.transport = transport or HttpTransport(node_id, peers, timeout=self.config.rpc_timeout)
        self.raft = RaftNode(
            node_id, [node_id, *peers], storage, self.transport, config=self.config, rng=rng
        )
        self.machine = KVMachine()
        self.rsm = ReplicatedStateMachine(self.raft, self.machine, max_raft_state=max_raft_state)
        self.op_timeout = op_timeout

    @property
    def id(self) -> str:
        return self.raft.id

    async def execute(self, op: dict[str, Any]) -> Any | None:
        """Run ``op`` through the log here; its reply, or ``None`` if this server can't tell."""
        with trio.move_on_after(self.op_timeout):
            try:
                return await self.rsm.submit(op)
            except RaftError:
                return None
        return None

    async def handle_get(self, args: GetArgs) -> GetReply:
        reply = await self.execute({"op": "get", "key": args.key})
        return reply if reply is not None else GetReply("", 0, WRONG_LEADER)

    async def handle_put(self, args: PutArgs) -> PutReply:
        op = {"op": "put", "key": args.key, "value": args.value, "version": args.version}
        reply = await self.execute(op)
        return reply if reply is not None else PutReply(WRONG_LEADER)

    async def handle_append(self, args: AppendArgs) -> AppendReply:
        op = {
            "op": "append",
            "key": args.key,
            "value": args.value,
            "client_id": args.client_id,
            "seq": args.seq,
        }
        reply = await self.execute(op)
        return reply if reply is not None else AppendReply(WRONG_LEADER)

    def routes(self) -> dict[str, Route]:
        return {
            "get": Route(GetArgs, self.handle_get),
            "put": Route(PutArgs, self.handle_put),
            "append": Route(AppendArgs, self.handle_append),
        }

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the node and serve clients and peers until cancelled (a crash)."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.rsm.run)
                url = await nursery.start(
                    lambda task_status: serve_node(
                        self.raft, host, port, extra_routes=self.routes(), task_status=task_status
                    )
                )
                task_status.started(url)
        finally:
            with trio.CancelScope(shield=True):
                if isinstance(self.transport, HttpTransport):
                    await self.transport.aclose()
            if isinstance(self.storage, FileStorage):
                self.storage.close()


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` ports free right now (the OS picks them; another process could take one before
    it is bound again, so use this for local clusters only)."""
    sockets = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind((host, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


async def run_local_cluster(
    n: int,
    data_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    base_port: int = 0,
    max_raft_state: int = -1,
    config: RaftConfig | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``n`` KV servers in this process (ids "1".."n"), each restarting from its folder
    under ``data_dir``, until cancelled. ``task_status`` gets their URLs."""
    ports = list(range(base_port, base_port + n)) if base_port else free_ports(n, host)
    ids = [str(k + 1) for k in range(n)]
    urls = {i: f"http://{host}:{port}" for i, port in zip(ids, ports, strict=True)}
    async with trio.open_nursery() as nursery:
        for i, port in zip(ids, ports, strict=True):
            node = KVNode(
                i,
                {j: url for j, url in urls.items() if j != i},
                Path(data_dir) / f"node-{i}",
                max_raft_state=max_raft_state,
                config=config,
            )
            await nursery.start(node.serve, host, port)
        task_status.started(list(urls.values()))
