"""Real ``trioraft node`` processes on loopback, for process-level tests.

A :class:`ProcessCluster` gives each node a client port and a peer port, writes one cluster
secret to a file they all read, and starts, kills (SIGKILL) or stops (SIGTERM) them. A node
is serving once it has printed its "listening" line; one that exits first (refusing to
start) leaves its exit status and stderr in :attr:`NodeProcess.exit` and ``stderr``.

With :meth:`ProcessCluster.route_peers_through`, peers reach each other through one fault
proxy per node (:class:`~trioraft.testing.HttpProxy`, named by the node's id on a
:class:`~trioraft.testing.Network`); :meth:`ProcessCluster.add_node` makes a node that joins
later (``--join``, its flags naming the members of the moment, behind its own proxy).
"""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import trio

from trioraft.kv.node import free_ports
from trioraft.rpc.tls import ClientTls, client_context
from trioraft.testing import HttpProxy, Network

TRIORAFT = [sys.executable, "-m", "trioraft"]


class NodeProcess:
    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.process: trio.Process | None = None
        self.exit: int | None = None  # exit status, once it has exited
        self.stderr = b""

    async def start(self, nursery: trio.Nursery) -> bool:
        """Start it; True once it serves, False if it exited first (see ``exit``)."""
        self.exit, self.stderr = None, b""
        self.process = await nursery.start(
            partial(
                trio.run_process,
                self.command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                check=False,
            )
        )
        nursery.start_soon(self._collect_stderr, self.process)
        line = b""
        while not line.endswith(b"\n"):  # "... listening on URL": it is serving
            chunk = await self.process.stdout.receive_some(1)
            if not chunk:
                self.exit = await self.process.wait()
                return False
            line += chunk
        return True

    async def _collect_stderr(self, process: trio.Process) -> None:
        while chunk := await process.stderr.receive_some(65536):
            self.stderr += chunk

    async def wait(self) -> int:
        assert self.process is not None
        self.exit = await self.process.wait()
        return self.exit

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.wait()

    async def stop(self) -> int:
        """SIGTERM, and its exit status."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await self.wait()


class ProcessCluster:
    """``n`` nodes (ids "1".."n") with data directories under ``directory``."""

    def __init__(
        self,
        n: int,
        directory: Path,
        *,
        extra: list[str] | None = None,
        scheme: str = "http",
        client_tls: ClientTls | None = None,
    ) -> None:
        self.ids = [str(k + 1) for k in range(n)]
        ports = free_ports(2 * n)
        self.scheme = scheme
        self.client_tls = client_tls  # how this harness reaches the nodes' /status
        self.urls = {i: f"{scheme}://127.0.0.1:{p}" for i, p in zip(self.ids, ports, strict=False)}
        self.peer_urls = {
            i: f"{scheme}://127.0.0.1:{p}" for i, p in zip(self.ids, ports[n:], strict=True)
        }
        self.directory = directory
        self.secret_file = directory / "cluster-secret"
        self.secret_file.write_text("process-cluster-secret-0123456789\n")
        #: Where the other nodes reach node i: its peer URL, or its proxy's.
        self.peer_routes = dict(self.peer_urls)
        self.network: Network | None = None
        self.extra = extra or []
        self.data_dirs = {i: directory / f"node-{i}" for i in self.ids}
        self.nodes = {i: NodeProcess(self.command(i, self.extra)) for i in self.ids}

    def command(self, i: str, extra: list[str], others: list[str] | None = None) -> list[str]:
        """Node ``i``'s command line; its flags name ``others`` (by default every other
        node)."""
        others = [j for j in self.ids if j != i] if others is None else others
        return [
            *TRIORAFT, "node", "--id", i,
            "--listen", self.urls[i].split("://")[1],
            "--peer-listen", self.peer_urls[i].split("://")[1],
            "--data-dir", str(self.data_dirs[i]),
            "--cluster-token-file", str(self.secret_file),
            *[arg for j in others for arg in ("--peer", f"{j}={self.peer_routes[j]}")],
            *[arg for j in others for arg in ("--client-url", f"{j}={self.urls[j]}")],
            *extra,
        ]  # fmt: skip

    async def route_peers_through(self, network: Network, nursery: trio.Nursery) -> None:
        """Before the nodes start: each node's peers reach it through a fault proxy of its
        own on ``network`` (which names it by its id), running in ``nursery``."""
        self.network = network
        for i in self.ids:
            await self._start_proxy(i, nursery)
        self.nodes = {i: NodeProcess(self.command(i, self.extra)) for i in self.ids}

    async def _start_proxy(self, i: str, nursery: trio.Nursery) -> None:
        assert self.network is not None
        proxy = HttpProxy(self.network, i, self.peer_urls[i])
        self.peer_routes[i] = await nursery.start(proxy.run)

    async def add_node(self, i: str, nursery: trio.Nursery) -> NodeProcess:
        """A new node ``i`` (fresh ports and data directory; behind its own proxy if peers
        are proxied) run with ``--join``, its flags naming the nodes of the moment; not
        started yet. Add it with its ``peer_routes[i]`` and ``urls[i]``."""
        client_port, peer_port = free_ports(2)
        self.urls[i] = f"{self.scheme}://127.0.0.1:{client_port}"
        self.peer_urls[i] = self.peer_routes[i] = f"{self.scheme}://127.0.0.1:{peer_port}"
        if self.network is not None:
            await self._start_proxy(i, nursery)
        self.data_dirs[i] = self.directory / f"node-{i}"
        others = list(self.ids)
        self.ids.append(i)
        self.nodes[i] = NodeProcess(self.command(i, [*self.extra, "--join"], others))
        return self.nodes[i]

    async def start_all(self, nursery: trio.Nursery) -> None:
        for i in self.ids:
            assert await self.nodes[i].start(nursery), self.nodes[i].stderr.decode()

    async def stop_all(self) -> None:
        for node in self.nodes.values():
            if node.process is not None and node.process.returncode is None:
                await node.stop()

    async def status(self, i: str) -> dict | None:
        verify: ssl.SSLContext | bool = True
        if self.client_tls is not None:
            verify = client_context(self.client_tls)
        async with httpx.AsyncClient(timeout=0.5, verify=verify) as http:
            try:
                return (await http.get(f"{self.urls[i]}/status")).json()
            except httpx.HTTPError:
                return None

    async def leader(self) -> str | None:
        for i in self.ids:
            status = await self.status(i)
            if status is not None and status["role"] == "leader":
                return i
        return None

    async def wait_leader(self) -> str:
        """The leader, once one answers; bound it with ``trio.fail_after``."""
        # Other processes: their /status is the only signal there is to wait on.
        while (leader := await self.leader()) is None:  # noqa: ASYNC110
            await trio.sleep(0.05)
        return leader
