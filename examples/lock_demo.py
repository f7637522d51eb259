"""A distributed lock over a replicated KV: workers on a 3-node cluster share a counter.

Run it with ``python examples/lock_demo.py`` (``--workers``/``--rounds`` to scale it).

Each worker has its own cluster client and repeatedly, under ``Lock(kv, "counter-lock")``,
reads the counter and writes it back plus one, with no version check on purpose: only the
lock keeps the increments from overwriting each other. At the end the counter must equal
workers x rounds.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import trio

from trioraft import ClusterClient, Lock
from trioraft.kv.node import run_local_cluster


async def main(workers: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="trioraft-lock-") as tmp:
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(
                lambda task_status: run_local_cluster(3, tmp, task_status=task_status)
            )
            print(f"3 servers: {', '.join(urls)}; {workers} workers x {rounds} rounds")
            started = time.perf_counter()

            async def worker(w: int) -> None:
                async with ClusterClient(urls, client_id=f"worker-{w}") as kv:
                    lock = Lock(kv, "counter-lock", holder=f"worker-{w}")
                    for _ in range(rounds):
                        async with lock:
                            value, version = await kv.get("counter")
                            await kv.put("counter", str(int(value or 0) + 1), version)

            async with trio.open_nursery() as crew:
                for w in range(workers):
                    crew.start_soon(worker, w)
            async with ClusterClient(urls) as kv:
                total = int((await kv.get("counter")).value)
            print(f"counter = {total} after {time.perf_counter() - started:.2f} s")
            if total != workers * rounds:
                raise SystemExit(f"expected {workers * rounds}: the lock let two workers in")
            print("OK: mutual exclusion held")
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    options = parser.parse_args()
    trio.run(main, options.workers, options.rounds)
