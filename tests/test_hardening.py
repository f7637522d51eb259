"""What a faulty peer, a careless client or a failing disk hands a replicated KV node, on
virtual time: nothing crashes it, makes it lie, or loses what it acknowledged.

Three :class:`KVNode`\\ s on an in-memory network (messages encoded and validated as on the
wire) with in-memory storage.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import random
import zlib
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trioraft import BadRequest, LeadershipLost, MemoryStorage, RaftConfig, StorageFailed
from trioraft.kv.clients import OpsClient
from trioraft.kv.machine import KVMachine
from trioraft.kv.messages import (
    MAX_REPLY_BYTES,
    AppendArgs,
    BatchArgs,
    BatchOp,
    DeleteArgs,
    GetArgs,
    LeaseArgs,
    LeaseGrantArgs,
    OpenSessionArgs,
    OpResult,
    PutArgs,
    RangeArgs,
    TxnArgs,
    TxnOp,
    as_result,
    bound_reply,
    log_op,
)
from trioraft.kv.node import QUOTA_HEADROOM, EmbeddedClient, KVNode
from trioraft.raft.log import Entry
from trioraft.raft.membership import CONFIGURATION_PREFIX
from trioraft.raft.messages import AppendEntriesArgs, InstallSnapshotArgs
from trioraft.raft.node import RaftNode
from trioraft.raft.storage import FileStorage
from trioraft.rpc.transport import MemoryNetwork
from trioraft.testing import RELIABLE, Network

pytestmark = pytest.mark.usefixtures("seeded_scheduler")
Clock = trio.testing.MockClock


class MeasuredTransport:
    """An in-memory transport that remembers the largest request it carried, in bytes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.largest = 0

    async def call(self, peer: str, method: str, args: Any, reply_type: type) -> Any:
        from trioraft.rpc.codec import encode

        self.largest = max(self.largest, len(json.dumps(encode(args))))
        return await self.inner.call(peer, method, args, reply_type)


class MemoryKV:
    """Three KV nodes on one in-memory network, in ``nursery``."""

    def __init__(self, nursery: trio.Nursery, seed: int, config: RaftConfig | None = None) -> None:
        self.nursery = nursery
        self.network = Network(seed, RELIABLE)
        self.memory = MemoryNetwork(self.network)
        self.ids = ["0", "1", "2"]
        self.config = config or RaftConfig()
        self.storages = {i: MemoryStorage() for i in self.ids}
        self.transports: dict[str, MeasuredTransport] = {}
        self.nodes: dict[str, KVNode] = {}
        self.seed = seed

    async def start_all(self) -> None:
        for i in self.ids:
            transport = self.transports[i] = MeasuredTransport(self.memory.transport(i))
            node = self.nodes[i] = KVNode(
                i,
                {j: f"mem://{j}" for j in self.ids if j != i},
                self.storages[i],
                transport=transport,
                config=self.config,
                rng=random.Random(f"{self.seed}-{i}"),
            )
            self.memory.register(i, node.raft.routes())
            await self.nursery.start(node.raft.run)
            await self.nursery.start(node.rsm.run)

    async def leader(self) -> KVNode:
        with trio.fail_after(5):
            while True:
                for node in self.nodes.values():
                    if node.raft.is_leader:
                        return node
                await trio.sleep(0.01)

    async def wait_applied(self, index: int) -> None:
        with trio.fail_after(5):
            for node in self.nodes.values():
                await node.raft.wait_applied(index)

    def terms(self) -> list[int]:
        return [node.raft.term for node in self.nodes.values()]


