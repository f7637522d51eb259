"""Scenario helpers shared by the KV and lock suites, over any KeyValue client.

They follow the kv test library (docs/scenarios.md: kv-library): one-put loops with read-back
checks, clients running for a while until told to stop, and the concurrent-put checks; and
:func:`start_single_kv` runs one single-server KV behind a fault proxy, and
:class:`InMemoryKV` is the KV machine behind the KeyValue interface, with no I/O.
"""

from __future__ import annotations

import collections
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
    VersionConflict,
    Versioned,
    VersionedKV,
    serve,
)
from trioraft.kv.clients import raise_put_error
from trioraft.testing import HttpProxy, Network


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
    kv: KeyValue, key: str, results: list[ClientResult], *, reliable: bool
) -> None:
    _, version = await kv.get(key)
    ok = sum(r.ok for r in results)
    maybe = sum(r.maybe for r in results)
    if reliable:
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
        raise_put_error(self.machine.put(key, value, version).err, retried=False)
