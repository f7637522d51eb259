"""Reads without the log, measured: ReadIndex, lease and stale reads against reads through
the log and against writes, on 3-node ``trioraft node`` clusters (TCP peers, fsync on).

    python benchmarks/reads.py [--rounds 3] [--seconds 2] [--concurrency 1 256] [--out DIR]

Two clusters run side by side: one as the README starts it (reads by ReadIndex) and one
with ``--lease-reads 0.25``. After 1,000 keys are written, one load-client process per
(mode, concurrency) drives the leader through the coalescing client (``load_client.py``),
the modes alternating round after round so that drift of the machine's speed falls on every
mode alike; the table gives each one's medians: throughput, p50, p99, and the cluster's CPU
per op (every node's, not the client's). The modes:

- ``put``: a write (one log entry, an fsync on a majority).
- ``log-get``: a get inside a txn, which goes through the log as every read did before
  ReadIndex: what a read would cost without it.
- ``get``: ReadIndex (the leader confirms it leads with one heartbeat round shared by
  every read queued meanwhile).
- ``lease-get``: a get on the lease-reads cluster (no round while the lease holds).
- ``stale-get``: answered by the first server tried from what it has applied.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from contextlib import ExitStack
from pathlib import Path

from sidebyside import HERE, PYTHON, System, start_together, trioraft_cluster

LEASE_READS = ("--lease-reads", "0.25")
#: mode: (cluster, load_client.py --op)
MODES = {
    "put": ("read-index", "put"),
    "log-get": ("read-index", "log-get"),
    "get": ("read-index", "get"),
    "lease-get": ("lease", "get"),
    "stale-get": ("read-index", "stale-get"),
}


def load(system: System, op: str, concurrency: int, seconds: float, prefix: str) -> dict:
    """One closed-loop load from a process of its own; its summary with the cluster's CPU."""
    cpu_before = system.cpu()
    command = [PYTHON, str(HERE / "load_client.py"), "--urls", system.target(),
               "--concurrency", str(concurrency), "--seconds", str(seconds),
               "--prefix", prefix, "--op", op]  # fmt: skip
    out = subprocess.run(command, capture_output=True, check=True, text=True, cwd=HERE).stdout
    summary = json.loads(out)
    summary["cluster_cpu_ms_per_op"] = round(
        1000 * (system.cpu() - cpu_before) / max(1, summary["ops"]), 3
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--out", type=Path, default=None)
    opts = parser.parse_args()
    samples: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        clusters = dict(
            zip(
                ["read-index", "lease"],
                start_together(
                    stack,
                    [
                        trioraft_cluster(Path(tmp) / "read-index", "read-index", "tcp", None),
                        trioraft_cluster(
                            Path(tmp) / "lease", "lease", "tcp", None, extra=LEASE_READS
                        ),
                    ],
                ),
                strict=True,
            )
        )
        for system in clusters.values():  # the keys the gets read
            load(system, "put", 64, 1.0, "keys")
        for r in range(opts.rounds):
            for concurrency in opts.concurrency:
                for mode, (cluster, op) in MODES.items():
                    prefix = f"r{r}-c{concurrency}" if op == "put" else "keys"
                    summary = load(clusters[cluster], op, concurrency, opts.seconds, prefix)
                    samples.setdefault((mode, concurrency), []).append(summary)
                    print(mode, concurrency, summary, flush=True)
    rows = [
        {
            "mode": mode,
            "concurrency": concurrency,
            **{
                field: statistics.median(s[field] for s in runs)
                for field in ("ops_per_s", "p50_ms", "p99_ms", "cluster_cpu_ms_per_op")
            },
            "errors": sum(sum(s["errors"].values()) for s in runs),
        }
        for (mode, concurrency), runs in samples.items()
    ]
    print(table(rows))
    if opts.out is not None:
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / "reads.json").write_text(json.dumps(rows, indent=1))


def table(rows: list[dict]) -> str:
    lines = [
        "| mode | tasks | ops/s | p50 ms | p99 ms | cluster CPU ms/op | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in sorted(rows, key=lambda r: (r["concurrency"], list(MODES).index(r["mode"]))):
        lines.append(
            f"| {row['mode']} | {row['concurrency']} | {row['ops_per_s']:,.0f} | "
            f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['cluster_cpu_ms_per_op']:.3f} | "
            f"{row['errors']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
