"""Every example runs as its docstring says (smoke tests, on small workloads)."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

EXAMPLES = Path(__file__).parent.parent / "examples"


async def run_example(name: str, *args: str) -> str:
    result = await trio.run_process(
        [sys.executable, str(EXAMPLES / name), *args], capture_stdout=True, check=True
    )
    return result.stdout.decode()


async def test_single_server_example() -> None:
    out = await run_example("single_server.py", "--workers", "4", "--rounds", "10")
    assert "OK: every increment applied exactly once" in out


async def test_cluster_failover_example() -> None:
    out = await run_example("cluster_failover.py", "--writes", "40")
    assert "crashed the leader" in out and "served by the new leader" in out
    assert "OK: every write survived, once, in order" in out


async def test_embedded_example() -> None:
    out = await run_example("embedded.py", "--events", "5")
    assert "OK: 15 page views recorded exactly once" in out


async def test_lock_demo_example() -> None:
    out = await run_example("lock_demo.py", "--workers", "3", "--rounds", "3")
    assert "counter = 9" in out and "OK: mutual exclusion held" in out


async def test_monitoring_example() -> None:
    out = await run_example("monitoring/live_metrics.py", "--seconds", "2", "--tasks", "8")
    assert "OK: the metrics moved with the load" in out
