"""RaftNode behaviours below the scenario level: cancellation safety, the public API."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from tests.raft_harness import SlowSnapshotDisk, start_cluster
from tests.task_steps import TaskSteps
from trioraft import (
    Applied,
    LeadershipLost,
    MemoryStorage,
    NotLeader,
    RaftConfig,
    RaftNode,
    SnapshotApplied,
)
from trioraft.raft.log import Entry
from trioraft.raft.messages import AppendEntriesArgs
from trioraft.testing import Profile

Clock = trio.testing.MockClock


class SlowSync(MemoryStorage):
    """A disk whose fsync takes a second (of virtual time)."""

    async def sync(self) -> None:
        await trio.sleep(1)
        await super().sync()


class NoPeers:
    async def call(self, peer, method, args, reply_type):
        raise AssertionError("a one-node cluster calls nobody")


def single_node(
    storage: MemoryStorage, apply_buffer: int = 0, config: RaftConfig | None = None
) -> RaftNode:
    return RaftNode(
        "a",
        ["a"],
        storage,
        NoPeers(),
        config=config or RaftConfig(),
        rng=random.Random(1),
        apply_buffer=apply_buffer,
    )


async def test_cancelled_append_keeps_storage_bookkeeping_exact(autojump_clock: Clock) -> None:
    storage = SlowSync()
    node = single_node(storage, config=RaftConfig(sync_inline=False))
    entries = [Entry(1, "e1"), Entry(1, "e2")]
    with trio.move_on_after(0.5):  # cancelled while the follower syncs
        await node.handle_append_entries(AppendEntriesArgs(1, "b", 0, 0, entries, 0))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        nursery.start_soon(drain, node)
        with trio.fail_after(10):
            await node.wait_until(lambda n: n.is_leader)
            index, term, ok = node.submit("x")
            assert ok and index == 3
            await node.wait_committed(index, term)
        nursery.cancel_scope.cancel()
    assert [e.command for _, e in storage._durable] == ["e1", "e2", "x"]


class NoAsyncSync(MemoryStorage):
    """A disk whose worker-thread fsync never returns: only ``sync_blocking`` works."""

    async def sync(self) -> None:
        await trio.sleep_forever()


@pytest.mark.parametrize("inline", [True, False])
async def test_follower_replies_only_once_its_entries_are_durable(
    autojump_clock: Clock, inline: bool
) -> None:
    storage = NoAsyncSync() if inline else SlowSync()
    node = single_node(storage, config=RaftConfig(sync_inline=inline))
    entries = [Entry(1, "e1"), Entry(1, "e2")]
    with trio.fail_after(5):
        reply = await node.handle_append_entries(AppendEntriesArgs(1, "b", 0, 0, entries, 0))
    assert reply.success and reply.match_index == 2
    assert [e.command for e in storage.crashed().load().log.entries] == ["e1", "e2"]


async def drain(node: RaftNode) -> None:
    async for _ in node.applied:
        pass


async def test_single_node_commits_and_applies_in_order(autojump_clock: Clock) -> None:
    node = single_node(MemoryStorage())
    assert node.submit("early") == (0, 0, False)
    with pytest.raises(NotLeader):
        node.submit_many(["early"])
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await node.wait_until(lambda n: n.is_leader)
        first, term = node.submit_many([f"c{i}" for i in range(5)])
        seen = []
        async for message in node.applied:
            seen.append((message.index, message.command))
            if message.index == first + 4:
                break
        assert seen == [(first + i, f"c{i}") for i in range(5)]
        await node.wait_committed(first + 4, term)
        await node.wait_applied(first + 4)  # recorded once the hand-off completes
        stats = node.statistics()
        assert (stats.role, stats.commit_index, stats.last_applied) == ("leader", 5, 5)
        nursery.cancel_scope.cancel()


async def test_propose_with_is_called_by_the_leader_tasks_and_when_leadership_ends(
    autojump_clock: Clock,
) -> None:
    node = single_node(MemoryStorage())
    queue: list[str] = []
    refused: list[str] = []

    def propose() -> None:
        while queue:
            command = queue.pop(0)
            if not node.submit(command)[2]:
                refused.append(command)

    node.propose_with(propose)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        nursery.start_soon(drain, node)
        await node.wait_until(lambda n: n.is_leader)
        term = node.term
        queue.append("a")
        node.wake_leader()  # no task of ours submits it: the leader's own tasks do
        with trio.fail_after(1):
            await node.wait_until(lambda n: n.commit_index == 1 and n.log.entry(1).command == "a")
        queue.append("b")  # queued, then leadership ends before a leader task looks
        await node.handle_append_entries(AppendEntriesArgs(term + 1, "z", 1, term, [], 0))
        assert node.role.value == "follower"
        with trio.fail_after(1):
            await node.wait_until(lambda n: refused == ["b"])
        assert node.log.last_index == 1
        nursery.cancel_scope.cancel()


async def test_a_deposed_leader_writes_and_syncs_what_it_had_only_in_memory(
    autojump_clock: Clock,
) -> None:
    storage = MemoryStorage()
    node = single_node(storage)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await node.wait_until(lambda n: n.is_leader)
        term = node.term
        assert node.submit("x")[2]  # in the log at once, written to storage by the syncer later
        # Before the syncer runs, a new leader that has "x" adds "y" after it.
        args = AppendEntriesArgs(term + 1, "b", 1, term, [Entry(term + 1, "y")], 0)
        reply = await node.handle_append_entries(args)
        assert reply.success and reply.match_index == 2
        # A success reply claims entries up to match_index are durable: they must be.
        assert [e.command for e in storage.crashed().load().log.entries] == ["x", "y"]
        nursery.cancel_scope.cancel()


async def test_buffered_hand_out_is_in_order_and_counts_only_what_was_handed_out(
    autojump_clock: Clock,
) -> None:
    node = single_node(MemoryStorage(), apply_buffer=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await node.wait_until(lambda n: n.is_leader)
        first, term = node.submit_many([f"c{i}" for i in range(10)])
        await node.wait_committed(first + 9, term)
        await trio.testing.wait_all_tasks_blocked()
        # Nobody has read yet: the buffer holds four entries and the applier waits with the
        # fifth, so nothing beyond the fourth counts as handed out.
        assert node.last_applied == first + 3
        with pytest.raises(ValueError):
            await node.snapshot(first + 6, b"state")
        fifth_out = trio.Event()

        async def wait_for_fifth() -> None:
            await node.wait_applied(first + 4)
            fifth_out.set()

        nursery.start_soon(wait_for_fifth)
        await trio.testing.wait_all_tasks_blocked()
        seen = [(await node.applied.receive()).command]
        await trio.testing.wait_all_tasks_blocked()
        # The fifth went into the buffer and the applier blocked again on the sixth: waiters
        # must hear of the fifth before that.
        assert fifth_out.is_set()
        seen += [(await node.applied.receive()).command for _ in range(9)]
        assert seen == [f"c{i}" for i in range(10)]
        await node.wait_applied(first + 9)
        nursery.cancel_scope.cancel()


async def test_apply_callback_sees_every_entry_in_order_and_can_compact(
    autojump_clock: Clock,
) -> None:
    node = single_node(MemoryStorage())
    seen: list[tuple[int, str]] = []

    def apply(message: Applied | SnapshotApplied) -> bytes | None:
        assert isinstance(message, Applied)
        seen.append((message.index, message.command))
        return b"state" if message.index == 3 else None  # compact once, at entry 3

    node.apply_with(apply)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await node.wait_until(lambda n: n.is_leader)
        first, _ = node.submit_many([f"c{i}" for i in range(5)])
        await node.wait_applied(first + 4)
        assert seen == [(first + i, f"c{i}") for i in range(5)]
        assert node.statistics().snapshot_index == 3
        with pytest.raises(trio.WouldBlock):  # the channel stays unused
            node.applied.receive_nowait()
        nursery.cancel_scope.cancel()


async def test_a_long_run_of_applies_lets_other_tasks_in(autojump_clock: Clock) -> None:
    node = single_node(MemoryStorage())
    node.apply_with(lambda message: None)
    seen: list[int] = []

    async def watch() -> None:
        while True:
            seen.append(node.last_applied)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await node.wait_until(lambda n: n.is_leader)
        first, _ = node.submit_many([f"c{i}" for i in range(2000)])
        nursery.start_soon(watch)
        await node.wait_applied(first + 1999)
        assert any(first < s < first + 1999 for s in seen), "the applier never yielded"
        nursery.cancel_scope.cancel()


async def test_the_leader_applies_in_the_task_that_commits(autojump_clock: Clock) -> None:
    """No hand-off to the applier task between the commit and the apply on the leader."""
    node = single_node(MemoryStorage())
    appliers: list[str] = []
    node.apply_with(lambda message: appliers.append(trio.lowlevel.current_task().name))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await node.wait_until(lambda n: n.is_leader)
        for k in range(5):
            index, term, ok = node.submit(f"c{k}")
            assert ok
            await node.wait_committed(index, term)
            assert node.last_applied == index  # applied along with the commit
        assert len(appliers) == 5
        assert not any(name.endswith("._applier") for name in appliers), appliers
        nursery.cancel_scope.cancel()


async def test_the_leader_s_applier_sleeps_while_the_leader_applies_as_it_commits(
    autojump_clock: Clock,
) -> None:
    node = single_node(MemoryStorage())
    node.apply_with(lambda message: None)
    applier = TaskSteps(lambda name: name.endswith("._applier"))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await node.wait_until(lambda n: n.is_leader)
        await node.wait_applied(node.commit_index)
        trio.lowlevel.add_instrument(applier)
        for k in range(20):
            index, term, ok = node.submit(f"c{k}")
            assert ok
            await node.wait_committed(index, term)
        trio.lowlevel.remove_instrument(applier)
        assert applier.steps == 0
        nursery.cancel_scope.cancel()


async def test_waiting_to_lead_does_not_wake_for_each_commit(autojump_clock: Clock) -> None:
    async def wait_to_lead(node: RaftNode, led: trio.Event) -> None:
        await node.wait_leading()
        led.set()

    waiter = TaskSteps(lambda name: name.endswith(".wait_to_lead"))
    led = trio.Event()
    async with trio.open_nursery() as nursery:
        cluster = await start_cluster(nursery, 3, 6)
        leader = await cluster.check_one_leader()
        follower = next(i for i in cluster.ids if i != leader)
        trio.lowlevel.add_instrument(waiter)
        nursery.start_soon(wait_to_lead, cluster.node(follower), led)
        for k in range(20):
            await cluster.one(f"c{k}", 3, retry=False)
        assert waiter.steps == 1 and not led.is_set()  # its start only
        await cluster.node(leader).transfer_leadership(follower)
        with trio.fail_after(5):
            await led.wait()
        assert cluster.node(follower).is_leader
        trio.lowlevel.remove_instrument(waiter)
        nursery.cancel_scope.cancel()


async def test_an_idle_leader_sends_each_follower_a_heartbeat_per_interval(
    autojump_clock: Clock,
) -> None:
    config = RaftConfig()
    async with trio.open_nursery() as nursery:
        cluster = await start_cluster(nursery, 3, 7, config=config)
        leader = await cluster.check_one_leader()
        await cluster.one("warm", 3, retry=False)
        before = dict(cluster.network.rpc_count)
        await trio.sleep(20 * config.heartbeat_interval)
        for follower in (i for i in cluster.ids if i != leader):
            calls = cluster.network.rpc_count[follower] - before.get(follower, 0)
            assert 18 <= calls <= 21, (follower, calls)
        assert await cluster.check_one_leader() == leader  # nobody campaigned meanwhile
        nursery.cancel_scope.cancel()


async def test_applies_on_the_leader_stay_in_order_around_the_snapshots_they_ask_for(
    autojump_clock: Clock,
) -> None:
    """Each entry once, in order, and the log compacted at an entry that asked for it
    before the next one is applied, whichever task applies them."""
    node = single_node(MemoryStorage())
    applied: list[int] = []

    def apply(message: Applied | SnapshotApplied) -> bytes | None:
        assert isinstance(message, Applied)
        if applied and applied[-1] % 3 == 0:
            assert node.log.snapshot_index == applied[-1]  # compacted before this one
        applied.append(message.index)
        return f"state@{message.index}".encode() if message.index % 3 == 0 else None

    node.apply_with(apply)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await node.wait_until(lambda n: n.is_leader)
        last = 0
        for k in range(20):  # alone, and in runs that commit together
            first, term = node.submit_many([f"c{k}-{i}" for i in range(k % 4 + 1)])
            last = first + k % 4
            if k % 2:
                await node.wait_committed(last, term)
        await node.wait_applied(last)
        assert applied == list(range(1, last + 1))
        nursery.cancel_scope.cancel()


async def test_wait_term_change_returns_once_the_term_moves(autojump_clock: Clock) -> None:
    node = single_node(MemoryStorage())
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        nursery.start_soon(drain, node)
        with trio.move_on_after(0.1):
            await node.wait_term_change(0)
            pytest.fail("the term moved before the election timeout")
        with trio.fail_after(5):  # the single node campaigns once its timeout passes
            await node.wait_term_change(0)
        assert node.term == 1
        nursery.cancel_scope.cancel()


async def test_waiters_learn_that_the_node_stopped(autojump_clock: Clock) -> None:
    node = single_node(SlowSync(), config=RaftConfig(sync_inline=False))  # a slow thread fsync
    outcome: list[str] = []
    submitted = trio.Event()

    async def waiter() -> None:
        await submitted.wait()
        try:
            await node.wait_committed(index, term)
            outcome.append("committed")
        except LeadershipLost:
            outcome.append("lost")

    async with trio.open_nursery() as outside:
        outside.start_soon(waiter)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await node.wait_until(lambda n: n.is_leader)
            index, term, _ = node.submit("never")
            submitted.set()
            await trio.sleep(0.1)  # the leader's fsync is still running
            nursery.cancel_scope.cancel()
    assert outcome == ["lost"]


async def test_proposals_during_a_snapshot_save_stay_durable(autojump_clock: Clock) -> None:
    storage = SlowSnapshotDisk()
    node = single_node(storage)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        nursery.start_soon(drain, node)
        await node.wait_until(lambda n: n.is_leader)
        first, term = node.submit_many([f"before-{k}" for k in range(30)])
        await node.wait_committed(first + 29, term)
        await node.wait_applied(first + 29)
        async with trio.open_nursery() as saving:
            saving.start_soon(node.snapshot, 20, b"state@20")
            await trio.sleep(0.5)  # the save is under way
            more, term = node.submit_many([f"during-{k}" for k in range(10)])
        with trio.fail_after(5):
            await node.wait_committed(more + 9, term)
        nursery.cancel_scope.cancel()
    durable = [e.command for _, e in storage.crashed()._durable]
    assert durable == [f"before-{k}" for k in range(20, 30)] + [f"during-{k}" for k in range(10)]


async def test_snapshot_beyond_what_was_handed_out_is_refused(autojump_clock: Clock) -> None:
    node = single_node(MemoryStorage())
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await node.wait_until(lambda n: n.is_leader)
        first, term = node.submit_many(["a", "b", "c"])
        await node.wait_committed(first + 2, term)
        message = await node.applied.receive()
        assert message.index == first
        with pytest.raises(ValueError, match="handed to the application"):
            await node.snapshot(first + 2, b"state I cannot have")
        await node.snapshot(first, b"state@1")  # what it did receive is fine
        nursery.cancel_scope.cancel()


def durable_last_index(storage: MemoryStorage) -> int:
    """The last log index that a crash of this storage would keep."""
    return storage.crashed().load().log.last_index


@pytest.mark.parametrize("grace", [0.005, 0.0])
async def test_the_leader_fsyncs_only_what_its_followers_do_not_commit_first(
    autojump_clock: Clock, grace: float
) -> None:
    async with trio.open_nursery() as nursery:
        # (Without sync_inline: one op at a time, each a lone entry, would be fsynced at once.)
        config = RaftConfig(leader_sync_grace=grace, sync_inline=False)
        cluster = await start_cluster(nursery, 3, 1, config=config)
        leader = await cluster.check_one_leader()
        indexes = [await cluster.one(f"c{k}", 3, retry=False) for k in range(5)]
        if grace:  # two followers that fsync and answer at once commit each entry alone
            assert durable_last_index(cluster.storages[leader]) < indexes[0]
        else:
            assert durable_last_index(cluster.storages[leader]) >= indexes[-1]
        # The leader's crash loses what it never synced from its own disk, not from the
        # cluster: the followers hold every committed entry durably.
        cluster.crash(leader)
        await cluster.start(leader)
        await cluster.one("after", 3, retry=True)
        assert [cluster.n_committed(i) for i in indexes] == [(3, f"c{k}") for k in range(5)]
        cluster.check_errors()
        nursery.cancel_scope.cancel()


async def test_the_leader_fsyncs_at_once_when_its_followers_cannot_commit_alone(
    autojump_clock: Clock,
) -> None:
    config = RaftConfig(leader_sync_grace=60.0)  # a wait would show
    async with trio.open_nursery() as nursery:
        cluster = await start_cluster(nursery, 3, 2, config=config)
        leader = await cluster.check_one_leader()
        await cluster.one("warm", 3, retry=False)
        follower = next(i for i in cluster.ids if i != leader)
        cluster.disconnect(follower)
        await trio.sleep(3 * config.heartbeat_interval)  # it is no longer counted as answering
        with trio.fail_after(1):
            index = await cluster.one("x", 2, retry=False)
        assert durable_last_index(cluster.storages[leader]) >= index
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("inline", [False, True])
async def test_the_leader_fsyncs_after_the_grace_when_a_follower_goes_quiet(
    autojump_clock: Clock, inline: bool
) -> None:
    """A batch the followers do not commit within the grace is fsynced by the leader then;
    a lone entry (one proposal, nothing else uncommitted) at once, so it commits with the
    one follower still answering, without waiting out the grace."""
    config = RaftConfig(leader_sync_grace=0.05, sync_inline=inline)
    async with trio.open_nursery() as nursery:
        cluster = await start_cluster(nursery, 3, 3, config=config)
        leader = await cluster.check_one_leader()
        await cluster.one("warm", 3, retry=False)
        follower = next(i for i in cluster.ids if i != leader)
        cluster.disconnect(follower)  # still counted as answering: it answered just now
        node = cluster.node(leader)
        index, term, ok = node.submit("x")
        assert ok
        start = trio.current_time()
        await node.wait_committed(index, term)
        took = trio.current_time() - start
        if inline:
            assert took < config.leader_sync_grace / 2
        else:
            assert config.leader_sync_grace <= took < 0.1
        assert durable_last_index(cluster.storages[leader]) >= index
        nursery.cancel_scope.cancel()


async def test_the_leader_stops_waiting_for_followers_slower_than_the_grace(
    autojump_clock: Clock,
) -> None:
    async with trio.open_nursery() as nursery:
        cluster = await start_cluster(nursery, 3, 4, config=RaftConfig(leader_sync_grace=0.005))
        cluster.network.set_profile(Profile(delay=(0.02, 0.02)))  # each call takes 20 ms
        leader = await cluster.check_one_leader()
        for k in range(10):  # the leader learns how slow its followers are
            await cluster.one(f"c{k}", 3, retry=False)
        index, _, ok = cluster.node(leader).submit("x")
        assert ok
        await trio.sleep(0.001)  # well within the grace, long before any follower answers
        assert durable_last_index(cluster.storages[leader]) >= index
        nursery.cancel_scope.cancel()
