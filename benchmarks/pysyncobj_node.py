"""The reference: one member of a 3-node PySyncObj ``ReplDict`` (no fsync: its default).

    python benchmarks/pysyncobj_node.py --self 127.0.0.1:9201 --partner 127.0.0.1:9202 ...

Reads load commands from stdin, one JSON object a line (``{"concurrency", "seconds",
"value_bytes", "prefix", "rate"}``). The member that leads runs the load in its own process,
as trioraft's embedded load does (``set`` with a callback, ``concurrency`` ops outstanding,
or ``rate`` ops per second when it is positive) and prints a JSON summary; the others print
``{"leader": false}``. For a like-for-like comparison its process gets the garbage-collector
settings that trioraft's benchmark nodes get (``trioraft.tune_gc``).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from _load import percentile
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.batteries import ReplDict

from trioraft import tune_gc


def run_load(store: ReplDict, command: dict) -> dict:
    value = "x" * command["value_bytes"]
    prefix = command["prefix"]
    seconds = command["seconds"]
    rate = command.get("rate", 0.0)
    latencies: list[float] = []
    lock = threading.Lock()
    counter = [0]
    errors = [0]
    all_done = threading.Event()
    outstanding = [0]
    warmup_end = time.perf_counter() + (0.0 if rate > 0 else 0.5)
    end = warmup_end + seconds

    def start_one(scheduled: float) -> None:
        with lock:
            counter[0] += 1
            k = counter[0]
            outstanding[0] += 1

        def done(result: object, error: int) -> None:
            finished = time.perf_counter()
            with lock:
                outstanding[0] -= 1
                if error != 0:
                    errors[0] += 1
                elif scheduled >= warmup_end:
                    latencies.append(finished - scheduled)
                left = outstanding[0]
            if rate <= 0 and finished < end:
                start_one(time.perf_counter())
            elif left == 0 and finished >= end:
                all_done.set()

        store.set(f"{prefix}-{k}", value, callback=done)

    started = time.perf_counter()
    if rate > 0:
        sent = 0
        while (now := time.perf_counter()) < started + seconds:
            due = int((now - started) * rate) + 1
            while sent < due:
                start_one(started + sent / rate)
                sent += 1
            time.sleep(max(0.0, started + sent / rate - time.perf_counter()))
        measured_from = started
    else:
        for _ in range(command["concurrency"]):
            start_one(time.perf_counter())
        measured_from = warmup_end
    all_done.wait(timeout=seconds + 30)
    elapsed = max(end, time.perf_counter()) - measured_from if rate <= 0 else seconds
    ordered = sorted(latencies)
    return {
        "ops": len(ordered),
        "errors": errors[0],
        "seconds": round(elapsed, 3),
        "ops_per_s": round(len(ordered) / elapsed, 1),
        "p50_ms": round(1000 * percentile(ordered, 0.5), 3),
        "p90_ms": round(1000 * percentile(ordered, 0.9), 3),
        "p99_ms": round(1000 * percentile(ordered, 0.99), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--self", dest="me", required=True)
    parser.add_argument("--partner", action="append", default=[])
    args = parser.parse_args()
    store = ReplDict()
    conf = SyncObjConf(dynamicMembershipChange=False)
    node = SyncObj(args.me, args.partner, consumers=[store], conf=conf)
    tune_gc()
    print(json.dumps({"ready": args.me}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        while node._getLeader() is None:
            time.sleep(0.05)
        if node._isLeader():
            summary = run_load(store, command)
            summary["leader"] = True
            print(json.dumps(summary), flush=True)
        else:
            print(json.dumps({"leader": False}), flush=True)


if __name__ == "__main__":
    main()
