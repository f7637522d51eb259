"""Real processes: three ``trioraft node`` servers; the leader is killed with SIGKILL under
load and restarted from its data directory. No acknowledged write may be lost, and what the
clients saw must be linearizable."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from tests.kvtest import ClientResult, one_client_put, run_clients
from trioraft import ClusterClient
from trioraft.kv.node import free_ports
from trioraft.testing import History

#: Real clusters over HTTP are timing-sensitive: they share one xdist worker (--dist loadgroup)
#: rather than run against each other on a 2-core machine.
pytestmark = pytest.mark.xdist_group("http-cluster")


class NodeProcess:
    def __init__(self, node_id: str, port: int, peers: dict[str, str], data_dir: Path) -> None:
        self.command = [
            sys.executable, "-m", "trioraft", "node", "--id", node_id,
            "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
            *[arg for peer, url in peers.items() for arg in ("--peer", f"{peer}={url}")],
        ]  # fmt: skip
        self.process: trio.Process | None = None

    async def start(self, nursery: trio.Nursery) -> None:
        self.process = await nursery.start(
            partial(trio.run_process, self.command, stdout=subprocess.PIPE, check=False)
        )
        line = b""
        while not line.endswith(b"\n"):  # "... listening on URL": it is serving
            line += await self.process.stdout.receive_some(1)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()


async def leader_of(urls: dict[str, str]) -> str | None:
    async with httpx.AsyncClient(timeout=0.5) as http:
        for node_id, url in urls.items():
            try:
                if (await http.get(f"{url}/status")).json()["role"] == "leader":
                    return node_id
            except httpx.HTTPError:
                continue
    return None


async def test_kill_9_the_leader_under_load(tmp_path: Path) -> None:
    ids = ["1", "2", "3"]
    urls = {i: f"http://127.0.0.1:{port}" for i, port in zip(ids, free_ports(3), strict=True)}
    nodes = {
        i: NodeProcess(i, int(urls[i].rsplit(":", 1)[1]), {j: urls[j] for j in ids if j != i},
                       tmp_path / f"node-{i}")
        for i in ids
    }  # fmt: skip
    history = History()
    async with trio.open_nursery() as nursery:
        for node in nodes.values():
            await node.start(nursery)
        clerks = [
            history.recording(ClusterClient(list(urls.values()), client_id=f"c{k}"), f"c{k}")
            for k in range(4)
        ]
        keys = [f"key-{k}" for k in range(4)]
        results: list[ClientResult] = []

        async def load() -> None:
            results.extend(await run_clients(4, 6.0, one_client_put(clerks, keys)))

        async with trio.open_nursery() as work:
            work.start_soon(load)
            await trio.sleep(2.0)
            with trio.fail_after(10):
                # Other processes: their /status is the only signal there is to wait on.
                while (leader := await leader_of(urls)) is None:  # noqa: ASYNC110
                    await trio.sleep(0.1)
            await nodes[leader].kill()
            await trio.sleep(1.5)
            await nodes[leader].start(nursery)
        assert sum(r.ok for r in results) > 0
        # Every acknowledged write is still there, on the restarted leader too.
        final = {key: await clerks[0].get(key) for key in keys}
        assert all(v.version > 0 for v in final.values())
        result = history.check(timeout=120)
        assert result.ok is True, result.account
        with trio.fail_after(10):
            while True:
                async with httpx.AsyncClient() as http:
                    status = (await http.get(f"{urls[leader]}/status")).json()
                if status["last_applied"] >= status["commit_index"] > 0:
                    break
                await trio.sleep(0.1)
        for clerk in clerks:
            await clerk.kv.aclose()  # type: ignore[attr-defined]
        for node in nodes.values():
            assert node.process is not None
            node.process.terminate()
    print(json.dumps({k: [v.value, v.version] for k, v in final.items()}))
