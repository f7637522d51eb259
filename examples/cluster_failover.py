"""A 3-node replicated KV in one Trio program: writes, reads, a leader crash, fail-over.

Run it with ``python examples/cluster_failover.py`` (``--writes N`` to scale it).

Three KV servers run here, over HTTP on loopback, each with its own data directory. A client
writes versioned counters and appends to a journal; halfway through, the leader is crashed
(its tasks cancelled, as a killed process would stop). The client carries on against the
others while they elect a new leader, then the old leader restarts from its directory and
catches up. At the end every server's state is checked against what the client did.
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from functools import partial
from pathlib import Path

import httpx
import trio

from trioraft import ClusterClient
from trioraft.kv.node import KVNode, free_ports


class LocalCluster:
    def __init__(self, nursery: trio.Nursery, directory: Path, n: int = 3) -> None:
        self.nursery = nursery
        self.directory = directory
        self.ids = [str(k + 1) for k in range(n)]
        ports = free_ports(2 * n)
        self.urls = {  # for clients
            i: f"http://127.0.0.1:{p}" for i, p in zip(self.ids, ports[:n], strict=True)
        }
        self.peer_ports = dict(zip(self.ids, ports[n:], strict=True))
        self.secret = secrets.token_bytes(32)  # peers prove they know it
        self.scopes: dict[str, trio.CancelScope] = {}
        self.stopped: dict[str, trio.Event] = {}

    async def start(self, i: str) -> None:
        node = KVNode(
            i,
            {j: f"http://127.0.0.1:{p}" for j, p in self.peer_ports.items() if j != i},
            self.directory / f"node-{i}",
            client_urls={j: url for j, url in self.urls.items() if j != i},
            cluster_secret=self.secret,
        )
        scope, stopped = trio.CancelScope(), trio.Event()
        self.scopes[i], self.stopped[i] = scope, stopped

        async def run(task_status: trio.TaskStatus[None]) -> None:
            try:
                with scope:
                    async with trio.open_nursery() as inner:
                        port = int(self.urls[i].rsplit(":", 1)[1])
                        await inner.start(
                            partial(node.serve, "127.0.0.1", port, peer_port=self.peer_ports[i])
                        )
                        task_status.started()
            finally:
                stopped.set()

        await self.nursery.start(run)

    async def crash(self, i: str) -> None:
        self.scopes[i].cancel()
        await self.stopped[i].wait()

    async def status(self) -> dict[str, dict]:
        out = {}
        async with httpx.AsyncClient(timeout=1) as http:
            for i, url in self.urls.items():
                try:
                    out[i] = (await http.get(f"{url}/status")).json()
                except httpx.HTTPError:
                    out[i] = {"role": "down"}
        return out

    async def leader(self) -> str | None:
        for i, status in (await self.status()).items():
            if status["role"] == "leader":
                return i
        return None


async def main(writes: int) -> None:
    with tempfile.TemporaryDirectory(prefix="trioraft-example-") as tmp:
        async with trio.open_nursery() as nursery:
            cluster = LocalCluster(nursery, Path(tmp))
            for i in cluster.ids:
                await cluster.start(i)
            print(f"3 servers: {', '.join(cluster.urls.values())}")
            async with ClusterClient(list(cluster.urls.values()), client_id="example") as kv:
                versions = {f"counter-{k}": 0 for k in range(5)}
                started = time.perf_counter()
                crashed = None
                for n in range(writes):
                    key = f"counter-{n % 5}"
                    await kv.put(key, str(versions[key] + 1), versions[key])
                    versions[key] += 1
                    await kv.append("journal", f"{n},")
                    if n == writes // 2:
                        crashed = await cluster.leader()
                        assert crashed is not None
                        await cluster.crash(crashed)
                        t0 = time.perf_counter()
                        print(f"write {n}: crashed the leader, server {crashed}")
                    if crashed and n == writes // 2 + 1:
                        print(
                            f"write {n}: served by the new leader, server "
                            f"{await cluster.leader()}, {time.perf_counter() - t0:.2f} s later"
                        )
                elapsed = time.perf_counter() - started
                assert crashed is not None
                await cluster.start(crashed)
                print(f"server {crashed} restarted from its data directory")
                journal = await kv.get("journal")
                expected = "".join(f"{n}," for n in range(writes))
                assert journal.value == expected, "the journal lost or doubled an append"
                for key, version in versions.items():
                    assert await kv.get(key) == (str(version), version), key
                await kv.put("done", "yes", 0)  # one more write: everyone, restarted one too
                with trio.fail_after(10):
                    while True:
                        statuses = await cluster.status()
                        if len({s.get("last_applied") for s in statuses.values()}) == 1:
                            break
                        await trio.sleep(0.05)
                for i, s in statuses.items():
                    print(f"server {i}: {s['role']:8} term {s['term']} applied {s['last_applied']}")
            print(f"{2 * writes} writes in {elapsed:.2f} s through a leader crash")
            print("OK: every write survived, once, in order")
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=200)
    trio.run(main, parser.parse_args().writes)
