"""Hostile input and lost replies against the retry rule, over HTTP on real servers: fields
a client could send wrong (``retry_after``, txn leases, sizes) answer 400 naming the field
and change nothing; every client marks its retries, so that a write whose reply was lost
never applies twice (across a delete, or through a txn's failure branch); and a leader cut
off from the majority never answers a read that a new leader's write made stale."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from tests.kv_cluster import KVCluster, wait_leader
from tests.kvtest import SingleKV, lost_reply_then_delete, start_single_kv, wait_for
from trioraft import (
    BadRequest,
    ClusterClient,
    KVClient,
    MaybeApplied,
    RaftConfig,
    Route,
    Versioned,
    make_app,
    serve,
)
from trioraft.kv.clients import OpsClient, Servers
from trioraft.kv.coalescing import CoalescingClient, open_coalescing_client
from trioraft.kv.machine import KVMachine
from trioraft.kv.messages import (
    MAX_BATCH_OPS,
    MAX_TXN_COMPARES,
    MAX_TXN_OPS,
    WRONG_LEADER,
    BatchArgs,
    BatchOp,
    BatchReply,
    Compare,
    OpResult,
    TxnOp,
)
from trioraft.rpc.codec import encode
from trioraft.rpc.http import RpcClient
from trioraft.testing import RELIABLE, Network, Profile

pytestmark = pytest.mark.xdist_group("http-cluster")


def put_op(key: str = "k", version: int = 0, **extra: Any) -> dict[str, Any]:
    return {"op": "put", "key": key, "value": "v", "version": version, **extra}


def txn_op(txn: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"op": "txn", "key": "", "txn": txn, **extra}


#: (route, body, what the 400's message must name): each is refused whole, nothing applies.
HOSTILE_BODIES: list[tuple[str, Any, str]] = [
    ("batch", {"ops": [put_op(retry_after=-1)]}, "ops[0].retry_after"),
    ("batch", {"ops": [put_op(retry_after=2**63)]}, "ops[0].retry_after"),
    ("batch", {"ops": [put_op(retry_after=2**64 + 1)]}, "ops[0].retry_after"),
    ("batch", {"ops": [put_op(retry_after=True)]}, "ops[0].retry_after"),
    ("batch", {"ops": [put_op(retry_after=False)]}, "ops[0].retry_after"),
    ("batch", {"ops": [put_op(retry_after="0")]}, "ops[0].retry_after"),
    ("batch", {"ops": [put_op(retry_after=1.0)]}, "ops[0].retry_after"),
    ("batch", {"ops": [put_op(retry_after=[0])]}, "ops[0].retry_after"),
    ("batch", {"ops": [put_op(retry_after={})]}, "ops[0].retry_after"),
    ("batch", {"ops": [put_op("a"), put_op("b", retry_after=-5)]}, "ops[1].retry_after"),
    (
        "batch",
        {"ops": [txn_op({"success": [{"op": "put", "key": "k"}]}, retry_after=-1)]},
        "ops[0].retry_after",
    ),
    (
        "batch",
        {"ops": [txn_op({"success": [{"op": "delete", "key": "k", "lease": 1}]})]},
        "ops[0].txn.success[0].lease",
    ),
    (
        "batch",
        {"ops": [txn_op({"failure": [{"op": "get", "key": "k", "lease": 7}]})]},
        "ops[0].txn.failure[0].lease",
    ),
    (
        "batch",
        {"ops": [txn_op({"success": [{"op": "put", "key": "k", "lease": -1}]})]},
        "ops[0].txn.success[0].lease",
    ),
    (
        "batch",
        {"ops": [txn_op({"success": [{"op": "put", "key": "k", "lease": True}]})]},
        "ops[0].txn.success[0].lease",
    ),
    (
        "batch",
        {"ops": [txn_op({"success": [{"op": "put", "key": "k", "lease": 2**63}]})]},
        "ops[0].txn.success[0].lease",
    ),
    (
        "batch",
        {"ops": [txn_op({"success": [{"op": "put", "key": "k", "lease": "1"}]})]},
        "ops[0].txn.success[0].lease",
    ),
    ("batch", {"ops": [put_op(lease=-1)]}, "ops[0].lease"),
    ("batch", {"ops": [put_op(lease=True)]}, "ops[0].lease"),
    (
        "batch",
        {"ops": [txn_op({"compare": [{"key": "k", "op": "=", "version": 0}] * 65})]},
        "ops[0].txn.compare",
    ),
    (
        "batch",
        {"ops": [txn_op({"success": [{"op": "get", "key": "k"}] * (MAX_TXN_OPS + 1)})]},
        "ops[0].txn.success",
    ),
    (
        "batch",
        {"ops": [{"op": "get", "key": str(i)} for i in range(MAX_BATCH_OPS + 1)]},
        "ops: 10001 ops",
    ),
    ("txn", {"success": [{"op": "delete", "key": "k", "lease": 1}]}, "body.success[0].lease"),
    ("txn", {"success": [{"op": "put", "key": "k", "lease": -2}]}, "success[0].lease"),
    ("txn", {"failure": [{"op": "put", "key": "k", "lease": False}]}, "failure[0].lease"),
    ("txn", {"compare": [{"key": "k", "op": "=", "version": True}]}, "compare[0].version"),
    ("put", {"key": "k", "value": "v", "version": -1}, "version"),
    ("put", {"key": "k", "value": "v", "version": 0, "lease": True}, "lease"),
    ("put", {"key": "k", "value": "v", "version": 2**63}, "version"),
]


async def post_hostile(url: str, route: str, body: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(f"{url}/{route}", content=json.dumps(body).encode())


@pytest.mark.parametrize(
    ("route", "body", "field"), HOSTILE_BODIES, ids=[f"{r}:{f}" for r, _, f in HOSTILE_BODIES]
)
async def test_a_hostile_field_answers_400_naming_it_and_changes_nothing(
    single_kv: SingleKV, route: str, body: Any, field: str
) -> None:
    server = single_kv.server
    with trio.fail_after(20):
        async with KVClient(single_kv.direct_url) as kv:
            await kv.put("k", "before", 0)
        before, index = server.machine.snapshot(), server.index
        reply = await post_hostile(single_kv.direct_url, route, body)
    assert reply.status_code == 400, reply.text
    assert field in reply.json()["error"]
    assert (server.machine.snapshot(), server.index) == (before, index)


async def test_hostile_fields_on_a_cluster_node_answer_400_and_change_nothing(
    make_kv_cluster,
) -> None:
    """The same bodies at a replicated node (its leader): 400, nothing applied."""
    c: KVCluster = await make_kv_cluster(3)
    with trio.fail_after(60):
        leader = c.nodes[await wait_leader(c)]
        assert leader is not None and leader.url is not None
        await c.clerk().put("k", "before", 0)
        before = leader.machine.snapshot()
        for route, body, field in HOSTILE_BODIES:
            reply = await post_hostile(leader.url, route, body)
            assert reply.status_code == 400, (route, str(body)[:200], reply.text)
            assert field in reply.json()["error"]
        assert leader.machine.snapshot() == before


async def test_an_append_numbered_zero_is_refused_not_taken_for_a_retry(make_kv_cluster) -> None:
    """Sequence numbers start at 1: a new session has seen 0, so an append numbered 0 would
    be answered as a retry of one applied (OK) and apply nothing."""
    c: KVCluster = await make_kv_cluster(3)
    with trio.fail_after(60):
        leader = c.nodes[await wait_leader(c)]
        assert leader is not None and leader.url is not None
        opened = await post_hostile(leader.url, "open_session", {})
        session = opened.json()["session"]
        append = {"key": "k", "value": "v", "session": session, "seq": 0}
        for route, body, field in [
            ("append", append, "seq"),
            ("batch", {"ops": [{"op": "append", **append}]}, "ops[0].seq"),
        ]:
            reply = await post_hostile(leader.url, route, body)
            assert reply.status_code == 400, reply.text
            assert field in reply.json()["error"]
        assert await c.clerk().get("k") == ("", 0)


async def test_a_batch_of_the_largest_txns_is_bounded_by_the_request_size(
    single_kv: SingleKV,
) -> None:
    """Every count is within its limit, but the whole is far over the request limit: 413."""
    txn = {
        "compare": [{"key": f"c{i}", "op": "=", "version": 0} for i in range(MAX_TXN_COMPARES)],
        "success": [{"op": "put", "key": f"s{i}", "value": "v"} for i in range(MAX_TXN_OPS)],
        "failure": [{"op": "delete", "key": f"f{i}"} for i in range(MAX_TXN_OPS)],
    }
    before = single_kv.server.machine.snapshot()
    rpc = RpcClient(single_kv.direct_url, "hostile", timeout=10)
    with trio.fail_after(30), pytest.raises(BadRequest) as refused:
        await rpc.call("batch", {"ops": [txn_op(txn, retry_after=0)] * 100}, BatchReply)
    await rpc.aclose()
    assert refused.value.status == 413
    assert single_kv.server.machine.snapshot() == before


# -- Lost replies: every client marks its retries, and nothing applies twice -------------


CREATE_ELSE_OVERWRITE = (
    [Compare("k", "=", version=0)],
    [TxnOp("put", "k", "created")],
    [TxnOp("put", "k", "overwritten")],
)


async def test_a_retried_create_else_overwrite_txn_applies_once(
    single_kv: SingleKV, network: Network
) -> None:
    """The txn creates "k" and its reply is lost; every retry finds "k" at version 1, fails
    its compare, and (before the fix) ran its failure branch: "k" overwritten once per lost
    reply. The client answers Maybe; "k" holds the first attempt's write alone."""
    server = single_kv.server
    with trio.fail_after(30):
        async with KVClient(single_kv.url) as kv:
            network.set_profile(Profile(reply_drop=1.0))
            async with trio.open_nursery() as nursery:

                async def deliver_after_two_retries() -> None:
                    await wait_for(lambda: server.index >= 3)  # the first attempt and two more
                    network.set_profile(RELIABLE)

                nursery.start_soon(deliver_after_two_retries)
                with pytest.raises(MaybeApplied):
                    await kv.txn(*CREATE_ELSE_OVERWRITE)
            assert await kv.get("k") == Versioned("created", 1)


