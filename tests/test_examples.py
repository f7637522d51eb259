"""Every example runs as its docstring says (smoke tests, on small workloads)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import trio

EXAMPLES = Path(__file__).parent.parent / "examples"


async def run_example(name: str, *args: str, limit: float = 180) -> str:
    with trio.fail_after(limit):  # cancelling run_process kills the example
        result = await trio.run_process(
            [sys.executable, str(EXAMPLES / name), *args], capture_stdout=True, check=False
        )
    out = result.stdout.decode()
    assert result.returncode == 0, f"{name} failed (exit {result.returncode}); it printed:\n{out}"
    return out


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


async def test_leader_election_example() -> None:
    out = await run_example("leader_election.py", "--workers", "2", "--rounds", "3", "--ttl", "3")
    assert "child: killed with SIGKILL" in out and "worker-2: elected" in out
    assert "OK: one leader at a time" in out and "the stale write refused" in out


async def test_job_queue_example() -> None:
    out = await run_example("job_queue.py", "--jobs", "8", "--workers", "2", "--ttl", "2")
    assert "crasher: crashes holding claims" in out
    assert "OK: 8 jobs done, each recorded once; 3 redone after a crash" in out


async def test_config_reload_example() -> None:
    out = await run_example("config_reload.py", "--changes", "4")
    assert "watch dropped after index" in out
    assert "OK: 8 changes followed in order, none missed; views agree" in out


BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
#: Scripts that import the benchmark extra's tools (``pip install -e '.[benchmark]'``).
NEEDS_EXTRA = {"suite.py": "tqdm", "pysyncobj_node.py": "pysyncobj"}


async def test_every_benchmark_script_starts() -> None:
    """Each benchmark script imports what it uses of trioraft and parses its flags (``--help``):
    a renamed helper once broke the suite's node without any test noticing."""
    scripts = sorted(p for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))
    scripts = [
        p
        for p in scripts
        if p.name not in NEEDS_EXTRA or importlib.util.find_spec(NEEDS_EXTRA[p.name])
    ]
    failed: dict[str, str] = {}

    async def start(script: Path) -> None:
        result = await trio.run_process(
            [sys.executable, str(script), "--help"],
            cwd=BENCHMARKS,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        if result.returncode != 0 or b"usage:" not in result.stdout:
            failed[script.name] = result.stderr.decode()[-500:]

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for script in scripts:
                nursery.start_soon(start, script)
    assert "bench_node.py" in {p.name for p in scripts} and not failed, failed
