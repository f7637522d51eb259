"""Raft commit throughput and latency, with the whole cluster in one process.

    python benchmarks/raft_commit.py [--seconds 3] [--concurrency 1 16 64 256] [--out FILE]

A 3-node cluster in this process, over real HTTP on loopback, with file storage (fsync
   on). For each concurrency, that many tasks submit 16-byte commands to the leader and wait
   for each to commit; it reports commits per second, p50/p99 commit latency, and the
   AppendEntries round trips the leader made (how well entries were batched). The three
   nodes and the submitters share one Python process, so this is the cost of the whole
   cluster on one core.

(The cost of persisting an entry as the log grows is in ``state_scaling.py``; separate
processes and the references are in ``suite.py``.)
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import trio

from trioraft import FileStorage, HttpTransport, RaftNode, serve_node
from trioraft.rpc.auth import PeerAuth

AUTH = PeerAuth(b"benchmark cluster secret, 32 B.")  # the peers prove they know it


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def commit_benchmark(levels: list[int], seconds: float, directory: Path) -> list[dict]:
    ids = ["a", "b", "c"]
    nodes: dict[str, RaftNode] = {}
    urls: dict[str, str] = {}
    results = []
    async with trio.open_nursery() as nursery:
        # Bind every node's app first, so each transport can be given its peers' URLs.
        transports = {i: _LateTransport() for i in ids}
        for i in ids:
            storage = FileStorage(directory / i)
            nodes[i] = RaftNode(i, ids, storage, transports[i], rng=random.Random(i))
            urls[i] = await nursery.start(partial(serve_node, nodes[i], peer_auth=AUTH))
            nursery.start_soon(_drain, nodes[i])
        for i in ids:
            peers = {j: urls[j] for j in ids if j != i}
            transports[i].inner = HttpTransport(i, peers, peer_auth=AUTH)
        leader_found = trio.Event()

        async def watch(node: RaftNode) -> None:
            await node.wait_until(lambda n: n.is_leader)
            leader_found.set()

        async with trio.open_nursery() as watchers:
            for node in nodes.values():
                watchers.start_soon(watch, node)
            await leader_found.wait()
            watchers.cancel_scope.cancel()
        leader = next(n for n in nodes.values() if n.is_leader)
        for concurrency in levels:
            latencies: list[float] = []
            calls_before = sum(t.calls for t in transports.values())
            deadline = trio.current_time() + seconds

            async def submitter(k: int, deadline: float = deadline, out: list = latencies):
                n = 0
                while trio.current_time() < deadline:
                    start = time.perf_counter()
                    index, term, ok = leader.submit(f"{k:08d}{n:08d}")
                    assert ok, "leadership changed during the benchmark"
                    await leader.wait_committed(index, term)
                    out.append(time.perf_counter() - start)
                    n += 1

            started = time.perf_counter()
            async with trio.open_nursery() as submitters:
                for k in range(concurrency):
                    submitters.start_soon(submitter, k)
            elapsed = time.perf_counter() - started
            calls = sum(t.calls for t in transports.values()) - calls_before
            result = {
                "concurrency": concurrency,
                "commits": len(latencies),
                "commits_per_s": round(len(latencies) / elapsed, 1),
                "p50_ms": round(1000 * statistics.median(latencies), 2),
                "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
                "entries_per_rpc": round(2 * len(latencies) / max(1, calls), 1),
            }
            print(json.dumps(result), flush=True)
            results.append(result)
        nursery.cancel_scope.cancel()
    return results


class _LateTransport:
    """A transport whose HTTP clients are created once every peer's URL is known."""

    def __init__(self) -> None:
        self.inner: HttpTransport | None = None
        self.calls = 0

    async def call(self, peer, method, args, reply_type):
        if self.inner is None:
            return None
        self.calls += 1
        return await self.inner.call(peer, method, args, reply_type)


async def _drain(node: RaftNode) -> None:
    async for _ in node.applied:
        pass


async def run(options: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(dir=options.tmp) as tmp:
        commits = await commit_benchmark(options.concurrency, options.seconds, Path(tmp))
    return {"benchmark": "raft_commit", "commit": commits}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--tmp", default=None, help="where to put the data (a real disk)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/raft_commit.json"))
    opts = parser.parse_args()
    report = trio.run(run, opts)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {opts.out}")
