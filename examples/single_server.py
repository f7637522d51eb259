"""A single-server trioraft KV doing real work: versioned counters and a lock.

Run it with ``python examples/single_server.py`` (``--workers``/``--rounds`` to scale it).

It starts the KV service in this Trio program on a free port, then runs worker tasks, each
with its own client: half increment shared counters with compare-and-set loops (read the
version, put at that version, retry on conflict), half increment one counter under a
distributed lock. At the end it checks that no increment was lost or applied twice and
prints what it measured.
"""

from __future__ import annotations

import argparse
import time

import trio

from trioraft import KVClient, KVServer, Lock, VersionConflict, serve


async def cas_increment(kv: KVClient, key: str) -> int:
    """Add one to the integer at ``key``; returns how many conflicts it retried."""
    conflicts = 0
    while True:
        value, version = await kv.get(key)
        try:
            await kv.put(key, str(int(value or "0") + 1), version)
            return conflicts
        except VersionConflict:
            conflicts += 1


async def main(workers: int, rounds: int) -> None:
    server = KVServer()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve, server.app())
        print(f"KV server on {url}; {workers} workers x {rounds} rounds")
        conflicts = 0
        started = time.perf_counter()

        async def cas_worker(i: int) -> None:
            nonlocal conflicts
            async with KVClient(url, client_id=f"cas-{i}") as kv:
                for r in range(rounds):
                    conflicts += await cas_increment(kv, f"counter-{r % 4}")

        async def lock_worker(i: int) -> None:
            async with KVClient(url, client_id=f"lock-{i}") as kv:
                lock = Lock(kv, "counter-lock")
                for _ in range(rounds):
                    async with lock:
                        value, version = await kv.get("locked-counter")
                        await kv.put("locked-counter", str(int(value or "0") + 1), version)

        async with trio.open_nursery() as work:
            for i in range(workers):
                work.start_soon(cas_worker if i % 2 == 0 else lock_worker, i)
        elapsed = time.perf_counter() - started

        async with KVClient(url) as kv:
            cas_total = sum([int((await kv.get(f"counter-{k}")).value or 0) for k in range(4)])
            locked = int((await kv.get("locked-counter")).value)
        cas_expected = ((workers + 1) // 2) * rounds
        locked_expected = (workers // 2) * rounds
        print(
            f"CAS counters: {cas_total} increments (expected {cas_expected}), "
            f"{conflicts} conflicts retried"
        )
        print(f"lock counter: {locked} increments (expected {locked_expected})")
        print(f"{cas_total + locked} increments in {elapsed:.2f} s")
        if (cas_total, locked) != (cas_expected, locked_expected):
            raise SystemExit("an increment was lost or applied twice")
        print("OK: every increment applied exactly once")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=50)
    options = parser.parse_args()
    trio.run(main, options.workers, options.rounds)
