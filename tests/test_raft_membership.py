"""Membership changes on virtual time: learners added under load and promoted, followers and
the leader removed, a crashed node replaced; the configuration survives restarts and
travels in snapshots.

Every test checks that the nodes applied the same command at each index (the harness's
``check_errors``) and that no acknowledged write is lost.
"""

from __future__ import annotations

import json
import random

import pytest
import trio
import trio.testing

from tests.raft_harness import RaftCluster
from trioraft import BadRequest, LeadershipLost, NotLeader, RaftConfig
from trioraft.raft.log import Entry, Log
from trioraft.raft.membership import (
    CONFIGURATION_PREFIX,
    Configuration,
    MembershipChange,
    MembershipChangeRefused,
    apply_change,
    decode_configuration,
    encode_configuration,
)
from trioraft.raft.node import Applied, RaftNode, SnapshotApplied
from trioraft.raft.storage import (
    FileStorage,
    HardState,
    Snapshot,
    decode_snapshot,
    encode_snapshot,
)
from trioraft.testing import MIT_UNRELIABLE, RELIABLE

pytestmark = pytest.mark.usefixtures("seeded_scheduler")
Clock = trio.testing.MockClock

CONFIG = RaftConfig(election_timeout=(0.3, 0.6), leader_noop=True)
#: Long enough for a few elections and a learner's catch-up on virtual time.
LIMIT = 60


class MembershipCluster(RaftCluster):
    """The raft harness, snapshotting (optionally) every ``snapshot_every`` entries with
    the applied commands as a dict (a no-op or configuration entry leaves a gap)."""

    snapshot_every = 0

    async def consume(self, i: str, node: RaftNode) -> None:
        applied: dict[int, str] = {}
        async for message in node.applied:
            if isinstance(message, SnapshotApplied):
                applied = {int(k): v for k, v in json.loads(message.data).items()}
                self.logs[i] = dict(applied)
            else:
                assert isinstance(message, Applied)
                if message.command.startswith("\x00"):
                    self.errors.append(f"{i} applied Raft's own entry {message.index}")
                for other in self.ids:
                    theirs = self.logs[other].get(message.index)
                    if theirs is not None and theirs != message.command:
                        self.errors.append(
                            f"index {message.index}: {i} applied {message.command!r}, "
                            f"{other} {theirs!r}"
                        )
                applied[message.index] = message.command
                self.logs[i][message.index] = message.command
                if self.snapshot_every and len(applied) % self.snapshot_every == 0:
                    await node.snapshot(message.index, json.dumps(applied).encode())
            self.applied_event.set()
            self.applied_event = trio.Event()


async def start(
    nursery: trio.Nursery, seed: int, n: int = 3, *, snapshot_every: int = 0
) -> MembershipCluster:
    cluster = MembershipCluster(nursery, n, seed, config=CONFIG)
    cluster.snapshot_every = snapshot_every
    await cluster.start_all()
    return cluster


def voters(c: RaftCluster) -> list[str]:
    """The voters as a live leader (else any live node) sees them."""
    nodes = [c.nodes[i] for i in c.ids if c.nodes[i] is not None]
    leaders = [n for n in nodes if n is not None and n.is_leader]
    node = (leaders or nodes)[0]
    assert node is not None
    return list(node.configuration.voters)


def made(configuration: Configuration, **kwargs) -> bool:
    """Whether ``configuration`` reflects the change ``kwargs`` describes."""
    if "add_learner" in kwargs:
        return kwargs["add_learner"][0] in configuration.members
    if "promote" in kwargs:
        return kwargs["promote"] in configuration.voters
    return kwargs["remove"] not in configuration.members


