"""The whole-cluster simulation (docs/scenarios.md: sim-kv): seeds pass, replay exactly, and
a cluster that serves stale reads is caught, with the command replaying it."""

from __future__ import annotations

from typing import Any

import pytest

from trioraft.testing import simulate


def test_seeds_pass_and_do_real_work(seed: int) -> None:
    """Three seeds in a row. One seed's faults can keep its cluster without a leader for
    most of its 5 s (of 300 seeds, the fewest ops answered were 19; the median, 122), so
    the work is counted over the three."""
    answered, puts_applied = 0, 0
    for s in range(seed % 1000, seed % 1000 + 3):
        outcome = simulate.check_seed(s, seconds=5.0)
        assert outcome.ok, f"seed {s}:\n" + "\n".join(outcome.problems)
        done = [op for op in outcome.operations if op.ret is not None]
        answered += len(done)
        puts_applied += sum(op.input.op == "put" and op.output.err == "OK" for op in done)
    assert answered > 150 and puts_applied > 0, f"{answered} answered, {puts_applied} puts"


def test_a_seed_replays_the_same_history(seed: int) -> None:
    first = simulate.check_seed(seed % 1000, seconds=3.0)
    again = simulate.check_seed(seed % 1000, seconds=3.0)
    assert first.operations == again.operations


async def stale_call(c: simulate.KVSimCluster, client: str, server: str, op: dict) -> Any:
    """A broken cluster: a get is answered by whichever node the client reached, from its
    own copy, without going through the log."""
    rsm = c.rsms.get(server)
    if op["op"] == "get" and rsm is not None and c.network.reachable(client, server):
        return rsm.machine.kv.get(op["key"])
    return await real_call(c, client, server, op)


real_call = simulate.call


def test_stale_reads_are_caught_and_the_seed_replayed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(simulate, "call", stale_call)
    assert simulate.main(["--seeds", "1", "--from", "7", "--seconds", "3"]) == 1
    printed = capsys.readouterr().out
    assert "seed 7: FAILED" in printed and "not linearizable" in printed
    assert "replay: python -m trioraft.testing.simulate --seeds 1 --from 7 " in printed