@pytest.mark.parametrize("kind", ["put", "txn"])
async def test_the_coalescing_client_marks_its_retries(
    single_kv: SingleKV, network: Network, kind: str
) -> None:
    """A create through the coalescing client applies, its reply lost; an admin deletes the
    key; its retries must not create it again."""
    server = single_kv.server
    with trio.fail_after(30):
        async with (
            open_coalescing_client([single_kv.url]) as kv,
            KVClient(single_kv.direct_url) as admin,
        ):
            await kv.get("warm-up")  # the client has seen an index
            if kind == "put":
                create = partial(kv.put, "k", "once", 0)
            else:
                create = partial(
                    kv.txn, [Compare("k", "=", version=0)], [TxnOp("put", "k", "once")]
                )
            outcome = await lost_reply_then_delete(
                network,
                create,
                lambda: wait_for(lambda: server.state.get("k").version == 1),
                lambda: admin.delete("k", 1),
            )
            assert await admin.get("k") == Versioned("", 0)
    assert outcome == "Maybe"


@pytest.mark.parametrize("client", ["cluster", "coalescing"])
async def test_a_write_refused_on_retry_for_its_size_reports_maybe(
    nursery: trio.Nursery, client: str
) -> None:
    """A put applies, its reply lost; its retry carries ``retry_after`` (more digits than
    the first attempt's ``null``) and crosses the server's request limit: 413. The first
    attempt applied: the client must say Maybe, not that the request was refused (and the
    coalescing client must not send it again unmarked, op by op)."""
    network = Network(0, RELIABLE)
    op = BatchOp("put", "k", "x" * 200, 0)
    first_size = len(json.dumps(encode(BatchArgs([op]))).encode())
    single = await start_single_kv(nursery, network, max_body_bytes=first_size + 1)
    single.server.index = 10**9  # the retry's retry_after: ten digits
    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            kv: OpsClient = await stack.enter_async_context(
                KVClient(single.url)
                if client == "cluster"
                else open_coalescing_client([single.url])
            )
            assert (await kv.get("warm-up")).version == 0
            network.set_profile(Profile(reply_drop=1.0))
            async with trio.open_nursery() as inner:

                async def deliver_after_the_put_applied() -> None:
                    await wait_for(lambda: single.server.state.get("k").version == 1)
                    network.set_profile(RELIABLE)

                inner.start_soon(deliver_after_the_put_applied)
                with pytest.raises(MaybeApplied):
                    await kv.put("k", "x" * 200, 0)
            assert (await kv.get("k")).version == 1