async def change(c: RaftCluster, **kwargs) -> Configuration:
    """Make one membership change through whichever node leads, retrying while the leader
    changes or refuses; an attempt whose outcome was unknown may have committed, so the
    leader's committed configuration is checked first, and a retry that finds the change
    made (``BadRequest``, once the new leader's first commit brought it) returns it."""
    while True:
        leader = c.node(await c.wait_leader(among=[i for i in c.ids if c.alive(i)]))
        committed = leader._core.configuration_at(leader.commit_index)
        if leader.is_leader and made(committed, **kwargs):
            return committed
        try:
            return await leader.change_membership(**kwargs)
        except (NotLeader, LeadershipLost):
            pass
        except MembershipChangeRefused:
            await trio.sleep(0.05)
        except BadRequest:
            if not made(leader._core.configuration_at(leader.commit_index), **kwargs):
                raise


async def commit(c: RaftCluster, command: str, members: list[str]) -> int:
    """Get ``command`` committed through the leader and applied by every node of
    ``members`` (seen by the harness); its index."""
    while True:
        leader = c.node(await c.wait_leader(among=[i for i in c.ids if c.alive(i)]))
        index, term, ok = leader.submit(command)
        if not ok:
            await trio.sleep(0.01)
            continue
        try:
            await leader.wait_committed(index, term)
        except LeadershipLost:
            continue
        while any(c.logs[i].get(index) != command for i in members):
            await c.applied_event.wait()
        return index


def check_acknowledged(c: RaftCluster, acknowledged: list[tuple[int, str]], on: list[str]):
    c.check_errors()
    for index, command in acknowledged:
        for i in on:
            assert c.logs[i].get(index) == command, f"{i} lost {command!r} at {index}"


async def write_load(c: RaftCluster, members: list[str], acknowledged, stop: trio.Event):
    n = 0
    while not stop.is_set():
        command = f"w{n}"
        n += 1
        acknowledged.append((await commit(c, command, members), command))


