"""Leader election in a Trio app: one leader at a time, a killed leader replaced within its TTL.

Run it with ``python examples/leader_election.py`` (``--workers N``, ``--ttl S`` and
``--rounds R`` to scale it).

Three KV servers run here on loopback, and beside them a *guarded resource*: a small HTTP
service that accepts a write only if its fencing token is at least the highest it has seen.
Candidates campaign with ``async with elect(kv, "scheduler", ttl=S) as term:``; the body runs
only while that candidate is the elected one, and ``term`` (its fencing token) goes with every
write it makes.

The first leader is a candidate in a child process (the same script, ``--candidate``). Once
it has written a few times, it is killed with SIGKILL: it never revokes its lease, so the
lock stays taken until the lease runs out. Meanwhile ``--workers`` candidates in this
process wait in line; the first takes over once the lease has expired (within the TTL), makes
``--rounds`` writes and resigns (leaving the body revokes its lease, so the next one takes
over at once), and so on. At the end a write the killed leader might have had in flight
arrives late, with its old term, and the resource must refuse it.

Checked: exactly one candidate runs its leader loop at a time; nobody is elected while the
killed leader's lease lasts, and somebody is within the TTL of the kill (plus 2 s of slack
for commit and scheduling); terms strictly increase from leader to leader; the resource
accepted every leader's writes and refused the stale one.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import trio

from trioraft import ClusterClient, LockLost, Route, RpcClient, elect, make_app, serve
from trioraft.kv.node import run_local_cluster

ELECTION = "scheduler"
CHILD = "child"


@dataclass(frozen=True)
class Write:
    """One write to the guarded resource, fenced by the writer's term."""

    token: int
    writer: str
    seq: int


@dataclass(frozen=True)
class Ack:
    ok: bool
    highest: int


@dataclass
class GuardedResource:
    """Refuses a write whose token is lower than one it has already accepted."""

    highest: int = 0
    accepted: list[Write] = field(default_factory=list)
    refused: list[Write] = field(default_factory=list)
    child_wrote: trio.Event = field(default_factory=trio.Event)

    async def write(self, write: Write) -> Ack:
        if write.token < self.highest:
            self.refused.append(write)
            return Ack(False, self.highest)
        self.highest = write.token
        self.accepted.append(write)
        if sum(w.writer == CHILD for w in self.accepted) >= 5:
            self.child_wrote.set()
        return Ack(True, self.highest)


async def lead(name: str, term: int, resource_url: str, rounds: int | None) -> None:
    """The leader loop: write to the resource with our term, ``rounds`` times (or forever)."""
    async with RpcClient(resource_url, name) as resource:
        seq = 0
        while rounds is None or seq < rounds:
            seq += 1
            ack = None
            while ack is None:  # None: the call was lost; send it again
                ack = await resource.call("write", Write(term, name, seq), Ack)
            if not ack.ok:
                raise RuntimeError(f"{name}: the resource refused term {term}: {ack}")
            await trio.sleep(0.05)


async def candidate_process(urls: list[str], resource_url: str, ttl: int) -> None:
    """``--candidate``: campaign, say when elected, then lead until killed."""
    async with (
        ClusterClient(urls, client_id=CHILD) as kv,
        elect(kv, ELECTION, ttl=ttl, candidate=CHILD) as term,
    ):
        print(f"elected {term}", flush=True)
        await lead(CHILD, term, resource_url, None)


async def read_line(stream: trio.abc.ReceiveStream) -> str:
    line = b""
    while not line.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        if not chunk:
            raise RuntimeError(f"the candidate process ended after {line!r}")
        line += chunk
    return line.decode().strip()


