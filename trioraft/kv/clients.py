"""The versioned KV clients: one op vocabulary, one way to find the leader.

Python API (shared by every KV client, single-server or cluster, so the lock works over any):

- ``await kv.get(key) -> Versioned``: the value and version (and, as attributes,
  ``mod_index`` and ``create_index``); an absent key reads as ``Versioned("", 0)``. Retries
  until it gets an answer.
- ``await kv.put(key, value, version) -> None``: store ``value`` if the key is at
  ``version`` (0 creates it). Raises :class:`~trioraft.VersionConflict` or
  :class:`~trioraft.KeyNotFound` when the server rejects the first attempt, and
  :class:`~trioraft.MaybeApplied` when a *retry* is rejected with ``Version`` or ``NoKey``,
  since the first attempt may have applied before its reply was lost (and the key have
  changed or been deleted since).
- ``await kv.delete(key, version) -> None``: remove the key if it is at ``version``; the
  same errors, and :class:`~trioraft.MaybeApplied` when a retry answers ``NoKey`` or
  ``Version``. A write whose *retry* a server refuses (400 or 413: a retry carries
  ``retry_after``, which its first attempt did not) raises
  :class:`~trioraft.MaybeApplied` too, never :class:`~trioraft.BadRequest`.
- ``await kv.range(prefix=..., start=..., end=..., limit=...) -> RangePage``: one page of
  keys in order, as of one index (``page.index``); ``page.more`` and ``page.next`` continue.
- ``await kv.txn(compare, success, failure) -> TxnOutcome``: see :class:`TxnArgs`. A retried
  txn that answers ``succeeded=False`` raises :class:`~trioraft.MaybeApplied` (its first
  attempt may have applied): compare the version or ``mod_index`` of every key a txn
  writes, and it can never apply twice.
- ``await kv.append(key, value) -> None`` (replicated KV): exactly once, in a session.
- Leases (replicated KV): ``await kv.lease_grant(ttl) -> int``, ``await
  kv.lease_keepalive(lease) -> int`` (the TTL; :class:`~trioraft.LeaseNotFound` once it is
  gone), ``await kv.lease_revoke(lease) -> bool`` (whether it still existed), and
  ``kv.put(key, value, version, lease=id)``.
- Watch (replicated KV): ``async with kv.watch(prefix, after=index) as changes: async for
  change in changes:`` every change under ``prefix`` after ``index``, once, in commit order,
  from any server (:class:`~trioraft.kv.changes.Compacted` when they are no longer kept).

None of them takes a timeout: the caller bounds it with ``trio.move_on_after`` or
``trio.fail_after``. Each op is written once, in :class:`OpsClient`, over ``run(op)``; the
clients differ only in how they run an op: :class:`ClusterClient` sends each op in a request
of its own, the coalescing client packs the ops of many tasks into each request, and the
embedded client enters them into its node's log. The ones that talk HTTP share
:class:`Servers`, the one retry loop: it follows a ``WrongLeader`` reply's leader hint, or
else tries the servers in turn.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import NamedTuple, Protocol, TypeVar, runtime_checkable

import trio

from .._errors import (
    BadRequest,
    KeyNotFound,
    LeaseNotFound,
    MaybeApplied,
    NoSpace,
    SessionExpired,
    VersionConflict,
)
from ..rpc.http import RpcClient
from ..rpc.tls import ClientTls
from .changes import Change, Compacted
from .messages import (
    COMPACTED,
    DEFAULT_RANGE_LIMIT,
    NO_KEY,
    NO_LEADER,
    NO_LEASE,
    NO_SPACE,
    OK,
    READ_OPS,
    RETRIED_WRITES,
    SESSION_EXPIRED,
    VERSION,
    WRONG_LEADER,
    BatchArgs,
    BatchOp,
    BatchReply,
    Compare,
    KeyRecord,
    OpResult,
    RangeArgs,
    RangePage,
    TxnArgs,
    TxnOp,
    TxnOutcome,
    WatchArgs,
    WatchReply,
)

#: The TTL of the lease a client's append session ends with (etcd's session default).
DEFAULT_SESSION_TTL = 60

#: Retry pacing after a failed RPC: start small, double, never above the cap. The cap only
#: keeps a refused connection from becoming a hot loop; lost calls gain nothing from waiting.
RETRY_BACKOFF_START = 0.001
RETRY_BACKOFF_CAP = 0.01


class Listing(NamedTuple):
    """Every key of a range read page by page (:meth:`OpsClient.range_all`): each page was
    read at its own index, the first at ``first_index`` (after which a watch misses nothing
    the pages missed) and the last at ``last_index``."""

    items: list[KeyRecord]
    first_index: int
    last_index: int


class _ValueAndVersion(NamedTuple):
    value: str
    version: int


class Versioned(_ValueAndVersion):
    """A value with its version; version 0 means the key does not exist.

    It unpacks and compares as the pair ``(value, version)``; ``mod_index`` and
    ``create_index`` (the log indexes of the key's last change and of its creation, 0 when
    absent) come along as attributes, and for a stale read ``index``, the index of the
    state it was read from (0 otherwise).
    """

    mod_index: int
    create_index: int
    index: int

    def __new__(
        cls, value: str, version: int, mod_index: int = 0, create_index: int = 0, index: int = 0
    ) -> Versioned:
        self = super().__new__(cls, value, version)
        self.mod_index = mod_index
        self.create_index = create_index
        self.index = index
        return self

    def __repr__(self) -> str:
        return (
            f"Versioned(value={self.value!r}, version={self.version}, "
            f"mod_index={self.mod_index}, create_index={self.create_index})"
        )

    @property
    def exists(self) -> bool:
        return self.version > 0


@runtime_checkable
class KeyValue(Protocol):
    """What every trioraft KV client offers (and all that :class:`~trioraft.Lock` needs)."""

    async def get(self, key: str) -> Versioned: ...

    async def put(self, key: str, value: str, version: int) -> None: ...


def raise_put_error(err: str, why: str = "", *, delete: bool = False, lease: int = 0) -> None:
    """Turn a put's (or a ``delete``'s) wire error into the client's outcome (the ``Maybe``
    rule lives here); ``why`` says what made the client retry (``""``: it did not). A retry
    that meets ``Version`` or ``NoKey`` may follow an attempt that applied: a put whose
    reply was lost and whose key was then deleted, or a delete whose reply was lost."""
    if err == OK:
        return
    if why and err in (VERSION, NO_KEY, NO_LEASE):  # NoLease: the lease may have gone since
        raise MaybeApplied(f"retried after: {why}")
    if err == NO_LEASE:
        raise LeaseNotFound(lease)
    if err == VERSION:
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


#: Failed attempts a call remembers, for the MaybeApplied message.
_FAILURES_KEPT = 6
#: The reply type of :meth:`Servers.call_leader`.
R = TypeVar("R")


def as_retries(ops: list[BatchOp], seen: int) -> list[BatchOp]:
    """``ops`` to send again: each write not yet marked a retry is marked one, of a first
    attempt sent after the client had seen index ``seen`` (see :class:`BatchOp`)."""
    return [
        dataclasses.replace(op, retry_after=seen)
        if op.op in RETRIED_WRITES and op.retry_after is None
        else op
        for op in ops
    ]


class Servers:
    """The one retry loop of the HTTP clients: where to send a ``/batch`` request so that
    it reaches the leader.

    It tries the last server that answered as leader first. After a lost call
    (``rpc_timeout``), a reply that does not fit the request, or ``WrongLeader``, it moves to
    the leader that reply names (``leader``, a client URL, followed when it is one of
    ``urls``), or else to the next server, pausing briefly after every ``len(urls)``
    attempts in a row. ``token`` and ``tls`` go to every server.
    """

    def __init__(
        self,
        urls: list[str],
        client_id: str,
        *,
        rpc_timeout: float = 1.0,
        token: str | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        if not urls:
            raise ValueError("a client needs at least one server URL")
        self.rpcs = [
            RpcClient(url, client_id, timeout=rpc_timeout, token=token, tls=tls) for url in urls
        ]
        self._by_url = {rpc.url: k for k, rpc in enumerate(self.rpcs)}
        self.leader = 0  # index of the server that last answered as leader
        self.requests = 0  # requests sent, for statistics
        self.seen = 0  # the greatest index a reply has carried (BatchReply.index)
        #: Whether batches of reads go to ``/read`` (until a server answers it 404).
        self.read_route = True

    async def call(self, ops: list[BatchOp]) -> tuple[list[OpResult], list[str]]:
        """Run ``ops`` in one ``/batch`` request (``/read`` for reads: see
        :meth:`BatchArgs.reads_with_round`): their results, the first that are not
        ``WrongLeader``; and how the last attempts before it failed (a few: a call may retry
        for as long as the cluster is down), if any of them may have applied: empty when
        every one was refused before it was proposed. Raises :class:`~trioraft.BadRequest`
        if a server refuses the request for what it is, or :class:`~trioraft.MaybeApplied`
        if it refuses a retry of writes after an attempt that may have applied them."""
        args = BatchArgs(ops)
        method = "read" if self.read_route and args.reads_with_round() else "batch"
        failures: collections.deque[str] = collections.deque(maxlen=_FAILURES_KEPT)
        backoff = Backoff()
        attempts = 0
        seen_before = self.seen
        uncertain = False  # whether an attempt so far may have applied
        # The first such attempt (its number, how it failed): named even once it has
        # dropped out of ``failures``, since it is why the call may say Maybe.
        first_uncertain: tuple[int, str] | None = None

        def account() -> list[str]:
            kept = list(failures)
            if first_uncertain is not None and first_uncertain[0] < attempts - len(kept):
                return [first_uncertain[1], "...", *kept]
            return kept

        while True:
            server = self.leader
            rpc = self.rpcs[server]
            self.requests += 1
            try:
                reply = await rpc.call(method, args, BatchReply)
            except BadRequest as exc:
                if method == "read" and exc.status == 404:  # a server older than /read
                    self.read_route, method = False, "batch"
                    continue
                # (An op marked before the call, alone, is the retry of one that may have
                # applied: the embedded client's after a local attempt.)
                retried = uncertain or (len(ops) == 1 and ops[0].retry_after is not None)
                if retried and any(op.op not in READ_OPS for op in ops):
                    # A retry's request differs from the first attempt's (retry_after) and
                    # may cross a limit the first did not: that one may have applied.
                    raise MaybeApplied(
                        f"a retry was refused ({exc.status}: {exc.message}); an earlier "
                        f"attempt may have applied (before it: {', '.join(account())})"
                    ) from exc
                raise
            if reply is not None:
                self.seen = max(self.seen, reply.index)
            if reply is not None and len(reply.results) == len(ops):
                if not reply.results or reply.results[0].err != WRONG_LEADER:
                    return reply.results, account() if uncertain else []
                failure = f"{rpc.url} {WRONG_LEADER}{' (refused)' if reply.refused else ''}"
                may_have_applied = not reply.refused
            else:
                failure = f"{rpc.url} {'lost call' if reply is None else 'bad reply'}"
                may_have_applied = True
            failures.append(failure)
            if may_have_applied and first_uncertain is None:
                first_uncertain = (attempts, failure)
            uncertain |= may_have_applied
            if uncertain:
                # The next attempt retries one that may have applied. After refusals only,
                # it is a first attempt still, and goes unmarked: a marked one would meet
                # the tombstone of a deletion made since as a conflict, which, reported
                # without doubt, would be a wrong answer.
                args = BatchArgs(as_retries(ops, seen_before))
            attempts += 1
            await self._move_on(
                server, reply.leader if reply is not None else "", attempts, backoff
            )

    async def _move_on(self, server: int, hint: str, attempts: int, backoff: Backoff) -> None:
        """After a failed attempt at ``server``: on to the server ``hint`` names (a client URL
        of one of ``urls``) or the next one, pausing after every ``len(urls)`` attempts."""
        hinted = self._by_url.get(hint.rstrip("/")) if hint else None
        self.leader = hinted if hinted is not None else (server + 1) % len(self.rpcs)
        if attempts % len(self.rpcs) == 0:
            await backoff.wait()

    async def call_leader(self, method: str, args: object, reply_type: type[R]) -> R:
        """Call ``method`` (a route whose replies have ``err`` and, with ``WrongLeader``,
        ``leader``: the membership routes) on the leader: the first reply that is not
        ``WrongLeader``, through the same moves as :meth:`call`. Raises
        :class:`~trioraft.BadRequest` when a server refuses the request."""
        backoff = Backoff()
        attempts = 0
        while True:
            server = self.leader
            self.requests += 1
            reply = await self.rpcs[server].call(method, args, reply_type)
            err = getattr(reply, "err", None)
            if reply is not None and err != WRONG_LEADER:
                return reply
            attempts += 1
            hint = getattr(reply, "leader", "") if reply is not None else ""
            await self._move_on(server, hint, attempts, backoff)

    async def watch(self, request: WatchArgs) -> WatchReply:
        """One long poll of ``/watch``: any server answers, so it tries them in turn (from
        the last leader) until one does, allowing it the poll's ``wait`` to answer."""
        backoff = Backoff()
        attempts = 0
        server = self.leader
        while True:
            rpc = self.rpcs[server]
            reply = await rpc.call("watch", request, WatchReply, lost_after=request.wait + 5)
            if reply is not None and reply.err != NO_LEADER:
                return reply
            server = (server + 1) % len(self.rpcs)
            attempts += 1
            if attempts % len(self.rpcs) == 0:
                await backoff.wait()

    async def aclose(self) -> None:
        for rpc in self.rpcs:
            await rpc.aclose()


