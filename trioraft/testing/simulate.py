"""Whole-cluster simulation: replicated KV nodes and their clients in one Trio run, on
virtual time, over the in-memory network; every seed's history is checked.

    python -m trioraft.testing.simulate --seeds N [--from S] [--nodes 5] [--clients 4]
                                        [--seconds 10] [--html DIR]

One seed's run: ``nodes`` Raft nodes, each running the replicated KV machine
(:class:`~trioraft.kv.machine.KVMachine` in a
:class:`~trioraft.kv.rsm.ReplicatedStateMachine`) on a :class:`~trioraft.MemoryStorage`
that loses unsynced writes on a crash; ``clients`` clients that get keys and put them at
the version they last read, reaching the nodes through the same seeded MIT-unreliable
:class:`Network` (drops, delays, reordering); and a nemesis that, every 0.2-1 s of virtual
time, crashes a node (a majority stays up), restarts one, partitions the nodes at random,
heals them, or plays the schedule of the Raft paper's Figure 8 (:func:`figure8_episode`:
partitions and a crash timed on who leads). After ``seconds`` everything heals and
restarts, and every key is read once more, so a lost acknowledged write shows in the
history.

Checks, per seed:
- the history is linearizable (:data:`VERSIONED_KV_MODEL`); a client op that failed with
  ``NotLeader`` never took effect and is left out, one whose fate is unknown (lost,
  timed out, leadership lost) is recorded as never returned;
- at most one leader per term;
- log matching (at the end, between every two running nodes): logs that hold an entry of
  the same index and term hold the same entries up to it;
- leader completeness: a node that becomes leader of term T holds every entry seen
  committed in a term before T;
- state machine safety: no two nodes see different entries committed at one index, and
  every node (each incarnation, which replays its log from the start) applied the same
  ops in the same order, each a prefix of the longest.

Invariants: a run depends on its seed alone (:func:`run_simulation`: virtual time, Trio
scheduled from the seed; every random choice from a ``random.Random`` seeded from it), so
a failing seed replays with the command printed. Not covered yet: appends (client
sessions), snapshots (so every log starts at index 1), membership changes and leadership
transfers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from .._errors import NotLeader, RaftError
from ..kv.machine import KVMachine
from ..kv.rsm import ReplicatedStateMachine
from ..raft.log import Entry
from ..raft.node import RaftNode
from ._cluster import RaftCluster
from ._linearizability import Operation, Result, check_operations
from ._models import VERSIONED_KV_MODEL, KVInput, KVOutput
from ._network import MIT_UNRELIABLE
from ._replay import run_simulation

KEYS = ("a", "b", "c")
#: How long a client waits for one op before it counts its fate as unknown.
OP_TIMEOUT = 1.0
#: How long the final reads may take, once everything has healed.
SETTLE_TIMEOUT = 60.0
#: How long the linearizability check of one history may take.
CHECK_TIMEOUT = 60.0
#: Problems printed for a failing seed.
SHOWN_PROBLEMS = 10


class RecordingMachine(KVMachine):
    """The replicated KV machine, keeping every op it applied (as JSON), in order."""

    def __init__(self) -> None:
        super().__init__()
        self.applied: list[str] = []

    def apply(self, op: Any, index: int = 0) -> Any:
        self.applied.append(json.dumps(op, sort_keys=True))
        return super().apply(op, index)


class KVSimCluster(RaftCluster):
    """The test kit's cluster with the replicated KV machine on every node, and watchers
    that record who led each term."""

    def __init__(self, nursery: trio.Nursery, n: int, seed: int) -> None:
        super().__init__(nursery, n, seed, profile=MIT_UNRELIABLE)
        self.rsms: dict[str, ReplicatedStateMachine | None] = dict.fromkeys(self.ids)
        self.machines: list[tuple[str, RecordingMachine]] = []  # every incarnation's
        self.leaders_by_term: dict[int, set[str]] = defaultdict(set)
        #: Every entry some node saw committed, and the lowest term a node was in when it
        #: saw that (at least the term it was committed in).
        self.committed: dict[int, tuple[Entry, int]] = {}
        self.problems: list[str] = []

    def prepare(self, i: str, node: RaftNode) -> None:
        machine = RecordingMachine()
        self.machines.append((f"{i}#{self.starts}", machine))
        self.rsms[i] = ReplicatedStateMachine(node, machine, op_timeout=OP_TIMEOUT)

    async def consume(self, i: str, node: RaftNode) -> None:
        rsm = self.rsms[i]
        assert rsm is not None
        async with trio.open_nursery() as nursery:
            await nursery.start(rsm.run)
            nursery.start_soon(self._watch_commits, i, node)
            term = 0
            while True:
                await node.wait_until(lambda n, t=term: n.is_leader and n.term > t)
                term = node.term
                self.leaders_by_term[term].add(i)
                self._check_leader_completeness(i, node)

    async def _watch_commits(self, i: str, node: RaftNode) -> None:
        """Record what ``i`` sees committed; two different entries at one index is a
        violation of state machine safety. (No snapshots here: the log is all there.)"""
        seen = node.log.snapshot_index
        while True:
            await node.wait_until(lambda n, s=seen: n.commit_index > s)
            for index in range(seen + 1, node.commit_index + 1):
                entry = node.log.entry(index)
                known, term = self.committed.get(index, (entry, node.term))
                if known != entry:
                    self.problems.append(
                        f"node {i} committed {entry} at index {index}, another node {known}"
                    )
                self.committed[index] = (known, min(term, node.term))
            seen = node.commit_index

    def _check_leader_completeness(self, i: str, node: RaftNode) -> None:
        """A leader of term T holds every entry committed in a term before T."""
        for index, (entry, term) in sorted(self.committed.items()):
            if term < node.term and (
                node.log.term_at(index) != entry.term or node.log.entry(index) != entry
            ):
                self.problems.append(
                    f"node {i} leads term {node.term} without entry {index} ({entry}), "
                    f"committed by term {term}"
                )
                return  # the first one missing says enough

    def crash(self, i: str) -> None:
        super().crash(i)
        self.rsms[i] = None


@dataclass
class Outcome:
    """One seed's run: its history and what the checks found."""

    seed: int
    operations: list[Operation[KVInput, KVOutput]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    result: Result[Any, KVInput, KVOutput] | None = None
    virtual_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


async def call(c: KVSimCluster, client: str, server: str, op: dict[str, Any]) -> Any:
    """``op`` at ``server`` through the network: the machine's reply, ``NotLeader`` (the op
    never took effect), or ``None`` (its fate is unknown)."""

    async def send() -> Any:
        rsm = c.rsms.get(server)
        if rsm is None:
            return None
        try:
            return await rsm.submit(op)
        except NotLeader as exc:
            return exc
        except RaftError:
            return None

    with trio.move_on_after(OP_TIMEOUT * 2):
        return await c.network.deliver(client, server, send)
    return None


async def run_client(
    c: KVSimCluster, me: int, seed: int, stop: trio.Event, outcome: Outcome
) -> None:
    """Gets and puts (at the version last read) on random keys until ``stop``, recorded."""
    rng = random.Random(f"{seed}-client-{me}")
    name = f"client-{me}"
    versions: dict[str, int] = {}
    server = rng.choice(c.ids)
    count = 0
    while not stop.is_set():
        count += 1
        key = rng.choice(KEYS)
        if rng.random() < 0.5:
            op = {"op": "get", "key": key}
            call_input = KVInput("get", key)
        else:
            version = versions.get(key, 0)
            value = f"{me}.{count}"
            op = {"op": "put", "key": key, "value": value, "version": version}
            call_input = KVInput("put", key, value, version)
        start = trio.current_time()
        reply = await call(c, name, server, op)
        if isinstance(reply, NotLeader):
            server = reply.leader if reply.leader in c.ids else rng.choice(c.ids)
            await trio.sleep(rng.uniform(0.01, 0.05))
            continue
        if reply is None:
            outcome.operations.append(Operation(name, call_input, start, None, None))
            server = rng.choice(c.ids)
            await trio.sleep(rng.uniform(0.01, 0.05))
            continue
        output = record_output(call_input, reply)
        outcome.operations.append(Operation(name, call_input, start, output, trio.current_time()))
        if call_input.op == "get":
            versions[key] = output.version
        await trio.sleep(rng.uniform(0.0, 0.02))


def record_output(call_input: KVInput, reply: Any) -> KVOutput:
    if call_input.op == "get":
        return KVOutput(reply.value, reply.version, reply.err)
    return KVOutput(err=reply.err)


async def nemesis(c: KVSimCluster, seed: int, stop: trio.Event) -> None:
    """Every 0.2-1 s, one of: crash a node (a majority stays up), restart one, partition
    the nodes at random, heal, or a Figure-8 episode (:func:`figure8_episode`)."""
    rng = random.Random(f"{seed}-nemesis")
    majority = len(c.ids) // 2 + 1
    while not stop.is_set():
        await trio.sleep(rng.uniform(0.2, 1.0))
        up = [i for i in c.ids if c.alive(i)]
        down = [i for i in c.ids if not c.alive(i)]
        action = rng.choice(["crash", "restart", "partition", "heal", "figure8"])
        if action == "crash" and len(up) > majority:
            c.crash(rng.choice(up))
        elif action == "restart" and down:
            await c.start(rng.choice(down))
        elif action == "partition":
            shuffled = list(c.ids)
            rng.shuffle(shuffled)
            cut = rng.randrange(1, len(shuffled))
            c.partition(shuffled[:cut], shuffled[cut:])
        elif action == "figure8":
            await figure8_episode(c, rng)
        else:
            c.heal()


#: How long a Figure-8 episode waits for each election before it gives up.
ELECTION_WAIT = 2.0


async def figure8_episode(c: KVSimCluster, rng: random.Random) -> None:
    """The schedule of the Raft paper's Figure 8, which an unsafe commit rule (committing
    an older term's entry by counting its replicas) turns into a lost committed entry:

    1. the leader ``L`` and one follower ``F`` are cut off from the rest: ``L`` appends
       the clients' ops of its term and replicates them to ``F`` only;
    2. the rest elect ``L2`` (a newer term), which is cut off alone at once: it appends
       ops of its own term at the same indexes, replicated nowhere;
    3. the four others elect ``L3`` (``L`` or ``F``: their logs are the longest), which
       brings the others up to date with ``L``'s entries (older than ``L2``'s);
    4. shortly after, ``L3`` crashes (losing what it had not synced) and everything heals:
       ``L2`` may now win the votes of nodes whose last entry is ``L``'s, and overwrite
       those entries, committed or not.

    Each step waits for its election (on the nodes' events, at most :data:`ELECTION_WAIT`)
    and the episode ends early if one does not come. Every node is up and connected first,
    so a majority stays up when ``L3`` crashes."""
    for i in c.ids:
        if not c.alive(i):
            await c.start(i)
    c.heal()
    leader = await elected(c, c.ids)
    if leader is None:
        return
    others = [i for i in c.ids if i != leader]
    follower = rng.choice(others)
    rest = [i for i in others if i != follower]
    c.partition([leader, follower], rest)
    await trio.sleep(rng.uniform(0.05, 0.3))
    second = await elected(c, rest)
    if second is None:
        return
    c.partition([second], [i for i in c.ids if i != second])
    await trio.sleep(rng.uniform(0.05, 0.3))
    third = await elected(c, [i for i in c.ids if i != second])
    await trio.sleep(rng.uniform(0.0, 0.1))
    if third is not None and c.alive(third) and c.node(third).is_leader:
        c.crash(third)
    c.heal()


async def elected(c: KVSimCluster, among: list[str]) -> str | None:
    """A node of ``among`` that leads, once one does (``None`` after :data:`ELECTION_WAIT`)."""
    with trio.move_on_after(ELECTION_WAIT):
        return await c.wait_leader(among=among)
    return None


async def final_reads(c: KVSimCluster, outcome: Outcome) -> None:
    """Read every key until a node answers (everything has healed by now)."""
    rng = random.Random(f"{outcome.seed}-final")
    for key in KEYS:
        call_input = KVInput("get", key)
        while True:
            start = trio.current_time()
            server = rng.choice(c.ids)
            reply = await call(c, "final", server, {"op": "get", "key": key})
            if reply is None:
                outcome.operations.append(Operation("final", call_input, start, None, None))
            elif not isinstance(reply, NotLeader):
                output = record_output(call_input, reply)
                end = trio.current_time()
                outcome.operations.append(Operation("final", call_input, start, output, end))
                break
            await trio.sleep(0.05)


async def simulate_run(seed: int, nodes: int, clients: int, seconds: float) -> Outcome:
    outcome = Outcome(seed)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        c = KVSimCluster(nursery, nodes, seed)
        await c.start_all()
        async with trio.open_nursery() as load:
            load.start_soon(nemesis, c, seed, stop)
            for me in range(clients):
                load.start_soon(run_client, c, me, seed, stop, outcome)
            await trio.sleep(seconds)
            stop.set()
        c.heal()
        for i in c.ids:
            if not c.alive(i):
                await c.start(i)
        with trio.move_on_after(SETTLE_TIMEOUT) as settle:
            await final_reads(c, outcome)
        if settle.cancelled_caught:
            outcome.problems.append(f"no final read within {SETTLE_TIMEOUT} s of healing")
        outcome.problems += invariant_problems(c)
        outcome.virtual_seconds = trio.current_time()
        nursery.cancel_scope.cancel()
    return outcome


def invariant_problems(c: KVSimCluster) -> list[str]:
    problems = list(c.problems)
    problems += [
        f"term {term} had {len(who)} leaders: {sorted(who)}"
        for term, who in sorted(c.leaders_by_term.items())
        if len(who) > 1
    ]
    problems += log_matching_problems(c)
    longest_name, longest = max(c.machines, key=lambda m: len(m[1].applied))
    for name, machine in c.machines:
        ops = machine.applied
        if ops != longest.applied[: len(ops)]:
            at = next(k for k, op in enumerate(ops) if op != longest.applied[k])
            problems.append(
                f"{name} applied {ops[at]} as op {at + 1}, {longest_name} applied "
                f"{longest.applied[at]}"
            )
    return problems


def log_matching_problems(c: KVSimCluster) -> list[str]:
    """Two logs with an entry of the same index and term hold the same entries up to it."""
    problems = []
    logs = {i: c.node(i).log for i in c.ids if c.alive(i)}
    for a, b in itertools.combinations(sorted(logs), 2):
        la, lb = logs[a], logs[b]
        shared = min(la.last_index, lb.last_index)
        same_term = [k for k in range(1, shared + 1) if la.term_at(k) == lb.term_at(k)]
        if same_term and la.slice(1, same_term[-1] + 1) != lb.slice(1, same_term[-1] + 1):
            problems.append(f"logs of {a} and {b} agree at {same_term[-1]} but differ before")
    return problems


def check_seed(seed: int, *, nodes: int = 5, clients: int = 4, seconds: float = 10.0) -> Outcome:
    """Run one seed and check it (see the module docstring)."""
    outcome = run_simulation(simulate_run, seed, nodes, clients, seconds, seed=seed)
    outcome.result = check_operations(VERSIONED_KV_MODEL, outcome.operations, CHECK_TIMEOUT)
    if outcome.result.ok is False:
        outcome.problems.append(outcome.result.account)
    elif outcome.result.ok is None:
        outcome.problems.append(f"the history's check ran out of time ({CHECK_TIMEOUT} s)")
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trioraft.testing.simulate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seeds", type=int, default=10, help="how many seeds to run")
    parser.add_argument("--from", dest="first", type=int, default=0, help="the first seed")
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="virtual seconds of load")
    parser.add_argument("--html", type=Path, help="draw a failing history into this folder")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    failed = 0
    for seed in range(args.first, args.first + args.seeds):
        outcome = check_seed(seed, nodes=args.nodes, clients=args.clients, seconds=args.seconds)
        settled = sum(op.ret is not None for op in outcome.operations)
        print(
            f"seed {seed}: {'ok' if outcome.ok else 'FAILED'} "
            f"({len(outcome.operations)} ops, {settled} answered, "
            f"{outcome.virtual_seconds:.1f} virtual s)",
            flush=True,
        )
        if not outcome.ok:
            failed += 1
            for problem in outcome.problems[:SHOWN_PROBLEMS]:
                print(problem)
            if len(outcome.problems) > SHOWN_PROBLEMS:
                print(f"... and {len(outcome.problems) - SHOWN_PROBLEMS} more")
            replay = (
                f"python -m trioraft.testing.simulate --seeds 1 --from {seed} "
                f"--nodes {args.nodes} --clients {args.clients} --seconds {args.seconds}"
            )
            print(f"replay: {replay}")
            if args.html is not None and outcome.result is not None:
                args.html.mkdir(parents=True, exist_ok=True)
                page = outcome.result.write_html(args.html / f"seed-{seed}.html")
                print(f"picture: {page}")
    elapsed = time.perf_counter() - started
    print(
        f"{args.seeds} seeds, {failed} failed, in {elapsed:.1f} s "
        f"({args.seeds / elapsed * 60:.0f} seeds a minute)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
