"""Whole-cluster simulation: replicated KV nodes and their clients in one Trio run, on
virtual time, over the in-memory network; every seed's history is checked.

    python -m trioraft.testing.simulate --seeds N [--from S] [--nodes 5] [--clients 4]
                                        [--seconds 10] [--html DIR] [--leader-noop]

One seed's run: ``nodes`` Raft nodes, each running the replicated KV machine
(:class:`~trioraft.kv.machine.KVMachine` in a
:class:`~trioraft.kv.rsm.ReplicatedStateMachine`) on a :class:`~trioraft.MemoryStorage`
that loses unsynced writes on a crash, snapshotting past :data:`MAX_RAFT_STATE` bytes of
Raft state (so nodes that lag install the leader's snapshot); ``clients`` clients that
get keys, put them at the version they last read, and append to them in a session (an
append whose fate is unknown is retried with its sequence number until it is answered),
and read stale (from whichever node they reach, what it applied), reaching the nodes
through the same seeded MIT-unreliable :class:`Network` (drops, delays, reordering); and
a nemesis that, every 0.2-1 s of virtual time, crashes a node (a majority of the voters
stays up), restarts one, partitions the nodes at random, heals them, has the leader hand
its leadership to another voter (:func:`transfer`), changes the membership
(:func:`reconfigure`: removes a voter, the leader too, adds a new node as a learner,
promotes it), plays the schedule of the Raft paper's Figure 8 (:func:`figure8_episode`:
partitions and a crash timed on who leads), has the leader start two membership changes
at once, cut off where that would make two majorities (:func:`overlapping_changes_episode`),
or plays Ongaro's schedule of two changes by two leaders in turn
(:func:`changes_across_leaders_episode`).
After ``seconds`` everything heals and restarts, and every key is read once more, so a
lost acknowledged write shows in the history.

Checks, per seed:
- the history is linearizable (:func:`~trioraft.testing.check_kv_ops`: gets, puts and
  appends); a client op that failed with ``NotLeader`` never took effect and is left out,
  one whose fate is unknown (lost, timed out, leadership lost) is recorded as never
  returned, an append answered ``SessionExpired`` as optional;
- at most one leader per term, and a node becomes leader only as a voter of the
  configuration it has;
- log matching (at the end, between every two running nodes, past their snapshots): logs
  that hold an entry of the same index and term hold the same entries up to it;
- leader completeness: a node that becomes leader of term T holds every entry seen
  committed in a term before T (in its log or its snapshot);
- state machine safety: no two nodes see different entries committed at one index, and
  every replica (each incarnation, from the log's start or from a snapshot) applied the
  same op at each log index and answered it the same way (so a snapshot restores the
  whole state, sessions included);
- stale reads (not linearizable by design, so not in the history): each answers the state
  the log makes up to the index it reflects, and on one incarnation that index never goes
  back (:func:`stale_read_problems`).

Invariants: a run depends on its seed alone (:func:`run_simulation`: virtual time, Trio
scheduled from the seed; every random choice from a ``random.Random`` seeded from it), so
a failing seed replays with the command printed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import random
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from .._errors import BadRequest, NotLeader, RaftError
from ..kv.machine import KVMachine
from ..kv.messages import OK, SESSION_EXPIRED
from ..kv.rsm import ReplicatedStateMachine
from ..raft.config import RaftConfig
from ..raft.log import Entry
from ..raft.node import RaftNode
from ..raft.quorum import majority
from ._cluster import RaftCluster
from ._kv_model import check_kv_ops
from ._linearizability import Operation, Result
from ._models import KVInput, KVOutput
from ._network import MIT_UNRELIABLE
from ._replay import run_simulation

KEYS = ("a", "b", "c")
#: How long a client waits for one op before it counts its fate as unknown.
OP_TIMEOUT = 1.0
#: How long the final reads may take, once everything has healed.
SETTLE_TIMEOUT = 60.0
#: How long the linearizability check of one history may take.
CHECK_TIMEOUT = 60.0
#: How often (against 1 for each other action) the nemesis plays a Figure-8 episode: it
#: takes seconds of partitions, so about one action in eleven.
FIGURE8_WEIGHT = 0.6
#: How often the nemesis plays an episode of two membership changes at once.
OVERLAPPING_WEIGHT = 0.5
#: How often it plays an episode of membership changes by two leaders in turn.
ACROSS_LEADERS_WEIGHT = 0.25
#: Bytes of Raft state past which a node snapshots: low, so that every seed snapshots
#: (every 30-odd entries) and nodes that lag behind install the leader's snapshot.
MAX_RAFT_STATE = 4096
#: Problems printed for a failing seed.
SHOWN_PROBLEMS = 10


class RecordingMachine(KVMachine):
    """The replicated KV machine, keeping every op it applied with its log index and its
    reply (both as text), in order, and counting the snapshots it restored."""

    def __init__(self) -> None:
        super().__init__()
        self.applied: list[tuple[int, str, str]] = []
        self.restores = 0

    def apply(self, op: Any, index: int = 0) -> Any:
        reply = super().apply(op, index)
        self.applied.append((index, json.dumps(op, sort_keys=True), repr(reply)))
        return reply

    def restore(self, data: bytes) -> None:
        super().restore(data)
        self.restores += 1


class KVSimCluster(RaftCluster):
    """The test kit's cluster with the replicated KV machine on every node, and watchers
    that record who led each term."""

    def __init__(
        self, nursery: trio.Nursery, n: int, seed: int, *, leader_noop: bool = False
    ) -> None:
        config = RaftConfig(leader_noop=leader_noop)
        super().__init__(nursery, n, seed, config=config, profile=MIT_UNRELIABLE)
        #: Each node snapshots once its Raft state passes this (so lagging ones install).
        self.max_raft_state = MAX_RAFT_STATE
        self.rsms: dict[str, ReplicatedStateMachine | None] = dict.fromkeys(self.ids)
        self.machines: list[tuple[str, RecordingMachine]] = []  # every incarnation's
        self.leaders_by_term: dict[int, set[str]] = defaultdict(set)
        #: Every entry some node saw committed, and the lowest term a node was in when it
        #: saw that (at least the term it was committed in).
        self.committed: dict[int, tuple[Entry, int]] = {}
        self.problems: list[str] = []
        #: Leadership transfers that completed, and stale reads answered.
        self.transfers = 0
        self.stale_reads_answered = 0
        #: Membership changes that committed, and the voters the run started with.
        self.membership_changes = 0
        self.initial_voters = n
        #: The name of each node's incarnation (``"id#start number"``).
        self.incarnations: dict[str, str] = {}

    def prepare(self, i: str, node: RaftNode) -> None:
        machine = RecordingMachine()
        self.incarnations[i] = f"{i}#{self.starts}"
        self.machines.append((self.incarnations[i], machine))
        self.rsms[i] = ReplicatedStateMachine(
            node, machine, op_timeout=OP_TIMEOUT, max_raft_state=self.max_raft_state
        )

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
                if i not in node.configuration.voters:
                    self.problems.append(f"node {i} leads term {term} but is not a voter")
                self._check_leader_completeness(i, node)

    async def _watch_commits(self, i: str, node: RaftNode) -> None:
        """Record what ``i`` sees committed; two different entries at one index is a
        violation of state machine safety. (Entries a snapshot replaced are not seen here:
        the replicas' agreement on what they applied covers them.)"""
        seen = node.log.snapshot_index
        while True:
            await node.wait_until(lambda n, s=seen: n.commit_index > s)
            for index in range(max(seen, node.log.snapshot_index) + 1, node.commit_index + 1):
                entry = node.log.entry(index)
                known, term = self.committed.get(index, (entry, node.term))
                if known != entry:
                    self.problems.append(
                        f"node {i} committed {entry} at index {index}, another node {known}"
                    )
                self.committed[index] = (known, min(term, node.term))
            seen = node.commit_index

    def _check_leader_completeness(self, i: str, node: RaftNode) -> None:
        """A leader of term T holds every entry committed in a term before T (in its log,
        or in its snapshot, which holds only committed state)."""
        for index, (entry, term) in sorted(self.committed.items()):
            if (
                term < node.term
                and index > node.log.snapshot_index
                and (node.log.term_at(index) != entry.term or node.log.entry(index) != entry)
            ):
                self.problems.append(
                    f"node {i} leads term {node.term} without entry {index} ({entry}), "
                    f"committed by term {term}"
                )
                return  # the first one missing says enough

    def crash(self, i: str) -> None:
        super().crash(i)
        self.rsms[i] = None

    def voters(self) -> tuple[str, ...]:
        """The voters as the running node that has committed the most sees them (the
        latest configuration in its log, committed or not)."""
        running = [self.node(i) for i in self.ids if self.alive(i)]
        if not running:
            return tuple(self.ids)
        return max(running, key=lambda n: (n.commit_index, n.id)).configuration.voters


@dataclass(frozen=True)
class StaleRead:
    """A get answered by one replica from what it has applied, whatever its role: the
    incarnation that answered, the log index its state reflected, and the answer; ``order``
    numbers the stale reads in the order the replicas answered them."""

    order: int
    incarnation: str
    applied_index: int
    key: str
    value: str
    version: int


@dataclass
class Outcome:
    """One seed's run: its history and what the checks found."""

    seed: int
    operations: list[Operation[KVInput, KVOutput]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    result: Result[Any, KVInput, KVOutput] | None = None
    virtual_seconds: float = 0.0
    #: Snapshots the replicas restored (installed from the leader, or their own at a restart).
    restores: int = 0
    #: Leadership transfers that completed.
    transfers: int = 0
    #: Membership changes that committed.
    membership_changes: int = 0
    #: Stale reads: not linearizable by design, checked by :func:`stale_read_problems`.
    stale_reads: list[StaleRead] = field(default_factory=list)

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
    """Gets, puts (at the version last read), appends (in a session, once it has one) and
    stale reads on random keys until ``stop``, recorded. An append whose fate is unknown
    is retried, with the same sequence number, until it has an answer: the session must
    apply it once."""
    rng = random.Random(f"{seed}-client-{me}")
    client = SimClient(c, f"client-{me}", rng, stop)
    versions: dict[str, int] = {}
    session: str | None = None
    seq = 0
    count = 0
    while not stop.is_set():
        count += 1
        key = rng.choice(KEYS)
        draw = rng.random()
        if session is None and draw < 0.1:
            reply = await client.call({"op": "open", "key": "", "nonce": client.name})
            if reply is not None and not isinstance(reply, NotLeader) and reply.err == OK:
                session = reply.session
            continue
        if draw < 0.15:
            read = await stale_read(c, client.name, rng.choice(c.ids), key)
            if read is not None:
                outcome.stale_reads.append(read)
            await trio.sleep(rng.uniform(0.0, 0.02))
            continue
        if draw < 0.45:
            op: dict[str, Any] = {"op": "get", "key": key}
            call_input = KVInput("get", key)
        elif draw < 0.8 or session is None:
            version = versions.get(key, 0)
            value = f"{me}.{count}"
            op = {"op": "put", "key": key, "value": value, "version": version}
            call_input = KVInput("put", key, value, version)
        else:
            seq += 1
            value = f"{me}.{count};"
            op = {"op": "append", "key": key, "value": value, "session": session, "seq": seq}
            await client.append(op, KVInput("append", key, value), outcome)
            continue
        start = trio.current_time()
        reply = await client.call(op)
        if isinstance(reply, NotLeader):
            continue  # it never took effect
        if reply is None:
            outcome.operations.append(Operation(client.name, call_input, start, None, None))
            continue
        output = record_output(call_input, reply)
        outcome.operations.append(
            Operation(client.name, call_input, start, output, trio.current_time())
        )
        if call_input.op == "get":
            versions[key] = output.version
        await trio.sleep(rng.uniform(0.0, 0.02))


class SimClient:
    """One client's calls: to the node it believes leads, following ``NotLeader`` hints
    (a random node when there is none, or after an unknown fate)."""

    def __init__(self, c: KVSimCluster, name: str, rng: random.Random, stop: trio.Event) -> None:
        self.c, self.name, self.rng, self.stop = c, name, rng, stop
        self.server = rng.choice(c.ids)

    async def call(self, op: dict[str, Any]) -> Any:
        """The machine's reply to ``op``, or ``None`` if its fate is unknown; an op refused
        with ``NotLeader`` (it never took effect) is sent again to the next server, until
        ``stop``: then the ``NotLeader`` is returned."""
        while True:
            reply = await call(self.c, self.name, self.server, op)
            if isinstance(reply, NotLeader) and not self.stop.is_set():
                hint = reply.leader
                self.server = hint if hint in self.c.ids else self.rng.choice(self.c.ids)
                await trio.sleep(self.rng.uniform(0.01, 0.05))
                continue
            if reply is None:
                self.server = self.rng.choice(self.c.ids)
                await trio.sleep(self.rng.uniform(0.01, 0.05))
            return reply

    async def append(self, op: dict[str, Any], call_input: KVInput, outcome: Outcome) -> None:
        """``op`` (an append in a session) until it has an answer, recorded as one
        operation from the first attempt: ``OK`` applied once; ``SessionExpired`` may or
        may not have (optional); no answer before ``stop``: never returned."""
        start = trio.current_time()
        while not self.stop.is_set():
            reply = await self.call(op)
            if reply is None or isinstance(reply, NotLeader):
                continue  # unknown, or (at stop) refused: recorded as never returned below
            end = trio.current_time()
            if reply.err == SESSION_EXPIRED:
                outcome.operations.append(
                    Operation(self.name, call_input, start, None, end, optional=True)
                )
            else:
                output = KVOutput(err=reply.err)
                outcome.operations.append(Operation(self.name, call_input, start, output, end))
            return
        outcome.operations.append(Operation(self.name, call_input, start, None, None))


async def stale_read(c: KVSimCluster, client: str, server: str, key: str) -> StaleRead | None:
    """``key`` read at ``server`` from what it has applied (no round through the leader),
    through the network; ``None`` if the call failed."""

    async def send() -> StaleRead | None:
        rsm = c.rsms.get(server)
        if rsm is None:
            return None
        reply = rsm.machine.kv.get(key)
        c.stale_reads_answered += 1
        order, incarnation = c.stale_reads_answered, c.incarnations[server]
        return StaleRead(order, incarnation, rsm.applied_index, key, reply.value, reply.version)

    with trio.move_on_after(OP_TIMEOUT * 2):
        return await c.network.deliver(client, server, send)
    return None


def record_output(call_input: KVInput, reply: Any) -> KVOutput:
    if call_input.op == "get":
        return KVOutput(reply.value, reply.version, reply.err)
    return KVOutput(err=reply.err)


async def nemesis(c: KVSimCluster, seed: int, stop: trio.Event) -> None:
    """Every 0.2-1 s, one of: crash a node (a majority of the voters stays up), restart
    one, partition the nodes at random, heal, a leadership transfer (:func:`transfer`), a
    membership change (:func:`reconfigure`) or a Figure-8 episode
    (:func:`figure8_episode`)."""
    rng = random.Random(f"{seed}-nemesis")
    while not stop.is_set():
        await trio.sleep(rng.uniform(0.2, 1.0))
        up = [i for i in c.ids if c.alive(i)]
        down = [i for i in c.ids if not c.alive(i)]
        (action,) = rng.choices(NEMESIS_ACTIONS, NEMESIS_WEIGHTS)
        if action == "crash" and up:
            victim = rng.choice(up)
            voters = c.voters()
            up_voters = [i for i in voters if c.alive(i)]
            if victim not in voters or len(up_voters) > len(voters) // 2 + 1:
                c.crash(victim)
        elif action == "restart" and down:
            await c.start(rng.choice(down))
        elif action == "partition":
            shuffled = list(c.ids)
            rng.shuffle(shuffled)
            cut = rng.randrange(1, len(shuffled))
            c.partition(shuffled[:cut], shuffled[cut:])
        elif action == "transfer":
            await transfer(c, rng)
        elif action == "reconfigure":
            await reconfigure(c, rng)
        elif action == "figure8":
            await figure8_episode(c, rng)
        elif action == "overlapping":
            await overlapping_changes_episode(c, rng)
        elif action == "across-leaders":
            await changes_across_leaders_episode(c, rng)
        else:
            c.heal()


#: The nemesis's actions and how often it picks each.
NEMESIS_ACTIONS = (
    "crash",
    "restart",
    "partition",
    "heal",
    "transfer",
    "reconfigure",
    "figure8",
    "overlapping",
    "across-leaders",
)
NEMESIS_WEIGHTS = (
    *(1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
    FIGURE8_WEIGHT,
    OVERLAPPING_WEIGHT,
    ACROSS_LEADERS_WEIGHT,
)
#: At most this many nodes are ever added to a run (each membership change that adds one
#: starts a new, empty node).
MAX_ADDED = 3


async def transfer(c: KVSimCluster, rng: random.Random) -> None:
    """The leader (if one runs) hands its leadership to a voter, the most caught-up one or
    one at random; given up after an election timeout (the node abandons it itself)."""
    leaders = c.leaders()
    if not leaders:
        return
    node = c.node(leaders[0])
    others = [i for i in node.configuration.voters if i != leaders[0]]
    if not others:
        return
    to = rng.choice(others) if rng.random() < 0.5 else None
    with trio.move_on_after(c.config.election_timeout[1] * 2):
        try:
            await node.transfer_leadership(to)
            c.transfers += 1
        except RaftError:
            pass  # not leading any more, abandoned, or the target is down: the run goes on


async def reconfigure(c: KVSimCluster, rng: random.Random) -> None:
    """One membership change by the leader (if one runs), bounded in time: promote a
    learner if there is one; else, with all of the run's first voter count, remove a voter
    (the leader itself, maybe: it leads until its removal commits); else add a new, empty
    node as a learner (at most :data:`MAX_ADDED` in a run). A removed node keeps running
    (it stops campaigning once it learns of its removal)."""
    leaders = c.leaders()
    if not leaders:
        return
    node = c.node(leaders[0])
    configuration = node.configuration
    with trio.move_on_after(c.config.election_timeout[1] * 2):
        try:
            if configuration.learners:
                await node.change_membership(promote=configuration.learners[0])
            elif len(configuration.voters) >= c.initial_voters:
                await node.change_membership(remove=rng.choice(configuration.voters))
            elif len(c.ids) < c.initial_voters + MAX_ADDED:
                new = str(len(c.ids))
                await c.add(new)
                await node.change_membership(add_learner=(new, f"mem://{new}"))
            else:
                return
            c.membership_changes += 1
        except (RaftError, BadRequest):
            pass  # refused for now, not leading, or its fate unknown: the run goes on


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
    leader = await everyone_up_and_led(c)
    if leader is None:
        return
    voters = [i for i in c.node(leader).configuration.voters if i != leader]
    if not voters:
        return
    follower = rng.choice(voters)
    rest = [i for i in c.ids if i not in (leader, follower)]
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


async def overlapping_changes_episode(c: KVSimCluster, rng: random.Random) -> None:
    """Two membership changes at once, in the schedule that makes them unsafe: the leader
    ``L`` removes two other voters at once, cut off with just enough of the voters left to
    commit the configuration without both, while the rest of the nodes hold a majority of
    the voters before. One change at a time, the second is refused and the first cannot
    commit on ``L``'s side (too few of the voters less one are there): the rest elect a
    leader, and ``L`` gives way once healed. With both in its log, ``L``'s side
    commits the second configuration while the rest, which never heard of either, elect
    a leader of their own: two leaders take writes, and one's are lost at the heal.
    Healed after a few election timeouts."""
    leaders = c.leaders()
    if not leaders:
        return
    leader = max(leaders, key=lambda i: (c.node(i).term, i))  # not a deposed one
    node = c.node(leader)
    voters = node.configuration.voters
    others = [i for i in voters if i != leader]
    if len(others) < 2:
        return
    removed = rng.sample(others, 2)
    staying = [i for i in others if i not in removed and c.alive(i)]
    needed = majority(len(others) - 1) - 1  # with the leader, a majority of those left
    if len(staying) < needed:
        return
    side = [leader, *rng.sample(staying, needed)]
    rest = [i for i in c.ids if i not in side]
    if sum(i in voters and c.alive(i) for i in rest) < majority(len(voters)):
        return  # the rest could not elect a leader: nothing would happen
    c.partition(side, rest)

    async with trio.open_nursery() as changes:
        for voter in removed:
            changes.start_soon(functools.partial(try_change, c, node, remove=voter))
    await trio.sleep(rng.uniform(0.0, c.config.election_timeout[1] * 2))
    c.heal()


async def changes_across_leaders_episode(c: KVSimCluster, rng: random.Random) -> None:
    """Two membership changes by two leaders, in Ongaro's schedule (raft-dev, 2015), which
    only the rule that a new leader first commits an entry of its own term makes safe:

    1. with four voters and a learner ``E`` (made so first: voters removed, a node added),
       the leader ``L``, cut off with ``E``, promotes it: an entry only they hold;
    2. the other three voters elect ``B``, which is cut off at once with one of them and
       asked to remove the third, ``D``;
    3. ``L``, ``E`` and ``D`` elect a leader of the five voters; then everything heals.

    With the rule, ``B`` refuses (its term's first entry cannot commit: two of four voters)
    and nothing committed is lost. Without it, ``B`` and its partner commit the three-voter
    configuration while ``L``, ``E`` and ``D`` are a majority of the five-voter one: the
    heal overwrites what ``B`` committed."""
    leader = await everyone_up_and_led(c)
    if leader is None:
        return
    node = c.node(leader)
    bound = c.config.election_timeout[1] * 2
    for _ in range(len(node.configuration.voters) - 4):  # one try each: it may be refused
        others = [i for i in node.configuration.voters if i != leader]
        await try_change(c, node, remove=rng.choice(others))
    if not node.configuration.learners and len(c.ids) < c.initial_voters + MAX_ADDED:
        new = str(len(c.ids))
        await c.add(new)
        await try_change(c, node, add_learner=(new, f"mem://{new}"))
    configuration = node.configuration
    if not node.is_leader or len(configuration.voters) != 4 or not configuration.learners:
        return
    await trio.sleep(c.config.heartbeat_interval * 2)  # the followers learn what committed
    learner = configuration.learners[0]
    rest = [i for i in configuration.voters if i != leader]
    async with trio.open_nursery() as changes:
        c.partition([leader, learner], [i for i in c.ids if i not in (leader, learner)])
        changes.start_soon(functools.partial(try_change, c, node, promote=learner))
        second = await elected(c, rest)
        if second is not None:
            partner, removed = rng.sample([i for i in rest if i != second], 2)
            c.partition([second, partner], [i for i in c.ids if i not in (second, partner)])
            term = c.node(second).term
            changes.start_soon(functools.partial(try_change, c, c.node(second), remove=removed))
            with trio.move_on_after(ELECTION_WAIT):
                await elected_after(c, [leader, learner, removed], term)
            await trio.sleep(rng.uniform(0.0, bound))
        c.heal()


async def try_change(c: KVSimCluster, node: RaftNode, **change: Any) -> None:
    """``node.change_membership(**change)``, given up after two election timeouts; refused,
    not leading, or of unknown fate, the episode goes on."""
    with trio.move_on_after(c.config.election_timeout[1] * 2):
        with contextlib.suppress(RaftError, BadRequest):
            await node.change_membership(**change)


async def everyone_up_and_led(c: KVSimCluster) -> str | None:
    """Start every node that is down and heal the network; the leader they elect (``None``
    after :data:`ELECTION_WAIT`)."""
    for i in c.ids:
        if not c.alive(i):
            await c.start(i)
    c.heal()
    return await elected(c, c.ids)


async def elected_after(c: KVSimCluster, among: list[str], term: int) -> None:
    """Return once a node of ``among`` leads a term after ``term`` (bound it)."""
    async with trio.open_nursery() as watchers:

        async def watch(node: RaftNode) -> None:
            await node.wait_until(lambda n: n.is_leader and n.term > term)
            watchers.cancel_scope.cancel()

        for i in among:
            if c.alive(i):
                watchers.start_soon(watch, c.node(i))


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


async def simulate_run(
    seed: int, nodes: int, clients: int, seconds: float, leader_noop: bool = False
) -> Outcome:
    outcome = Outcome(seed)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        c = KVSimCluster(nursery, nodes, seed, leader_noop=leader_noop)
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
        outcome.restores = sum(machine.restores for _, machine in c.machines)
        outcome.transfers = c.transfers
        outcome.membership_changes = c.membership_changes
        outcome.problems += stale_read_problems(c, outcome.stale_reads)
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
    problems += replica_agreement_problems(c)
    return problems


def replica_agreement_problems(c: KVSimCluster) -> list[str]:
    """Every replica (each incarnation) applied the same op at each log index and answered
    it the same way: the state machine is deterministic and every replica's state, restored
    from a snapshot or not, is the one the log prefix makes."""
    problems = []
    first: dict[tuple[int, int], tuple[str, str, str]] = {}  # (index, nth op) -> who, op, reply
    for name, machine in c.machines:
        for (index, nth), op, reply in numbered(machine.applied):
            who, known_op, known_reply = first.setdefault((index, nth), (name, op, reply))
            if (known_op, known_reply) != (op, reply):
                problems.append(
                    f"{name} applied {op} -> {reply} as op {nth + 1} of entry {index}, "
                    f"{who} applied {known_op} -> {known_reply}"
                )
                break  # the first difference says enough for one replica
    return problems


def numbered(
    applied: list[tuple[int, str, str]],
) -> Iterator[tuple[tuple[int, int], str, str]]:
    """A replica's applied ops, each with its place in the log: (index, nth op of that
    entry, from 0)."""
    nth, last_index = 0, -1
    for index, op, reply in applied:
        nth = nth + 1 if index == last_index else 0
        last_index = index
        yield (index, nth), op, reply


def stale_read_problems(c: KVSimCluster, reads: list[StaleRead]) -> list[str]:
    """Stale reads: on one incarnation, the index a read reflects never goes back; and each
    read answers the state the log's ops (as the replicas applied them) make up to its
    index. Every committed index was applied by some replica (a snapshot is taken by one
    that applied everything before it), so replaying what they applied rebuilds each
    prefix."""
    problems = []
    latest: dict[str, int] = {}
    for read in sorted(reads, key=lambda r: r.order):
        if read.applied_index < latest.get(read.incarnation, 0):
            problems.append(
                f"{read.incarnation} answered a stale read at index {read.applied_index} "
                f"after one at {latest[read.incarnation]}"
            )
        latest[read.incarnation] = max(read.applied_index, latest.get(read.incarnation, 0))
    ops: dict[tuple[int, int], str] = {}
    for _, machine in c.machines:
        for place, op, _ in numbered(machine.applied):
            ops.setdefault(place, op)
    replay = KVMachine()
    in_order = sorted(ops.items())
    done = 0  # ops of in_order replayed
    for read in sorted(reads, key=lambda r: r.applied_index):
        while done < len(in_order) and in_order[done][0][0] <= read.applied_index:
            (index, _), op = in_order[done]
            replay.apply(json.loads(op), index)
            done += 1
        expected = replay.kv.get(read.key)
        if (expected.value, expected.version) != (read.value, read.version):
            problems.append(
                f"{read.incarnation} answered a stale read of {read.key!r} at index "
                f"{read.applied_index} with ({read.value!r}, {read.version}); the log up to "
                f"there makes it ({expected.value!r}, {expected.version})"
            )
    return problems


def log_matching_problems(c: KVSimCluster) -> list[str]:
    """Two logs with an entry of the same index and term hold the same entries up to it
    (compared from past the later of their snapshots)."""
    problems = []
    logs = {i: c.node(i).log for i in c.ids if c.alive(i)}
    for a, b in itertools.combinations(sorted(logs), 2):
        la, lb = logs[a], logs[b]
        start = max(la.snapshot_index, lb.snapshot_index) + 1
        shared = min(la.last_index, lb.last_index)
        same_term = [k for k in range(start, shared + 1) if la.term_at(k) == lb.term_at(k)]
        if same_term and la.slice(start, same_term[-1] + 1) != lb.slice(start, same_term[-1] + 1):
            problems.append(f"logs of {a} and {b} agree at {same_term[-1]} but differ before")
    return problems


def check_seed(
    seed: int, *, nodes: int = 5, clients: int = 4, seconds: float = 10.0, leader_noop: bool = False
) -> Outcome:
    """Run one seed and check it (see the module docstring). ``leader_noop``: every new
    leader appends a no-op entry at once (``RaftConfig.leader_noop``, as
    :class:`~trioraft.KVNode` runs), rather than committing its term with the clients'
    first write."""
    outcome = run_simulation(simulate_run, seed, nodes, clients, seconds, leader_noop, seed=seed)
    outcome.result = check_kv_ops(outcome.operations, timeout=CHECK_TIMEOUT)
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
    parser.add_argument(
        "--leader-noop",
        action="store_true",
        help="new leaders append a no-op at once (as a KVNode runs)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    failed = 0
    for seed in range(args.first, args.first + args.seeds):
        outcome = check_seed(
            seed,
            nodes=args.nodes,
            clients=args.clients,
            seconds=args.seconds,
            leader_noop=args.leader_noop,
        )
        settled = sum(op.ret is not None for op in outcome.operations)
        print(
            f"seed {seed}: {'ok' if outcome.ok else 'FAILED'} "
            f"({len(outcome.operations)} ops, {settled} answered, "
            f"{outcome.virtual_seconds:.1f} virtual s, {outcome.restores} snapshots restored)",
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
                f"{' --leader-noop' if args.leader_noop else ''}"
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
