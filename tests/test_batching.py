"""Batching end to end: ``POST /batch``, the coalescing client, the embedded client and the
RSM packing concurrent ops into one log entry; faults included, every history checked."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial

import httpx
import pytest
import trio
import trio.testing

from tests.kv_cluster import KVCluster, wait_leader
from tests.kvtest import SingleKV, check_put_concurrent, one_client_put, run_clients
from trioraft import VersionConflict, Versioned
from trioraft.kv.coalescing import CoalescingClient, _Queued, open_coalescing_client
from trioraft.kv.messages import (
    MAX_BATCH_RANGES,
    MAX_REPLY_BYTES,
    BatchArgs,
    BatchOp,
    BatchReply,
    OpResult,
)
from trioraft.rpc.http import Route, make_app, serve
from trioraft.testing import MIT_UNRELIABLE, History


async def test_batch_answers_each_op_in_order(single_kv: SingleKV) -> None:
    ops = [
        {"op": "put", "key": "a", "value": "1", "version": 0},
        {"op": "get", "key": "a"},
        {"op": "put", "key": "a", "value": "2", "version": 0},
        {"op": "put", "key": "b", "value": "x", "version": 3},
        {"op": "get", "key": "b"},
    ]
    async with httpx.AsyncClient() as http:
        reply = await http.post(f"{single_kv.url}/batch", json={"ops": ops})
    assert reply.status_code == 200
    a_at_1 = {"value": "1", "version": 1, "mod_index": 1, "create_index": 1}
    assert reply.json()["results"] == [  # fields at their defaults are left out
        {"err": "OK"},
        {"err": "OK", **a_at_1, "index": 1},  # a get says what it reflects
        {"err": "Version"},
        {"err": "NoKey"},
        {"err": "NoKey", "index": 1},
    ]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"ops": [{"op": "drop", "key": "a"}]}, 400, "ops[1].op"),
        ({"ops": [{"op": "range", "key": ""}]}, 400, "ops[1].range"),
        ({"ops": [{"op": "range", "key": "", "range": {"limit": 0}}]}, 400, "ops[1].range.limit"),
        ({"ops": [{"op": "range", "key": "", "range": {}}] * 17}, 400, "17 ranges"),
        ({"ops": [{"op": "txn", "key": ""}]}, 400, "ops[1].txn"),
        (
            {"ops": [{"op": "txn", "key": "", "txn": {"success": [{"op": "range", "key": ""}]}}]},
            400,
            "ops[1].txn.success[0].op",
        ),
        (
            {"ops": [{"op": "txn", "key": "", "txn": {"compare": [{"key": "a", "op": "="}]}}]},
            400,
            "ops[1].txn.compare[0]: give exactly one",
        ),
        ({"ops": [{"op": "get"}]}, 400, "ops[1].key: missing"),
        ({"ops": [{"op": "put", "key": "a", "version": -1}]}, 400, "ops[1].version"),
        ({"ops": [{"op": "append", "key": "a", "value": "x"}]}, 400, "ops[1].session"),
        ({"ops": [{"op": "append", "key": "a", "value": "x", "session": "s"}]}, 400, "append"),
        ({"ops": [{"op": "open", "key": ""}]}, 400, "open"),
        ({"ops": [{"op": "put", "key": "a", "stale": True}]}, 400, "ops[1].stale: only a get"),
        ({"ops": [{"op": "get", "key": "a", "stale": 1}]}, 400, "ops[1].stale"),
        ({"ops": [{"op": "put", "key": "a", "retry_after": -1}]}, 400, "ops[1].retry_after"),
        (
            {
                "ops": [
                    {
                        "op": "txn",
                        "key": "",
                        "txn": {"success": [{"op": "delete", "key": "a", "lease": 1}]},
                    }
                ]
            },
            400,
            "ops[1].txn.success[0].lease: only a put",
        ),
        ({"ops": [{"op": "get", "key": "k" * 4097}]}, 400, "ops[1].key: 4097 bytes"),
        ({"ops": [{"op": "get", "key": "\ud800" * 1366}]}, 400, "ops[1].key: 4098 bytes"),
        ({"ops": "get"}, 400, "ops: expected a list"),
        ({"ops": [{"op": "get", "key": "k"}] * 10_001}, 400, "at most 10000"),
    ],
)
async def test_bad_batches_get_4xx_and_change_nothing(
    single_kv: SingleKV, body: dict, status: int, fragment: str
) -> None:
    prefix = [{"op": "put", "key": "a", "value": "new", "version": 0}]
    if isinstance(body["ops"], list) and len(body["ops"]) < 10:
        body = {"ops": prefix + body["ops"]}  # a valid op first: it must not apply either
    async with httpx.AsyncClient() as http:
        reply = await http.post(f"{single_kv.direct_url}/batch", content=json.dumps(body))
    assert reply.status_code == status
    assert fragment in reply.json()["error"]
    assert single_kv.server.state.get("a").version == 0


@pytest.mark.parametrize(
    ("method", "body", "fragment"),
    [
        ("delete", {"key": "a"}, "version: missing field"),
        ("delete", {"key": "a", "version": -1}, "version"),
        ("range", {"limit": 0}, "limit"),
        ("range", {"limit": 10_001}, "limit: 10001, at most 10000"),
        ("range", {"prefix": "p" * 4097}, "prefix: 4097 bytes"),
        ("range", {"start": 3}, "start: expected a string"),
        ("txn", {"compare": [{"key": "a", "op": "=="}]}, "compare[0].op"),
        ("txn", {"compare": [{"key": "a", "op": "=", "version": 1, "value": ""}]}, "exactly one"),
        ("txn", {"compare": [{"key": "a", "op": "=", "version": "1"}]}, "expected an integer"),
        ("txn", {"success": [{"op": "append", "key": "a"}]}, "success[0].op"),
        ("txn", {"failure": [{"op": "put", "key": "a", "value": 1}]}, "failure[0].value"),
        ("txn", {"success": [{"op": "get", "key": "a"}] * 257}, "at most 256"),
        ("txn", {"compare": [{"key": "a", "op": "=", "version": 0}] * 65}, "at most 64"),
        ("txn", {"success": {"op": "get"}}, "expected a list"),
    ],
)
async def test_bad_delete_range_and_txn_requests_get_400_and_change_nothing(
    single_kv: SingleKV, method: str, body: dict, fragment: str
) -> None:
    async with httpx.AsyncClient(base_url=single_kv.direct_url) as http:
        await http.post("/put", json={"key": "a", "value": "kept", "version": 0})
        reply = await http.post(f"/{method}", json=body)
        assert reply.status_code == 400
        assert fragment in reply.json()["error"]
    assert single_kv.server.state.get("a").value == "kept"
    assert len(single_kv.server.state) == 1


async def test_coalescing_client_shares_requests_and_stays_linearizable(
    single_kv: SingleKV, seed: int
) -> None:
    history = History()
    rng = random.Random(seed)
    async with open_coalescing_client([single_kv.url]) as kv:
        clients = [history.recording(kv, f"task-{i}") for i in range(32)]
        results = await run_clients(32, 0.5, one_client_put(clients, "k", rng))
        await check_put_concurrent(kv, "k", results, reliable=True)
        ops = len(history.operations)
        assert kv.requests < ops / 2, f"{kv.requests} requests for {ops} ops: few coalesced"
    result = history.check(timeout=60)
    assert result.ok is True, result.account


async def test_coalescing_client_sends_many_ranges_in_batches_a_server_takes(
    single_kv: SingleKV,
) -> None:
    """64 tasks range (or read stale, which is a range of one key) at once: a server takes
    at most MAX_BATCH_RANGES ranges in a batch, so the client packs them in batches of that
    many, never a bigger one that is refused and then sent again op by op."""
    async with open_coalescing_client([single_kv.url]) as kv:
        await kv.put("k", "v", 0)
        before = kv.requests
        pages = []

        async def read() -> None:
            pages.append(await kv.range(prefix="k"))

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for _ in range(64):
                    nursery.start_soon(read)
        assert len(pages) == 64
        assert all([item.key for item in page.items] == ["k"] for page in pages)
        requests = kv.requests - before
        assert requests <= 64 // MAX_BATCH_RANGES + 2, f"{requests} requests for 64 ranges"


async def test_a_reply_carries_at_most_max_reply_bytes_of_data(single_kv: SingleKV) -> None:
    """A small request naming one large value many times (a batch of gets, a txn's gets,
    ranges) answers at most MAX_REPLY_BYTES of keys and values as sent: the reads past them answer
    ReplyTooLarge without their data, the first read is whole, a txn's writes apply. The
    coalescing client sends such reads again, so each of its callers gets its value."""
    big = "v" * (512 << 10)
    async with httpx.AsyncClient(base_url=single_kv.url, timeout=30) as http:
        await http.post("/put", json={"key": "big", "value": big, "version": 0})
        gets = [{"op": "get", "key": "big"}] * 100  # 3 kB asking 50 MiB
        reply = await http.post("/batch", json={"ops": gets})
        assert reply.status_code == 200 and len(reply.content) < MAX_REPLY_BYTES + 100_000
        errs = [r["err"] for r in reply.json()["results"]]
        assert errs == ["OK"] * (MAX_REPLY_BYTES // len(big)) + ["ReplyTooLarge"] * (
            100 - MAX_REPLY_BYTES // len(big)
        )
        ranges = [{"op": "range", "key": "", "range": {"prefix": "big"}}] * MAX_BATCH_RANGES
        reply = await http.post("/batch", json={"ops": [*gets[:30], *ranges]})
        errs = [r["err"] for r in reply.json()["results"]]  # room left for one page of "big"
        assert errs == ["OK"] * 31 + ["ReplyTooLarge"] * (MAX_BATCH_RANGES - 1)
        success = [{"op": "put", "key": "w", "value": "1"}, *[{"op": "get", "key": "big"}] * 40]
        reply = await http.post("/txn", json={"compare": [], "success": success})
        txn = reply.json()
        assert txn["succeeded"] and [r["err"] for r in txn["results"]] == ["OK"] * (
            1 + MAX_REPLY_BYTES // len(big)
        ) + ["ReplyTooLarge"] * (40 - MAX_REPLY_BYTES // len(big))
        assert (await http.post("/get", json={"key": "w"})).json()["value"] == "1"
        # The bound is on the reply as sent: an emoji is sent as 12 bytes (two \u escapes).
        await http.post("/put", json={"key": "emoji", "value": "😀" * 50_000, "version": 0})
        reply = await http.post("/batch", json={"ops": [{"op": "get", "key": "emoji"}] * 100})
        assert len(reply.content) < MAX_REPLY_BYTES + 100_000
        errs = [r["err"] for r in reply.json()["results"]]
        assert errs.count("OK") == MAX_REPLY_BYTES // 600_000, errs
    async with open_coalescing_client([single_kv.url], rpc_timeout=30) as kv:
        values: list[str] = []

        async def read() -> None:
            values.append((await kv.get("big")).value)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for _ in range(100):
                    nursery.start_soon(read)
        assert values == [big] * 100
        assert kv.requests >= 100 // (MAX_REPLY_BYTES // len(big))


async def test_coalescing_client_reports_conflicts_and_closes_cleanly(
    single_kv: SingleKV,
) -> None:
    async with open_coalescing_client([single_kv.url]) as kv:
        await kv.put("k", "1", 0)
        with pytest.raises(VersionConflict):
            await kv.put("k", "2", 0)
        assert await kv.get("k") == Versioned("1", 1)
    with pytest.raises(trio.ClosedResourceError):
        await kv.get("k")


class HeldBatches:
    """A ``/batch`` route that holds each request until the test lets it go
    (``let_go(i)``, by arrival) and answers every op ``OK``; it records each request's ops
    and how many were in at once."""

    def __init__(self) -> None:
        self.requests: list[list[str]] = []
        self._held: list[trio.Event] = []
        self.in_at_once = self.most_at_once = 0

    async def batch(self, args: BatchArgs) -> BatchReply:
        self.requests.append([op.op for op in args.ops])
        held = trio.Event()
        self._held.append(held)
        self.in_at_once += 1
        self.most_at_once = max(self.most_at_once, self.in_at_once)
        await held.wait()
        self.in_at_once -= 1
        return BatchReply([OpResult("OK") for _ in args.ops])

    def let_go(self, i: int) -> None:
        self._held[i].set()

    def routes(self) -> dict[str, Route]:
        """``/batch``, and ``/read`` for batches of reads only."""
        return {"batch": Route(BatchArgs, self.batch), "read": Route(BatchArgs, self.batch)}


async def test_coalescing_client_has_two_requests_in_flight_but_appends_go_alone(
    nursery: trio.Nursery,
) -> None:
    """While one request is out, the next goes (the client works on one request's answers
    while the server works on the other's); but a request with an append goes only when no
    other is out, and none goes beside it: the server's duplicate table, which keeps only a
    client's last sequence number, would take an earlier append applied late for a retry."""
    server = HeldBatches()
    url = await nursery.start(serve, make_app(server.routes()))

    async def sent(call: Callable[[], Awaitable[object]], requests: int) -> None:
        """Start ``call`` and wait until the client is idle; ``requests`` are then in."""
        callers.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        assert len(server.requests) == requests

    async with open_coalescing_client([url], rpc_timeout=30) as kv:
        kv._session = "s"  # as if opened (without a lease): appends need one
        with trio.fail_after(10):
            async with trio.open_nursery() as callers:
                await sent(partial(kv.get, "a"), 1)
                await sent(partial(kv.get, "b"), 2)  # beside the first
                await sent(partial(kv.append, "log", "x"), 2)  # waits: two are out
                server.let_go(0)
                await sent(partial(kv.get, "c"), 2)  # behind the append, which waits still
                server.let_go(1)
                await trio.testing.wait_all_tasks_blocked()
                assert server.requests[2] == ["append", "get"]  # alone, once both ended
                await sent(partial(kv.get, "d"), 3)  # waits for the append's request
                server.let_go(2)
                await trio.testing.wait_all_tasks_blocked()
                server.let_go(3)
        assert server.requests == [["get"], ["get"], ["append", "get"], ["get"]]
        assert server.most_at_once == 2


async def test_cancelled_callers_ops_are_dropped_if_queued_and_forgotten_if_in_flight(
    nursery: trio.Nursery,
) -> None:
    """A caller cancelled while its op waits in the queue takes it out (it is never sent);
    one cancelled while its op is out leaves, and the answer that arrives later wakes no
    one: the client goes on serving the others."""
    server = HeldBatches()
    url = await nursery.start(serve, make_app(server.routes()))
    answered: list[str] = []

    async def get(kv: CoalescingClient, key: str, scope: trio.CancelScope) -> None:
        with scope:
            await kv.get(key)
            answered.append(key)

    with trio.fail_after(10):
        async with (
            trio.open_nursery() as callers,
            open_coalescing_client([url], rpc_timeout=30, max_in_flight=1) as kv,
        ):
            out, queued, kept = trio.CancelScope(), trio.CancelScope(), trio.CancelScope()
            callers.start_soon(get, kv, "out", out)
            await trio.testing.wait_all_tasks_blocked()
            callers.start_soon(get, kv, "queued", queued)
            callers.start_soon(get, kv, "kept", kept)
            await trio.testing.wait_all_tasks_blocked()
            assert server.requests == [["get"]]  # "out" is out; the other two wait
            out.cancel()
            queued.cancel()
            await trio.testing.wait_all_tasks_blocked()
            server.let_go(0)
            await trio.testing.wait_all_tasks_blocked()
            assert server.requests == [["get"], ["get"]]  # "kept" alone
            server.let_go(1)
            await trio.testing.wait_all_tasks_blocked()
    assert answered == ["kept"]
    assert out.cancelled_caught and queued.cancelled_caught


async def test_callers_in_flight_when_the_coalescing_client_closes_are_told(
    nursery: trio.Nursery,
) -> None:
    """Callers whose ops are out in either request when the client's block exits raise
    ClosedResourceError; they used to wait for ever (a hostile probe found it)."""
    server = HeldBatches()  # never lets a request go
    url = await nursery.start(serve, make_app(server.routes()))
    told: list[str] = []

    async def get(kv: CoalescingClient, key: str) -> None:
        with pytest.raises(trio.ClosedResourceError):
            await kv.get(key)
        told.append(key)

    with trio.fail_after(10):
        async with (
            trio.open_nursery() as callers,
            open_coalescing_client([url], rpc_timeout=30) as kv,
        ):
            for key in "abcd":
                callers.start_soon(get, kv, key)
            await trio.testing.wait_all_tasks_blocked()
            assert len(server.requests) == 2
    assert sorted(told) == ["a", "b", "c", "d"]


def test_coalescing_client_splits_queued_reads_among_free_requests_not_writes() -> None:
    """Queued reads are shared among the requests that may go out now, so that they
    overlap; queued writes go in one request (one log entry)."""
    kv = CoalescingClient(["http://127.0.0.1:1"])  # never called
    kv._queue = [_Queued(BatchOp("get", key)) for key in "abcde"]
    assert [q.op.key for q in kv._take_batch()] == ["a", "b", "c"]  # two requests free
    kv._in_flight.append([])
    assert [q.op.key for q in kv._take_batch()] == ["d", "e"]  # one free: all the rest
    kv._in_flight.clear()
    kv._queue = [_Queued(BatchOp("put" if key == "a" else "get", key)) for key in "abcde"]
    assert len(kv._take_batch()) == 5  # a write among them: one request


pytestmark_cluster = pytest.mark.xdist_group("http-cluster")


@pytestmark_cluster
async def test_coalesced_appends_apply_exactly_once_under_loss_and_crashes(
    make_kv_cluster,
) -> None:
    c: KVCluster = await make_kv_cluster(3, profile=MIT_UNRELIABLE)
    acknowledged: list[str] = []
    urls = [c.urls[i] for i in c.ids]

    async def appender(kv, me: int, done: trio.Event) -> None:
        n = 0
        while not done.is_set():
            token = f"<{me}.{n}>"
            await kv.append("log", token)
            acknowledged.append(token)
            n += 1

    async with open_coalescing_client(urls, client_id="appenders") as kv:
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            for me in range(16):
                nursery.start_soon(appender, kv, me, done)
            await trio.sleep(1.0)
            leader = await wait_leader(c)
            await c.restart(leader)
            await trio.sleep(1.0)
            done.set()
        value = (await kv.get("log")).value
    tokens = Counter(value.replace("><", ">\n<").split("\n")) if value else Counter()
    doubled = [t for t, n in tokens.items() if n > 1]
    lost = [t for t in acknowledged if t not in tokens]
    assert not doubled, f"appends applied twice: {doubled[:5]}"
    assert not lost, f"acknowledged appends lost: {lost[:5]}"
    assert len(acknowledged) > 16
    for me in range(16):  # each task's appends land in the order it made them
        mine = [int(t[1:-1].split(".")[1]) for t in tokens if t.startswith(f"<{me}.")]
        in_value = sorted(mine, key=lambda n: value.index(f"<{me}.{n}>"))
        assert in_value == sorted(mine)


@pytestmark_cluster
async def test_embedded_clients_survive_leader_crash_and_stay_linearizable(
    make_kv_cluster, seed: int
) -> None:
    c: KVCluster = await make_kv_cluster(3)
    history = History()
    rng = random.Random(seed)
    await wait_leader(c)
    async with trio.open_nursery() as apps:
        clients: dict[str, list] = {}
        for i in c.ids:
            node = c.nodes[i]
            assert node is not None
            kv = await apps.start(_embedded_client, node)
            clients[i] = [history.recording(kv, f"app-{i}-{k}") for k in range(4)]
        everyone = [kv for i in c.ids for kv in clients[i]]
        # Many keys: twelve clients on one key mostly see Version, and a put that first met a
        # follower's WrongLeader then reports Maybe: the test is about fail-over, not contention.
        keys = [f"k{n}" for n in range(50)]
        first = await run_clients(len(everyone), 0.5, one_client_put(everyone, keys, rng))
        leader = await wait_leader(c)
        await c.stop(leader)
        await wait_leader(c, exclude=(leader,))  # fail-over takes up to ~1 s: wait for it
        survivors = [kv for i in c.ids if i != leader for kv in clients[i]]
        second = await run_clients(len(survivors), 0.5, one_client_put(survivors, keys, rng))
        completed = sum(r.ok + r.maybe for r in second)
        assert completed > 0, "no put completed after the leader crashed"
        apps.cancel_scope.cancel()
    assert sum(r.ok for r in first) > 0
    result = history.check(timeout=60)
    assert result.ok is True, result.account


async def _embedded_client(node, task_status: trio.TaskStatus) -> None:
    async with node.open_client() as kv:
        task_status.started(kv)
        await trio.sleep_forever()


@pytestmark_cluster
async def test_embedded_client_writes_in_process_on_the_leader(make_kv_cluster) -> None:
    c: KVCluster = await make_kv_cluster(3)
    leader_id = await wait_leader(c)
    leader = c.nodes[leader_id]
    assert leader is not None
    rpcs_before = c.network.rpc_total
    async with trio.open_nursery() as apps:
        kv = await apps.start(_embedded_client, leader)
        async with trio.open_nursery() as tasks:
            for k in range(50):
                tasks.start_soon(kv.put, f"key-{k}", "v", 0)
        assert await kv.get("key-7") == Versioned("v", 1)
        apps.cancel_scope.cancel()
    # 51 ops, concurrent: a few log entries, each replicated with a few AppendEntries.
    entries = leader.raft.log.last_index
    assert entries < 20, f"{entries} log entries for 51 concurrent ops: none were packed"
    assert c.network.rpc_total - rpcs_before < 100
