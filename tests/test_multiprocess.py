"""Real processes: three ``trioraft node`` servers; the leader is killed with SIGKILL under
load and restarted from its data directory. No acknowledged write may be lost, and what the
clients saw must be linearizable."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from tests.kvtest import ClientResult, one_client_put, run_clients
from tests.processes import ProcessCluster
from trioraft import ClusterClient
from trioraft.testing import History

#: Real clusters over HTTP are timing-sensitive: they share one xdist worker (--dist loadgroup)
#: rather than run against each other on a 2-core machine.
pytestmark = pytest.mark.xdist_group("http-cluster")


async def test_kill_9_the_leader_under_load(tmp_path: Path) -> None:
    cluster = ProcessCluster(3, tmp_path)
    urls = cluster.urls
    nodes = cluster.nodes
    history = History()
    async with trio.open_nursery() as nursery:
        await cluster.start_all(nursery)
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
                leader = await cluster.wait_leader()
            await nodes[leader].kill()
            await trio.sleep(1.5)
            assert await nodes[leader].start(nursery)
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
        await cluster.stop_all()
    print(json.dumps({k: [v.value, v.version] for k, v in final.items()}))