async def main(workers: int, ttl: int, rounds: int) -> None:
    resource = GuardedResource()
    elections: list[tuple[float, str, int]] = []  # (when, who, term)
    inside: list[str] = []  # who is running a leader loop in this process right now

    async def worker(name: str, urls: list[str], resource_url: str) -> None:
        async with ClusterClient(urls, client_id=name) as kv:
            while True:
                try:
                    async with elect(kv, ELECTION, ttl=ttl, candidate=name) as term:
                        elections.append((trio.current_time(), name, term))
                        inside.append(name)
                        try:
                            assert inside == [name], f"two leaders at once: {inside}"
                            print(f"{name}: elected, term {term}")
                            await lead(name, term, resource_url, rounds)
                        finally:
                            inside.remove(name)
                    print(f"{name}: resigns after {rounds} writes")
                    return
                except LockLost:
                    # Our lease could not be renewed in time (an overloaded machine): the
                    # body was cancelled before anyone else could be elected. Try again.
                    print(f"{name}: lost the election, campaigning again")

    with tempfile.TemporaryDirectory(prefix="trioraft-election-") as tmp:
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(
                lambda task_status: run_local_cluster(3, tmp, task_status=task_status)
            )
            resource_url = await nursery.start(
                serve, make_app({"write": Route(Write, resource.write)}, name="resource")
            )
            print(f"3 servers: {', '.join(urls)}; guarded resource at {resource_url}")

            command = [sys.executable, __file__, "--candidate", ",".join(urls), resource_url]
            command += ["--ttl", str(ttl)]
            child = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
            try:
                assert child.stdout is not None
                with trio.fail_after(60):
                    child_term = int((await read_line(child.stdout)).split()[1])
                print(f"{CHILD} (pid {child.pid}): elected, term {child_term}")
                with trio.fail_after(ttl + 60 + workers * 10):
                    async with trio.open_nursery() as crew:
                        for w in range(workers):
                            crew.start_soon(worker, f"worker-{w + 1}", urls, resource_url)
                        await resource.child_wrote.wait()
                        child.kill()  # SIGKILL: no revoke, no goodbye; its lease must run out
                        killed_at = trio.current_time()
                        await child.wait()
                        print(f"{CHILD}: killed with SIGKILL after {len(resource.accepted)} writes")
            finally:
                if child.returncode is None:
                    child.kill()
                    await child.wait()

            # A write the killed leader had sent just before it died, arriving late.
            async with RpcClient(resource_url, "late") as late:
                stale = await late.call("write", Write(child_term, CHILD, 10**6), Ack)

            takeover = elections[0][0] - killed_at
            print(f"takeover {takeover:.2f} s after the kill (ttl {ttl} s)")
            terms = [child_term] + [term for _, _, term in elections]
            print(f"terms in order of election: {terms}")
            assert 0 < takeover <= ttl + 2, f"took over {takeover:.2f} s after the kill"
            assert all(a < b for a, b in itertools.pairwise(terms)), (
                f"terms not increasing: {terms}"
            )
            assert {who for _, who, _ in elections} == {
                f"worker-{w + 1}" for w in range(workers)
            }, "every worker was elected"
            assert stale is not None and not stale.ok, "the stale write was accepted"
            assert [w.seq for w in resource.refused] == [10**6], resource.refused
            writers = [w.writer for w in resource.accepted]
            assert (
                writers.count(CHILD) >= 5
                and len(writers) >= writers.count(CHILD) + workers * rounds
            )
            print(
                f"resource: {len(resource.accepted)} writes accepted, "
                f"the late one of term {child_term} refused (highest term {resource.highest})"
            )
            print(f"OK: one leader at a time, {len(terms)} terms, the stale write refused")
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--ttl", type=int, default=3, help="lease TTL, seconds")
    parser.add_argument("--rounds", type=int, default=10, help="writes per in-process leader")
    parser.add_argument(
        "--candidate", nargs=2, metavar=("URLS", "RESOURCE"), help=argparse.SUPPRESS
    )
    options = parser.parse_args()
    if options.candidate:
        servers, resource_url = options.candidate
        trio.run(candidate_process, servers.split(","), resource_url, options.ttl)
    else:
        trio.run(main, options.workers, options.ttl, options.rounds)
