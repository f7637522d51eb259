"""One seeded virtual-time run, printed as a digest of its full trace (not a test module).

    python -m tests.replay_run SEED

The run: 5 Raft nodes on the MIT-unreliable network, one command committed, then 200
rounds of the Figure 8 churn (docs/scenarios.md: raft-figure8). The trace: the network's
decision about every call (its number, caller, callee and fate) at the virtual time it
was made, then each node's term, commit index and applied log, and the final time. Run in
two fresh processes, the same seed must print the same digest (tests/test_replay.py).
"""

from __future__ import annotations

import hashlib
import sys

import trio

from tests.raft_harness import RaftCluster, figure8
from trioraft.testing import MIT_UNRELIABLE, run_simulation


async def traced_run(seed: int, rounds: int) -> list[str]:
    trace: list[str] = []

    def record(line: str) -> None:
        trace.append(f"{trio.current_time():.9f} {line}")

    async with trio.open_nursery() as nursery:
        c = RaftCluster(nursery, 5, seed, profile=MIT_UNRELIABLE, log=record)
        await c.start_all()
        await c.one("first", 1, retry=True)
        await figure8(c, rounds, unreliable=True)
        for i in c.ids:
            node = c.node(i)
            trace.append(f"node {i}: term {node.term} commit {node.commit_index}")
            trace.append(f"node {i}: applied {sorted(c.logs[i].items())}")
        trace.append(f"end at {trio.current_time():.9f}, {c.network.rpc_total} calls")
        nursery.cancel_scope.cancel()
    return trace


def digest(seed: int, rounds: int = 200) -> tuple[str, int]:
    """The trace's SHA-256 and its length in lines."""
    trace = run_simulation(traced_run, seed, rounds, seed=seed)
    return hashlib.sha256("\n".join(trace).encode()).hexdigest(), len(trace)


if __name__ == "__main__":
    sha, lines = digest(int(sys.argv[1]))
    print(sha, lines)
