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
``trio.fail_after``. :class:`KVClient` talks to a single server; :class:`ClusterClient` to a
replicated cluster, where it also offers ``append``.
"""

from __future__ import annotations

import collections
import random
import uuid
from typing import NamedTuple, Protocol, runtime_checkable

import trio

from .._errors import KeyNotFound, MaybeApplied, NoSpace, SessionExpired, VersionConflict
from ..rpc.http import RpcClient
from ..rpc.tls import ClientTls
from .messages import (
    NO_KEY,
    NO_SPACE,
    OK,
    SESSION_EXPIRED,
    VERSION,
    WRONG_LEADER,
    AppendArgs,
    AppendReply,
    GetArgs,
    GetReply,
    OpenSessionArgs,
    OpenSessionReply,
    PutArgs,
    PutReply,
)

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


def raise_put_error(err: str, *, retried: bool, why: str = "") -> None:
    """Turn a put's wire error into the client's outcome (the ``Maybe`` rule lives here);
    ``why`` says what made the client retry, for the ``MaybeApplied`` message."""
    if err == OK:
        return
    if err == VERSION:
        if retried:
            raise MaybeApplied(f"retried after: {why}" if why else "retried")
        raise VersionConflict()
    if err == NO_KEY:
        raise KeyNotFound()
    if err == NO_SPACE:
        raise NoSpace()
    raise ValueError(f"unexpected put error {err!r}")


#: Sessions an append tries, when each is found forgotten before the append could apply.
SESSION_ATTEMPTS = 3


def raise_append_error(err: str) -> None:
    """Turn an append's wire error into the client's outcome."""
    if err == OK:
        return
    if err == SESSION_EXPIRED:
        raise SessionExpired(
            "the append was retried and its session has been forgotten: it may have applied"
        )
    if err == NO_SPACE:
        raise NoSpace()
    raise ValueError(f"unexpected append error {err!r}")


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

    def __init__(
        self,
        url: str,
        *,
        client_id: str | None = None,
        rpc_timeout: float = 1.0,
        token: str | None = None,
        tls: ClientTls | None = None,
    ):
        self.client_id = client_id or uuid.uuid4().hex
        self._rpc = RpcClient(url, self.client_id, timeout=rpc_timeout, token=token, tls=tls)

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
        lost = 0
        while True:
            reply = await self._rpc.call("put", args, PutReply)
            if reply is not None:
                raise_put_error(reply.err, retried=lost > 0, why=f"{lost} lost call(s)")
                return
            lost += 1
            await backoff.wait()

    async def aclose(self) -> None:
        await self._rpc.aclose()

    async def __aenter__(self) -> KVClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


#: Failed attempts a ClusterClient call remembers, for the MaybeApplied message.
_FAILURES_KEPT = 6


class ClusterClient:
    """A client of a replicated KV cluster, with the same interface as :class:`KVClient`.

    It keeps one RPC client per server and tries the last server that answered as leader
    first; on ``WrongLeader`` or a lost call (``rpc_timeout`` each) it moves to the next one,
    pausing briefly after each full round. A put retried after any such failure reports
    :class:`MaybeApplied` if it then meets ``Version``, as the single-server client does.
    ``append`` is applied exactly once: the client opens a session first, and retries carry
    the same session and sequence number (a server that has forgotten the session answers
    ``SessionExpired``, raised as :class:`~trioraft.SessionExpired`, instead of applying
    twice; the next append opens a new session). ``token`` and ``tls`` go to every server.
    """

    def __init__(
        self,
        urls: list[str],
        *,
        client_id: str | None = None,
        rpc_timeout: float = 1.0,
        token: str | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        if not urls:
            raise ValueError("a cluster client needs at least one server URL")
        self.client_id = client_id or uuid.uuid4().hex
        self._rpcs = [
            RpcClient(url, self.client_id, timeout=rpc_timeout, token=token, tls=tls)
            for url in urls
        ]
        self.leader = 0  # index of the server that last answered as leader
        self._session: str | None = None  # opened before the first append
        self._opening = trio.Lock()
        self._seq = 0

    async def _call(self, method: str, args: object, reply_type: type) -> tuple[object, list[str]]:
        """The first reply that is not WrongLeader; and how the last attempts before it
        failed (a few: a call may retry for as long as the cluster is down)."""
        failures: collections.deque[str] = collections.deque(maxlen=_FAILURES_KEPT)
        backoff = Backoff()
        while True:
            for k in range(len(self._rpcs)):
                server = (self.leader + k) % len(self._rpcs)
                rpc = self._rpcs[server]
                reply = await rpc.call(method, args, reply_type)
                if reply is not None and reply.err != WRONG_LEADER:
                    self.leader = server
                    return reply, failures
                failures.append(f"{rpc.url} {'no reply' if reply is None else WRONG_LEADER}")
            await backoff.wait()

    async def get(self, key: str) -> Versioned:
        reply, _ = await self._call("get", GetArgs(key), GetReply)
        assert isinstance(reply, GetReply)
        return Versioned(reply.value, reply.version)

    async def put(self, key: str, value: str, version: int) -> None:
        reply, failures = await self._call("put", PutArgs(key, value, version), PutReply)
        assert isinstance(reply, PutReply)
        raise_put_error(reply.err, retried=bool(failures), why=", ".join(failures))

    async def append(self, key: str, value: str) -> None:
        for _ in range(SESSION_ATTEMPTS):
            session = await self._open_session()
            self._seq += 1
            args = AppendArgs(key, value, session, self._seq)
            reply, failures = await self._call("append", args, AppendReply)
            assert isinstance(reply, AppendReply)
            if reply.err != SESSION_EXPIRED:
                break
            if self._session == session:
                self._session = None  # the next attempt opens a new one
            if failures:
                break  # an earlier attempt may have applied: only the caller can tell
            # The first attempt met a forgotten session: it did not apply. Go on in a new one.
        raise_append_error(reply.err)

    async def _open_session(self) -> str:
        async with self._opening:
            if self._session is None:
                reply, _ = await self._call("open_session", OpenSessionArgs(), OpenSessionReply)
                assert isinstance(reply, OpenSessionReply)
                raise_append_error(reply.err)
                self._session, self._seq = reply.session, 0
            return self._session

    async def aclose(self) -> None:
        for rpc in self._rpcs:
            await rpc.aclose()

    async def __aenter__(self) -> ClusterClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
