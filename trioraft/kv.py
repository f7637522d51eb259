"""The versioned KV: the client interface, the single-server service and its client.

Python API (shared by every KV client, single-server or cluster, so the lock works over any):

- ``await kv.get(key) -> Versioned``: the value and version; an absent key reads as
  ``Versioned("", 0)``. Retries until it gets an answer.
- ``await kv.put(key, value, version) -> None``: store ``value`` if the key is at
  ``version`` (0 creates it). Raises :class:`~trioraft.VersionConflict` or
  :class:`~trioraft.KeyNotFound` when the server rejects the first attempt, and
  :class:`~trioraft.MaybeApplied` when a *retry* is rejected with ``Version``, since the first
  attempt may have applied before its reply was lost.

Neither call takes a timeout: the caller bounds it with ``trio.move_on_after`` or
``trio.fail_after``.
"""

from __future__ import annotations

import random
import uuid
from typing import NamedTuple, Protocol, runtime_checkable

import trio
from quart_trio import QuartTrio

from ._errors import KeyNotFound, MaybeApplied, VersionConflict
from ._kvstate import VersionedKV
from ._messages import NO_KEY, OK, VERSION, GetArgs, GetReply, PutArgs, PutReply
from ._rpc import Route, RpcClient, make_app

#: Retry pacing after a failed RPC: start small, double, never above the cap. The cap only
#: keeps a refused connection from becoming a hot loop; lost calls gain nothing from waiting.
RETRY_BACKOFF_START = 0.001
RETRY_BACKOFF_CAP = 0.01


class Versioned(NamedTuple):
    """A value with its version; version 0 means the key does not exist."""

    value: str
    version: int

    @property
    def exists(self) -> bool:
        return self.version > 0


@runtime_checkable
class KeyValue(Protocol):
    """What every trioraft KV client offers (and all that :class:`~trioraft.Lock` needs)."""

    async def get(self, key: str) -> Versioned: ...

    async def put(self, key: str, value: str, version: int) -> None: ...


class KVServer:
    """The single-server KV service: a :class:`VersionedKV` behind ``/get`` and ``/put``."""

    def __init__(self, *, max_body_bytes: int = 1 << 20) -> None:
        self.state = VersionedKV()
        self.max_body_bytes = max_body_bytes

    async def handle_get(self, args: GetArgs) -> GetReply:
        return self.state.get(args.key)

    async def handle_put(self, args: PutArgs) -> PutReply:
        return self.state.put(args.key, args.value, args.version)

    def routes(self) -> dict[str, Route]:
        return {"get": Route(GetArgs, self.handle_get), "put": Route(PutArgs, self.handle_put)}

    def app(self) -> QuartTrio:
        return make_app(
            self.routes(),
            name="trioraft-kvserver",
            max_body_bytes=self.max_body_bytes,
            status=lambda: {"role": "kvserver", "keys": len(self.state)},
        )


def raise_put_error(err: str, *, retried: bool) -> None:
    """Turn a put's wire error into the client's outcome (the ``Maybe`` rule lives here)."""
    if err == OK:
        return
    if err == VERSION:
        raise MaybeApplied() if retried else VersionConflict()
    if err == NO_KEY:
        raise KeyNotFound()
    raise ValueError(f"unexpected put error {err!r}")


class Backoff:
    """A doubling pause between retries of one operation, capped.

    With ``rng``, each pause is drawn from ``[pause / 2, pause]`` so that contenders polling
    the same key drift out of lockstep; without it, the pauses are exact.
    """

    def __init__(
        self,
        start: float = RETRY_BACKOFF_START,
        cap: float = RETRY_BACKOFF_CAP,
        rng: random.Random | None = None,
    ) -> None:
        self._next = start
        self._cap = cap
        self._rng = rng

    async def wait(self) -> None:
        pause = self._next if self._rng is None else self._rng.uniform(self._next / 2, self._next)
        await trio.sleep(pause)
        self._next = min(self._next * 2, self._cap)


class KVClient:
    """A client of one single-server KV (see the module docstring for the contract)."""

    def __init__(self, url: str, *, client_id: str | None = None, rpc_timeout: float = 1.0):
        self.client_id = client_id or uuid.uuid4().hex
        self._rpc = RpcClient(url, self.client_id, timeout=rpc_timeout)

    async def get(self, key: str) -> Versioned:
        backoff = Backoff()
        while True:
            reply = await self._rpc.call("get", GetArgs(key), GetReply)
            if reply is not None:
                return Versioned(reply.value, reply.version)
            await backoff.wait()

    async def put(self, key: str, value: str, version: int) -> None:
        args = PutArgs(key, value, version)
        backoff = Backoff()
        retried = False
        while True:
            reply = await self._rpc.call("put", args, PutReply)
            if reply is not None:
                raise_put_error(reply.err, retried=retried)
                return
            retried = True
            await backoff.wait()

    async def aclose(self) -> None:
        await self._rpc.aclose()

    async def __aenter__(self) -> KVClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