async def test_the_coalescing_client_sends_reads_again_when_a_retry_is_refused() -> None:
    """A batch of a get and a put whose retry is refused (``Servers.call`` raises
    MaybeApplied): the put raises it, the get is sent again on its own and answered."""
    calls: list[list[str]] = []

    async def call(ops: list[BatchOp]) -> tuple[list[OpResult], list[str]]:
        calls.append([op.op for op in ops])
        if len(calls) == 1:
            raise MaybeApplied("a retry was refused (413)")
        return [OpResult("NoKey")] * len(ops), []

    kv = CoalescingClient(["http://127.0.0.1:9"])
    kv.servers.call = call  # type: ignore[method-assign]
    got: list[Versioned] = []
    raised: list[str] = []

    async def read() -> None:
        got.append(await kv.get("other"))

    async def write() -> None:
        with pytest.raises(MaybeApplied):
            await kv.put("k", "v", 0)
        raised.append("put")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            nursery.start_soon(write)
            await trio.testing.wait_all_tasks_blocked()  # both queued: one batch
            sender = trio.CancelScope()

            async def send() -> None:
                with sender:
                    await kv.send_forever()

            nursery.start_soon(send)
            while len(got) + len(raised) < 2:
                await trio.testing.wait_all_tasks_blocked()
            sender.cancel()
        await kv.aclose()
    assert [sorted(ops) for ops in calls] == [["get", "put"], ["get"]]
    assert got == [Versioned("", 0)] and raised == ["put"]


