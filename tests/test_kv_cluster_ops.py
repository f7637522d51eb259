"""Delete, range and txn over a real 3-node cluster on loopback, through every client, with
crashes; histories of every op under partitions, checked with KV_OPS_MODEL; and the leader
hint of ``WrongLeader``."""

from __future__ import annotations

import collections
import dataclasses
import functools
import random
import time

import httpx
import pytest
import trio

from tests.kv_cluster import KVCluster, partitioner, wait_leader
from tests.kvtest import assert_linearizable, ops_client
from trioraft import (
    ClusterClient,
    Compare,
    KeyNotFound,
    KeyResult,
    MaybeApplied,
    TxnOp,
    VersionConflict,
    Versioned,
)
from trioraft.kv.clients import OpsClient
from trioraft.kv.coalescing import open_coalescing_client
from trioraft.kv.messages import BatchOp
from trioraft.testing import MIT_UNRELIABLE, History, check_kv_ops

pytestmark = pytest.mark.xdist_group("http-cluster")


async def wait_replicas_agree(c: KVCluster) -> None:
    """Wait until every live replica has applied the leader's commit index; check that their
    states are the same."""
    leader = c.nodes[await wait_leader(c)]
    assert leader is not None
    target = leader.raft.commit_index
    with trio.fail_after(10):
        for node in c.nodes.values():
            if node is not None:
                await node.rsm.wait_until(lambda rsm: rsm.applied_index >= target)
    states = {node.machine.snapshot() for node in c.nodes.values() if node is not None}
    assert len(states) == 1


async def exercise(kv: OpsClient, prefix: str) -> None:
    """Every op of the vocabulary through ``kv``, on keys under ``prefix``."""
    a, b = f"{prefix}/a", f"{prefix}/b"
    await kv.put(a, "1", 0)
    first = await kv.get(a)
    assert (first.value, first.version) == ("1", 1)
    assert first.mod_index == first.create_index > 0
    await kv.put(a, "2", 1)
    second = await kv.get(a)
    assert second.mod_index > first.mod_index and second.create_index == first.create_index
    with pytest.raises(VersionConflict):
        await kv.delete(a, 1)
    with pytest.raises(KeyNotFound):
        await kv.delete(b, 1)
    await kv.delete(a, 2)
    assert (await kv.get(a)).version == 0
    await kv.put(a, "again", 0)
    again = await kv.get(a)
    assert (again.version, again.create_index > second.mod_index) == (1, True)

    outcome = await kv.txn(
        [Compare(a, "=", version=1), Compare(b, "=", create_index=0)],
        [TxnOp("put", b, "B"), TxnOp("get", a)],
        [TxnOp("get", b)],
    )
    assert outcome.succeeded
    assert outcome.results[0] == KeyResult("OK", "", 1, outcome.index, outcome.index)
    assert outcome.results[1] == KeyResult("OK", "again", 1, again.mod_index, again.create_index)
    outcome = await kv.txn([Compare(b, "!=", value="B")], [TxnOp("delete", b)])
    assert (outcome.succeeded, outcome.results) == (False, [])

    page = await kv.range(prefix=f"{prefix}/", limit=1)
    assert ([item.key for item in page.items], page.more, page.next) == ([a], True, b)
    rest = await kv.range(prefix=f"{prefix}/", start=page.next)
    assert ([(item.key, item.value) for item in rest.items], rest.more) == ([(b, "B")], False)
    assert rest.index >= page.index >= outcome.index  # reads take no log entry
    listing = await kv.range_all(prefix=f"{prefix}/", page_size=1)
    assert [(item.key, item.value) for item in listing.items] == [(a, "again"), (b, "B")]
    assert listing.last_index >= listing.first_index >= outcome.index


async def test_every_client_offers_delete_range_and_txn(make_kv_cluster) -> None:
    c = await make_kv_cluster(3)
    with trio.fail_after(60):
        await exercise(c.clerk(), "cluster")
        async with open_coalescing_client([c.urls[i] for i in c.ids]) as kv:
            await exercise(kv, "coalescing")
        leader = c.nodes[await wait_leader(c)]
        assert leader is not None
        async with leader.open_client() as kv:
            await exercise(kv, "embedded")
        await wait_replicas_agree(c)


