"""Scenario helpers shared by the KV and lock suites, over any KeyValue client.

They follow the kv test library (docs/scenarios.md: kv-library): one-put loops with read-back
checks, clients running for a while until told to stop, and the concurrent-put checks; and
:func:`start_single_kv` runs one single-server KV behind a fault proxy, and
:class:`InMemoryKV` is the KV machine behind the KeyValue interface, with no I/O.
"""

from __future__ import annotations

import collections
import json
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from trioraft import (
    KeyNotFound,
    KeyValue,
    KVError,
    KVServer,
    MaybeApplied,
    VersionConflict,
    Versioned,
    VersionedKV,
    serve,
)
from trioraft.kv.clients import OpsClient, raise_put_error
from trioraft.testing import HttpProxy, Network
from trioraft.testing._kv_model import INITIAL, OK, UNKNOWN, State, step


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
        raise_put_error(self.machine.put(key, value, version).err)


# -- Histories with delete and append, checked against trioraft.testing._kv_model ----------


@dataclass(frozen=True)
class KVCall:
    """One call as its caller saw it (plain data for the model's ``step``): for a get, the
    value and version it returned; ``err`` is ``UNKNOWN`` and ``ret`` infinite for a call
    that never returned."""

    client: str
    kind: str
    key: str
    value: str
    version: int
    err: str
    call: float
    ret: float


class DeleteHistory:
    """Records get, put, delete and append calls through any client with those ops."""

    def __init__(self) -> None:
        self.calls: list[KVCall] = []

    def recording(self, kv: OpsClient, client: str) -> RecordingOps:
        return RecordingOps(self, kv, client)

    def check(self, *, timeout: float = 60.0) -> None:
        """Raise AssertionError unless every key's calls are linearizable."""
        by_key: dict[str, list[KVCall]] = collections.defaultdict(list)
        for call in self.calls:
            by_key[call.key].append(call)
        deadline = time.monotonic() + timeout
        for key in sorted(by_key):
            verdict = linearizable(by_key[key], deadline)
            assert verdict is not None, f"the check of key {key!r} timed out"
            assert verdict, f"key {key!r}: not linearizable:\n" + "\n".join(
                f"  {c}" for c in sorted(by_key[key], key=lambda c: c.call)
            )


class RecordingOps:
    def __init__(self, history: DeleteHistory, kv: OpsClient, client: str) -> None:
        self.history, self.kv, self.client = history, kv, client

    async def _record(self, kind: str, key: str, value: str, version: int, run) -> str:
        start = time.monotonic()
        try:
            err = await run()
        except trio.Cancelled:
            self._add(kind, key, value, version, UNKNOWN, start, math.inf)
            raise
        except KVError as exc:
            err = exc.wire
        self._add(kind, key, value, version, err, start, time.monotonic())
        return err

    def _add(self, *fields: object) -> None:
        self.history.calls.append(KVCall(self.client, *fields))  # type: ignore[arg-type]

    async def get(self, key: str) -> Versioned:
        start = time.monotonic()
        got = await self.kv.get(key)
        self._add("get", key, got.value, got.version, OK, start, time.monotonic())
        return got

    async def put(self, key: str, value: str, version: int) -> str:
        return await self._record("put", key, value, version,
                                  lambda: _ok(self.kv.put(key, value, version)))  # fmt: skip

    async def delete(self, key: str, version: int) -> str:
        return await self._record("delete", key, "", version,
                                  lambda: _ok(self.kv.delete(key, version)))  # fmt: skip

    async def append(self, key: str, value: str) -> str:
        return await self._record("append", key, value, 0, lambda: _ok(self.kv.append(key, value)))


async def _ok(call: Awaitable[None]) -> str:
    await call
    return OK


def linearizable(calls: list[KVCall], deadline: float) -> bool | None:
    """Whether one key's ``calls`` have a legal order that respects real time (Wing & Gong
    with memoised configurations); ``None`` if the search passed ``deadline``. Calls that
    never returned may be left out."""
    calls = sorted(calls, key=lambda c: c.call)
    n = len(calls)
    must = sum(1 << i for i, c in enumerate(calls) if c.ret != math.inf)
    seen: set[tuple[int, State]] = set()
    stack: list[tuple[int, State]] = [(0, INITIAL)]
    while stack:
        if time.monotonic() > deadline:
            return None
        done, state = stack.pop()
        if done & must == must:
            return True
        if (done, state) in seen:
            continue
        seen.add((done, state))
        pending = [i for i in range(n) if not done >> i & 1]
        first_return = min(calls[i].ret for i in pending)
        for i in pending:
            c = calls[i]
            if c.call > first_return:
                break  # sorted by call: no later call may go before that return
            for after in step(state, c.kind, c.value, c.version, c.err):
                stack.append((done | 1 << i, after))
    return False
