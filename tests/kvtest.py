"""Scenario helpers shared by the KV and lock suites, over any KeyValue client.

They follow the kv test library (docs/scenarios.md: kv-library): one-put loops with read-back
checks, clients running for a while until told to stop, and the concurrent-put checks; and
:func:`start_single_kv` runs one single-server KV behind a fault proxy, and
:class:`InMemoryKV` is the KV machine behind the KeyValue interface, with no I/O.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from trioraft import (
    KeyNotFound,
    KeyValue,
    KVServer,
    MaybeApplied,
    SessionExpired,
    VersionConflict,
    Versioned,
    VersionedKV,
    serve,
)
from trioraft.kv.clients import OpsClient, raise_put_error
from trioraft.kv.machine import KVMachine
from trioraft.kv.messages import BatchOp, Compare, OpResult, TxnOp, as_result, log_op
from trioraft.testing import (
    RELIABLE,
    History,
    HttpProxy,
    Network,
    Profile,
    RecordingKV,
    Result,
)


@dataclass
class ClientResult:
    ok: int = 0
    maybe: int = 0


def entry(client: int, version: int) -> str:
    return json.dumps({"id": client, "v": version})


#: Why the last few puts answered Maybe (the client's retry reasons), for failure messages.
recent_maybes: collections.deque[str] = collections.deque(maxlen=5)


async def put_outcome(kv: KeyValue, key: str, value: str, version: int) -> str:
    """Run a put and name its outcome: OK, Version or Maybe (NoKey is a test failure)."""
    try:
        await kv.put(key, value, version)
    except VersionConflict:
        return "Version"
    except MaybeApplied as exc:
        recent_maybes.append(f"put({key!r}, version={version}): {exc}")
        return "Maybe"
    except KeyNotFound as exc:
        raise AssertionError(f"put({key!r}, version={version}) answered NoKey") from exc
    return "OK"


async def wait_for(predicate: Callable[[], bool], *, poll: float = 0.005) -> None:
    """Poll a condition of a single server's own state (it has no change events)."""
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(poll)