async def test_a_range_is_as_of_one_index_while_writes_continue(make_kv_cluster) -> None:
    """A writer rewrites ten keys in one txn again and again; every range sees them all at
    one generation, changed at or before the index it reports, and a reader's pages go
    forward in index."""
    c = await make_kv_cluster(3)
    keys = [f"pair/{k}" for k in range(10)]
    generations = 0
    async with (
        trio.open_nursery() as nursery,
        open_coalescing_client([c.urls[i] for i in c.ids]) as writer,
    ):

        async def write() -> None:
            nonlocal generations
            while True:
                generations += 1
                await writer.txn([], [TxnOp("put", key, str(generations)) for key in keys])

        nursery.start_soon(write)
        reader = c.clerk()
        last_index = 0
        with trio.fail_after(60):
            for _ in range(30):
                page = await reader.range(prefix="pair/")
                assert page.index >= last_index
                last_index = page.index
                if not page.items:
                    continue
                assert [item.key for item in page.items] == keys
                assert len({item.value for item in page.items}) == 1, page.items
                assert len({item.mod_index for item in page.items}) == 1
                assert all(item.mod_index <= page.index for item in page.items)
        nursery.cancel_scope.cancel()
    assert generations > 5


async def test_txns_apply_whole_or_not_at_all_across_a_leader_crash(make_kv_cluster) -> None:
    """Txns keep coming (coalesced into shared entries) when the leader crashes: each txn's
    two keys are either both there or both absent, on every replica, and every txn that
    answered is there."""
    c = await make_kv_cluster(3)
    answered: set[int] = set()
    maybe: set[int] = set()
    ids = iter(range(1_000_000))
    enough = trio.Event()
    target = 40  # answered txns before the crash; as many again after it, then stop

    async with open_coalescing_client([c.urls[i] for i in c.ids], rpc_timeout=0.5) as kv:

        async def worker() -> None:
            while not enough.is_set():
                i = next(ids)
                compare = [Compare(f"t{i}/a", "=", version=0)]
                ops = [TxnOp("put", f"t{i}/a", "x"), TxnOp("put", f"t{i}/b", "y")]
                try:
                    outcome = await kv.txn(compare, ops)
                except MaybeApplied:
                    maybe.add(i)
                    continue
                assert outcome.succeeded
                answered.add(i)
                if len(answered) >= target:
                    enough.set()

        with trio.fail_after(90):
            leader = await wait_leader(c)
            async with trio.open_nursery() as nursery:
                for _ in range(16):
                    nursery.start_soon(worker)
                await enough.wait()  # txns are queued and in flight: crash now
                target = 2 * target
                enough = trio.Event()
                await c.stop(leader)
                await c.start(leader)
            await wait_replicas_agree(c)
            page = await kv.range(prefix="t", limit=10_000)
    assert not page.more
    present: dict[int, set[str]] = {}
    for item in page.items:
        txn, _, half = item.key[1:].partition("/")
        present.setdefault(int(txn), set()).add(half)
    assert all(halves == {"a", "b"} for halves in present.values()), present
    assert answered <= set(present), f"acknowledged txns lost: {answered - set(present)}"
    assert set(present) <= answered | maybe
    assert len(answered) >= 80


async def test_a_client_pointed_at_a_follower_reaches_the_leader_in_one_redirect(
    make_kv_cluster,
) -> None:
    c = await make_kv_cluster(3)
    clerk = c.clerk()
    with trio.fail_after(30):
        await clerk.put("k", "v", 0)  # every follower now knows the leader
        leader = c.ids.index(await wait_leader(c))
        # The follower whose round-robin successor is the other follower, not the leader.
        follower = (leader + 1) % 3
        clerk.leader = follower
        before = clerk.servers.requests
        assert (await clerk.get("k")).value == "v"
        assert clerk.servers.requests - before == 2  # the follower's WrongLeader, then the leader
        assert clerk.leader == leader


