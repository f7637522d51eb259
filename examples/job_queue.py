"""A job queue on leases: a crashed worker's claims expire and other workers redo its jobs.

Run it with ``python examples/job_queue.py`` (``--jobs N``, ``--workers N`` and ``--ttl S``
to scale it).

Three KV servers run here on loopback. Producers enqueue jobs as keys ``queue/jobs/<id>``.
Each worker holds a lease, kept alive by a task of its own, and claims a job by creating
``queue/claims/<id>`` *under that lease* (a put at version 0 with ``lease=``: only one
creator wins). It does the job, then finishes it in one transaction: if its claim is still
its own and the job has no result yet, the transaction records the result
``queue/done/<id>`` and deletes the job and the claim together; else it does nothing, and
the worker drops the job. An idle worker watches the queue for new jobs and for claims that
vanish.

One worker crashes after claiming a few jobs: its tasks stop, its lease is neither kept alive
nor revoked (as when a process is killed). When the lease expires, the leader deletes its
claims through the log, the other workers see the deletes and redo those jobs.

Checked: every job was done at least once, and its result recorded exactly once (version 1);
the crashed worker's jobs were redone by others; the queue ends empty.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections import Counter

import trio

from trioraft import (
    ClusterClient,
    Compare,
    MaybeApplied,
    TxnOp,
    VersionConflict,
)
from trioraft.kv.node import run_local_cluster

JOBS, CLAIMS, DONE = "queue/jobs/", "queue/claims/", "queue/done/"


async def list_keys(kv: ClusterClient, prefix: str) -> tuple[dict[str, str], int]:
    """Every key under ``prefix`` (one page after another) and the index of the first page."""
    listing = await kv.range_all(prefix=prefix)
    return {item.key: item.value for item in listing.items}, listing.first_index


class Worker:
    def __init__(self, name: str, urls: list[str], ttl: int, did: Counter[str]) -> None:
        self.name = name
        self.kv = ClusterClient(urls, client_id=name)
        self.ttl = ttl
        self.did = did  # every time any worker did each job, even if its result was dropped
        self.claimed: list[str] = []
        self.rng = random.Random(name)

    async def keep_alive(self, lease: int) -> None:
        while True:
            await trio.sleep(self.ttl / 3)
            await self.kv.lease_keepalive(lease)

    async def claim(self, job: str, lease: int) -> bool:
        """Create the job's claim under our lease; whether we now hold a job still queued."""
        claim = CLAIMS + job
        try:
            await self.kv.put(claim, self.name, 0, lease=lease)
        except VersionConflict:
            return False  # another worker has it
        except MaybeApplied:
            if (await self.kv.get(claim)).value != self.name:
                return False  # a retry of ours met another worker's claim
        if not (await self.kv.get(JOBS + job)).exists:
            # Finished (and unclaimed) since we listed the queue: let the claim go.
            await self.kv.delete(claim, 1)
            return False
        self.claimed.append(job)
        return True

    async def finish(self, job: str) -> bool:
        """Record the result and remove the job and our claim, if the claim is still ours."""
        outcome = await self.kv.txn(
            compare=[
                Compare(CLAIMS + job, "=", value=self.name),
                Compare(DONE + job, "=", version=0),
            ],
            success=[
                TxnOp("put", DONE + job, self.name),
                TxnOp("delete", JOBS + job),
                TxnOp("delete", CLAIMS + job),
            ],
        )
        return outcome.succeeded

    async def run(self, batch: int = 1, crash: trio.Event | None = None) -> None:
        """Claim up to ``batch`` queued jobs at a time and do them, until cancelled; then
        revoke the lease, which deletes any claim left. With ``crash``: claim one batch,
        start on its first job and stop dead there (no revoke, no more keepalives: the lease
        is left to expire, as when a process is killed), then set ``crash``."""
        lease = await self.kv.lease_grant(self.ttl)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.keep_alive, lease)
            try:
                while True:
                    page = await self.kv.range(prefix=JOBS)
                    queued = [item.key.removeprefix(JOBS) for item in page.items]
                    self.rng.shuffle(queued)  # workers start on different jobs
                    mine = []
                    for job in queued:
                        if len(mine) < batch and await self.claim(job, lease):
                            mine.append(job)
                    for job in mine:
                        self.did[job] += 1
                        if crash is not None:
                            print(f"{self.name}: crashes holding claims on {self.claimed}")
                            crash.set()
                            return
                        await trio.sleep(0.01)  # the work itself
                        if not await self.finish(job):
                            print(f"{self.name}: lost the claim on {job}, dropping its result")
                    if not mine:
                        await self.wait_for_work(page.index)
            finally:
                nursery.cancel_scope.cancel()  # the keepalives stop either way
                if crash is None:
                    with trio.CancelScope(shield=True), trio.move_on_after(5):
                        await self.kv.lease_revoke(lease)

    async def wait_for_work(self, index: int) -> None:
        """Return on the first new job or vanished claim after ``index``."""
        async with self.kv.watch("queue/", after=index) as changes:
            async for change in changes:
                new_job = change.key.startswith(JOBS) and change.kind == "put"
                if new_job or (change.key.startswith(CLAIMS) and change.kind == "delete"):
                    return