async def lost_reply_then_delete(
    network: Network,
    write: Callable[[], Awaitable[object]],
    applied: Callable[[], Awaitable[None]],
    delete: Callable[[], Awaitable[object]],
) -> str:
    """The lost-reply-then-delete scenario: ``write`` runs with every reply lost; once
    ``applied`` returns (its first attempt applied), ``delete`` removes the key by a path the
    plan spares and replies get through again, so the write's retries meet a key deleted
    since. The write's outcome as its client reports it: "OK" or "Maybe"."""
    outcomes: list[str] = []

    async def run() -> None:
        try:
            await write()
        except MaybeApplied:
            outcomes.append("Maybe")
        else:
            outcomes.append("OK")

    network.set_profile(Profile(reply_drop=1.0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await applied()
        await delete()
        network.set_profile(RELIABLE)
    return outcomes[0]


async def one_put(me: int, kv: KeyValue, key: str, version: int) -> tuple[int, str]:
    """Put until a put answers OK or Maybe; check what a successful put left behind.

    Returns the version last read and the final outcome.
    """
    while True:
        outcome = await put_outcome(kv, key, entry(me, version), version)
        value, current = await kv.get(key)
        assert current > 0, f"get({key!r}) found no key after a put"
        if outcome == "OK" and current == version + 1:
            assert json.loads(value) == {"id": me, "v": version}, (
                f"client {me}: put OK at version {version}, but the key holds {value!r}"
            )
        version = current
        if outcome in ("OK", "Maybe"):
            return version, outcome


async def put_at_least_once(kv: KeyValue, key: str, value: str, version: int) -> int:
    """Put ``value`` until it surely applied (it may apply twice); returns its version."""
    while True:
        outcome = await put_outcome(kv, key, value, version)
        if outcome == "OK":
            return version + 1
        current_value, current = await kv.get(key)
        if outcome == "Maybe" and current_value == value and current == version + 1:
            return current
        version = current


async def run_clients(
    n: int,
    duration: float,
    client: Callable[[int, trio.Event], Awaitable[ClientResult]],
) -> list[ClientResult]:
    """Run ``n`` clients until ``duration`` has passed; each sees ``done`` at its loop top."""
    done = trio.Event()
    results: list[ClientResult] = [ClientResult() for _ in range(n)]

    async def run_one(i: int) -> None:
        results[i] = await client(i, done)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(run_one, i)
        await trio.sleep(duration)
        done.set()
    return results


def one_client_put(
    clerks: list[KeyValue], keys: str | list[str], rng: random.Random | None = None
) -> Callable[[int, trio.Event], Awaitable[ClientResult]]:
    """Client ``me`` keeps doing :func:`one_put` with its own clerk, on ``keys`` (one key, or
    a random one of several each time, remembering the version it last saw of each)."""
    choices = [keys] if isinstance(keys, str) else keys
    pick = rng or random.Random(0)

    async def client(me: int, done: trio.Event) -> ClientResult:
        result = ClientResult()
        versions = dict.fromkeys(choices, 0)
        while not done.is_set():
            key = choices[0] if len(choices) == 1 else pick.choice(choices)
            versions[key], outcome = await one_put(me, clerks[me], key, versions[key])
            if outcome == "OK":
                result.ok += 1
            else:
                result.maybe += 1
        return result

    return client


async def check_put_concurrent(
    kv: KeyValue, key: str, results: list[ClientResult], *, reliable: bool, elected: bool = False
) -> None:
    """The seeds' check of concurrent puts' outcomes: on a reliable network every put answers
    OK, so the key's version is their count; otherwise it is at most OKs plus Maybes.
    ``elected``: a leader was elected while the puts ran (on a busy machine a node's loop
    can stall past an election timeout, even on a reliable network): the puts in flight
    then answer Maybe, so those are allowed, and must add up."""
    _, version = await kv.get(key)
    ok = sum(r.ok for r in results)
    maybe = sum(r.maybe for r in results)
    if reliable and maybe and elected:
        assert ok <= version <= ok + maybe, f"version {version}: {ok} OKs, {maybe} Maybes"
    elif reliable:
        assert version == ok, (
            f"reliable: wrong number of puts ({version} != {ok} OKs); "
            f"recent Maybe answers: {list(recent_maybes)}"
        )
    else:
        assert version <= ok + maybe, f"version {version} > {ok} OKs + {maybe} Maybes"


@dataclass
class SingleKV:
    """A running single-server KV: the service object, its direct URL and its proxy's URL."""

    server: KVServer
    direct_url: str
    url: str
    proxy: HttpProxy


async def start_single_kv(nursery: trio.Nursery, network: Network, **server_args) -> SingleKV:
    server = KVServer(**server_args)
    direct_url = await nursery.start(serve, server.app())
    proxy = HttpProxy(network, "kv", direct_url)
    url = await nursery.start(proxy.run)
    return SingleKV(server, direct_url, url, proxy)


class InMemoryKV:
    """The versioned KV machine behind the KeyValue interface, with no I/O: each call is one
    checkpoint."""

    def __init__(self) -> None:
        self.machine = VersionedKV()

    async def get(self, key: str) -> Versioned:
        await trio.lowlevel.checkpoint()
        reply = self.machine.get(key)
        return Versioned(reply.value, reply.version)

    async def put(self, key: str, value: str, version: int) -> None:
        await trio.lowlevel.checkpoint()
        raise_put_error(self.machine.put(key, value, version).err)


# -- Histories of every op, checked against trioraft.testing.KV_OPS_MODEL -----------------


class InMemoryStore:
    """The replicated KV's machine with no I/O, for :class:`InMemoryOps` clients to share.
    ``stale_ranges`` makes it a broken server: ranges answer from a copy of the store
    taken every fifth write (the bug a range served by a lagging replica would be).
    ``lost_replies`` is the fraction of writes that are retried as if their first reply
    was lost (half of those first attempts applied): conflicts they meet answer ``Maybe``.
    Retries carry ``retry_after`` (see trioraft/kv/machine.py) unless ``retry_after`` is
    false: another broken server, whose retried put or txn may apply twice across a
    delete."""

    def __init__(
        self,
        *,
        stale_ranges: bool = False,
        lost_replies: float = 0.0,
        retry_after: bool = True,
        seed: int = 0,
    ) -> None:
        self.machine = KVMachine()
        self.index = 0
        self.stale_ranges = stale_ranges
        self.stale = KVMachine()
        self.lost_replies = lost_replies
        self.retry_after = retry_after
        self.rng = random.Random(seed)

    def apply(self, op: BatchOp) -> OpResult:
        self.index += 1
        logged = log_op(op)
        if op.op == "range" and self.stale_ranges:
            return as_result(self.stale.apply(logged, self.index))
        reply = self.machine.apply(logged, self.index)
        if op.op not in ("get", "range") and self.index % 5 == 0:
            self.stale.restore(self.machine.snapshot())
        return as_result(reply)


class InMemoryOps(OpsClient):
    """One client of an :class:`InMemoryStore`: every op is one checkpoint."""

    def __init__(self, store: InMemoryStore) -> None:
        super().__init__()
        self.store = store

    async def run(self, op: BatchOp) -> tuple[OpResult, str]:
        await trio.lowlevel.checkpoint()
        store = self.store
        if op.op in ("put", "delete", "txn", "append") and store.rng.random() < store.lost_replies:
            if store.retry_after and op.op != "append":
                op = dataclasses.replace(op, retry_after=store.index)
            if store.rng.random() < 0.5:
                store.apply(op)  # the first attempt applied; its reply was lost
            await trio.lowlevel.checkpoint()
            return store.apply(op), "a reply was lost"
        return store.apply(op), ""


def assert_linearizable(history: History, *, timeout: float = 60.0) -> Result:
    """Check ``history``; fail unless it is linearizable (or if the check ran out of time)."""
    result = history.check(timeout=timeout)
    assert result.ok is not None, f"the check ran out of time ({timeout} s)"
    assert result.ok, result.account
    return result


async def ops_client(
    kv: RecordingKV,
    rng: random.Random,
    keys: list[str],
    stop: trio.Event,
    *,
    multi_key: bool,
    after_each: Callable[[], None] = lambda: None,
) -> None:
    """Until ``stop``: read a key, then put, delete or append it; with ``multi_key``, also
    ranges over the keys and txns that write two keys at once (their failure branches only
    read, so a txn of unknown outcome is modelled). ``after_each`` runs after each round.
    A write that did not apply, or may not have, is recorded as such and the client goes on."""
    while not stop.is_set():
        with contextlib.suppress(VersionConflict, KeyNotFound, MaybeApplied, SessionExpired):
            await _ops_round(kv, rng, keys, multi_key=multi_key)
        after_each()


async def _ops_round(
    kv: RecordingKV, rng: random.Random, keys: list[str], *, multi_key: bool
) -> None:
    """One round of :func:`ops_client`: a get, then a range, a txn or a write."""
    key, other = rng.sample(keys, 2)
    got = await kv.get(key)
    choice = rng.random() if multi_key else 1.0
    if choice < 0.2:
        if rng.random() < 0.5:
            await kv.range()
        else:
            await kv.range(start=rng.choice(keys), limit=rng.choice([1, 2, 100]))
    elif choice < 0.4:
        tag = f"{rng.randrange(1000)}"
        if rng.random() < 0.5:  # both keys at once, if ``key`` did not change
            compare = [Compare(key, "=", version=got.version)]
            success = [TxnOp("put", key, tag), TxnOp("put", other, tag)]
        else:  # create ``other`` if absent, and delete ``key``
            compare = [Compare(other, "=", create_index=0)]
            success = [TxnOp("put", other, tag), TxnOp("delete", key)]
        await kv.txn(compare, success, [TxnOp("get", key), TxnOp("get", other)])
    else:
        write = rng.random()
        if write < 0.4:
            await kv.put(key, f"{rng.randrange(1000)}", got.version)
        elif write < 0.7:
            await kv.delete(key, got.version if rng.random() < 0.8 else got.version + 1)
        else:
            await kv.append(key, rng.choice("abc"))