async def test_a_stale_read_is_served_by_a_cut_off_follower_and_never_goes_back(
    make_kv_cluster,
) -> None:
    """A stale get is answered by the server asked, from what it has applied, with the index
    it reflects: a follower cut off from the others still answers, with the value before
    the majority's latest write and an index behind theirs; healed, it catches up, and the
    index it reports never went back."""
    c = await make_kv_cluster(3)
    kv = c.clerk()
    with trio.fail_after(30):
        await kv.put("k", "1", 0)
        leader = await wait_leader(c)
        follower = next(i for i in c.ids if i != leader)
        reader = ClusterClient([c.urls[follower]], client_id="reader")
        c.clerks.append(reader)  # closed with the cluster
        indexes = []

        async def read() -> Versioned:
            got = await reader.get("k", stale=True)
            assert not indexes or got.index >= indexes[-1], "a stale read went back"
            indexes.append(got.index)
            return got

        while (await read()).value != "1":
            pass  # until the follower has applied the put
        c.partition([follower], [i for i in c.ids if i != follower])
        await kv.put("k", "2", 1)  # the majority goes on
        majority = await kv.range(prefix="k")
        cut_off = await read()
        assert (cut_off.value, cut_off.version) == ("1", 1)
        assert cut_off.index < majority.index
        c.heal()
        while (await read()).value != "2":
            pass
        assert indexes[-1] >= majority.index


async def test_a_put_a_follower_refused_is_not_maybe(make_kv_cluster) -> None:
    """A follower refuses a put before proposing it (it does not lead), and says so: the
    client's retry at the leader that meets Version is a plain conflict, not Maybe, and an
    OK retry carries no doubt either."""
    c = await make_kv_cluster(3)
    clerk = c.clerk()
    with trio.fail_after(30):
        await clerk.put("k", "v", 0)  # every follower now knows the leader
        follower = (c.ids.index(await wait_leader(c)) + 1) % 3
        clerk.leader = follower
        with pytest.raises(VersionConflict):
            await clerk.put("k", "stale", 0)
        clerk.leader = follower
        result, why = await clerk.run(BatchOp("put", "k", "w", 1))
        assert (result.err, why) == ("OK", "")


async def test_a_write_only_followers_refused_is_no_retry(make_kv_cluster) -> None:
    """Attempts refused before they were proposed did not apply: the attempt at the leader
    is not marked a retry, so a deletion by another client since the clerk's last reply is
    no conflict to it. A delete finds the key gone (NoKey) and a create makes it, where a
    marked retry would meet the tombstone and answer Version without doubt (a wrong answer,
    as a history checked under membership changes found)."""
    c = await make_kv_cluster(3)
    clerk, other = c.clerk(), c.clerk()
    with trio.fail_after(30):
        await clerk.put("k", "v", 0)  # every follower now knows the leader
        await other.delete("k", 1)  # after the last index the clerk has seen
        follower = (c.ids.index(await wait_leader(c)) + 1) % 3
        clerk.leader = follower
        with pytest.raises(KeyNotFound):
            await clerk.delete("k", 1)
        clerk.leader = follower
        result, why = await clerk.run(BatchOp("put", "k", "again", 0))
        assert (result.err, why) == ("OK", "")


