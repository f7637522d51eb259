"""Load generation and statistics shared by the benchmark scripts (no trioraft imports).

A load calls ``op(k)`` with a fresh sequence number ``k`` for every operation, either in a
closed loop (``concurrency`` tasks, each waiting for its op before sending the next) or in an
open loop (ops started at a fixed ``rate``, whatever is still outstanding). The summary holds
throughput, latency percentiles and the CPU this process used meanwhile.
"""

from __future__ import annotations

import itertools
import math
import os
import resource
import time
from collections.abc import Awaitable, Callable

import trio

Op = Callable[[int], Awaitable[object]]


def kv_op(kv: object, kind: str, prefix: str, value_bytes: int) -> Op:
    """The benchmark op on any KV client: ``put`` writes the fresh key ``PREFIX-K`` at
    version 0; ``get`` reads ``PREFIX-(K mod 1000)``."""
    value = "x" * value_bytes

    async def put(k: int) -> None:
        await kv.put(f"{prefix}-{k}", value, 0)  # type: ignore[attr-defined]

    async def get(k: int) -> None:
        await kv.get(f"{prefix}-{k % 1000}")  # type: ignore[attr-defined]

    return put if kind == "put" else get


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(latencies: list[float], elapsed: float, cpu: float, errors: int = 0) -> dict:
    ordered = sorted(latencies)
    return {
        "ops": len(ordered),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "ops_per_s": round(len(ordered) / elapsed, 1),
        "p50_ms": round(1000 * percentile(ordered, 0.50), 3),
        "p90_ms": round(1000 * percentile(ordered, 0.90), 3),
        "p99_ms": round(1000 * percentile(ordered, 0.99), 3),
        "cpu_s": round(cpu, 3),
    }


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pid_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def closed_loop(op: Op, concurrency: int, seconds: float, warmup: float = 0.5) -> dict:
    """``concurrency`` tasks calling ``op`` back to back; ops started in the first ``warmup``
    seconds are not counted."""
    counter = itertools.count()
    latencies: list[float] = []
    start = time.perf_counter()
    measure_from = start + warmup
    end = measure_from + seconds
    cpu_at_measure: list[float] = []

    async def worker() -> None:
        while (now := time.perf_counter()) < end:
            if now >= measure_from and not cpu_at_measure:
                cpu_at_measure.append(process_cpu())
            await op(next(counter))
            if now >= measure_from:
                latencies.append(time.perf_counter() - now)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    elapsed = time.perf_counter() - measure_from
    cpu = process_cpu() - (cpu_at_measure[0] if cpu_at_measure else process_cpu())
    return summarize(latencies, elapsed, cpu)


async def open_loop(op: Op, rate: float, seconds: float, max_outstanding: int = 20_000) -> dict:
    """Start ops at ``rate`` per second for ``seconds``; each one's latency counts from its
    scheduled start, so a falling-behind server shows up as latency, not as a lower rate."""
    counter = itertools.count()
    latencies: list[float] = []
    outstanding = 0
    dropped = 0
    cpu_before = process_cpu()

    async def one(scheduled: float) -> None:
        nonlocal outstanding
        try:
            await op(next(counter))
            latencies.append(time.perf_counter() - scheduled)
        finally:
            outstanding -= 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        sent = 0
        while (now := time.perf_counter()) < start + seconds:
            due = int((now - start) * rate) + 1
            while sent < due:
                scheduled = start + sent / rate
                sent += 1
                if outstanding >= max_outstanding:
                    dropped += 1
                    continue
                outstanding += 1
                nursery.start_soon(one, scheduled)
            # Wake at most once a millisecond and start every op that fell due meanwhile:
            # a timer per op would make the generator cost more than the ops.
            await trio.sleep(max(0.0002, start + sent / rate - time.perf_counter()))
    elapsed = time.perf_counter() - start
    result = summarize(latencies, elapsed, process_cpu() - cpu_before, errors=dropped)
    result["offered_per_s"] = rate
    return result
