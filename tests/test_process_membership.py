"""Membership changes on real ``trioraft node`` processes, under a recorded client load,
while their peer traffic goes through fault proxies (10% of requests and of replies lost
throughout; partitions come and go while a crashed node is replaced).

In one run: a learner added under load catches up and is promoted; leadership is transferred
to it; a follower is removed; a crashed node is wiped, removed and replaced by a fresh one;
the leader is removed (it hands over first). Clients know every server's client URL and
follow ``WrongLeader`` hints; each op is recorded, and the history, which ends with a read
of every key once the network is healed, is checked for linearizability (so no
acknowledged write is lost). Every server left lists each member's client URL, a new
member's too, which the founders' flags never named (it comes from the configuration).
"""

from __future__ import annotations

import contextlib
import functools
import random
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from tests.kvtest import assert_linearizable, ops_client
from tests.processes import ProcessCluster
from trioraft import BadRequest, ClusterClient
from trioraft.kv.admin import AdminClient, open_admin_client
from trioraft.kv.clients import Backoff
from trioraft.kv.messages import MembershipReply
from trioraft.testing import MIT_UNRELIABLE, History, Network

#: Real clusters are timing-sensitive: they share one xdist worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("http-cluster")

KEYS = ["x", "y", "z"]
T = TypeVar("T")


async def until_done(change: Callable[[], Awaitable[T]]) -> T:
    """Retry a membership call refused for now (409: a new leader with nothing of its term
    committed, a change or a transfer in flight) until it is made."""
    backoff = Backoff()
    while True:
        try:
            return await change()
        except BadRequest as exc:
            if exc.status != 409:
                raise
        await backoff.wait()


async def add_and_promote(admin: AdminClient, cluster: ProcessCluster, i: str) -> None:
    """Add node ``i`` as a learner, wait until it has caught up, promote it."""
    added = await until_done(lambda: admin.member_add(i, cluster.peer_routes[i], cluster.urls[i]))
    assert i in added.learners + added.voters, added
    await admin.wait_caught_up(i)
    promoted = await until_done(lambda: admin.member_promote(i))
    assert i in promoted.voters, promoted


async def a_follower(admin: AdminClient, among: list[str]) -> tuple[str, MembershipReply]:
    """A voter of ``among`` that the leader does not name as itself, and the list."""
    listed = await admin.member_list()
    return next(i for i in among if i in listed.voters and i != listed.leader), listed


async def configuration_of(url: str, *, voters: set[str]) -> MembershipReply:
    """The member list of the server at ``url`` once it names ``voters``."""
    async with open_admin_client([url]) as admin:
        # Another process's state: asking it is the only signal there is.
        while set((listed := await admin.member_list()).voters) != voters:  # noqa: ASYNC110
            await trio.sleep(0.05)
    return listed


async def partitions(
    network: Network, nodes: list[str], rng: random.Random, stop: trio.Event, cuts: list[str]
) -> None:
    """Until ``stop``: cut one of ``nodes`` off from the others for 0.3-1 s (noted in
    ``cuts``), then heal for 0.5-1.5 s."""
    while not stop.is_set():
        cut = rng.choice(nodes)
        cuts.append(cut)
        network.disconnect(cut, nodes)
        with trio.move_on_after(rng.uniform(0.3, 1.0)):
            await stop.wait()
        network.heal()
        with trio.move_on_after(rng.uniform(0.5, 1.5)):
            await stop.wait()


async def test_membership_changes_under_faults_keep_the_history_linearizable(
    tmp_path: Path, nursery: trio.Nursery, seed: int
) -> None:
    rng = random.Random(seed)
    cluster = ProcessCluster(3, tmp_path)
    await cluster.route_peers_through(Network(seed, MIT_UNRELIABLE), nursery)
    network = cluster.network
    assert network is not None
    four = await cluster.add_node("4", nursery)
    five = await cluster.add_node("5", nursery)
    urls = [cluster.urls[i] for i in cluster.ids]  # the clients know every server
    history = History()
    stop_load, stop_partitions = trio.Event(), trio.Event()
    cuts: list[str] = []
    try:
        with trio.fail_after(150):
            for i in ("1", "2", "3"):
                assert await cluster.nodes[i].start(nursery), cluster.nodes[i].stderr.decode()
            async with (
                open_admin_client(urls) as admin,
                contextlib.AsyncExitStack() as clients,
                trio.open_nursery() as load,
            ):
                for me in range(3):
                    clerk = await clients.enter_async_context(
                        ClusterClient(urls, client_id=f"c{me}")
                    )
                    kv = history.recording(clerk, f"c{me}")
                    client = functools.partial(ops_client, multi_key=False)
                    load.start_soon(client, kv, random.Random(f"{seed}-{me}"), KEYS, stop_load)

                # A learner added under load catches up and is promoted.
                assert await four.start(nursery), four.stderr.decode()
                await add_and_promote(admin, cluster, "4")
                # Leadership moves to it, under load (on a lossy network it may move on).
                await until_done(lambda: admin.transfer_leader("4"))
                # A follower is removed, then stopped.
                gone, _ = await a_follower(admin, ["1", "2", "3"])
                after = await until_done(lambda: admin.member_remove(gone))
                assert gone not in after.voters + after.learners, after
                await cluster.nodes[gone].stop()
                # While partitions come and go: a follower crashes and loses its disk; it is
                # removed, and a fresh node takes its place.
                crashed, _ = await a_follower(admin, [i for i in ("1", "2", "3") if i != gone])
                members = [i for i in cluster.ids if i not in (gone, crashed)]
                load.start_soon(partitions, network, members, rng, stop_partitions, cuts)
                await cluster.nodes[crashed].kill()
                shutil.rmtree(cluster.data_dirs[crashed])
                await until_done(lambda: admin.member_remove(crashed))
                assert await five.start(nursery), five.stderr.decode()
                await add_and_promote(admin, cluster, "5")
                stop_partitions.set()
                network.heal()
                # The leader is removed: it hands over first, the new leader removes it.
                listed = await admin.member_list()
                old = listed.leader
                after = await until_done(lambda: admin.member_remove(old))
                assert old not in after.voters and after.leader in after.voters, after
                await cluster.nodes[old].stop()
                stop_load.set()

            # Every server left lists every member's client URL: a new member's comes from
            # the configuration (the founders' flags never named it).
            left = [i for i in cluster.ids if i not in (gone, crashed, old)]
            assert len(left) == 2 and {"4", "5"} & set(left), (left, gone, crashed, old)
            for i in left:
                listed = await configuration_of(cluster.urls[i], voters=set(left))
                assert listed.client_urls == {j: cluster.urls[j] for j in left}, (i, listed)
            # The last word: a read of every key, on a healed network.
            async with ClusterClient(urls, client_id="final") as kv:
                final = history.recording(kv, "final")
                for key in KEYS:
                    await final.get(key)
    finally:
        stop_load.set()
        stop_partitions.set()
        await cluster.stop_all()
        for i, node in cluster.nodes.items():  # for a failure's post-mortem
            (tmp_path / f"node-{i}.log").write_bytes(node.stderr)
    writes = [op for op in history.operations if op.input.op != "get" and op.output is not None]
    assert len(writes) >= 30, f"too few writes answered to judge: {len(writes)}"
    started = time.monotonic()
    assert_linearizable(history)
    unknown = sum(op.output is None for op in history.operations)
    print(
        f"{len(history.operations)} ops ({len(writes)} writes answered, {unknown} of unknown "
        f"outcome), partitions cut {cuts}, checked in {time.monotonic() - started:.2f} s"
    )