async def main(jobs: int, workers: int, ttl: int) -> None:
    with tempfile.TemporaryDirectory(prefix="trioraft-jobs-") as tmp:
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(
                lambda task_status: run_local_cluster(3, tmp, task_status=task_status)
            )
            print(f"3 servers: {', '.join(urls)}; {jobs} jobs, {workers} workers, ttl {ttl} s")
            did: Counter[str] = Counter()
            crasher = Worker("crasher", urls, ttl, did)
            crew = [Worker(f"worker-{w + 1}", urls, ttl, did) for w in range(workers)]
            names = [f"job-{n:04d}" for n in range(jobs)]
            started = trio.current_time()

            async def produce(part: list[str]) -> None:
                async with ClusterClient(urls) as kv:
                    for job in part:
                        await kv.put(JOBS + job, f"payload of {job}", 0)

            async with ClusterClient(urls) as kv:
                # The queue starts with a few jobs; the crasher claims them and crashes.
                await produce(names[:3])
                crashed = trio.Event()
                nursery.start_soon(crasher.run, 3, crashed)
                await crashed.wait()
                # Now the crew works while producers fill the queue.
                async with trio.open_nursery() as work:
                    for worker in crew:
                        work.start_soon(worker.run)
                    async with trio.open_nursery() as producers:
                        producers.start_soon(produce, names[3 : jobs // 2])
                        producers.start_soon(produce, names[jobs // 2 :])
                    with trio.fail_after(ttl + 30 + jobs):
                        while True:
                            done, index = await list_keys(kv, DONE)
                            if len(done) == jobs:
                                break
                            async with kv.watch(DONE, after=index) as changes:
                                async for _ in changes:
                                    break
                    work.cancel_scope.cancel()
                elapsed = trio.current_time() - started
                done, _ = await list_keys(kv, DONE)
                left = (await kv.range(prefix=JOBS)).items + (await kv.range(prefix=CLAIMS)).items
                versions = Counter([(await kv.get(DONE + job)).version for job in names])
            redone = {job: done[DONE + job] for job in crasher.claimed}
            print(f"the crasher's jobs were redone by: {redone}")
            print(f"{sum(did.values())} job runs, {len(done)} results in {elapsed:.2f} s")
            print("results per worker:", dict(Counter(done.values())))
            assert sorted(did) == names, "a job was never done"
            assert versions == Counter({1: jobs}), f"a result recorded twice: {versions}"
            assert len(redone) == 3 and "crasher" not in redone.values(), "the crasher's jobs"
            assert not left, f"the queue is not empty: {left}"
            print(f"OK: {jobs} jobs done, each recorded once; {len(redone)} redone after a crash")
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--ttl", type=int, default=3, help="worker lease TTL, seconds")
    options = parser.parse_args()
    trio.run(main, options.jobs, options.workers, options.ttl)