class OpsClient:
    """The KV client API (get, put, delete, range, txn, append) written once, over one
    method, :meth:`run`, that executes an op and says why it was retried: ``""`` when its
    first attempt answered, else how earlier attempts failed (for the ``Maybe`` rule).

    Appends go in a session the client opens before its first one, under a lease of
    ``session_ttl`` seconds (``None``: a session without a lease, which only the servers'
    table bound ever forgets). An append renews the lease when a third of its TTL has
    passed since the last renewal, so a session in use lives on, and the session of a client
    gone quiet (or dead) ends with its lease instead of filling the servers' table. An
    append that finds its session gone opens a new one (see :meth:`append`).
    """

    def __init__(
        self, client_id: str | None = None, *, session_ttl: int | None = DEFAULT_SESSION_TTL
    ) -> None:
        self.client_id = client_id or uuid.uuid4().hex
        self.session_ttl = session_ttl
        self._session: str | None = None  # opened before the first append
        self._session_lease = 0  # the lease it ends with (0: none)
        self._session_renewed = -math.inf  # when that lease was last renewed
        self._opening = trio.Lock()
        self._seq = 0

    async def run(self, op: BatchOp) -> tuple[OpResult, str]:
        raise NotImplementedError

    async def get(self, key: str, *, stale: bool = False) -> Versioned:
        """The key's value and version. ``stale``: as the first server tried has applied
        it, leader or not (no round trip to the leader; it may be behind), with the index
        it reflects in ``.index``."""
        result, _ = await self.run(BatchOp("get", key, stale=stale))
        if result.err not in (OK, NO_KEY):
            raise ValueError(f"unexpected get error {result.err!r}")
        return Versioned(
            result.value,
            result.version,
            result.mod_index,
            result.create_index,
            result.index if stale else 0,
        )

    async def put(self, key: str, value: str, version: int, *, lease: int = 0) -> None:
        result, why = await self.run(BatchOp("put", key, value, version, lease=lease))
        raise_put_error(result.err, why, lease=lease)

    async def delete(self, key: str, version: int) -> None:
        result, why = await self.run(BatchOp("delete", key, version=version))
        raise_put_error(result.err, why, delete=True)

    async def range(
        self,
        *,
        prefix: str = "",
        start: str = "",
        end: str = "",
        limit: int = DEFAULT_RANGE_LIMIT,
        stale: bool = False,
    ) -> RangePage:
        """One page of the keys ``k`` with ``start <= k < end`` (no bound for an empty
        ``end``) under ``prefix``; for the next page, call again with ``start=page.next``
        while ``page.more``. ``stale``: as the first server tried has applied it (see
        :meth:`get`); ``page.index`` says as of which index."""
        request = RangeArgs(prefix, start, end, limit)
        request.validate("range")  # a BadRequest here, not a 400 from every server in turn
        result, _ = await self.run(BatchOp("range", "", range=request, stale=stale))
        if result.range is None:
            raise ValueError(f"unexpected range error {result.err!r}")
        return result.range

    async def range_all(
        self,
        *,
        prefix: str = "",
        start: str = "",
        end: str = "",
        page_size: int = DEFAULT_RANGE_LIMIT,
        stale: bool = False,
    ) -> Listing:
        """Every key :meth:`range` would list, reading one page (``page_size`` keys) after
        another."""
        bounds = {"prefix": prefix, "end": end, "limit": page_size, "stale": stale}
        page = await self.range(start=start, **bounds)
        items, first_index = list(page.items), page.index
        while page.more:
            page = await self.range(start=page.next, **bounds)
            items += page.items
        return Listing(items, first_index, page.index)

    async def txn(
        self,
        compare: list[Compare],
        success: list[TxnOp],
        failure: list[TxnOp] | None = None,
    ) -> TxnOutcome:
        """If every compare holds, run ``success``, else ``failure``, atomically."""
        request = TxnArgs(compare, success, failure or [])
        request.validate("txn")
        result, why = await self.run(BatchOp("txn", "", txn=request))
        if result.err == NO_SPACE:
            raise NoSpace()
        if result.err == NO_LEASE:
            if why:
                raise MaybeApplied(f"a retried txn met a lease gone (retried after: {why})")
            raise LeaseNotFound(next(op.lease for op in [*success, *(failure or [])] if op.lease))
        if result.txn is None:
            raise ValueError(f"unexpected txn error {result.err!r}")
        if why and not result.txn.succeeded:
            raise MaybeApplied(f"a retried txn failed its compares (retried after: {why})")
        return result.txn

    async def append(self, key: str, value: str) -> None:
        for _ in range(SESSION_ATTEMPTS):
            session = await self._open_session()
            self._seq += 1
            op = BatchOp("append", key, value, session=session, seq=self._seq)
            result, why = await self.run(op)
            if result.err != SESSION_EXPIRED:
                break
            if self._session == session:
                self._session = None  # the next attempt opens a new one
            if why:
                break  # an earlier attempt may have applied: only the caller can tell
            # The first attempt met a forgotten session: it did not apply. Go on in a new one.
        raise_append_error(result.err)

    async def lease_grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds (1 to 86,400); its id."""
        request = BatchOp("lease_grant", "", ttl=ttl)
        request.validate("lease_grant")
        result, _ = await self.run(request)
        if result.err == NO_SPACE:
            raise NoSpace()
        if result.err != OK:
            raise ValueError(f"unexpected lease_grant error {result.err!r}")
        return result.lease

    async def lease_keepalive(self, lease: int) -> int:
        """Renew ``lease`` for its TTL from now (confirmed by the leader); the TTL."""
        result, _ = await self.run(BatchOp("lease_keepalive", "", lease=lease))
        if result.err == NO_LEASE:
            raise LeaseNotFound(lease)
        if result.err != OK:
            raise ValueError(f"unexpected lease_keepalive error {result.err!r}")
        return result.ttl

    async def lease_revoke(self, lease: int) -> bool:
        """End ``lease`` now, deleting its keys; whether it still existed (a retry may find
        it gone, revoked by the first attempt)."""
        result, _ = await self.run(BatchOp("lease_revoke", "", lease=lease))
        if result.err not in (OK, NO_LEASE):
            raise ValueError(f"unexpected lease_revoke error {result.err!r}")
        return result.err == OK

    async def poll_watch(self, request: WatchArgs) -> WatchReply:
        """One long poll of ``/watch`` (any server answers)."""
        raise NotImplementedError

    @asynccontextmanager
    async def watch(
        self, prefix: str = "", *, after: int = 0, wait: float = 10.0
    ) -> AsyncIterator[AsyncIterator[Change]]:
        """``async with kv.watch(prefix, after=i) as changes: async for change in changes``:
        each change under ``prefix`` after index ``i``, once, in commit order, polling
        ``wait`` seconds at a time. :class:`~trioraft.kv.changes.Compacted` when the
        changes asked for are no longer kept."""
        request = WatchArgs(prefix, after, wait=wait)
        request.validate("watch")

        async def changes() -> AsyncIterator[Change]:
            position = after
            while True:
                reply = await self.poll_watch(WatchArgs(prefix, position, wait=wait))
                if reply.err == COMPACTED:
                    raise Compacted(position, reply.compacted_through)
                for record in reply.changes:
                    yield Change(
                        record.index,
                        record.key,
                        record.kind,
                        record.value,
                        record.version,
                        record.create_index,
                    )
                position = reply.through

        async with aclosing(changes()) as iterator:
            yield iterator

    async def _open_session(self) -> str:
        """The session to append in: the current one (its lease renewed if due), or a new
        one."""
        async with self._opening:
            now = trio.current_time()
            ttl = self.session_ttl
            due = ttl is not None and now - self._session_renewed > ttl / 3
            if self._session is not None and self._session_lease and due:
                try:
                    await self.lease_keepalive(self._session_lease)
                    self._session_renewed = now
                except LeaseNotFound:
                    self._session = None  # it ended with its lease: open another
            if self._session is None:
                lease = 0
                if ttl is not None:
                    try:
                        lease = await self.lease_grant(ttl)
                    except NoSpace:
                        lease = 0  # the lease table is full: a session without one
                result, _ = await self.run(BatchOp("open", "", lease=lease))
                raise_append_error(result.err)
                self._session, self._seq = result.value, 0
                self._session_lease, self._session_renewed = lease, now
            return self._session


class ClusterClient(OpsClient):
    """A client of a replicated KV cluster (or of a single server): each call is a
    ``/batch`` request of its own, sent by :class:`Servers` to the leader. A put retried
    after any failed attempt reports :class:`MaybeApplied` if it then meets ``Version`` or
    ``NoKey``.
    ``append`` is applied exactly once: the client opens a session first, and retries carry
    the same session and sequence number (a server that has forgotten the session answers
    ``SessionExpired``, raised as :class:`~trioraft.SessionExpired`, instead of applying
    twice; the next append opens a new session), under a lease of ``session_ttl`` seconds
    (see :class:`OpsClient`). ``token`` and ``tls`` go to every server.
    """

    def __init__(
        self,
        urls: list[str],
        *,
        client_id: str | None = None,
        rpc_timeout: float = 1.0,
        token: str | None = None,
        tls: ClientTls | None = None,
        session_ttl: int | None = DEFAULT_SESSION_TTL,
    ) -> None:
        super().__init__(client_id, session_ttl=session_ttl)
        self.servers = Servers(urls, self.client_id, rpc_timeout=rpc_timeout, token=token, tls=tls)

    @property
    def leader(self) -> int:
        """The index of the server tried first: the last one that answered as leader."""
        return self.servers.leader

    @leader.setter
    def leader(self, server: int) -> None:
        self.servers.leader = server

    async def run(self, op: BatchOp) -> tuple[OpResult, str]:
        (result,), failures = await self.servers.call([op])
        return result, ", ".join(failures)

    async def poll_watch(self, request: WatchArgs) -> WatchReply:
        return await self.servers.watch(request)

    async def aclose(self) -> None:
        await self.servers.aclose()

    async def __aenter__(self) -> ClusterClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class KVClient(ClusterClient):
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
        super().__init__([url], client_id=client_id, rpc_timeout=rpc_timeout, token=token,
                         tls=tls)  # fmt: skip
