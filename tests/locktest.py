"""The lock-clients scenario (docs/scenarios.md: lock-clients) over any KeyValue clients,
shared by the lock suites over the single server and over the replicated KV.

Mutual exclusion is checked twice: by the probe key (the holder finds it empty, writes its
id, and clears it) and by an in-process counter of clients inside the critical section.
"""

from __future__ import annotations

import random

import trio

from tests.kvtest import ClientResult, put_at_least_once, put_outcome, run_clients
from trioraft import KeyValue, Lock


def random_name(rng: random.Random) -> str:
    return "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=12))


#: How long after its run's ``duration`` every client's first pass may still take.
FIRST_PASS_WITHIN = 150.0


async def run_lock_clients(
    clerks: list[KeyValue],
    duration: float,
    rng: random.Random,
    *,
    hold: float = 0.01,
) -> list[ClientResult]:
    """Each client warms up on two named locks, then runs the probe under one lock: at
    least once, and again until ``duration`` has passed. So every client returns (no
    deadlock) having passed the probe at least once (the C port's rule), within
    :data:`FIRST_PASS_WITHIN` after ``duration``: the failure names the clients that never
    did. (A first pass is waited for, not asked for within ``duration``: on a machine
    loaded far past its cores, 32 clients' warm-ups once outlasted the 6 s of their run.)"""
    lock_name, check_key = random_name(rng), f"mutex-check-{random_name(rng)}"
    await put_at_least_once(clerks[0], check_key, "", 0)
    in_critical_section = 0
    names = [(random_name(rng), random_name(rng)) for _ in clerks]
    passes = [ClientResult() for _ in clerks]

    async def client(me: int, done: trio.Event) -> ClientResult:
        nonlocal in_critical_section
        kv = clerks[me]
        first, second = Lock(kv, names[me][0]), Lock(kv, names[me][1])
        await first.acquire()
        await second.acquire()
        await first.release()
        await second.release()
        lock = Lock(kv, lock_name, holder=f"client-{me}")
        result = passes[me] = ClientResult()
        while result.ok == 0 or not done.is_set():
            async with lock:
                assert in_critical_section == 0, "two clients inside the critical section"
                in_critical_section += 1
                value, version = await kv.get(check_key)
                assert value == "", f"{me}: two clients acquired the lock ({value!r} held)"
                assert await put_outcome(kv, check_key, str(me), version) in ("OK", "Maybe")
                # The scenario holds the lock this long (a bounded wait, on purpose): any
                # other client that could get in meanwhile would trip the checks.
                await trio.sleep(hold)
                assert in_critical_section == 1
                outcome = await put_outcome(kv, check_key, "", version + 1)
                assert outcome in ("OK", "Maybe", "Version")
                in_critical_section -= 1
            result.ok += 1
        return result

    with trio.move_on_after(duration + FIRST_PASS_WITHIN):
        return await run_clients(len(clerks), duration, client)
    starved = [me for me, result in enumerate(passes) if result.ok == 0]
    raise AssertionError(
        f"no end within {FIRST_PASS_WITHIN:.0f} s after the run's {duration} s: clients "
        f"{starved} never passed the probe (starved), or a client is stuck (deadlock)"
    )
