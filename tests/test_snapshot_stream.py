"""Snapshots in chunks (trioraft.raft.transfer): a 100 MB state reaches a lagging follower
with the default limits, and a follower takes chunks only in order, whole and checked.

Real nodes over real loopback sockets (framed TCP and HTTP) and real data directories.
The chunk protocol tests play the leader by hand against one follower, over HTTP without
peer authentication so that they see each refusal's status and message.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import random
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import trio

from trioraft import StorageFailed
from trioraft.raft.node import Applied, RaftConfig, RaftNode, SnapshotApplied
from trioraft.raft.serve import serve_node
from trioraft.raft.storage import INCOMING_SNAPSHOT, Fault, FileStorage
from trioraft.rpc.auth import PeerAuth
from trioraft.rpc.tcp import TcpTransport
from trioraft.rpc.transport import HttpTransport
from trioraft.testing import Network, Profile

MB = 1_000_000


@dataclass
class BytesMachine:
    """A test state machine whose state is bytes: ``grow:N:SEED`` appends N bytes made
    from ``SEED`` (:func:`pattern`), so a huge state comes from a tiny log. After each grow
    (of more than 0 bytes), the node snapshots the whole state."""

    node: RaftNode
    state: bytes = b""
    installed: list[int] = field(default_factory=list)  # indexes of snapshots installed
    snapshot_index: int = 0  # of the last snapshot taken here
    _taken: trio.Event = field(default_factory=trio.Event)
    _installing: trio.Event = field(default_factory=trio.Event)

    async def wait_snapshot(self, index: int) -> None:
        while self.snapshot_index < index:
            await self._taken.wait()

    async def wait_installed(self, index: int) -> None:
        """Return once this machine holds the snapshot at ``index`` (the node's
        ``wait_applied`` returns once it is handed out, which may be before)."""
        while index not in self.installed:
            await self._installing.wait()

    async def run(self) -> None:
        async for message in self.node.applied:
            if isinstance(message, SnapshotApplied):
                self.state = message.data
                self.installed.append(message.index)
                self._installing.set()
                self._installing = trio.Event()
                continue
            assert isinstance(message, Applied)
            _, size, seed = message.command.split(":")
            if int(size):
                self.state += pattern(int(size), int(seed))
                await self.node.snapshot(message.index, self.state)
                self.snapshot_index = message.index
                self._taken.set()
                self._taken = trio.Event()


def pattern(size: int, seed: int) -> bytes:
    """``size`` bytes from ``seed``: 64 KiB drawn from ``random.Random(seed)``, repeated
    (drawing 100 MB would take seconds)."""
    block = random.Random(seed).randbytes(1 << 16)
    return (block * (size // len(block) + 1))[:size]


@dataclass
class Member:
    node: RaftNode
    machine: BytesMachine
    storage: FileStorage
    url: str
    scope: trio.CancelScope
    stopped: trio.Event


async def start_member(
    nursery: trio.Nursery,
    node: RaftNode,
    storage: FileStorage,
    calls: TcpTransport | HttpTransport,
    *,
    may_fail_stop: bool = False,
    **serve_options: Any,
) -> Member:
    """Serve ``node`` (``serve_node`` with ``serve_options``) and apply what it hands out,
    until the member's scope is cancelled; then close ``calls`` (its outgoing transport)
    and its storage. With ``may_fail_stop``, a node failing on its storage
    (``StorageFailed``) just stops (``node.failure`` says why); otherwise that fails the
    test."""
    machine = BytesMachine(node)
    scope, stopped = trio.CancelScope(), trio.Event()

    async def run(task_status: trio.TaskStatus[str]) -> None:
        try:
            with scope:
                async with trio.open_nursery() as inner:
                    inner.start_soon(machine.run)
                    task_status.started(
                        await inner.start(partial(serve_node, node, **serve_options))
                    )
        except* StorageFailed:
            if not may_fail_stop:
                raise
        finally:
            with trio.CancelScope(shield=True):
                await calls.aclose()
            storage.close()
            stopped.set()

    url = await nursery.start(run)
    return Member(node, machine, storage, url, scope, stopped)


class Cluster:
    """Raft nodes ``ids`` over ``transport`` on loopback, each with its own data directory."""

    def __init__(
        self,
        nursery: trio.Nursery,
        directory: Path,
        ids: list[str],
        transport: Literal["tcp", "http"],
        config: RaftConfig,
        seed: int,
        network: Network | None = None,
    ) -> None:
        self.nursery = nursery
        self.network = network
        self.directory = directory
        self.ids = ids
        self.kind = transport
        self.config = config
        self.seed = seed
        self.auth = PeerAuth(random.Random(seed).randbytes(32))
        self.members: dict[str, Member] = {}
        self.transports: dict[str, TcpTransport | HttpTransport] = {}

    async def start(self, i: str) -> Member:
        storage = FileStorage(self.directory / i)
        if self.kind == "tcp":
            transport: TcpTransport | HttpTransport = TcpTransport(
                i, {}, network=self.network, peer_auth=self.auth
            )
        else:
            transport = HttpTransport(
                i, {}, timeout=self.config.transport_timeout, peer_auth=self.auth
            )
        self.transports[i] = transport
        node = RaftNode(
            i,
            self.ids,
            storage,
            transport,
            config=self.config,
            rng=random.Random(f"{self.seed}-{i}"),
        )
        member = await start_member(
            self.nursery, node, storage, transport, transport=self.kind, peer_auth=self.auth
        )
        self.members[i] = member
        for j, other in self.members.items():  # everyone learns everyone's address
            if j != i:
                self.transports[j].set_peer_address(i, member.url)
                transport.set_peer_address(j, other.url)
        return member


async def leader_of(members: list[Member]) -> RaftNode:
    """The node that leads (waiting for an election, event-driven on each node)."""
    while True:
        for member in members:
            if member.node.is_leader:
                return member.node
        async with trio.open_nursery() as nursery:
            for member in members:

                async def moved(node: RaftNode = member.node) -> None:
                    await node.wait_until(lambda n: n.is_leader)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(moved)


async def grow(leader: RaftNode, size: int, seed: int) -> int:
    index, term, ok = leader.submit(f"grow:{size}:{seed}")
    assert ok
    await leader.wait_committed(index, term)
    return index


@pytest.mark.parametrize(
    ("transport", "total", "pieces", "lossy"),
    [
        pytest.param("tcp", 100 * MB, 1, False, id="tcp-100MB-default-limits"),
        pytest.param("http", 3 * MB, 3, False, id="http-3MB"),
        pytest.param("tcp", 3 * MB, 3, True, id="tcp-3MB-lossy"),
    ],
)
async def test_a_large_state_reaches_a_lagging_follower(
    nursery: trio.Nursery,
    tmp_path: Path,
    seed: int,
    transport: str,
    total: int,
    pieces: int,
    lossy: bool,
) -> None:
    """A follower started late catches up a state larger than one message could carry
    (100 MB: 133 MB as base64, over the 64 MiB message limit) by InstallSnapshot in
    chunks, with the default limits; its state then equals the leader's. Lossy: a fifth
    of the requests and of the replies are lost (chunks sent again, the transfer resumed
    where the follower says)."""
    # The default message, chunk and snapshot limits; elections slower than by default, as
    # every node of the test shares one event loop with applies of tens of MB at a time,
    # and a node saving a snapshot of its own answers no AppendEntries meanwhile.
    config = RaftConfig(election_timeout=(2.0, 4.0))
    if total < 10 * MB:
        config = replace(config, snapshot_chunk_bytes=256 * 1024)
    network = Network(seed, Profile(request_drop=0.2, reply_drop=0.2)) if lossy else None
    cluster = Cluster(nursery, tmp_path, ["a", "b", "c"], transport, config, seed, network)  # type: ignore[arg-type]
    with trio.fail_after(90):
        a, b = await cluster.start("a"), await cluster.start("b")
        leader = await leader_of([a, b])
        index = 0
        for piece in range(pieces):
            index = await grow(leader, total // pieces, seed + piece)
        for member in (a, b):  # (a snapshot save holds up a node's replies meanwhile)
            await member.machine.wait_snapshot(index)
        assert leader.log.snapshot_index == index  # the log before it is gone
        c = await cluster.start("c")
        await c.node.wait_applied(index)
        # Once c has the next entry, the leader has stepped the snapshot's reply.
        await c.node.wait_applied(await grow(leader, 0, 0))
    assert c.machine.installed == [index]
    assert len(c.machine.state) == total
    leader_state = cluster.members[leader.id].machine.state
    assert hashlib.sha256(c.machine.state).digest() == hashlib.sha256(leader_state).digest()
    assert c.node.log.snapshot_index == index
    assert c.node.metrics.snapshot_bytes["installed"].count == 1
    assert c.node.metrics.snapshot_bytes["installed"].sum == total
    if not lossy:  # (else a lost reply to the last chunk may bring another transfer)
        assert leader.metrics.snapshots_sent == 1  # one transfer, however many chunks
    assert not (tmp_path / "c" / INCOMING_SNAPSHOT).exists()


# -- the chunk protocol, against one follower ---------------------------------------------


CHUNK = 64 * 1024
#: Elections out of the way: no test here waits anywhere near an election timeout.
CONFIG = RaftConfig(election_timeout=(5, 10), snapshot_chunk_bytes=CHUNK, max_snapshot_bytes=4 * MB)


@dataclass
class Follower:
    member: Member
    client: httpx.AsyncClient
    directory: Path

    async def post(self, args: dict[str, Any]) -> httpx.Response:
        return await self.client.post(f"{self.member.url}/install_snapshot", json=args)

    async def send(self, args: dict[str, Any]) -> dict[str, Any]:
        response = await self.post(args)
        assert response.status_code == 200, response.text
        return response.json()

    async def refused(self, args: dict[str, Any], status: int = 400) -> str:
        response = await self.post(args)
        assert response.status_code == status, response.text
        return response.json()["error"]

    @property
    def incoming(self) -> Path:
        return self.directory / INCOMING_SNAPSHOT


@asynccontextmanager
async def follower(
    nursery: trio.Nursery,
    directory: Path,
    config: RaftConfig = CONFIG,
    check: Callable[[bytes], None] | None = None,
    fault: Fault | None = None,
) -> AsyncIterator[Follower]:
    """Node "f" of the cluster f, x, y (x and y never run: the tests speak for them)."""
    storage = FileStorage(directory, fault=fault)
    transport = HttpTransport("f", {})
    node = RaftNode("f", ["f", "x", "y"], storage, transport, config=config)
    if check is not None:
        node.check_snapshot_with(check)
    member = await start_member(nursery, node, storage, transport, may_fail_stop=True)
    async with httpx.AsyncClient(timeout=10) as client:
        try:
            yield Follower(member, client, directory)
        finally:
            member.scope.cancel()
            await member.stopped.wait()


def chunks(
    data: bytes,
    *,
    term: int = 1,
    leader: str = "x",
    index: int = 50,
    sha256: str | None = None,
    size: int = CHUNK,
) -> list[dict[str, Any]]:
    """The chunks (of ``size`` bytes) a leader sends of ``data`` as the snapshot up to
    ``index``."""
    digest = sha256 if sha256 is not None else hashlib.sha256(data).hexdigest()
    out = []
    for offset in range(0, max(len(data), 1), size):
        piece = data[offset : offset + size]
        out.append(
            {
                "term": term,
                "leader": leader,
                "last_included_index": index,
                "last_included_term": term,
                "chunk": base64.b64encode(piece).decode(),
                "crc32": zlib.crc32(piece),
                "configuration": "",
                "offset": offset,
                "total": len(data),
                "sha256": digest,
                "done": offset + len(piece) == len(data),
            }
        )
    return out


def state(seed: int, size: int = 10 * CHUNK + 123) -> bytes:
    return random.Random(seed).randbytes(size)


async def installed(f: Follower, index: int) -> None:
    with trio.fail_after(5):
        await f.member.machine.wait_installed(index)


async def deliver(f: Follower, parts: list[dict], data: bytes) -> None:
    """Send ``parts`` in order; the follower then holds ``data``, installed at 50."""
    for part in parts:
        await f.send(part)
    await installed(f, 50)
    assert f.member.machine.state == data


async def test_chunks_in_order_install_the_snapshot(nursery: trio.Nursery, tmp_path: Path) -> None:
    data = state(1)
    async with follower(nursery, tmp_path) as f:
        parts = chunks(data)
        for i, part in enumerate(parts[:-1]):
            reply = await f.send(part)
            assert reply == {"term": 1, "installed": False, "next_offset": (i + 1) * CHUNK}
            assert f.incoming.stat().st_size == (i + 1) * CHUNK
        assert f.member.node.log.snapshot_index == 0  # nothing installed before the last
        assert (await f.send(parts[-1]))["installed"] is True
        await installed(f, 50)
        assert f.member.machine.state == data
        assert f.member.node.log.snapshot_index == 50
        assert not f.incoming.exists()


async def test_an_out_of_order_chunk_is_answered_with_the_offset_wanted(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    data = state(2)
    parts = chunks(data)
    async with follower(nursery, tmp_path) as f:
        await f.send(parts[0])
        for skipped in (parts[2], parts[-1]):
            reply = await f.send(skipped)
            assert reply == {"term": 1, "installed": False, "next_offset": CHUNK}
        assert f.incoming.stat().st_size == CHUNK  # nothing out of order was written
        # A chunk of a transfer the follower does not have: start again.
        other = chunks(state(3), index=60)
        assert (await f.send(other[1]))["next_offset"] == 0
        await deliver(f, parts[1:], data)


async def test_a_lost_reply_means_the_chunk_is_sent_again_and_taken_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    data = state(4)
    parts = chunks(data)
    async with follower(nursery, tmp_path) as f:
        for i, part in enumerate(parts[:-1]):
            first = await f.send(part)
            again = await f.send(part)  # the leader never saw the first reply
            assert first == again == {"term": 1, "installed": False, "next_offset": (i + 1) * CHUNK}
        assert f.incoming.stat().st_size == (len(parts) - 1) * CHUNK
        assert (await f.send(parts[-1]))["installed"] is True
        await installed(f, 50)
        assert (await f.send(parts[-1]))["installed"] is True  # a resent last chunk too
        assert f.member.machine.state == data
        assert f.member.machine.installed == [50]


async def test_a_snapshot_failing_its_checksum_is_refused_and_dropped(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    data = state(5)
    bad = chunks(data, sha256=hashlib.sha256(b"something else").hexdigest())
    async with follower(nursery, tmp_path) as f:
        for part in bad[:-1]:
            await f.send(part)
        assert "sha256" in await f.refused(bad[-1])
        assert not f.incoming.exists()
        assert f.member.node.log.snapshot_index == 0
        assert (await f.send(bad[-1]))["next_offset"] == 0  # the leader starts again
        await deliver(f, chunks(data), data)


async def test_a_new_leader_replaces_the_transfer_and_the_old_one_is_refused(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    old, new = state(6), state(7, 5 * CHUNK)
    old_parts, new_parts = chunks(old, term=1, leader="x"), chunks(new, term=2, leader="y")
    async with follower(nursery, tmp_path) as f:
        for part in old_parts[:4]:
            await f.send(part)
        await f.send(new_parts[0])  # term 2's leader starts its own transfer
        assert f.incoming.stat().st_size == CHUNK
        assert f.member.node.leader_id == "y"
        # The deposed leader goes on: told the newer term, nothing of it is kept.
        assert await f.send(old_parts[4]) == {"term": 2, "installed": False, "next_offset": 0}
        assert f.incoming.stat().st_size == CHUNK
        await deliver(f, new_parts[1:], new)
        assert f.member.node.term == 2


async def test_a_restart_mid_transfer_deletes_the_partial_file(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    data = state(8)
    parts = chunks(data)
    async with follower(nursery, tmp_path) as f:
        for part in parts[:5]:
            await f.send(part)
        assert f.incoming.stat().st_size == 5 * CHUNK
    assert (tmp_path / INCOMING_SNAPSHOT).exists()  # a crash leaves it
    async with follower(nursery, tmp_path) as f:
        assert not f.incoming.exists()
        assert (await f.send(parts[5]))["next_offset"] == 0  # start again
        await deliver(f, parts, data)


async def test_hostile_chunks_are_refused_and_change_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    data = state(9)
    good = chunks(data)[0]
    cases = {
        "total": {**good, "total": 5 * MB},  # over max_snapshot_bytes
        "offset": {**good, "offset": len(data) - 10},  # runs past the total
        "done": {**good, "done": True},
        "sha256": {**good, "sha256": "not hex"},
        "CRC-32": {**good, "crc32": good["crc32"] ^ 1},
        "base64": {**good, "chunk": "%%%"},
        "configuration": {**good, "configuration": "[1, 2"},
        "over the limit": chunks(state(10, 2 * CHUNK))[0]
        | {
            "chunk": base64.b64encode(b"x" * (CHUNK + 1)).decode(),
            "crc32": zlib.crc32(b"x" * (CHUNK + 1)),
        },
        "leader": {**good, "leader": "f"},
    }
    async with follower(nursery, tmp_path) as f:
        for what, args in cases.items():
            assert what in await f.refused(args), what
        for bad in ({**good, "offset": -1}, {**good, "term": "1"}, [good]):
            assert await f.refused(bad)  # type: ignore[arg-type]
        assert not f.incoming.exists()
        assert f.member.node.term == 0  # nothing reached the core
        for part in chunks(data):  # and the node still works
            await f.send(part)
        await installed(f, 50)


async def test_chunks_keep_the_follower_from_campaigning(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A transfer lasting several election timeouts: each chunk is word from the leader.
    (Without pre-vote, a follower that times out moves to a new term at once.)"""
    config = RaftConfig(
        election_timeout=(1.0, 1.5),
        pre_vote=False,
        snapshot_chunk_bytes=CHUNK,
        max_snapshot_bytes=4 * MB,
    )
    data = state(11, 12 * CHUNK)
    async with follower(nursery, tmp_path, config) as f:
        node = f.member.node
        for part in chunks(data):
            await f.send(part)
            with trio.move_on_after(0.3):
                await node.wait_term_change(1)  # pacing: a campaign would end it early
            assert node.term == 1, "the follower campaigned in the middle of a transfer"
        await installed(f, 50)
        assert node.term == 1 and node.leader_id == "x"
        assert node.metrics.elections == 0