async def test_an_entry_that_is_not_json_is_applied_as_nothing_everywhere(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    """A committed entry no replica can decode (only a faulty peer could log one) must not
    kill the replicas that apply it; every replica skips it alike and goes on."""
    kv = MemoryKV(nursery, seed)
    await kv.start_all()
    leader = await kv.leader()
    _, _, ok = leader.raft.submit("this is not JSON {")
    assert ok
    malformed, _, _ = leader.raft.submit('{"o":"x","t":1,"ops":[{"op":"put","key":7},"x",{}]}')
    assert (await leader.handle_put(PutArgs("k", "v", 0))).err == "OK"
    await kv.wait_applied(malformed + 1)
    for node in kv.nodes.values():
        put_at = malformed + 1  # value, version, mod_index, create_index
        assert node.machine.kv.items() == {"k": ("v", 1, put_at, put_at)}
        assert not node.raft._stopped


async def test_a_garbage_snapshot_is_refused_and_changes_nothing(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    kv = MemoryKV(nursery, seed)
    await kv.start_all()
    leader = await kv.leader()
    assert (await leader.handle_put(PutArgs("k", "v", 0))).err == "OK"
    follower = next(n for n in kv.nodes.values() if n is not leader)
    await kv.wait_applied(leader.raft.commit_index)
    raft = follower.raft
    before = (raft.commit_index, raft.log.snapshot_index, follower.storage_bytes())
    term = leader.raft.term

    def install(data: bytes, crc: int | None = None) -> InstallSnapshotArgs:
        """The one chunk of a snapshot of ``data``, as a leader sends it."""
        crc = zlib.crc32(data) if crc is None else crc
        encoded = base64.b64encode(data).decode()
        sha256 = hashlib.sha256(data).hexdigest()
        return InstallSnapshotArgs(
            term, leader.id, 1000, term, encoded, crc, total=len(data), sha256=sha256
        )

    for args in [
        install(b'{"kv": {"k": ["PWNED", 1]}, "sessions": {}}', crc=1),  # damaged in transit
        install(b"\x00garbage that is not a snapshot"),
        install(b'{"kv": {"k": ["PWNED", "not a version"]}, "sessions": {}}'),
        install(b'{"kv": [], "sessions": {}}'),
    ]:
        with pytest.raises(BadRequest):
            await follower.raft.handle_install_snapshot(args)
    assert (raft.commit_index, raft.log.snapshot_index, follower.storage_bytes()) == before
    got = follower.machine.kv.get("k")
    assert (got.value, got.version) == ("v", 1)
    assert (await leader.handle_put(PutArgs("k", "w", 1))).err == "OK"  # still a cluster


async def test_an_op_that_could_never_fit_a_message_is_refused_at_submit(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    """Backslashes double at each JSON encoding: a value that fits a client's request can
    still be too large to replicate. It must be refused (413) at once, not retried into
    elections; and what fits is sent in messages within the peers' limit."""
    limit = 256 * 1024
    kv = MemoryKV(nursery, seed, RaftConfig(max_message_bytes=limit, max_batch_bytes=limit))
    await kv.start_all()
    leader = await kv.leader()
    terms = kv.terms()
    with pytest.raises(BadRequest) as refused:
        await leader.handle_put(PutArgs("big", "\\" * 100_000, 0))
    assert refused.value.status == 413
    # Many ops that each fit, sent at once: entries and batches stay within the limit.
    async with trio.open_nursery() as writers:
        for k in range(20):
            writers.start_soon(leader.handle_put, PutArgs(f"k{k}", "\\" * 30_000, 0))
    await kv.wait_applied(leader.raft.commit_index)
    await trio.sleep(2)  # ten election timeouts: nobody may have needed one
    assert kv.terms() == terms
    assert max(t.largest for t in kv.transports.values()) <= limit
    for node in kv.nodes.values():
        assert len(node.machine.kv.items()) == 20


async def test_append_entries_whose_terms_break_the_order_is_refused(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    kv = MemoryKV(nursery, seed)
    await kv.start_all()
    leader = await kv.leader()
    follower = next(n for n in kv.nodes.values() if n is not leader)
    term = leader.raft.term
    last = follower.raft.log.last_index
    damaged_configuration = Entry(term, CONFIGURATION_PREFIX + "[[]]")
    for entries in (
        [Entry(term + 5, "x")],
        [Entry(term, "x"), Entry(term - 1, "y")],
        [Entry(term, "x"), damaged_configuration],  # refused whole, before the "x" is taken
    ):
        args = AppendEntriesArgs(term, leader.id, last, follower.raft.log.last_term, entries, 0)
        with pytest.raises(BadRequest):
            await follower.raft.handle_append_entries(args)
    assert follower.raft.log.last_index == last
    speaking_for_it = AppendEntriesArgs(term + 1, follower.id, 0, 0, [], 0)
    with pytest.raises(BadRequest):
        await follower.raft.handle_append_entries(speaking_for_it)
    assert follower.raft.term == term


class FailingDisk(MemoryStorage):
    """Memory storage whose writes start failing with ENOSPC when ``full`` is set."""

    full = False

    def _check(self) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")

    def append(self, first_index: int, entries: list[Entry]) -> None:
        self._check()
        super().append(first_index, entries)

    def sync_blocking(self) -> None:
        self._check()
        super().sync_blocking()

    async def save_snapshot_file(self, snapshot) -> bool:
        self._check()
        return await super().save_snapshot_file(snapshot)

    async def compact_log(self, log) -> None:
        self._check()
        await super().compact_log(log)

    async def save_hard_state(self, state) -> None:
        self._check()
        await super().save_hard_state(state)


async def test_a_failed_write_stops_the_node_and_acknowledges_nothing(
    autojump_clock: Clock,
) -> None:
    storage = FailingDisk()
    node = RaftNode("a", ["a"], storage, MeasuredTransport(None), rng=random.Random(1))
    stopped = False
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            with trio.fail_after(5):
                await node.wait_until(lambda n: n.is_leader)
            index, term = node.submit_many(["before"])
            await node.wait_committed(index, term)
            storage.full = True
            index, term = node.submit_many(["after"])
            with pytest.raises(LeadershipLost):
                await node.wait_committed(index, term)
            await trio.sleep_forever()  # run() raises StorageFailed
    except* StorageFailed as group:
        (failure,) = group.exceptions
        assert "No space left" in str(failure)
        stopped = True
    assert stopped
    assert node.commit_index == index - 1
    assert [e.command for _, e in storage.crashed()._durable] == ["before"]


async def test_a_failed_snapshot_save_changes_nothing_and_stops_the_follower(
    seed: int, autojump_clock: Clock
) -> None:
    stopped = False
    try:
        async with trio.open_nursery() as nursery:
            kv = MemoryKV(nursery, seed)
            kv.storages = {i: FailingDisk() for i in kv.ids}
            await kv.start_all()
            leader = await kv.leader()
            follower = next(n for n in kv.nodes.values() if n is not leader)
            disk = kv.storages[follower.id]
            assert isinstance(disk, FailingDisk)
            before = follower.raft.commit_index
            snapshot = KVMachine().snapshot()
            args = InstallSnapshotArgs(
                leader.raft.term,
                leader.id,
                before + 100,
                leader.raft.term,
                base64.b64encode(snapshot).decode(),
                zlib.crc32(snapshot),
                total=len(snapshot),
                sha256=hashlib.sha256(snapshot).hexdigest(),
            )
            disk.full = True
            for _ in range(2):  # the retry must not be answered as if it had been saved
                with pytest.raises(StorageFailed):
                    await follower.raft.handle_install_snapshot(args)
                assert follower.raft.commit_index == before
                assert follower.raft.log.snapshot_index == 0
            await follower.raft.wait_stopped()
            nursery.cancel_scope.cancel()
    except* StorageFailed:
        stopped = True
    assert stopped


def test_client_sessions_are_bounded_and_a_forgotten_one_never_applies_twice() -> None:
    machine = KVMachine(max_sessions=2)

    def open_session() -> str:
        reply = machine.apply({"op": "open", "key": "", "nonce": "n"})
        assert reply.err == "OK"
        return reply.session

    def append(session: str, seq: int, value: str) -> str:
        op = {"op": "append", "key": "k", "value": value, "session": session, "seq": seq}
        return machine.apply(op).err

    a, b = open_session(), open_session()
    assert a != b
    assert append(a, 1, "a") == "OK"
    assert append(a, 1, "a") == "OK"  # a retry: answered, not applied again
    assert append(b, 1, "b") == "OK"
    c = open_session()  # "a" is the least recently used: forgotten
    assert list(machine.sessions) == [b, c]
    assert append(a, 1, "a") == "SessionExpired"  # it may have applied: refused
    assert append(a, 2, "a") == "SessionExpired"
    assert append("1-guessed", 1, "x") == "SessionExpired"  # never opened
    assert append(c, 1, "c") == "OK"
    assert machine.kv.get("k").value == "abc"
    restored = KVMachine(max_sessions=2)
    restored.restore(machine.snapshot())
    assert list(restored.sessions) == list(machine.sessions)  # eviction order survives
    assert restored.apply({"op": "open", "key": "", "nonce": "n"}).session not in (a, b, c)


def test_malformed_ops_answer_bad_op_and_change_nothing() -> None:
    machine = KVMachine()
    for op in [
        None,
        [],
        {"op": "put", "key": 1, "value": "v", "version": 0},
        {"op": "put", "key": "k", "value": ["v"], "version": 0},
        {"op": "put", "key": "k", "value": "v", "version": "0"},
        {"op": "put", "key": "k", "value": "v", "version": True},
        {"op": "append", "key": "k", "value": "v", "session": None, "seq": 1},
        {"op": "open", "key": "k"},
        {"op": "drop", "key": "k"},
    ]:
        assert machine.apply(op).err == "BadOp"
    assert machine.kv.items() == {}
    assert machine.sessions == {}


async def test_over_the_quota_writes_answer_no_space_and_reads_work(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    kv = MemoryKV(nursery, seed)
    await kv.start_all()
    leader = await kv.leader()
    assert (await leader.handle_put(PutArgs("k", "v" * 2000, 0))).err == "OK"
    leader.quota_bytes = leader.storage_bytes() - 1  # as if the disk had filled to the quota
    assert (await leader.handle_put(PutArgs("k", "w", 1))).err == "NoSpace"
    assert (await leader.handle_open_session(OpenSessionArgs())).err == "NoSpace"
    batch = BatchArgs([BatchOp("get", "k"), BatchOp("put", "k", "w", 1), BatchOp("open", "")])
    results = (await leader.handle_batch(batch)).results
    assert [r.err for r in results] == ["OK", "NoSpace", "NoSpace"]
    assert results[0].value == "v" * 2000
    assert (await leader.handle_get(GetArgs("k"))).value == "v" * 2000
    status = leader.status()
    assert status["storage_bytes"] > status["quota_bytes"]
    leader.quota_bytes = 2 << 30
    assert (await leader.handle_put(PutArgs("k", "w", 1))).err == "OK"


async def test_past_the_quota_removals_still_run_within_the_headroom(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    """etcd's way back from a full quota: deletes, lease revocations and txns that put
    nothing still run past it (with snapshots on, they shrink what is kept), up to
    QUOTA_HEADROOM more; puts do not. Without them a full store could never be emptied."""
    kv = MemoryKV(nursery, seed)
    await kv.start_all()
    leader = await kv.leader()
    for key in ("a", "b", "c"):
        assert (await leader.handle_put(PutArgs(key, "v" * 2000, 0))).err == "OK"
    lease = (await leader.handle_lease_grant(LeaseGrantArgs(60))).lease
    leader.quota_bytes = leader.storage_bytes() - 1
    assert (await leader.handle_put(PutArgs("d", "v", 0))).err == "NoSpace"
    assert (await leader.handle_delete(DeleteArgs("a", 1))).err == "OK"
    gone = TxnArgs([], [TxnOp("delete", "b"), TxnOp("get", "c")])
    assert (await leader.handle_txn(gone)).succeeded
    assert (await leader.handle_txn(TxnArgs([], [TxnOp("put", "e", "v")]))).err == "NoSpace"
    assert (await leader.handle_lease_revoke(LeaseArgs(lease))).err == "OK"
    leader.quota_bytes = int(leader.storage_bytes() / (1 + QUOTA_HEADROOM)) - 1
    assert (await leader.handle_delete(DeleteArgs("c", 1))).err == "NoSpace"
    assert (await leader.handle_get(GetArgs("c"))).value == "v" * 2000


async def test_past_the_quota_deleting_with_snapshots_on_gets_back_under_it(
    nursery: trio.Nursery, seed: int, tmp_path: Path
) -> None:
    """Deletions past the quota free nothing until a snapshot: with a large
    ``max_raft_state`` the log never grew enough to take one, and a store emptied past its
    quota still refused every put. Now deletions of 1/64 of the quota take one."""
    kv = MemoryKV(nursery, seed)
    kv.storages = {i: FileStorage(tmp_path / i) for i in kv.ids}  # sizes as on disk
    await kv.start_all()
    leader = await kv.leader()
    for node in kv.nodes.values():
        node.rsm.max_raft_state = 1 << 30  # snapshots on, never by the log's size here
    for k in range(10):
        assert (await leader.handle_put(PutArgs(f"k{k}", "v" * 20_000, 0))).err == "OK"
    leader.quota_bytes = leader.storage_bytes() - 1
    assert (await leader.handle_put(PutArgs("new", "v", 0))).err == "NoSpace"
    left = [f"k{k}" for k in range(10)]
    for _ in range(100):  # while a snapshot is saved and its log not yet cut, both count
        left = [k for k in left if (await leader.handle_delete(DeleteArgs(k, 1))).err != "OK"]
        if not left and not leader.over_quota():
            break
        await trio.sleep(0.05)
    assert not left and leader.raft.log.snapshot_index > 0 and not leader.over_quota()
    assert (await leader.handle_put(PutArgs("new", "v", 0))).err == "OK"


async def test_concurrent_writes_cannot_all_pass_the_quota_at_once(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    """The quota counts the writes admitted and not yet answered: 50 puts of 2,000
    characters sent together with 20 kB left all passed it before (1.5 x the quota in
    the probe's run); about 20 kB of them pass now."""
    kv = MemoryKV(nursery, seed)
    await kv.start_all()
    leader = await kv.leader()
    leader.quota_bytes = leader.storage_bytes() + 20_000
    answers: list[str] = []

    async def put(k: int) -> None:
        answers.append((await leader.handle_put(PutArgs(f"k{k}", "v" * 2000, 0))).err)

    async with trio.open_nursery() as puts:
        for k in range(50):
            puts.start_soon(put, k)
    assert 5 <= answers.count("OK") <= 10 and answers.count("NoSpace") >= 40, answers
    assert leader.storage_bytes() < leader.quota_bytes + 4 * 2200


async def test_a_replicated_batch_reply_is_bounded_and_its_first_read_is_whole(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    kv = MemoryKV(nursery, seed)
    await kv.start_all()
    leader = await kv.leader()
    big = "v" * (1 << 20)
    assert (await leader.handle_put(PutArgs("big", big, 0))).err == "OK"
    gets = [BatchOp("get", "big")] * 20
    results = (await leader.handle_batch(BatchArgs(gets))).results
    assert [r.err for r in results] == ["OK"] * 16 + ["ReplyTooLarge"] * 4
    assert all(r.value == big for r in results[:16]) and results[16].value == ""
    # One read larger than the whole bound (a server that takes larger bodies) is whole.
    huge = OpResult("OK", "h" * (MAX_REPLY_BYTES + 1))
    bounded = bound_reply([BatchOp("get", "h")] * 2, [huge, huge])
    assert [r.err for r in bounded] == ["OK", "ReplyTooLarge"] and bounded[0] is huge
    # Escaped, a character beyond the BMP takes 12 bytes: two values that fit the bound as
    # characters, or at 6 bytes a character, do not fit it as JSON.
    wide = OpResult("OK", "😀" * (MAX_REPLY_BYTES // 24 + 1))
    bounded = bound_reply([BatchOp("get", "w")] * 2, [wide, wide])
    assert [r.err for r in bounded] == ["OK", "ReplyTooLarge"]


async def test_reads_answer_what_the_machine_answers_the_same_ops_logged(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    """Reads skip the log, and a get skips the machine's dispatch too (the hot path of
    reads): every read, by ReadIndex or stale, on the leader or a follower, answers what the
    machine answers the same op logged at the same index."""
    kv = MemoryKV(nursery, seed)
    await kv.start_all()
    leader = await kv.leader()
    lease = (await leader.handle_lease_grant(LeaseGrantArgs(60))).lease
    assert (await leader.handle_put(PutArgs("a", "1", 0))).err == "OK"
    assert (await leader.handle_put(PutArgs("a", "é😀", 1))).err == "OK"
    assert (await leader.handle_put(PutArgs("b", "", 0, lease))).err == "OK"
    assert (await leader.handle_delete(DeleteArgs("b", 1))).err == "OK"
    await kv.wait_applied(leader.raft.commit_index)
    ops = [
        BatchOp("get", "a"),
        BatchOp("get", "missing"),
        BatchOp("get", "b"),
        BatchOp("range", "", range=RangeArgs(prefix="")),
        BatchOp("lease_keepalive", "", lease=lease),
        BatchOp("lease_keepalive", "", lease=lease + 1),
        BatchOp("get", "a"),
    ]

    def logged(node: KVNode) -> list[OpResult]:
        applied = node.raft.last_applied
        return [as_result(node.machine.apply(log_op(op), applied)) for op in ops]

    expected = logged(leader)
    assert [r.err for r in expected] == ["OK", "NoKey", "NoKey", "OK", "OK", "NoLease", "OK"]
    assert (expected[0].value, expected[0].version) == ("é😀", 2)
    assert (await leader.handle_read(BatchArgs(ops), None)).results == expected
    for node in kv.nodes.values():
        assert node.read_stale(ops) == logged(node)


async def test_an_evicted_session_answers_session_expired_through_the_node(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    kv = MemoryKV(nursery, seed)
    await kv.start_all()
    leader = await kv.leader()
    for node in kv.nodes.values():
        node.machine.max_sessions = 1
    first = (await leader.handle_open_session(OpenSessionArgs())).session
    assert (await leader.handle_append(AppendArgs("k", "a", first, 1))).err == "OK"
    second = (await leader.handle_open_session(OpenSessionArgs())).session  # evicts the first
    assert (await leader.handle_append(AppendArgs("k", "a", first, 1))).err == "SessionExpired"
    assert (await leader.handle_append(AppendArgs("k", "b", second, 1))).err == "OK"
    await kv.wait_applied(leader.raft.commit_index)
    for node in kv.nodes.values():
        assert node.machine.kv.get("k").value == "ab"
        assert list(node.machine.sessions) == [second]


async def test_an_append_whose_session_was_forgotten_before_it_goes_on_in_a_new_one(
    nursery: trio.Nursery, seed: int, autojump_clock: Clock
) -> None:
    """Another client's sessions evict ours while we are idle: our next append meets
    SessionExpired on its first attempt, which proves it did not apply, so the client opens
    a new session and applies it once, without troubling its caller."""
    kv = MemoryKV(nursery, seed)
    await kv.start_all()
    leader = await kv.leader()
    for node in kv.nodes.values():
        node.machine.max_sessions = 1
    client = EmbeddedClient(leader, NoRemote())
    await client.append("k", "a")
    await leader.handle_open_session(OpenSessionArgs())  # evicts the client's session
    await client.append("k", "b")
    assert (await client.get("k")).value == "ab"


class NoRemote(OpsClient):
    """The embedded client's way to other servers, never taken while the node leads."""

    async def run(self, op: BatchOp) -> tuple[OpResult, str]:
        raise AssertionError("the node was expected to lead")
