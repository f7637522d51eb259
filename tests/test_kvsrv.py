"""The single-server KV scenarios (docs/scenarios.md: kvsrv).

Every client talks to the server through the fault proxy; every history that a concurrent or
unreliable scenario records is checked for linearizability.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack

import pytest
import trio

from tests.kvtest import (
    SingleKV,
    assert_linearizable,
    check_put_concurrent,
    lost_reply_then_delete,
    one_client_put,
    put_outcome,
    recent_maybes,
    run_clients,
    wait_for,
)
from trioraft import KeyNotFound, KVClient, VersionConflict, Versioned
from trioraft.testing import MIT_UNRELIABLE, RELIABLE, UNRELIABLE, History, Network

PROFILES = {"seeds-unreliable": UNRELIABLE, "mit-unreliable": MIT_UNRELIABLE}
#: How long the race scenario runs, and how much longer it waits for every client's progress.
RACE_SECONDS = 4.0
PROGRESS_LIMIT = 60.0
#: Tries of the unreliable-net scenario (MIT's and the C port's count).
UNRELIABLE_NET_TRIES = 100


async def clerks(stack: AsyncExitStack, url: str, n: int, history: History | None = None):
    out = []
    for i in range(n):
        client = await stack.enter_async_context(KVClient(url, client_id=f"c{i}"))
        out.append(history.recording(client, f"c{i}") if history else client)
    return out


async def test_reliable_put(single_kv: SingleKV) -> None:
    async with KVClient(single_kv.url) as ck:
        await ck.put("k", "6.5840", 0)
        assert await ck.get("k") == Versioned("6.5840", 1)
        with pytest.raises(VersionConflict):
            await ck.put("k", "6.5840", 0)
        with pytest.raises(KeyNotFound):
            await ck.put("y", "6.5840", 1)
        assert await ck.get("y") == Versioned("", 0)


async def test_reliable_multiple_keys_and_progression(single_kv: SingleKV) -> None:
    async with KVClient(single_kv.url) as ck:
        for key in "abc":
            await ck.put(key, key * 3, 0)
        assert [await ck.get(k) for k in "abc"] == [Versioned(k * 3, 1) for k in "abc"]
        await ck.put("a", "A", 1)
        assert await ck.get("a") == Versioned("A", 2)
        for version in range(50):
            await ck.put("p", f"v{version}", version)
            assert await ck.get("p") == Versioned(f"v{version}", version + 1)
        await ck.put("e", "hello", 0)
        await ck.put("e", "", 1)
        assert await ck.get("e") == Versioned("", 2)
        big = "x" * 10_000
        await ck.put("big", big, 0)
        assert await ck.get("big") == Versioned(big, 1)
        for i in range(100):
            await ck.put(f"key{i}", str(i), 0)
        assert all([await ck.get(f"key{i}") == Versioned(str(i), 1) for i in range(100)])


async def test_reliable_two_clients_conflict(single_kv: SingleKV) -> None:
    async with KVClient(single_kv.url) as ck1, KVClient(single_kv.url) as ck2:
        await ck1.put("k", "one", 0)
        await ck1.put("k", "two", 1)
        with pytest.raises(VersionConflict):
            await ck2.put("k", "stale", 1)
        _, version = await ck2.get("k")
        await ck2.put("k", "three", version)
        assert await ck1.get("k") == Versioned("three", 3)


async def test_put_concurrent_reliable(single_kv: SingleKV) -> None:
    history = History()
    async with AsyncExitStack() as stack:
        cks = await clerks(stack, single_kv.url, 10, history)
        results = await run_clients(10, 1.0, one_client_put(cks, "k"))
        await check_put_concurrent(cks[0], "k", results, reliable=True)
    assert sum(r.ok for r in results) > 0
    assert_linearizable(history)


@pytest.mark.parametrize("profile", ["reliable", *PROFILES])
@pytest.mark.parametrize("n", [2, 5])
async def test_race_put(single_kv: SingleKV, network: Network, profile: str, n: int) -> None:
    """C port's race test: get, then put at the version read, for 4 s. Reliable: only OK or
    Version, and the final version equals the OKs. Unreliable: Maybe too, and every client
    makes progress (at least one OK each)."""
    reliable = profile == "reliable"
    network.set_profile(RELIABLE if reliable else PROFILES[profile])
    oks = [0] * n
    maybes = [0] * n
    # On a lossy network a round ends in OK only about one time in four, and a slow machine
    # fits fewer rounds into the 4 s: so after them, everyone races on until every client
    # has had an OK, or PROGRESS_LIMIT has passed.
    give_up = trio.current_time() + RACE_SECONDS + PROGRESS_LIMIT

    async def client(me: int, done: trio.Event):
        while not done.is_set() or (
            not reliable and not all(oks) and trio.current_time() < give_up
        ):
            _, version = await cks[me].get("race")
            outcome = await put_outcome(cks[me], "race", str(me), version)
            assert outcome in (("OK", "Version") if reliable else ("OK", "Version", "Maybe"))
            oks[me] += outcome == "OK"
            maybes[me] += outcome == "Maybe"

    history = History()
    async with AsyncExitStack() as stack:
        cks = await clerks(stack, single_kv.url, n, history)
        await run_clients(n, RACE_SECONDS, client)
        network.set_profile(RELIABLE)
        _, version = await cks[0].get("race")
    if reliable:
        assert version == sum(oks) > 0
    else:
        assert sum(oks) <= version <= sum(oks) + sum(maybes)
        assert all(oks), f"a client made no progress in {PROGRESS_LIMIT} s more: {oks}"
    assert_linearizable(history)


@pytest.mark.parametrize(
    "profile", [pytest.param("seeds-unreliable", marks=pytest.mark.slow), "mit-unreliable"]
)
async def test_unreliable_net(single_kv: SingleKV, network: Network, profile: str) -> None:
    """A retried put may apply once only; a retry that answers Version reports Maybe."""
    network.set_profile(PROFILES[profile])
    history = History()
    saw_maybe = False
    async with KVClient(single_kv.url, client_id="c0") as raw:
        ck = history.recording(raw, "c0")
        for attempt in range(UNRELIABLE_NET_TRIES):
            i = 0
            while True:
                outcome = await put_outcome(ck, "k", json.dumps(i), attempt)
                if outcome != "Maybe":
                    assert i == 0 or outcome == "Version", "put happened more than once"
                    break
                saw_maybe = True
                i += 1
            value, version = await ck.get("k")
            assert (json.loads(value), version) == (0, attempt + 1)
    assert saw_maybe, "Clerk.put never reported Maybe"
    assert "lost call" in recent_maybes[-1], "a Maybe names what made the client retry"
    assert network.lost, "the network dropped nothing"
    assert_linearizable(history)


async def put_applied_then_deleted(
    single_kv: SingleKV, network: Network, value: str, version: int
) -> tuple[str, Versioned]:
    """A put at ``version`` whose replies are all lost; once it has applied, the key is
    deleted (through the server directly) and the replies get through again. The put's
    outcome as its client reports it, and the key as it is left."""
    server = single_kv.server
    with trio.fail_after(30):
        async with (
            KVClient(single_kv.url, client_id="c0") as ck,
            KVClient(single_kv.direct_url, client_id="admin") as admin,
        ):
            outcome = await lost_reply_then_delete(
                network,
                lambda: ck.put("k", value, version),
                lambda: wait_for(lambda: server.state.get("k").version == version + 1),
                lambda: admin.delete("k", version + 1),
            )
            return outcome, await admin.get("k")


async def test_a_retried_put_that_meets_a_deleted_key_reports_maybe(
    single_kv: SingleKV, network: Network
) -> None:
    """The put's first attempt applies and its reply is lost; the key is deleted before the
    retry, which answers NoKey. The put did apply: the client must say Maybe, not NoKey."""
    async with KVClient(single_kv.direct_url, client_id="setup") as setup:
        await setup.put("k", "a", 0)
    outcome, _ = await put_applied_then_deleted(single_kv, network, "b", 1)
    assert outcome == "Maybe"


async def test_a_create_retried_across_a_delete_applies_once(
    single_kv: SingleKV, network: Network
) -> None:
    """A put at version 0 creates the key, its reply lost; the key is deleted. Its retry
    finds the key absent, where a put at version 0 applies: it must not apply again."""
    outcome, left = await put_applied_then_deleted(single_kv, network, "once", 0)
    assert (outcome, left) == ("Maybe", Versioned("", 0))


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("n", [2, 5])
async def test_put_concurrent_unreliable(
    single_kv: SingleKV, network: Network, profile: str, n: int
) -> None:
    network.set_profile(PROFILES[profile])
    history = History()
    async with AsyncExitStack() as stack:
        cks = await clerks(stack, single_kv.url, n, history)
        results = await run_clients(n, 2.0, one_client_put(cks, "k"))
        network.set_profile(RELIABLE)
        await check_put_concurrent(cks[0], "k", results, reliable=False)
    assert all(r.ok + r.maybe > 0 for r in results), f"a client made no progress: {results}"
    assert_linearizable(history)
