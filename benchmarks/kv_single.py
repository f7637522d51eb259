"""Throughput and latency of the single-server KV over HTTP.

    python benchmarks/kv_single.py [--seconds 3] [--concurrency 1 4 16] [--out FILE]

The server runs as its own process (``trioraft kvserver``) so that the load generator's CPU
is not charged to it; each concurrent task has its own client (one HTTP connection). For each
concurrency it runs versioned puts (each task on its own key) and then gets, and reports
operations per second with p50/p99 latency. Results are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import trio

from trioraft import KVClient


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(url: str, concurrency: int, seconds: float, op: str) -> dict:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        async with KVClient(url, client_id=f"bench-{i}") as kv:
            version = (await kv.get(f"key-{i}")).version
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                if op == "put":
                    await kv.put(f"key-{i}", "x" * 16, version)
                    version += 1
                else:
                    await kv.get(f"key-{i}")
                latencies.append(time.perf_counter() - start)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(concurrency):
            nursery.start_soon(worker, i)
    elapsed = time.perf_counter() - started
    return {
        "op": op,
        "concurrency": concurrency,
        "ops": len(latencies),
        "ops_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 3),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 3),
    }


async def run(seconds: float, levels: list[int]) -> list[dict]:
    command = [sys.executable, "-m", "trioraft", "kvserver", "--listen", "127.0.0.1:0"]
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(trio.run_process, command, stdout=subprocess.PIPE))
        line = b""
        while not line.endswith(b"\n"):
            line += await server.stdout.receive_some(1)
        url = line.decode().split()[-1]
        results = []
        for concurrency in levels:
            for op in ("put", "get"):
                result = await measure(url, concurrency, seconds, op)
                print(json.dumps(result))
                results.append(result)
        server.terminate()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/kv_single.json"))
    options = parser.parse_args()
    results = trio.run(run, options.seconds, options.concurrency)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps({"benchmark": "kv_single", "results": results}, indent=2))
    print(f"wrote {options.out}")
