"""Watch under faults, on a real 3-node cluster over HTTP: lossy links, partitions that come
and go (so leaders change), snapshots (small ``max_raft_state``) and a node restarted from
its snapshot.

The events a watcher receives, across every server it polls, are exactly the committed
changes: compared with the history of a node that was never restarted (which, the window
being large, holds every change since index 0), each stretch of the watch is a gap-free,
duplicate-free run of it, in order; a stretch ends only in ``Compacted`` (a node whose
history starts at a snapshot), after which the watcher reads the current state and goes on
from there. Every acknowledged put is a change of that history, and replaying the history
gives the final state.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest
import trio

from tests.kv_cluster import KVCluster, partitioner
from tests.kvtest import put_at_least_once
from trioraft import ClusterClient, KVError
from trioraft.kv.changes import Change, Compacted
from trioraft.kv.node import KVNode
from trioraft.testing import MIT_UNRELIABLE

pytestmark = pytest.mark.xdist_group("http-cluster")

PREFIX = "w/"
KEYS = [f"{PREFIX}{i}" for i in range(5)]
END = f"{PREFIX}end"  # written once the final state is read: the watcher stops on it


@dataclass
class Stretch:
    """Watch events received after index ``after`` without a break."""

    after: int
    events: list[Change] = field(default_factory=list)


#: Puts acknowledged before the writers may stop (besides the time they run).
ENOUGH_PUTS = 30


async def writer(
    c: KVCluster, me: int, stop: trio.Event, acked: list[str], enough: trio.Event
) -> None:
    kv = c.clerk(name=f"w{me}")
    rng = random.Random(c.seed * 10 + me)
    n = 0
    while not stop.is_set():
        key = rng.choice(KEYS)
        got = await kv.get(key)
        n += 1
        try:
            if rng.random() < 0.75:
                value = f"{me}.{n}"
                await kv.put(key, value, got.version)
                acked.append(value)
                if len(acked) >= ENOUGH_PUTS:
                    enough.set()
            elif got.version:
                await kv.delete(key, got.version)
        except KVError:
            pass  # Version, NoKey or Maybe: nothing to check here


async def watcher(
    c: KVCluster, name: str, servers: list[str] | None, stretches: list[Stretch], ended: trio.Event
) -> None:
    """Watch from 0 through a client of ``servers`` only (all: ``None``); after
    ``Compacted``, read the state again (through any server) and watch on from there."""
    kv = c.clerk(name=name)
    if servers is not None:
        kv = ClusterClient([c.urls[i] for i in servers], client_id=name)
        c.clerks.append(kv)  # closed with the cluster
    reader = c.clerk(name=f"{name}-reader")
    position = 0
    while True:
        stretch = Stretch(position)
        stretches.append(stretch)
        try:
            async with kv.watch(PREFIX, after=position, wait=0.5) as changes:
                async for change in changes:
                    stretch.events.append(change)
                    position = change.index
                    if change.key == END:
                        ended.set()
        except Compacted:
            page = await reader.range(prefix=PREFIX)  # read the state again
            position = page.index
            if any(item.key == END for item in page.items):
                ended.set()  # the end is in the state read: nothing after it to wait for


class Committed:
    """The changes under the prefix, as the nodes applied them: each node's history is
    watched as it records (a node that installs a snapshot, or restarts from one, skips
    entries, but its history starts over there; the others apply them). The nodes must
    agree on every index they both applied."""

    def __init__(self) -> None:
        self.seen: list[dict[int, list[Change]]] = []  # per node run: index -> its changes

    def observe(self, node: KVNode | None) -> None:
        assert node is not None
        history = node.machine.history
        record = history.record
        applied: dict[int, list[Change]] = {}
        self.seen.append(applied)

        def recording(index: int, changes: Iterable[Change] = ()) -> None:
            changes = list(changes)  # the ops of one entry are recorded one by one
            applied.setdefault(index, []).extend(c for c in changes if c.key.startswith(PREFIX))
            record(index, changes)

        history.record = recording  # type: ignore[method-assign]

    def through(self, index: int) -> list[Change]:
        by_index: dict[int, list[Change]] = {}
        for applied in self.seen:
            for i, changes in applied.items():
                assert by_index.setdefault(i, changes) == changes, f"nodes differ at {i}"
        return [c for i in sorted(by_index) if i <= index for c in by_index[i]]


async def test_a_watcher_sees_the_committed_changes_in_order_across_faults(
    make_kv_cluster,
) -> None:
    c = await make_kv_cluster(3, profile=MIT_UNRELIABLE, max_raft_state=1000)
    committed = Committed()
    for node in c.nodes.values():
        committed.observe(node)
    acked: list[str] = []
    stop, enough = trio.Event(), trio.Event()
    restarted = c.ids[-1]
    # One watcher goes wherever it is answered, from the start; the other only to the node
    # restarted from its snapshot, from index 0 once it is back: that node's history starts
    # over at the snapshot, so the watch meets Compacted, reads the state and goes on.
    watchers = {"anywhere": None, "pinned": [restarted]}
    stretches: dict[str, list[Stretch]] = {name: [] for name in watchers}
    ended = {name: trio.Event() for name in watchers}
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                watcher, c, "anywhere", None, stretches["anywhere"], ended["anywhere"]
            )
            async with trio.open_nursery() as load:
                for me in range(4):
                    load.start_soon(writer, c, me, stop, acked, enough)
                load.start_soon(partitioner, c, stop)
                await trio.sleep(4)
                node = c.nodes[restarted]
                assert node is not None
                while node.raft.log.snapshot_index == 0:
                    await node.rsm.wait_next_apply()
                await c.stop(restarted)  # it comes back from its snapshot and log
                await trio.sleep(0.5)
                await c.start(restarted)
                committed.observe(c.nodes[restarted])
                nursery.start_soon(
                    watcher, c, "pinned", [restarted], stretches["pinned"], ended["pinned"]
                )
                await trio.sleep(4)
                await enough.wait()  # a busy machine makes for slow writers
                stop.set()
            c.heal()
            kv = c.clerk(name="final")
            final = await kv.range(prefix=PREFIX)
            assert not final.more
            await put_at_least_once(kv, END, "", 0)  # after the read: the watchers get past it
            for event in ended.values():
                await event.wait()
            nursery.cancel_scope.cancel()

    truth = committed.through(final.index)
    assert len(truth) >= ENOUGH_PUTS, f"{len(truth)} changes: too few to judge"

    # Each stretch is a gap-free, duplicate-free run of the committed changes; the last
    # runs to the final read.
    for name, runs in stretches.items():
        for stretch in runs:
            expected = [change for change in truth if change.index > stretch.after]
            received = [e for e in stretch.events if e.index <= final.index]
            assert received == expected[: len(received)], f"{name}: after {stretch.after}"
        last = runs[-1]
        assert [e for e in last.events if e.index <= final.index] == [
            change for change in truth if change.index > last.after
        ], name
    # Every acknowledged put is a committed change, once; replaying them gives the state.
    put_values = [change.value for change in truth if change.kind == "put"]
    assert all(put_values.count(value) == 1 for value in acked)
    state: dict[str, tuple[str, int]] = {}
    for change in truth:
        if change.kind == "put":
            state[change.key] = (change.value, change.version)
        else:
            state.pop(change.key, None)
    assert state == {item.key: (item.value, item.version) for item in final.items}
    assert len(stretches["pinned"]) > 1, "the pinned watcher never met Compacted"
    runs = {name: len(runs) for name, runs in stretches.items()}
    print(f"{len(truth)} changes, {len(acked)} puts acknowledged, stretches {runs}")
