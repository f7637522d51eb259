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
