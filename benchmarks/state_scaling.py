"""How costs grow with the data: persist cost by log length, restart time and snapshot size
by state size, memory per key.

    python benchmarks/state_scaling.py [--keys 10000 100000 1000000] [--out FILE]

For each number of keys N (16-byte values, as the suite writes them):
- the replicated KV machine is filled with N puts; its snapshot is taken and restored (the
  restart of a server from a snapshot), and its size reported;
- the memory the machine holds, measured with tracemalloc, divided by N (bytes per key);
- a file log of N entries of those puts is written, then appending and fsyncing one more
  entry is timed (the per-entry persist cost), and reopening it (the restart of a server
  from its log) is timed.
Cost per key or per entry should stay flat; restart time and snapshot size grow linearly.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import trio

from trioraft import FileStorage
from trioraft.kv.machine import KVMachine
from trioraft.raft.log import Entry
from trioraft.raft.storage import HardState


def put(k: int) -> dict:
    return {"op": "put", "key": f"key-{k:09d}", "value": "x" * 16, "version": 0}


async def measure(n: int, directory: Path, samples: int = 200) -> dict:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    machine = KVMachine()
    for k in range(n):
        machine.apply(put(k))
    memory = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    started = time.perf_counter()
    snapshot = machine.snapshot()
    snapshot_s = time.perf_counter() - started
    started = time.perf_counter()
    KVMachine().restore(snapshot)
    restore_s = time.perf_counter() - started

    storage = FileStorage(directory / f"log-{n}")
    storage.load()
    await storage.save_hard_state(HardState(1, None))  # a log needs its hard state beside it
    command = json.dumps({"o": "1", "t": 1, "ops": [put(0)]})
    for first in range(1, n + 1, 10_000):
        storage.append(first, [Entry(1, command)] * min(10_000, n + 1 - first))
    await storage.sync()
    costs = []
    for k in range(samples):
        started = time.perf_counter()
        storage.append(n + 1 + k, [Entry(1, command)])
        await storage.sync()
        costs.append(time.perf_counter() - started)
    storage.close()
    started = time.perf_counter()
    reopened = FileStorage(directory / f"log-{n}")
    loaded = reopened.load()
    reopen_s = time.perf_counter() - started
    reopened.close()
    assert loaded.log.last_index == n + samples
    return {
        "keys": n,
        "bytes_per_key": round(memory / n, 1),
        "snapshot_bytes": len(snapshot),
        "snapshot_bytes_per_key": round(len(snapshot) / n, 1),
        "snapshot_s": round(snapshot_s, 3),
        "restore_from_snapshot_s": round(restore_s, 3),
        "persist_entry_median_us": round(1e6 * statistics.median(costs), 1),
        "reopen_log_s": round(reopen_s, 3),
        "reopen_us_per_entry": round(1e6 * reopen_s / n, 2),
    }


async def main(opts: argparse.Namespace) -> None:
    rows = []
    with tempfile.TemporaryDirectory(dir=opts.tmp) as tmp:
        for n in opts.keys:
            row = await measure(n, Path(tmp))
            print(json.dumps(row), flush=True)
            rows.append(row)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps({"benchmark": "state_scaling", "rows": rows}, indent=2))
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--tmp", default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/state_scaling.json"))
    trio.run(main, parser.parse_args())