async def run_histories_under_faults(make_kv_cluster, *, multi_key: bool) -> History:
    """Six clients run :func:`~tests.kvtest.ops_client` on three keys through lossy links
    while partitions come and go, for 8 s and until every kind of op has answered twice;
    the history is checked with KV_OPS_MODEL."""
    c = await make_kv_cluster(3, profile=MIT_UNRELIABLE)
    history = History()
    wanted = ["get", "put", "delete", "append", *(["range", "txn"] if multi_key else [])]
    stop, every_kind = trio.Event(), trio.Event()

    def count() -> None:
        kinds = collections.Counter(op.input.op for op in history.operations)
        if min(kinds[kind] for kind in wanted) >= 2:
            every_kind.set()

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partitioner, c, stop)
            for me in range(6):
                kv = history.recording(c.clerk(name=f"c{me}"), f"c{me}")
                rng = random.Random(c.seed * 100 + me)
                client = functools.partial(ops_client, multi_key=multi_key, after_each=count)
                nursery.start_soon(client, kv, rng, ["x", "y", "z"], stop)
            await trio.sleep(8)
            await every_kind.wait()
            stop.set()
            c.heal()  # so that every client's last call can finish
    kinds = collections.Counter(op.input.op for op in history.operations)
    assert min(kinds[kind] for kind in wanted) >= 2, kinds
    started = time.monotonic()
    result = assert_linearizable(history)
    took = time.monotonic() - started
    unknown = sum(op.output is None or op.output.err == "Maybe" for op in history.operations)
    print(f"{len(history.operations)} ops {dict(kinds)} ({unknown} of unknown outcome), "
          f"{result.parts} parts, checked in {took:.2f} s")  # fmt: skip
    assert took < 30, "the check took too long"
    return history


async def test_histories_with_deletes_and_appends_are_linearizable_under_faults(
    make_kv_cluster,
) -> None:
    """Clients put, delete, append and get a few keys: one part per key."""
    await run_histories_under_faults(make_kv_cluster, multi_key=False)


async def test_histories_with_ranges_and_txns_are_linearizable_under_faults(
    make_kv_cluster,
) -> None:
    """Clients also range over the keys and write two keys at once in txns (so the history
    is one part); a range's answer is checked: the same history with one range's answer
    changed (one key's version bumped far past any reached) is caught."""
    history = await run_histories_under_faults(make_kv_cluster, multi_key=True)
    ops = history.operations
    victim = next(
        i for i, op in enumerate(ops) if op.input.op == "range" and op.output and op.output.items
    )
    output = ops[victim].output
    assert output is not None
    (key, value, version), *rest = output.items
    bumped = dataclasses.replace(output, items=((key, value, version + 1000), *rest))
    mutated = [*ops[:victim], dataclasses.replace(ops[victim], output=bumped), *ops[victim + 1 :]]
    assert check_kv_ops(mutated, timeout=60).ok is False


async def test_a_follower_names_the_leader_in_its_wrong_leader_reply(make_kv_cluster) -> None:
    c = await make_kv_cluster(3)
    with trio.fail_after(30):
        await c.clerk().put("k", "v", 0)  # every follower now knows the leader
        leader = await wait_leader(c)
        follower = next(i for i in c.ids if i != leader)
        async with httpx.AsyncClient(base_url=c.urls[follower]) as http:
            reply = (await http.post("/get", json={"key": "k"})).json()
            assert reply == {"err": "WrongLeader", "leader": c.urls[leader]}
            batch = {"ops": [{"op": "get", "key": "k"}]}
            reply = (await http.post("/batch", json=batch)).json()
            assert (reply["results"][0]["err"], reply["leader"]) == ("WrongLeader", c.urls[leader])
        async with httpx.AsyncClient(base_url=c.urls[leader]) as http:
            reply = (await http.post("/get", json={"key": "k"})).json()
            assert (reply["value"], reply["version"], reply["err"]) == ("v", 1, "OK")


async def test_a_batch_answers_the_index_its_reads_reflect(make_kv_cluster) -> None:
    """A batch's ``index`` is what the server had applied, its leader's no-op and
    configuration entries included: the index its reads reflect, never one behind it."""
    c = await make_kv_cluster(3)
    with trio.fail_after(30):
        leader = await wait_leader(c)
        async with httpx.AsyncClient(base_url=c.urls[leader]) as http:
            batch = {"ops": [{"op": "get", "key": "k"}]}
            reply = (await http.post("/batch", json=batch)).json()
    assert reply["results"][0]["err"] == "NoKey"
    assert reply["index"] == reply["results"][0]["index"] >= 1  # the no-op, at least
