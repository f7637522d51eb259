"""The time for a new member to catch up a large state: streamed InstallSnapshot (issue 13).

    python benchmarks/snapshot_catchup.py [--mb 100] [--transport tcp|http] [--out FILE]

Two voters (``a``, ``b``: ``RaftNode`` over real loopback sockets, ``FileStorage`` in a
temporary directory, peer authentication on, the default message and chunk limits) grow a
state of ``--mb`` MB with one entry (``grow:N:SEED``: N deterministic bytes, so the log
stays tiny and the state is all snapshot) and snapshot it. Then a new node ``d`` starts
with an empty data directory (``joining=True``) and the leader adds it as a learner
(``change_membership(add_learner=...)``); the clock runs from that call until ``d`` has
applied the state. The state on ``d`` is checked equal to the leader's.

Before streamed snapshots, InstallSnapshot carried the whole snapshot in one message under
``RaftConfig.max_message_bytes`` (64 MiB), as base64 with a 64 KiB envelope: no state over
(64 MiB - 64 KiB) * 3 / 4 = 50.28 MB could ever reach a new or lagging member.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import tempfile
import time
from functools import partial
from pathlib import Path

import trio

from trioraft import LeadershipLost, NotLeader
from trioraft.raft.config import ENVELOPE_BYTES
from trioraft.raft.membership import MembershipChangeRefused
from trioraft.raft.node import Applied, RaftConfig, RaftNode, SnapshotApplied
from trioraft.raft.serve import serve_node
from trioraft.raft.storage import FileStorage
from trioraft.rpc.auth import PeerAuth
from trioraft.rpc.tcp import TcpTransport
from trioraft.rpc.transport import HttpTransport

OLD_LIMIT_BYTES = (RaftConfig().max_message_bytes - ENVELOPE_BYTES) * 3 // 4


def pattern(size: int, seed: int) -> bytes:
    block = random.Random(seed).randbytes(1 << 16)
    return (block * (size // len(block) + 1))[:size]


class Member:
    def __init__(self, node: RaftNode) -> None:
        self.node = node
        self.state = b""
        self.snapshotted = trio.Event()  # set once the state's snapshot is taken

    async def consume(self) -> None:
        async for message in self.node.applied:
            if isinstance(message, SnapshotApplied):
                self.state = message.data
            elif isinstance(message, Applied):
                _, size, seed = message.command.split(":")
                self.state += pattern(int(size), int(seed))
                await self.node.snapshot(message.index, self.state)
                self.snapshotted.set()


async def leader_of(members: list[Member]) -> Member:
    """The member that leads, once one does."""
    while True:
        for member in members:
            if member.node.is_leader:
                return member
        async with trio.open_nursery() as nursery:
            for member in members:

                async def leads(node: RaftNode = member.node) -> None:
                    await node.wait_until(lambda n: n.is_leader)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(leads)


async def run(opts: argparse.Namespace, directory: Path) -> dict:
    auth = PeerAuth(b"benchmark-secret-0123456789abcdef")
    config = RaftConfig(leader_noop=True)
    transports: dict[str, TcpTransport | HttpTransport] = {}
    members: dict[str, Member] = {}
    urls: dict[str, str] = {}
    async with trio.open_nursery() as nursery:

        async def start(i: str, voters: list[str], joining: bool = False) -> Member:
            if opts.transport == "tcp":
                transport: TcpTransport | HttpTransport = TcpTransport(i, {}, peer_auth=auth)
            else:
                transport = HttpTransport(i, {}, timeout=config.longest_call, peer_auth=auth)
            transports[i] = transport
            storage = FileStorage(directory / i)
            node = RaftNode(i, voters, storage, transport, config=config, joining=joining)
            member = members[i] = Member(node)
            serve = partial(serve_node, node, transport=opts.transport, peer_auth=auth)
            urls[i] = await nursery.start(serve)
            nursery.start_soon(member.consume)
            for j in members:
                if j != i:
                    transports[j].set_peer_address(i, urls[i])
                    transport.set_peer_address(j, urls[j])
            return member

        await start("a", ["a", "b"])
        await start("b", ["a", "b"])
        with trio.fail_after(60):
            voters = list(members.values())
            leader = await leader_of(voters)
            await leader.node.wait_until(lambda n: n.commit_index >= 1)  # the no-op
        total = opts.mb * 1_000_000
        started = time.perf_counter()
        index, term, ok = leader.node.submit(f"grow:{total}:7")
        assert ok
        await leader.node.wait_committed(index, term)
        await leader.node.wait_applied(index)
        for member in list(members.values()):
            await member.snapshotted.wait()
        grown = time.perf_counter() - started
        d = await start("d", [], joining=True)
        started = time.perf_counter()
        with trio.fail_after(600):
            # (A voter saving its own 100 MB snapshot answers no heartbeats meanwhile, so
            # leadership may have moved: ask whoever leads.)
            while "d" not in (leader := await leader_of(voters)).node.configuration.learners:
                try:
                    await leader.node.change_membership(add_learner=("d", urls["d"]))
                except MembershipChangeRefused:
                    await trio.sleep(0.05)  # its term's first entry is not committed yet
                except (NotLeader, LeadershipLost):
                    await leader.node.wait_until(lambda n: not n.is_leader)
            await d.node.wait_applied(index)
        catchup = time.perf_counter() - started
        assert hashlib.sha256(d.state).digest() == hashlib.sha256(leader.state).digest()
        installed = d.node.metrics.snapshot_seconds["installed"].sum
        nursery.cancel_scope.cancel()
    for transport in transports.values():
        await transport.aclose()
    return {
        "transport": opts.transport,
        "state_bytes": total,
        "chunk_bytes": config.chunk_bytes,
        "chunks": -(-total // config.chunk_bytes),
        "grow_and_snapshot_s": round(grown, 2),
        "catchup_s": round(catchup, 2),
        "catchup_mb_per_s": round(total / 1e6 / catchup, 1),
        "follower_save_s": round(installed, 2),
        "old_single_message_limit_bytes": OLD_LIMIT_BYTES,
        "peak_rss_mb_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--transport", choices=["tcp", "http"], default="tcp")
    parser.add_argument("--tmp", default=None)
    default_out = Path("benchmarks/results/snapshot_catchup.json")
    parser.add_argument("--out", type=Path, default=default_out)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=opts.tmp) as tmp:
        result = trio.run(run, opts, Path(tmp))
    print(json.dumps(result, indent=2))
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
