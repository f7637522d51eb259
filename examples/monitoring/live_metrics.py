"""Watch a few live metrics of a local 3-node cluster under load.

    python examples/monitoring/live_metrics.py [--seconds 10] [--tasks 64] [--base-port P]

Starts a 3-node cluster in this process (as ``trioraft cluster`` does; free ports unless
``--base-port``), drives writes into it from ``--tasks`` tasks through one coalescing
client, and once a second scrapes every node's ``GET /metrics``, parses it with
``prometheus_client``'s parser and prints, per node: its role and term, the writes it
answered per second, and over the last second the median (p50) and p99 of its commit
latency, of the AppendEntries round trip to each follower and of its fsyncs, estimated
from the histograms' buckets the way Prometheus' ``histogram_quantile`` does. While it
runs, ``examples/monitoring/prometheus.yml`` scrapes the same endpoints (with
``--base-port 9001``).
"""

from __future__ import annotations

import argparse
import itertools
import math
import tempfile

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from trioraft.kv.coalescing import open_coalescing_client
from trioraft.kv.node import run_local_cluster

Sample = tuple[str, tuple[tuple[str, str], ...]]


async def scrape(http: httpx.AsyncClient, url: str) -> dict[Sample, float]:
    text = (await http.get(f"{url}/metrics")).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def quantile(
    q: float, now: dict[Sample, float], then: dict[Sample, float], name: str, **labels: str
) -> float:
    """The ``q`` quantile of what histogram ``name`` observed between two scrapes."""
    buckets = []
    for (sample, sample_labels), count in now.items():
        found = dict(sample_labels)
        if sample != f"{name}_bucket" or any(found.get(k) != v for k, v in labels.items()):
            continue
        bound = float(found["le"])
        buckets.append((bound, count - then.get((sample, sample_labels), 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return math.nan
    rank, lower, below = q * total, 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(cumulative - below, 1)
        lower, below = bound, cumulative
    return math.nan


def ms(value: float) -> str:
    return "   -   " if math.isnan(value) else f"{value * 1000:6.2f}ms"


def value(samples: dict[Sample, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def load(urls: list[str], tasks: int) -> None:
    counter = itertools.count()
    async with open_coalescing_client(urls) as kv:

        async def writer() -> None:
            while True:
                await kv.put(f"key-{next(counter)}", "x" * 16, 0)

        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(writer)


async def watch(urls: list[str], seconds: int) -> None:
    async with httpx.AsyncClient(timeout=2) as http:
        then = {url: await scrape(http, url) for url in urls}
        for _ in range(seconds):
            await trio.sleep(1)
            print(
                f"{'node':<6}{'role':<10}{'term':>5}{'writes/s':>10}  "
                f"{'commit p50':>10}{'p99':>9}  {'AE round trip p50 per peer':<30}"
                f"{'fsync p50':>10}"
            )
            for url in urls:
                now = await scrape(http, url)
                role = next(
                    (
                        r
                        for r in ("leader", "follower", "candidate")
                        if value(now, "trioraft_raft_role", role=r) == 1
                    ),
                    "?",
                )
                writes = value(now, "trioraft_kv_ops_total", op="put", result="OK") - value(
                    then[url], "trioraft_kv_ops_total", op="put", result="OK"
                )
                peers = sorted(
                    {
                        dict(labels)["peer"]
                        for name, labels in now
                        if name == "trioraft_raft_append_entries_seconds_count"
                    }
                )

                def p(q: float, name: str, now=now, before=then[url], **labels: str) -> str:
                    return ms(quantile(q, now, before, f"trioraft_raft_{name}", **labels))

                trips = "-"
                if role == "leader":
                    trips = " ".join(
                        f"{peer}:{p(0.5, 'append_entries_seconds', peer=peer).strip()}"
                        for peer in peers
                    )
                print(
                    f"{url.rsplit(':', 1)[1]:<6}{role:<10}{value(now, 'trioraft_raft_term'):>5.0f}"
                    f"{writes:>10.0f}  {p(0.5, 'commit_seconds'):>10}{p(0.99, 'commit_seconds'):>9}"
                    f"  {trips:<30}{p(0.5, 'fsync_seconds'):>10}"
                )
                then[url] = now
            print(flush=True)


async def main(seconds: int, tasks: int, base_port: int) -> None:
    with tempfile.TemporaryDirectory(prefix="trioraft-monitoring-") as data_dir:
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(
                lambda task_status: run_local_cluster(
                    3, data_dir, base_port=base_port, task_status=task_status
                )
            )
            print(f"cluster: {', '.join(urls)}  (GET /metrics on each)\n")
            nursery.start_soon(load, urls, tasks)
            await watch(urls, seconds)
            nursery.cancel_scope.cancel()
    print("OK: the metrics moved with the load")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--base-port", type=int, default=0)
    args = parser.parse_args()
    trio.run(main, args.seconds, args.tasks, args.base_port)
