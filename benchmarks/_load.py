"""Load generation and statistics shared by the benchmark scripts (no trioraft imports).

A load calls ``op(k)`` with a fresh sequence number ``k`` for every operation, either in a
closed loop (``concurrency`` tasks, each waiting for its op before sending the next) or in an
open loop (ops started at a fixed ``rate``, whatever is still outstanding). The summary holds
throughput, latency percentiles, failed ops by exception type and the CPU this process used
meanwhile.
"""

from __future__ import annotations

import collections
import itertools
import math
import os
import resource
import time
from collections import Counter
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


class Outcomes:
    """What a load's ops came to: the latency of each one that succeeded, the failures by
    exception type (a failed op is counted, not timed), and the sequence numbers acknowledged
    (one of them is reported, for a durability check)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.acked: list[int] = []

    async def run(self, op: Op, k: int, started: float, *, timed: bool = True) -> None:
        try:
            await op(k)
        except Exception as exc:
            self.errors[type(exc).__name__] += 1
            return
        if timed:
            self.latencies.append(time.perf_counter() - started)
            self.acked.append(k)

    def summary(self, elapsed: float, cpu: float) -> dict:
        ordered = sorted(self.latencies)
        return {
            "ops": len(ordered),
            "errors": dict(self.errors),
            "acknowledged_op": self.acked[len(self.acked) // 2] if self.acked else None,
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
    start = time.perf_counter()
    measure_from = start + warmup
    end = measure_from + seconds
    cpu_at_measure: list[float] = []

    outcomes = Outcomes()

    async def worker() -> None:
        while (now := time.perf_counter()) < end:
            if now >= measure_from and not cpu_at_measure:
                cpu_at_measure.append(process_cpu())
            await outcomes.run(op, next(counter), now, timed=now >= measure_from)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    elapsed = time.perf_counter() - measure_from
    cpu = process_cpu() - (cpu_at_measure[0] if cpu_at_measure else process_cpu())
    return outcomes.summary(elapsed, cpu)


async def open_loop(
    op: Op, rate: float, seconds: float, workers: int = 2_000, tick: float = 0.0005
) -> dict:
    """Start ops at ``rate`` per second for ``seconds``; each one's latency counts from its
    scheduled start, so a falling-behind server shows up as latency, not as a lower rate.

    ``workers`` tasks take the ops as they fall due (a task per op would cost the process
    more than the ops): an idle one is woken per due op, and one that finishes an op takes
    the next due op without sleeping. An op due while all of them are busy waits, and that
    wait counts in its latency. Due ops are released once a ``tick``, so an op starts up to
    a tick late, and that counts too.
    """
    counter = itertools.count()
    outcomes = Outcomes()
    due: collections.deque[float] = collections.deque()
    idle = trio.lowlevel.ParkingLot()
    finished = False
    cpu_before = process_cpu()

    async def worker() -> None:
        while True:
            while not due:  # a worker that finished an op takes the next due one at once
                if finished:
                    return
                await idle.park()
            await outcomes.run(op, next(counter), due.popleft())

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(worker)
        sent = 0
        while (now := time.perf_counter()) < start + seconds:
            fell_due = int((now - start) * rate) + 1 - sent
            due.extend(start + (sent + i) / rate for i in range(fell_due))
            sent += fell_due
            idle.unpark(count=fell_due)
            await trio.sleep(max(tick, start + sent / rate - time.perf_counter()))
        finished = True
        idle.unpark_all()
    elapsed = time.perf_counter() - start
    result = outcomes.summary(elapsed, process_cpu() - cpu_before)
    result["offered_per_s"] = rate
    return result
