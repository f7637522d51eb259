"""A server of the replicated KV: a Raft node, a replicated :class:`KVMachine`, one HTTP app.

    node = KVNode("a", {"b": url_b, "c": url_c}, "data/a", max_raft_state=1 << 20)
    url = await nursery.start(node.serve, "127.0.0.1", 9001)

Clients call ``/get``, ``/put``, ``/append`` and ``/batch`` on any server; peers call the Raft
routes on the same app, or over framed TCP when the peers' addresses are ``tcp://HOST:PORT``
(then give ``client_urls`` for the embedded client, and serve with ``peer_port``). An
application in the same process uses :meth:`KVNode.open_client`, which skips HTTP entirely
while this node leads. Every operation, reads included, goes through the Raft log. A server that is
not the leader, or cannot tell whether the operation committed within ``op_timeout``,
answers ``WrongLeader`` and the client tries another.
"""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from .._errors import RaftError
from ..raft.node import RaftConfig, RaftNode
from ..raft.serve import serve_node
from ..raft.storage import FileStorage, Storage
from ..rpc.http import Route
from ..rpc.tcp import TcpTransport
from ..rpc.transport import HttpTransport, Transport
from .clients import Backoff
from .coalescing import OpsClient, open_coalescing_client
from .machine import KVMachine
from .messages import (
    WRONG_LEADER,
    AppendArgs,
    AppendReply,
    BatchArgs,
    BatchOp,
    BatchReply,
    GetArgs,
    GetReply,
    OpResult,
    PutArgs,
    PutReply,
    as_result,
    log_op,
)
from .rsm import ReplicatedStateMachine


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
        client_urls: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config or RaftConfig()
        if isinstance(storage, str | Path):
            storage = FileStorage(storage)
        self.storage = storage
        if transport is None:
            tcp = any(url.startswith("tcp://") for url in peers.values())
            transport = (
                TcpTransport(node_id, peers)
                if tcp
                else HttpTransport(node_id, peers, timeout=self.config.rpc_timeout)
            )
        self.transport = transport
        self.raft = RaftNode(
            node_id, [node_id, *peers], storage, self.transport, config=self.config, rng=rng
        )
        self.machine = KVMachine()
        self.op_timeout = op_timeout
        self.rsm = ReplicatedStateMachine(
            self.raft, self.machine, max_raft_state=max_raft_state, op_timeout=op_timeout
        )
        self.client_urls = dict(client_urls if client_urls is not None else peers)
        self.url: str | None = None  # known once serving

    @property
    def id(self) -> str:
        return self.raft.id

    async def execute(self, op: dict[str, Any]) -> Any | None:
        """Run ``op`` through the log here; its reply, or ``None`` if this server can't tell."""
        results = await self.execute_many([op])
        return None if results is None else results[0]

    async def execute_many(self, ops: list[dict[str, Any]]) -> list[Any] | None:
        """Run ``ops`` through the log here, in one entry; their replies, or ``None`` if this
        server is not the leader or can't tell within ``op_timeout`` whether they applied."""
        try:
            return await self.rsm.submit_many(ops)
        except RaftError:
            return None

    async def handle_get(self, args: GetArgs) -> GetReply:
        reply = await self.execute(log_op(BatchOp("get", args.key)))
        return reply if reply is not None else GetReply("", 0, WRONG_LEADER)

    async def handle_put(self, args: PutArgs) -> PutReply:
        reply = await self.execute(log_op(BatchOp("put", args.key, args.value, args.version)))
        return reply if reply is not None else PutReply(WRONG_LEADER)

    async def handle_append(self, args: AppendArgs) -> AppendReply:
        op = BatchOp("append", args.key, args.value, client_id=args.client_id, seq=args.seq)
        reply = await self.execute(log_op(op))
        return reply if reply is not None else AppendReply(WRONG_LEADER)

    async def handle_batch(self, args: BatchArgs) -> BatchReply:
        args.validate()
        replies = await self.execute_many([log_op(op) for op in args.ops])
        if replies is None:
            return BatchReply([OpResult(WRONG_LEADER)] * len(args.ops))
        return BatchReply([as_result(reply) for reply in replies])

    def routes(self) -> dict[str, Route]:
        return {
            "get": Route(GetArgs, self.handle_get),
            "put": Route(PutArgs, self.handle_put),
            "append": Route(AppendArgs, self.handle_append),
            "batch": Route(BatchArgs, self.handle_batch),
        }

    @asynccontextmanager
    async def open_client(self, *, client_id: str | None = None) -> AsyncIterator[EmbeddedClient]:
        """A KV client for this process's own application (see :class:`EmbeddedClient`)."""
        urls = [*self.client_urls.values(), *([self.url] if self.url else [])]
        if any(not url.startswith(("http://", "https://")) for url in urls):
            raise ValueError("the embedded client needs the other servers' HTTP client_urls")
        async with open_coalescing_client(urls, client_id=client_id) as remote:
            yield EmbeddedClient(self, remote)

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        peer_port: int | None = None,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the node and serve clients and peers until cancelled (a crash); with
        ``peer_port``, peers are also served over framed TCP on that port."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.rsm.run)
                url = await nursery.start(
                    lambda task_status: serve_node(
                        self.raft,
                        host,
                        port,
                        extra_routes=self.routes(),
                        peer_port=peer_port,
                        task_status=task_status,
                    )
                )
                self.url = url
                task_status.started(url)
        finally:
            with trio.CancelScope(shield=True):
                if isinstance(self.transport, HttpTransport | TcpTransport):
                    await self.transport.aclose()
            if isinstance(self.storage, FileStorage):
                self.storage.close()


class EmbeddedClient(OpsClient):
    """The KV client of an application that embeds ``node``: while the node leads, ops go
    straight into its log, in-process (concurrent callers share entries); otherwise they go
    to the leader through ``remote``. The contract is :class:`~trioraft.KVClient`'s, plus
    ``append``, which is exactly-once for the appends of one task at a time per client.
    """

    def __init__(self, node: KVNode, remote: OpsClient) -> None:
        super().__init__(remote.client_id)
        self.node = node
        self.remote = remote

    async def run(self, op: BatchOp) -> tuple[OpResult, bool]:
        retried = False
        backoff = Backoff()
        while self.node.raft.is_leader:
            results = await self.node.execute_many([log_op(op)])
            if results is not None:
                return as_result(results[0]), retried
            retried = True
            await backoff.wait()
        result, remote_retried = await self.remote.run(op)
        return result, retried or remote_retried


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