def test_a_chunk_must_fit_a_message() -> None:
    with pytest.raises(ValueError, match="snapshot_chunk_bytes"):
        RaftConfig(snapshot_chunk_bytes=48 << 20)
    RaftConfig(snapshot_chunk_bytes=(64 << 20) * 3 // 4 - (64 << 10))


async def test_no_campaign_while_a_complete_snapshot_is_checked(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The application's check of a large snapshot runs in a worker thread; it may take
    longer than an election timeout, and the follower waits for it instead of campaigning."""
    config = RaftConfig(election_timeout=(0.5, 0.6), pre_vote=False, snapshot_chunk_bytes=1 << 20)

    def slow_check(data: bytes) -> None:
        time.sleep(2.0)  # deliberately slow: several election timeouts

    data = state(13, 2 << 20)
    async with follower(nursery, tmp_path, config, check=slow_check) as f:
        parts = chunks(data, size=1 << 20)
        for part in parts[:-1]:
            await f.send(part)
        assert (await f.send(parts[-1])) == {"term": 1, "installed": True, "next_offset": 0}
        await installed(f, 50)
        assert f.member.node.term == 1 and f.member.node.metrics.elections == 0


async def test_a_failed_chunk_write_stops_the_follower(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A chunk that cannot be written is a failed write like any other: fail-stop."""
    full = False

    def fault(operation: str, nbytes: int) -> None:
        if operation == "incoming" and full:
            raise OSError(errno.ENOSPC, "No space left on device")

    parts = chunks(state(14))
    async with follower(nursery, tmp_path, fault=fault) as f:
        await f.send(parts[0])
        full = True
        with contextlib.suppress(httpx.HTTPError):  # the node may be gone before it answers
            assert (await f.post(parts[1])).status_code >= 500
        node = f.member.node
        with trio.fail_after(5):
            await node.wait_stopped()
        assert node.failure is not None
        assert "writing a snapshot chunk" in str(node.failure)
        assert node.log.snapshot_index == 0 and node.term == 1