# -- Real clusters: WrongLeader, the embedded client, ReadIndex ------------------------


def record_attempts(servers: Servers) -> list[tuple[int, list[int | None]]]:
    """Wrap every RPC client of ``servers``: each ``/batch`` call's server and the
    ``retry_after`` of its ops."""
    sent: list[tuple[int, list[int | None]]] = []
    for k, rpc in enumerate(servers.rpcs):
        original = rpc.call

        async def call(method, args, reply_type, *a, _k=k, _original=original, **kw):
            if method == "batch":
                sent.append((_k, [op.retry_after for op in args.ops]))
            return await _original(method, args, reply_type, *a, **kw)

        rpc.call = call  # type: ignore[method-assign]
    return sent


async def a_clerk_behind_a_follower(c: KVCluster) -> tuple[int, int, ClusterClient, int]:
    """A clerk that has seen index s while another clerk's writes moved the cluster on, and
    a follower that knows the leader and has applied past s: (the leader's and the
    follower's places in the clerk's server list, the clerk, s)."""
    leader = await wait_leader(c)
    clerk, other = c.clerk(), c.clerk()
    await clerk.put("seen", "v", 0)
    seen = clerk.servers.seen
    assert seen > 0
    for i in range(5):
        await other.put(f"later-{i}", "v", 0)
    at = c.ids.index(leader)
    follower = (at + 1) % len(c.ids)
    node = c.nodes[c.ids[follower]]
    assert node is not None
    await node.rsm.wait_until(lambda rsm: rsm.applied_index > seen)
    await node.raft.wait_until(lambda n: n.leader_id == leader)
    return at, follower, clerk, seen


