"""The test kit's cluster (``trioraft.testing.RaftCluster``) as a user drives it: start nodes
in a nursery, crash and restart them, partition and heal, on virtual time."""

from __future__ import annotations

import trio
import trio.testing

from trioraft.testing import RaftCluster


async def test_crash_restart_partition_heal(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    c = RaftCluster(nursery, 3, seed=5)
    await c.start_all()
    with trio.fail_after(5):
        first = await c.wait_leader()
    index, term, accepted = c.node(first).submit("before the crash")
    assert accepted
    with trio.fail_after(5):
        await c.node(first).wait_committed(index, term)

    c.crash(first)
    assert not c.alive(first) and first not in c.leaders()
    with trio.fail_after(5):
        second = await c.wait_leader(among=[i for i in c.ids if i != first])
    await c.restart(first)  # from what its storage had synced: it catches up
    later, _, accepted = c.node(second).submit("after the restart")
    assert accepted and later > index
    with trio.fail_after(5):
        await c.node(first).wait_applied(later)

    alone = [second]
    rest = [i for i in c.ids if i != second]
    c.partition(alone, rest)
    with trio.fail_after(5):
        third = await c.wait_leader(among=rest)
    assert third != second
    c.heal()
    with trio.fail_after(5):
        await c.node(second).wait_until(lambda node: not node.is_leader)
    assert c.leaders() == [third]
