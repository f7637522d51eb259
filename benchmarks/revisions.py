"""trioraft at several git revisions side by side: what a range of commits cost per op.

    python benchmarks/revisions.py REV [REV ...] [--rounds 5] [--seconds 2] [--loads 1 16]

Each revision's ``trioraft`` package is extracted (``git archive``) into a temporary
directory and run as a 3-node cluster of ``trioraft node`` processes over TCP peers (its
own command line: since the hardening, ``--peer-listen`` and a cluster token; before it,
``--peer-port``); ``main``'s working tree is named ``.`` (``python benchmarks/revisions.py
8675611 .``); a revision named more than once runs as that many clusters (an A/A). wrk
sends one put per request to each leader with each number of connections, the clusters
taking turns in an order rotated from round to round, as ``sidebyside.py`` does; the table
gives each one's medians over rounds: puts/s, p50 and the cluster's CPU per put, and each
one's CPU per put over the first one's. Single samples here swing by ±10 %, and at 16
connections today's clusters differ by up to 30 % from one instance to the next: name a
revision two or three times before reading a difference.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from contextlib import ExitStack
from pathlib import Path

from sidebyside import run_wrk, trioraft_cluster

REPO = Path(__file__).resolve().parent.parent


def checkout(rev: str, into: Path) -> Path | None:
    """The directory holding ``rev``'s ``trioraft`` package (``None``: this working tree)."""
    if rev == ".":
        return None
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "trioraft"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revisions", nargs="+", help="git revisions; '.' is this tree")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--loads", type=int, nargs="+", default=[1, 16], help="connections")
    opts = parser.parse_args()
    samples: dict[tuple[str, int], list[dict]] = {}
    names = [  # a revision named twice runs as clusters of its own: an A/A across instances
        rev if opts.revisions.count(rev) == 1 else f"{rev}#{opts.revisions[:k].count(rev) + 1}"
        for k, rev in enumerate(opts.revisions)
    ]
    with tempfile.TemporaryDirectory(prefix="trioraft-revs-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        systems = [
            stack.enter_context(
                trioraft_cluster(
                    root / f"cluster-{k}", name, "tcp", checkout(rev, root / f"tree-{k}")
                )
            )
            for k, (name, rev) in enumerate(zip(names, opts.revisions, strict=True))
        ]
        for system in systems:
            run_wrk(system, 4, 1, "warm", 16)
        for r in range(opts.rounds):
            turn = r % len(systems)
            for connections in opts.loads:
                for system in systems[turn:] + systems[:turn]:
                    summary = run_wrk(system, connections, opts.seconds, f"r{r}c{connections}", 16)
                    samples.setdefault((system.name, connections), []).append(summary)
    print(f"{opts.rounds} rounds of {opts.seconds} s, medians; TCP peers, 16 B puts, fsync on")
    print("| revision | connections | puts/s | p50 ms | cluster CPU ms/put | CPU / first's |")
    print("|---|---:|---:|---:|---:|---:|")
    for connections in opts.loads:
        first = None
        for rev in names:
            found = samples[(rev, connections)]
            cpu = statistics.median(s["cpu_ms_per_op"] for s in found)
            first = first or cpu
            rate = statistics.median(s["ops_per_s"] for s in found)
            p50 = statistics.median(s["p50_ms"] for s in found)
            cells = [rev, str(connections), f"{rate:,.0f}", f"{p50:.2f}", f"{cpu:.3f}"]
            print("| " + " | ".join(cells) + f" | {cpu / first:.2f} |")


if __name__ == "__main__":
    main()