async def test_a_write_a_follower_refused_goes_to_the_leader_unmarked(
    make_kv_cluster,
) -> None:
    """The clerk has seen index s; other writes move the cluster on; its put goes to a
    follower first (WrongLeader, refused before it was proposed, whose reply carries a
    later index), then to the leader. That attempt is no retry (nothing may have applied):
    it carries no ``retry_after``, and the clerk has seen the follower's index since."""
    c: KVCluster = await make_kv_cluster(3)
    with trio.fail_after(60):
        _, follower, clerk, seen = await a_clerk_behind_a_follower(c)
        sent = record_attempts(clerk.servers)
        clerk.leader = follower
        await clerk.put("k", "v", 0)
        assert sent[0] == (follower, [None])
        assert sent[1:] and all(attempt == [None] for _, attempt in sent[1:]), sent
        assert clerk.servers.seen > seen
        assert await clerk.get("k") == Versioned("v", 1)


async def test_a_retry_after_a_lost_reply_names_what_was_seen_before(
    make_kv_cluster,
) -> None:
    """The clerk has seen index s; its put applies at the leader but the reply is lost;
    the next attempt goes to a follower (refused, whose reply carries a later index), the
    one after to the leader. Both are retries naming s, not a later index: the first
    attempt was sent after s. The put applied once, and the clerk says Maybe."""
    c: KVCluster = await make_kv_cluster(3)
    with trio.fail_after(60):
        at, follower, clerk, seen = await a_clerk_behind_a_follower(c)
        sent = record_attempts(clerk.servers)
        rpc = clerk.servers.rpcs[at]
        answered = rpc.call

        async def lose_the_first_reply(method, args, reply_type, *a, **kw):
            await answered(method, args, reply_type, *a, **kw)
            rpc.call = answered  # type: ignore[method-assign]
            return None  # as a lost call

        rpc.call = lose_the_first_reply  # type: ignore[method-assign]
        clerk.leader = at
        with pytest.raises(MaybeApplied):
            await clerk.put("k", "v", 0)
        assert sent[0] == (at, [None]) and sent[1] == (follower, [seen]), sent
        assert all(attempt == [seen] for _, attempt in sent[1:]), sent
        assert await clerk.get("k") == Versioned("v", 1)


async def test_the_embedded_client_marks_a_retry_after_a_lost_local_result(
    make_kv_cluster,
) -> None:
    """On the leader, the embedded client's first attempt applies but its result is lost
    (WrongLeader, as after a proposal timeout); the key is deleted before the retry. The
    retry must carry ``retry_after`` and be refused: Maybe, and the key stays deleted."""
    c: KVCluster = await make_kv_cluster(3)
    with trio.fail_after(60):
        node = c.nodes[await wait_leader(c)]
        assert node is not None
        seen_ops: list[BatchOp] = []
        original = node.run_batch

        async def lose_first_result(ops: list[BatchOp]) -> tuple[list[OpResult], bool]:
            seen_ops.extend(ops)
            results, refused = await original(ops)
            if len(seen_ops) == 1:
                assert results[0].err == "OK"
                deleted, _ = await original([BatchOp("delete", "k", version=1)])
                assert deleted[0].err == "OK"
                return [OpResult(WRONG_LEADER)], False  # not refused: it may have applied
            return results, refused

        node.run_batch = lose_first_result  # type: ignore[method-assign]
        async with node.open_client() as kv:
            with pytest.raises(MaybeApplied):
                await kv.put("k", "once", 0)
            assert await kv.get("k") == Versioned("", 0)
        assert seen_ops[0].retry_after is None
        assert seen_ops[1].retry_after is not None and seen_ops[1].retry_after >= 0