async def test_a_learner_added_under_load_catches_up_and_counts_once_promoted(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    c = await start(nursery, seed)
    acknowledged: list[tuple[int, str]] = []
    with trio.fail_after(LIMIT):
        await commit(c, "first", c.ids)
        stop = trio.Event()
        async with trio.open_nursery() as load:
            load.start_soon(write_load, c, ["0", "1", "2"], acknowledged, stop)
            await trio.sleep(0.5)
            await c.add("3")
            added = await change(c, add_learner=("3", "mem://3"))
            assert added.voters == ("0", "1", "2") and added.learners == ("3",)
            await trio.sleep(0.5)
            stop.set()
        learner = c.node("3")
        leader = c.node(await c.wait_leader())
        await learner.wait_applied(leader.commit_index)  # it caught up, under load
        assert learner.configuration == added and learner.term == leader.term
        assert learner.metrics.elections == 0
        for i in ("0", "1", "2"):  # every member's transport was told where 3 is
            assert c.node(i)._transport.addresses == {"3": "mem://3"}
        # A learner's acknowledgements do not commit: with two voters down, nothing does.
        followers = [i for i in ("0", "1", "2") if i != leader.id]
        for i in followers:
            c.crash(i)
        index, _term, ok = leader.submit("not-committed")
        assert ok
        with trio.move_on_after(2 * CONFIG.election_timeout[1]):
            await learner.wait_until(lambda n: n.log.last_index >= index)
            await leader.wait_until(lambda n: n.commit_index >= index)
        assert learner.log.last_index >= index  # the learner holds it ...
        assert leader.commit_index < index  # ... and yet it did not commit
        for i in followers:
            await c.start(i)
        await commit(c, "back", ["0", "1", "2", "3"])
        promoted = await change(c, promote="3")
        assert promoted.voters == ("0", "1", "2", "3") and promoted.learners == ()
        # Now it counts: with one of the old voters down, 3 of 4 voters still commit.
        leader_id = await c.wait_leader()
        down = next(i for i in ("0", "1", "2") if i != leader_id)
        c.crash(down)
        alive = [i for i in c.ids if i != down]
        acknowledged.append((await commit(c, "promoted", alive), "promoted"))
    assert len(acknowledged) > 5
    check_acknowledged(c, acknowledged, alive)


async def test_a_removed_follower_leaves_and_stops_campaigning(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    calls_from: dict[str, int] = {}

    def count(line: str) -> None:  # "call N a->b: Fate(...)"
        caller = line.split()[2].split("->")[0]
        calls_from[caller] = calls_from.get(caller, 0) + 1

    c = MembershipCluster(nursery, 3, seed, config=CONFIG, log=count)
    await c.start_all()
    with trio.fail_after(LIMIT):
        leader_id = await c.wait_leader()
        await commit(c, "x", c.ids)
        gone = next(i for i in c.ids if i != leader_id)
        rest = [i for i in c.ids if i != gone]
        after = await change(c, remove=gone)
        assert after.voters == tuple(i for i in c.ids if i != gone)
        removed = c.node(gone)
        with trio.fail_after(1):
            await removed.wait_until(lambda n: gone not in n.configuration.voters)
        # It hears from nobody now: it would time out, but never campaigns.
        before = calls_from.get(gone, 0)
        await trio.sleep(10 * CONFIG.election_timeout[1])
        assert calls_from.get(gone, 0) == before and removed.metrics.elections == 0
        assert c.node(leader_id).peers == [i for i in rest if i != leader_id]
        # The cluster goes on with the rest, even once the removed node is gone.
        c.crash(gone)
        acknowledged = [(await commit(c, f"y{k}", rest), f"y{k}") for k in range(5)]
    check_acknowledged(c, acknowledged, rest)


async def test_removing_the_leader_hands_over_first_and_the_new_leader_removes_it(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    """``change_membership(remove=own id)`` on the leader transfers leadership to another
    voter and raises NotLeader naming it, having proposed nothing; the retry there removes
    the old leader, which never campaigns again; nothing acknowledged is lost."""
    c = await start(nursery, seed)
    acknowledged: list[tuple[int, str]] = []
    with trio.fail_after(LIMIT):
        stop = trio.Event()
        await commit(c, "first", c.ids)
        old_id = await c.wait_leader()
        old = c.node(old_id)
        rest = [i for i in c.ids if i != old_id]
        async with trio.open_nursery() as load:
            # Applied by those who stay (the old leader hears nothing past its removal).
            load.start_soon(write_load, c, rest, acknowledged, stop)
            await trio.sleep(0.5)
            assert old.is_leader
            campaigns = old.metrics.elections
            last_configuration_entry = old._core.history.latest_index
            with pytest.raises(NotLeader) as handed:
                await old.change_membership(remove=old_id)
            new_id = handed.value.leader
            assert new_id in rest and not old.is_leader
            assert c.node(new_id).leader_id == new_id  # it leads already: a handover
            # The old leader proposed nothing: the configuration is the one before.
            assert old.configuration.voters == tuple(c.ids)
            assert c.node(new_id)._core.history.latest_index == last_configuration_entry
            after = await change(c, remove=old_id)  # the retry, at the new leader
            assert after.voters == tuple(rest)
            stop.set()
        new_id = await c.wait_leader(among=rest)
        assert new_id in rest
        await commit(c, "after", rest)
        await trio.sleep(5 * CONFIG.election_timeout[1])
        assert old.metrics.elections == campaigns and not old.is_leader  # no more campaigns
        assert voters(c) == rest
        # The new leader's log holds every write acknowledged before.
        new = c.node(new_id)
        for index, _command in acknowledged:
            assert new.log.term_at(index) is not None
    check_acknowledged(c, acknowledged, rest)


async def test_a_new_leader_asked_for_a_change_waits_for_its_first_commit(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    """A leader that has not yet committed an entry of its term makes a change once its
    no-op commits, rather than refusing it: a client sent on by ``NotLeader`` (as when the
    old leader removes itself) reaches the new leader at just that moment."""
    c = await start(nursery, seed)
    with trio.fail_after(LIMIT):
        await commit(c, "first", c.ids)
        old_id = await c.wait_leader()
        new_id = next(i for i in c.ids if i != old_id)
        new = c.node(new_id)
        async with trio.open_nursery() as handover:
            handover.start_soon(c.node(old_id).transfer_leadership, new_id)
            await new.wait_leading()
            assert not new._core.committed_in_term()  # else this test shows nothing
            after = await new.change_membership(remove=old_id)
        assert after.voters == tuple(i for i in c.ids if i != old_id)
        assert new.is_leader and new._core.committed_in_term()
    c.check_errors()


async def test_a_crashed_node_is_replaced_by_a_fresh_one(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    c = await start(nursery, seed, snapshot_every=7)  # the fresh node gets a snapshot
    acknowledged: list[tuple[int, str]] = []
    with trio.fail_after(LIMIT):
        for k in range(20):
            acknowledged.append((await commit(c, f"a{k}", c.ids), f"a{k}"))
        leader_id = await c.wait_leader()
        dead = next(i for i in c.ids if i != leader_id)
        c.wipe(dead)  # its disk is gone too
        survivors = [i for i in c.ids if i != dead]
        await change(c, remove=dead)
        await c.add("3")
        c.disconnect("3")  # it comes up after its entry is in the leaders' snapshots
        added = await change(c, add_learner=("3", "mem://3"))
        added_by = max(c.node(i).commit_index for i in survivors)  # its entry, or later
        for k in range(10):  # each node snapshots every 7 entries: past ``added_by``
            acknowledged.append((await commit(c, f"b{k}", survivors), f"b{k}"))
        c.connect("3")
        stop = trio.Event()
        members = [*survivors, "3"]
        async with trio.open_nursery() as load:
            load.start_soon(write_load, c, survivors, acknowledged, stop)
            leader = c.node(await c.wait_leader())
            fresh = c.node("3")
            await fresh.wait_applied(leader.commit_index)
            # It was sent a snapshot past its own entry: the snapshot said it is a learner.
            assert fresh.log.snapshot_index >= added_by
            assert fresh.configuration == added
            await change(c, promote="3")
            stop.set()
        assert voters(c) == members
        assert fresh.configuration.voters == tuple(members)
        # The replacement counts: with another original node down, 2 of 3 commit.
        leader_id = await c.wait_leader()
        other = next(i for i in survivors if i != leader_id)
        c.crash(other)
        alive = [i for i in members if i != other]
        acknowledged.append((await commit(c, "replaced", alive), "replaced"))
    check_acknowledged(c, acknowledged, alive)


async def test_the_configuration_survives_restarts_from_log_and_snapshot(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    c = await start(nursery, seed, snapshot_every=5)
    with trio.fail_after(LIMIT):
        await commit(c, "x", c.ids)
        await c.add("3")
        await change(c, add_learner=("3", "mem://3"))
        await change(c, promote="3")
        await change(c, remove="2")
        c.crash("2")
        members = ["0", "1", "3"]
        for k in range(12):  # the configuration entries are compacted into snapshots
            await commit(c, f"y{k}", members)
        expected = c.node("0").configuration
        assert all(c.node(i).log.snapshot_index >= 6 for i in members)
        for i in members:
            c.crash(i)
        for i in members:
            await c.start(i)
        for i in members:
            assert c.node(i).configuration == expected, i
        assert expected.voters == ("0", "1", "3") and expected.addresses == {"3": "mem://3"}
        await commit(c, "z", members)
    c.check_errors()


def test_snapshots_keep_the_configuration_and_old_ones_still_load() -> None:
    configuration = Configuration(("a", "b"), ("c",), {"c": "tcp://127.0.0.1:9"})
    snapshot = Snapshot(7, 2, b"state", configuration)
    assert decode_snapshot(encode_snapshot(snapshot)) == snapshot
    assert decode_snapshot(encode_snapshot(Snapshot(7, 2, b"state"))) == Snapshot(7, 2, b"state")
    old_format = (7).to_bytes(8, "little") + (2).to_bytes(8, "little") + b"state"
    assert decode_snapshot(old_format) == Snapshot(7, 2, b"state", None)


def test_configuration_entries_carry_client_urls_and_old_ones_still_load() -> None:
    added = apply_change(
        Configuration(("a", "b")),
        MembershipChange(add_learner=("c", "tcp://c:1"), client_url="http://c:2"),
    )
    assert added.client_urls == {"c": "http://c:2"} and added.addresses == {"c": "tcp://c:1"}
    assert decode_configuration(encode_configuration(added)) == added
    assert apply_change(added, MembershipChange(promote="c")).client_urls == added.client_urls
    snapshot = Snapshot(7, 2, b"state", added)
    assert decode_snapshot(encode_snapshot(snapshot)).configuration == added
    # An entry written before client URLs were kept loads without any.
    old = CONFIGURATION_PREFIX + '{"voters":["a","b"],"learners":["c"],"addresses":{"c":"x"}}'
    assert decode_configuration(old) == Configuration(("a", "b"), ("c",), {"c": "x"})
    # A removal drops the member's client URL with its address.
    assert apply_change(added, MembershipChange(remove="c")).client_urls == {}
    with pytest.raises(BadRequest):
        MembershipChange(promote="c", client_url="http://c:2")
    with pytest.raises(ValueError):
        Configuration.from_json({"voters": ["a"], "client_urls": {"a": 1}})


async def test_a_file_storage_snapshot_keeps_the_configuration(tmp_path) -> None:
    configuration = Configuration(("a", "b"), ("c",), {"c": "http://c"})
    storage = FileStorage(tmp_path / "a")
    storage.load()
    await storage.save_hard_state(HardState(2))
    log = Log(3, 2)
    log.append([Entry(2, "x")])
    await storage.save_snapshot(Snapshot(3, 2, b"state", configuration), log)
    storage.close()
    reopened = FileStorage(tmp_path / "a")
    loaded = reopened.load()
    reopened.close()
    assert loaded.snapshot is not None and loaded.snapshot.configuration == configuration


async def test_a_node_is_replaced_while_the_network_is_lossy_and_partitions_come_and_go(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    c = MembershipCluster(nursery, 3, seed, config=CONFIG, profile=MIT_UNRELIABLE)
    c.snapshot_every = 9
    await c.start_all()
    acknowledged: list[tuple[int, str]] = []
    rng = random.Random(seed)
    with trio.fail_after(10 * LIMIT):
        stop = trio.Event()
        members = ["0", "1", "2"]

        async def partitions() -> None:
            while not stop.is_set():
                await trio.sleep(rng.uniform(0.5, 1.5))
                cut = rng.choice(sorted(members))
                c.disconnect(cut)
                await trio.sleep(rng.uniform(0.2, 1.0))
                c.connect(cut)

        async with trio.open_nursery() as chaos:
            chaos.start_soon(partitions)
            for k in range(10):
                acknowledged.append((await commit(c, f"a{k}", []), f"a{k}"))
            dead = rng.choice(members)
            c.wipe(dead)
            members.remove(dead)
            await change(c, remove=dead)
            await c.add("3")
            await change(c, add_learner=("3", "mem://3"))
            members.append("3")
            for k in range(10):
                acknowledged.append((await commit(c, f"b{k}", []), f"b{k}"))
            await change(c, promote="3")
            for k in range(10):
                acknowledged.append((await commit(c, f"c{k}", []), f"c{k}"))
            stop.set()
        c.heal()
        c.network.set_profile(RELIABLE)
        await commit(c, "end", members)
        assert voters(c) == sorted(members)
    check_acknowledged(c, acknowledged, members)
