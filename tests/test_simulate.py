"""The whole-cluster simulation (docs/scenarios.md: sim-kv): seeds pass, replay exactly, and
a cluster that serves stale reads is caught, with the command replaying it."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, ClassVar

import pytest
import trio

from trioraft import MemoryStorage
from trioraft.kv.machine import KVMachine
from trioraft.kv.messages import OK, AppendReply
from trioraft.raft import core, quorum
from trioraft.testing import simulate


def test_seeds_pass_and_do_real_work(seed: int) -> None:
    """Five seeds in a row. One seed's faults can keep its cluster without a leader for
    most of its 5 s (of 200 seeds, the fewest ops answered were 3, the median 95, and no
    five in a row answered fewer than 204; 15 restored no snapshot), so the work is counted
    over the five: ops answered, puts and appends applied, snapshots restored (installed
    from a leader, or a node's own at a restart) and stale reads answered."""
    answered, puts_applied, appends_applied, restores, stale = 0, 0, 0, 0, 0
    for s in range(seed % 1000, seed % 1000 + 5):
        outcome = simulate.check_seed(s, seconds=5.0)
        assert outcome.ok, f"seed {s}:\n" + "\n".join(outcome.problems)
        done = [op for op in outcome.operations if op.ret is not None and op.output is not None]
        answered += len(done)
        puts_applied += sum(op.input.op == "put" and op.output.err == "OK" for op in done)
        appends_applied += sum(op.input.op == "append" and op.output.err == "OK" for op in done)
        restores += outcome.restores
        stale += len(outcome.stale_reads)
    work = (answered, puts_applied, appends_applied, restores, stale)
    assert answered > 100 and all(work), (
        "{} answered, {} puts, {} appends, {} snapshots restored, {} stale reads".format(*work)
    )


def test_transfers_and_membership_changes_complete() -> None:
    """The nemesis's leadership transfers and membership changes (a voter removed, the
    leader included; a new node added as a learner, then promoted) complete in some seeds
    (runs depend on their seed alone, so these ten always do the same)."""
    outcomes = [simulate.check_seed(s, seconds=5.0) for s in range(10)]
    assert all(outcome.ok for outcome in outcomes)
    assert sum(outcome.transfers for outcome in outcomes) > 0
    assert sum(outcome.membership_changes for outcome in outcomes) > 0


#: The seeds CI runs (issue 16): 200 of 5 simulated seconds each, in chunks that keep each
#: test well inside its time limit on a busy machine (~70 seeds a minute there).
CI_SEEDS, CHUNKS = 200, 4


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_the_ci_seed_budget_passes(seed: int, chunk: int) -> None:
    size = CI_SEEDS // CHUNKS
    first = seed % 1_000_000 + chunk * size
    for s in range(first, first + size):
        outcome = simulate.check_seed(s, seconds=5.0)
        replay = f"python -m trioraft.testing.simulate --seeds 1 --from {s} --seconds 5"
        assert outcome.ok, f"seed {s} failed (replay: {replay}):\n" + "\n".join(outcome.problems)


def test_seeds_pass_with_the_leader_noop_kv_nodes_run_with(seed: int) -> None:
    """A KVNode's Raft runs with ``leader_noop`` (a new leader commits its term at once), the
    simulator without it unless told: 25 seeds in a row with it."""
    first = seed % 1_000_000
    for s in range(first, first + 25):
        outcome = simulate.check_seed(s, seconds=5.0, leader_noop=True)
        replay = (
            f"python -m trioraft.testing.simulate --seeds 1 --from {s} --seconds 5 --leader-noop"
        )
        assert outcome.ok, f"seed {s} failed (replay: {replay}):\n" + "\n".join(outcome.problems)


def test_a_seed_replays_the_same_history(seed: int) -> None:
    first = simulate.check_seed(seed % 1000, seconds=3.0)
    again = simulate.check_seed(seed % 1000, seconds=3.0)
    assert first.operations == again.operations


def test_a_seed_replays_exactly_in_fresh_processes(seed: int) -> None:
    """The whole history (clients' ops, stale reads, problems found) of one seed is the
    same in two fresh processes with different hash seeds, and another seed's differs."""

    def digest(s: int, hash_seed: int) -> str:
        env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
        done = subprocess.run(
            [sys.executable, "-c", REPLAY_SCRIPT, str(s)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return done.stdout.strip()

    first = digest(seed % 1000, hash_seed=1)
    assert digest(seed % 1000, hash_seed=2) == first, f"seed {seed % 1000} ran differently"
    assert digest(seed % 1000 + 1, hash_seed=1) != first, "the run does not follow the seed"


REPLAY_SCRIPT = """
import hashlib, sys
from trioraft.testing import simulate
o = simulate.check_seed(int(sys.argv[1]), seconds=3.0)
print(hashlib.sha256(repr((o.operations, o.stale_reads, o.problems)).encode()).hexdigest())
"""


def test_stale_read_checks_catch_a_read_going_back_or_off_the_log() -> None:
    """The stale-read invariants on a made-up record: a replica whose reads reflect index 2
    then index 1, and a read at index 1 answering what only index 2 wrote."""

    class Applied:
        machines: ClassVar[list[tuple[str, KVMachine]]] = []

    machine = simulate.RecordingMachine()
    machine.apply({"op": "put", "key": "a", "value": "x", "version": 0}, 1)
    machine.apply({"op": "put", "key": "a", "value": "y", "version": 1}, 2)
    Applied.machines.append(("0#1", machine))
    good = [
        simulate.StaleRead(1, "0#1", 1, "a", "x", 1),
        simulate.StaleRead(2, "0#1", 2, "a", "y", 2),
    ]
    assert simulate.stale_read_problems(Applied, good) == []  # type: ignore[arg-type]
    back = [good[1], simulate.StaleRead(3, "0#1", 1, "a", "x", 1)]
    assert "after one at 2" in simulate.stale_read_problems(Applied, back)[0]  # type: ignore[arg-type]
    off = [simulate.StaleRead(1, "0#1", 1, "a", "y", 2)]
    assert "makes it ('x', 1)" in simulate.stale_read_problems(Applied, off)[0]  # type: ignore[arg-type]


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
    assert simulate.main(["--seeds", "1", "--from", "8", "--seconds", "3"]) == 1
    printed = capsys.readouterr().out
    assert "seed 8: FAILED" in printed and "not linearizable" in printed
    assert "replay: python -m trioraft.testing.simulate --seeds 1 --from 8 " in printed


# -- broken rules the simulator must find (issue 16 item 3) -------------------------------


async def deposed_leader_reads(c: simulate.KVSimCluster, client: str, server: str, op: dict):
    """A get answered by any node that believes it leads, from its own copy (no round
    proving it still does): a leader cut off from the majority answers stale values."""
    rsm = c.rsms.get(server)
    leads = rsm is not None and rsm.node.is_leader
    if op["op"] == "get" and leads and c.network.reachable(client, server):
        assert rsm is not None
        return rsm.machine.kv.get(op["key"])
    return await real_call(c, client, server, op)


async def _no_sync(self: MemoryStorage) -> None:
    """Acknowledges appends without making them durable: a crash loses them."""


def figure8_commit(
    match_indexes: list[int], term_at: object, current_term: int, old_commit: int
) -> int:
    """Commits whatever a majority holds, of any term: the rule Figure 8 shows unsafe."""
    return max(quorum.quorum_index(match_indexes), old_commit)


def _append_without_dedup(
    self: KVMachine, key: str, value: str, session: str, seq: int, index: int
) -> AppendReply:
    """Applies every append, a retry of one already applied too (the session's sequence
    number is recorded, never checked)."""
    self._remember(session, (seq, OK))
    return self.kv.append(key, value, index)


async def stale_read_at_log_end(
    c: simulate.KVSimCluster, client: str, server: str, key: str
) -> simulate.StaleRead | None:
    """A stale read that claims the index of the replica's last log entry (committed or
    not, applied or not) as the point it reflects, while answering what it applied."""

    async def send() -> simulate.StaleRead | None:
        rsm = c.rsms.get(server)
        if rsm is None:
            return None
        reply = rsm.machine.kv.get(key)
        c.stale_reads_answered += 1
        index = rsm.node.log.last_index
        incarnation = c.incarnations[server]
        return simulate.StaleRead(
            c.stale_reads_answered, incarnation, index, key, reply.value, reply.version
        )

    with trio.move_on_after(simulate.OP_TIMEOUT * 2):
        return await c.network.deliver(client, server, send)
    return None


_restore = KVMachine.restore


def _restore_without_sessions(self: KVMachine, data: bytes) -> None:
    """Restores a snapshot but not its session table."""
    _restore(self, data)
    self.sessions = {}


BROKEN_RULES = {
    # A voter grants its vote without checking that the candidate's log is up to date.
    "vote-without-log-check": (core, "is_up_to_date", lambda *args: True),
    # A follower acknowledges entries it has not made durable (nothing is ever fsynced).
    "ack-before-fsync": (MemoryStorage, "sync", _no_sync),
    # A node that believes it leads answers reads without confirming it still does.
    "read-on-deposed-leader": (simulate, "call", deposed_leader_reads),
    # A leader commits an older term's entry once a majority holds it (Raft Figure 8).
    "commit-older-term-by-counting": (core, "committed_index", figure8_commit),
    # A session applies a retried append again.
    "append-retry-applied-twice": (KVMachine, "_append", _append_without_dedup),
    # A snapshot restored (installed from the leader, or at a restart) loses the sessions.
    "snapshot-drops-sessions": (KVMachine, "restore", _restore_without_sessions),
    # A stale read claims a read point (its log's end) past what it applied.
    "stale-read-past-applied": (simulate, "stale_read", stale_read_at_log_end),
    # Every node counts itself a voter: learners and removed nodes campaign too.
    "non-voter-campaigns": (core.RaftCore, "is_voter", property(lambda self: True)),
    # A leader starts a membership change while the last one is uncommitted.
    "two-membership-changes-at-once": (core, "uncommitted_change", lambda *args: 0),
    # A new leader changes the membership before an entry of its term has committed.
    "membership-change-before-term-settles": (core, "settled_in_term", lambda *args: True),
}

#: Seeds (of 5 simulated seconds each) the simulator may take to find each broken rule.
SEED_BUDGET = 200


@pytest.mark.parametrize("rule", BROKEN_RULES)
def test_the_simulator_finds_a_broken_rule(monkeypatch: pytest.MonkeyPatch, rule: str) -> None:
    """Each rule broken alone makes some seed fail a check within the budget (the first
    failing seed is the same in every run: runs depend on their seed alone). The Figure-8
    rule is found through the nemesis's Figure-8 episodes (``figure8_episode``)."""
    owner, name, broken = BROKEN_RULES[rule]
    monkeypatch.setattr(owner, name, broken)
    if owner is MemoryStorage:
        monkeypatch.setattr(MemoryStorage, "sync_blocking", lambda self: None)
    for seed in range(SEED_BUDGET):
        if not simulate.check_seed(seed, seconds=5.0).ok:
            return
    raise AssertionError(f"{rule}: no seed of {SEED_BUDGET} failed")