@pytest.mark.parametrize("lease_reads", [False, True], ids=["read-index", "lease"])
async def test_a_cut_off_leader_never_answers_a_stale_read(
    make_kv_cluster, lease_reads: bool
) -> None:
    """The leader is partitioned into the minority; the majority elects a new leader and
    commits a write. The old leader, asked to read (in-process and over HTTP), answers
    nothing or the new value, never the old one; with lease reads too (its lease runs out
    before any follower may time it out)."""
    config = RaftConfig(lease_duration=0.9 * RaftConfig().election_timeout[0])
    c: KVCluster = await make_kv_cluster(3, config=config if lease_reads else None)
    with trio.fail_after(90):
        old = await wait_leader(c)
        await c.clerk().put("k", "old", 0)
        old_node = c.nodes[old]
        assert old_node is not None
        majority, minority = c.make_partition(old)
        c.partition(majority, minority)
        new = await wait_leader(c, exclude=(old,))
        assert new in majority
        await c.clerk(majority).put("k", "new", 1)
        # The old node may still believe it leads: ReadIndex must not let it answer.
        reads = await old_node.read([BatchOp("get", "k")])
        assert reads is None or (reads[0].value, reads[0].version) == ("new", 2), reads
        stale_reader = c.clerk([old])
        with trio.move_on_after(5):
            got = await stale_reader.get("k")
            assert got == Versioned("new", 2), got
        c.heal()
        assert await stale_reader.get("k") == Versioned("new", 2)
    reads = c.nodes[await wait_leader(c)].raft.statistics().reads
    assert reads["lease" if lease_reads else "read_index"] > 0, reads


async def test_the_single_server_answers_a_put_naming_a_lease_as_batch_does(
    single_kv: SingleKV,
) -> None:
    """The single server has no leases: ``/batch`` answers a put naming one ``NoLease``, and
    so does ``/put`` (it once stored the key and answered OK, as if it would expire with the
    lease)."""
    with trio.fail_after(20):
        via_put = await post_hostile(
            single_kv.direct_url, "put", {"key": "k", "value": "v", "version": 0, "lease": 7}
        )
        via_batch = await post_hostile(
            single_kv.direct_url, "batch", {"ops": [put_op("j", lease=7)]}
        )
    assert via_batch.json()["results"][0]["err"] == "NoLease"
    assert via_put.json()["err"] == "NoLease"


async def test_a_retry_across_a_restart_that_rewound_the_index_applies_once(
    single_kv: SingleKV, network: Network
) -> None:
    """The client has seen index 51; the server restarts empty (as a store restored from
    an older backup: its indexes start over below what the client saw). A create applies at
    1, its reply lost; the key is deleted at 2; the retry names 51, after the tombstone:
    only the retry's own index (3, not after 51) shows it cannot be judged. Maybe, once."""
    server = single_kv.server
    with trio.fail_after(30):
        async with (
            KVClient(single_kv.url) as kv,
            KVClient(single_kv.direct_url) as admin,
        ):
            server.index = 50
            await kv.get("warm-up")
            assert kv.servers.seen == 51
            server.machine = KVMachine(keep_changes=False)  # restarted empty
            server.state, server.index = server.machine.kv, 0
            outcome = await lost_reply_then_delete(
                network,
                lambda: kv.put("k", "once", 0),
                lambda: wait_for(lambda: server.state.get("k").version == 1),
                lambda: admin.delete("k", 1),
            )
            assert await admin.get("k") == Versioned("", 0)
    assert outcome == "Maybe"


async def test_a_maybe_names_the_attempt_that_may_have_applied_after_many_refusals(
    nursery: trio.Nursery,
) -> None:
    """One attempt answers WrongLeader without saying it refused (it may have applied), then
    eight more answer WrongLeader having refused, then one applies. The account the call
    gives for a Maybe keeps only the last few failures, but always the uncertain one."""
    replies = [BatchReply([OpResult(WRONG_LEADER)], refused=False)]
    replies += [BatchReply([OpResult(WRONG_LEADER)], refused=True)] * 8
    replies.append(BatchReply([OpResult("OK", version=1)]))

    async def batch(args: BatchArgs) -> BatchReply:
        return replies.pop(0)

    url = await nursery.start(serve, make_app({"batch": Route(BatchArgs, batch)}))
    servers = Servers([url], "c")
    with trio.fail_after(20):
        results, failures = await servers.call([BatchOp("put", "k", "v", 0)])
    await servers.aclose()
    assert results[0].err == "OK"
    assert failures[0] == f"{url} {WRONG_LEADER}", failures
    assert failures[1] == "..." and failures[-1] == f"{url} {WRONG_LEADER} (refused)"
