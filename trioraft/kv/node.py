"""A server of the replicated KV: a Raft node, a replicated :class:`KVMachine`, two listeners.

    node = KVNode("a", {"b": peer_url_b, "c": peer_url_c}, "data/a", cluster_secret=secret,
                  client_urls={"b": client_url_b, "c": client_url_c})
    url = await nursery.start(node.serve, "127.0.0.1", 9001)   # node.peer_url once started

Clients call ``/get``, ``/put``, ``/delete``, ``/range``, ``/txn``, ``/open_session``,
``/append`` and ``/batch``, the membership routes ``/member_list``, ``/member_add``,
``/member_promote``, ``/member_remove`` and ``/transfer_leader`` (and ``GET /status``, and the
operator's pages of :mod:`trioraft.kv.operate`: ``/metrics``, ``/healthz``, ``/readyz``,
``/backup``) on the client listener; peers call the Raft routes on the peer listener (HTTP,
or framed TCP when the peers' URLs are ``tcp://HOST:PORT``), which serves nothing else.
Every peer message carries an HMAC of the cluster secret (``insecure=True`` runs without
one); TLS (``tls``) covers both listeners, and with a CA the peer listener requires client
certificates.

An application in the same process uses :meth:`KVNode.open_client`, which skips HTTP
entirely while this node leads. Every write goes through the Raft log; reads do not
(:meth:`KVNode.read`: ReadIndex, or from what this node applied when the client asks for a
stale read). A server that is not the leader, or cannot tell whether the operation
committed (or the read was confirmed) within ``op_timeout``, answers ``WrongLeader`` (with
the leader's client URL when it knows it) and the client tries another.

Limits: one client address holds at most ``max_connections_per_address`` connections to
the client listener (``None``: no such bound); client requests over ``max_request_bytes``
answer 413, keys over :data:`~trioraft.kv.messages.MAX_KEY_BYTES` 400; ops that could never
fit one log entry 413; once the data directory, with the writes admitted and not yet
written, holds more than ``quota_bytes``, writes (put, delete, txn, open, append) answer
``NoSpace`` (gets and ranges keep working), but for those that only remove
(:func:`~trioraft.kv.messages.frees_space`) up to :data:`QUOTA_HEADROOM` past it.

Membership routes: ``/member_list`` is answered by any server from the configuration it
knows (the latest in its log, committed or not); the others only by the leader (elsewhere
``WrongLeader`` with the hint, and nothing changes). Every field is validated before
anything is proposed (400). A change already in effect answers OK with nothing proposed, so
a client may retry one whose reply was lost. A refused change (another one in flight, a
transfer under way, no entry of this term committed yet, a transfer abandoned, a learner
past ``RaftConfig.max_learners``) answers 409.
``/member_remove`` of the leader itself hands leadership over first and then answers
``WrongLeader`` naming the new leader, which removes it when the client retries there.
"""

from __future__ import annotations

import dataclasses
import random
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import trio

from .._errors import BadRequest, LeadershipLost, NotLeader, ProposalTimedOut, RaftError
from .._logging import log_context
from ..metrics import new_registry
from ..raft.membership import Configuration, MembershipChangeRefused
from ..raft.metrics import RaftCollector
from ..raft.node import RaftConfig, RaftNode, ReadStart, TransferAbandoned
from ..raft.serve import serve_node
from ..raft.storage import FileStorage, Storage
from ..rpc.auth import PeerAuth
from ..rpc.http import (
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    Route,
    StreamRoute,
    make_app,
    serve,
)
from ..rpc.tcp import TcpTransport
from ..rpc.tls import ClientTls, ServerTls
from ..rpc.transport import HttpTransport, Transport
from .changes import Change, Compacted
from .clients import Backoff, OpsClient, as_retries
from .coalescing import open_coalescing_client
from .lease_keeper import LeaseKeeper
from .machine import DEFAULT_MAX_SESSIONS, KVMachine
from .messages import (
    COMPACTED,
    NO_KEY,
    NO_LEADER,
    NO_LEASE,
    NO_SPACE,
    OK,
    READ_OPS,
    WRONG_LEADER,
    AppendArgs,
    AppendReply,
    BatchArgs,
    BatchOp,
    BatchReply,
    ChangeRecord,
    DeleteArgs,
    DeleteReply,
    GetArgs,
    GetReply,
    LeaseArgs,
    LeaseGrantArgs,
    LeaseReply,
    MemberAddArgs,
    MemberArgs,
    MemberListArgs,
    MembershipReply,
    OpenSessionArgs,
    OpenSessionReply,
    OpResult,
    PutArgs,
    PutReply,
    RangeArgs,
    RangeReply,
    TransferLeaderArgs,
    TxnArgs,
    TxnReply,
    WatchArgs,
    WatchReply,
    WrongLeaderReply,
    as_result,
    bound_reply,
    check_key,
    frees_space,
    json_sizes,
    log_op,
    range_reply,
    txn_reply,
)
from .metrics import KVCollector, KVMetrics, count_refusals
from .operate import DEFAULT_READY_MAX_LAG, operator_pages, readiness
from .rsm import EntryTooLarge, ReplicatedStateMachine
from .watch import WatchHub

#: Client request bodies, by default (``--max-request-bytes``).
DEFAULT_MAX_REQUEST_BYTES = 1 << 20
#: Bytes of Raft state (log, hard state, snapshot) past which writes answer ``NoSpace``.
DEFAULT_QUOTA_BYTES = 2 << 30
#: Past the quota, ops that only remove still run until the data directory holds this
#: fraction more (they are logged too): with snapshots on, the way back under the quota
#: (their freed space is snapshotted as soon as it is 1/64 of the quota).
QUOTA_HEADROOM = 1 / 16


class KVNode:
    """One server of a replicated KV cluster. ``peers`` maps the other servers' ids to their
    peer URLs; ``client_urls`` maps them to their client URLs (for the embedded client).

    ``cluster_secret`` (at least 16 bytes, the same on every member) authenticates peer
    messages; without it the node refuses to be built unless ``insecure=True`` or a
    ``transport`` is given (in-memory tests). ``tls`` serves both listeners over TLS (with
    its CA, peers must present certificates); ``peer_tls`` is how this node verifies its
    peers and presents its own certificate. ``client_token`` requires
    ``Authorization: Bearer <token>`` on client routes (and on ``GET /backup``).
    ``ready_max_lag`` is how many committed entries may wait to be applied on a node that
    ``GET /readyz`` calls ready. ``registry`` holds the node's metrics (``GET /metrics``).
    """

    def __init__(
        self,
        node_id: str,
        peers: Mapping[str, str],
        storage: Storage | str | Path,
        *,
        client_urls: Mapping[str, str] | None = None,
        cluster_secret: bytes | None = None,
        insecure: bool = False,
        tls: ServerTls | None = None,
        peer_tls: ClientTls | None = None,
        client_token: str | None = None,
        max_raft_state: int = -1,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_connections_per_address: int | None = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
        quota_bytes: int = DEFAULT_QUOTA_BYTES,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        config: RaftConfig | None = None,
        rng: random.Random | None = None,
        op_timeout: float = 2.0,
        transport: Transport | None = None,
        ready_max_lag: int = DEFAULT_READY_MAX_LAG,
        joining: bool = False,
    ) -> None:
        # A new leader commits a no-op of its term at once, so reads (ReadIndex) need not
        # wait for the first write of the term.
        self.config = dataclasses.replace(config or RaftConfig(), leader_noop=True)
        if cluster_secret is None and not insecure and transport is None:
            raise ValueError(
                "a node needs the cluster secret to authenticate its peers "
                "(or insecure=True to run without authentication)"
            )
        self.peer_auth = PeerAuth(cluster_secret) if cluster_secret is not None else None
        self.tls = tls
        self.peer_tls = peer_tls
        self.client_token = client_token
        self.max_request_bytes = max_request_bytes
        self.max_connections_per_address = max_connections_per_address
        self.quota_bytes = quota_bytes
        #: About the bytes of the writes proposed here and not answered yet: counted
        #: against the quota, so concurrent requests cannot all pass it at once.
        self._admitted_bytes = 0
        if isinstance(storage, str | Path):
            storage = FileStorage(storage, owner=node_id)
        self.storage = storage
        self.peers_over_tcp = any(url.startswith("tcp://") for url in peers.values())
        if transport is None:
            transport = (
                TcpTransport(node_id, peers, peer_auth=self.peer_auth, tls=peer_tls)
                if self.peers_over_tcp
                else HttpTransport(
                    node_id,
                    peers,
                    timeout=self.config.transport_timeout,
                    peer_auth=self.peer_auth,
                    tls=peer_tls,
                )
            )
        self.transport = transport
        self.raft = RaftNode(
            node_id,
            [node_id, *peers],
            storage,
            self.transport,
            config=self.config,
            rng=rng,
            joining=joining,
        )
        self.machine = KVMachine(max_sessions=max_sessions)
        self.op_timeout = op_timeout
        self.rsm = ReplicatedStateMachine(
            self.raft, self.machine, max_raft_state=max_raft_state, op_timeout=op_timeout
        )
        self.rsm.snapshot_due = self._reclaim_due
        self.watches = WatchHub(self.machine.history, self.rsm.wait_next_apply)
        self.lease_keeper = LeaseKeeper(self.raft, lambda: self.machine.leases, self._expire)
        self.client_urls = dict(client_urls if client_urls is not None else peers)
        self.url: str | None = None  # the client listener's, known once serving
        self.peer_url: str | None = None  # the peer listener's, known once serving
        self.ready_max_lag = ready_max_lag
        self.metrics = KVMetrics()
        self.registry = new_registry(
            RaftCollector(self.raft),
            KVCollector(self.metrics, self._gauges, self._peer_refusals),
        )

    def storage_bytes(self) -> int:
        """Bytes of Raft state on disk: the log, the hard state and the snapshot."""
        return self.raft.raft_state_size() + self.raft.snapshot_size()

    def _quota_used(self) -> int:
        """What counts against the quota: the data directory, and the writes admitted."""
        return self.storage_bytes() + self._admitted_bytes

    def over_quota(self) -> bool:
        return self._quota_used() > self.quota_bytes

    def _reclaim_due(self) -> bool:
        """Past the quota, with snapshots on: whether deletions since the last such
        snapshot freed 1/64 of the quota. The log (and the snapshot it holds) shrinks
        only at a snapshot, which the log's own growth may not bring soon."""
        kv = self.machine.kv
        if kv.removed_chars < self.quota_bytes // 64 or not self.over_quota():
            return False
        kv.removed_chars = 0
        return True

    def _quota_allows(self) -> Callable[[BatchOp], bool] | None:
        """``None`` under the quota; past it, which ops still run: reads, and ops that only
        remove while the data directory is within :data:`QUOTA_HEADROOM` of it."""
        used = self._quota_used()
        if used <= self.quota_bytes:
            return None
        if used <= self.quota_bytes * (1 + QUOTA_HEADROOM):
            return lambda op: op.op in READ_OPS or frees_space(op)
        return lambda op: op.op in READ_OPS

    def status(self) -> dict[str, Any]:
        """What ``GET /status`` answers."""
        contact = self.raft.leader_contact_age()
        return {
            **asdict(self.raft.statistics()),
            "storage_bytes": self.storage_bytes(),
            "quota_bytes": self.quota_bytes,
            "client_sessions": len(self.machine.sessions),
            "refused_peer_messages": self.peer_auth.refused if self.peer_auth else 0,
            "leader_contact_s": round(contact, 4) if contact != float("inf") else None,
            "ready": readiness(self)[0],
            "voters": list(self.raft.configuration.voters),
            "learners": list(self.raft.configuration.learners),
        }

    def _gauges(self) -> dict[str, tuple[str, float]]:
        return {
            "kv_keys": ("Keys in the store.", len(self.machine.kv)),
            "kv_client_sessions": ("Client sessions remembered.", len(self.machine.sessions)),
            "storage_bytes": ("Bytes of Raft state on disk.", self.storage_bytes()),
            "storage_quota_bytes": ("Past this, writes answer NoSpace.", self.quota_bytes),
        }

    def _peer_refusals(self) -> dict[str, int]:
        return {"unauthenticated_peer": self.peer_auth.refused if self.peer_auth else 0}

    @property
    def id(self) -> str:
        return self.raft.id

    async def execute_many(self, ops: list[BatchOp]) -> list[Any] | None:
        """Run ``ops`` through the log here, in one entry; their replies, or ``None`` if this
        server can't tell within ``op_timeout`` whether they applied. Raises
        :class:`~trioraft.NotLeader` if it refused them before proposing them (they did not
        apply)."""
        logged = [log_op(op) for op in ops]
        admitted, size_bound = json_sizes(ops)
        self._admitted_bytes += admitted
        try:
            results = await self.rsm.submit_many(logged, size_bound=size_bound)
        except NotLeader:
            self.metrics.proposals_failed["not_leader"] += 1
            raise
        except RaftError as exc:
            self.metrics.proposals_failed[_FAILURE.get(type(exc), "leadership_lost")] += 1
            return None
        except EntryTooLarge:
            self.metrics.proposals_failed["too_large"] += 1
            raise
        finally:
            self._admitted_bytes -= admitted
        self.metrics.proposals_applied += 1
        return results

    async def read(
        self, ops: list[BatchOp], started: ReadStart | None = None
    ) -> list[OpResult] | None:
        """Run read-only ops (gets, ranges, lease checks) without the log: the one way reads
        are served. ReadIndex: the leader notes its commit index, confirms with one
        heartbeat round (shared by the reads queued meanwhile) that it still leads, waits
        until it has applied that index, then answers from its state machine. With
        ``RaftConfig.lease_duration`` set, the round is skipped while the leader's lease
        holds (lease reads, under that setting's clock assumption). Their replies,
        or ``None`` as :meth:`execute_many` answers (not the leader, or no answer within
        ``op_timeout``). ``started``: the round :meth:`RaftNode.start_read` started as the
        request arrived, if any."""
        with trio.move_on_after(self.op_timeout):
            try:
                # (The lease is used only where RaftConfig.lease_duration is set.)
                index = await self.raft.read_index(lease=True, started=started)
            except NotLeader:
                return None
            await self.raft.wait_applied(index)
            # No checkpoint from here on: the replies reflect one applied index.
            return self._answer_reads(ops, self.raft.last_applied)
        return None

    def read_stale(self, ops: list[BatchOp]) -> list[OpResult]:
        """Answer gets and ranges from what this node has applied, whatever its role: no
        round trip, but the answer may be behind the leader's (a range says the index it
        reflects). On one node the index never goes back while it runs."""
        return self._answer_reads(ops, self.raft.last_applied)

    def _answer_reads(self, ops: list[BatchOp], applied: int) -> list[OpResult]:
        """Read-only ``ops`` answered from the state machine, which has applied ``applied``.
        A get looks its key up directly: what the machine would answer a logged get,
        without building the logged op and the reply (the hot path of reads)."""
        lookup, machine = self.machine.kv.lookup, self.machine
        results = []
        for op in ops:
            if op.op == "get":
                state = lookup(op.key)
                if state is None:
                    results.append(OpResult(NO_KEY, index=applied))
                else:
                    results.append(OpResult(OK, *state, index=applied))
            else:
                results.append(as_result(machine.apply(log_op(op), applied)))
        return results

    def client_url_of(self, member: str) -> str:
        """Where clients reach ``member`` ("" if unknown): the client URL its configuration
        entry carries (replicated, so every node knows it), else the one this node was
        given at start, else (for this node) its own."""
        url = self.raft.configuration.client_urls.get(member) or self.client_urls.get(member)
        return url or ((self.url or "") if member == self.id else "")

    def leader_hint(self) -> str:
        """The leader's client URL, when this node knows another node leads."""
        leader = self.raft.leader_id
        if leader is None or leader == self.id:
            return ""
        return self.client_url_of(leader)

    async def run_one(
        self, op: BatchOp, started: ReadStart | None = None
    ) -> OpResult | WrongLeaderReply:
        """Run one validated op (as :meth:`run_batch`); its result, or the reply to send
        when that is ``WrongLeader``."""
        (result,), _ = await self.run_batch([op], started)
        if result.err == WRONG_LEADER:
            return WrongLeaderReply(WRONG_LEADER, self.leader_hint())
        return result

    async def handle_get(
        self, args: GetArgs, started: ReadStart | None = None
    ) -> GetReply | WrongLeaderReply:
        check_key(args.key)
        r = await self.run_one(BatchOp("get", args.key), started)
        if isinstance(r, WrongLeaderReply):
            return r
        return GetReply(r.value, r.version, r.err, r.mod_index, r.create_index, r.index)

    async def handle_put(self, args: PutArgs) -> PutReply | WrongLeaderReply:
        check_key(args.key)
        op = BatchOp("put", args.key, args.value, args.version, lease=args.lease)
        r = await self.run_one(op)
        return r if isinstance(r, WrongLeaderReply) else PutReply(r.err)

    async def handle_delete(self, args: DeleteArgs) -> DeleteReply | WrongLeaderReply:
        check_key(args.key)
        r = await self.run_one(BatchOp("delete", args.key, version=args.version))
        return r if isinstance(r, WrongLeaderReply) else DeleteReply(r.err)

    async def handle_range(
        self, args: RangeArgs, started: ReadStart | None = None
    ) -> RangeReply | WrongLeaderReply:
        args.validate()
        r = await self.run_one(BatchOp("range", "", range=args), started)
        return r if isinstance(r, WrongLeaderReply) else range_reply(r)

    async def handle_txn(self, args: TxnArgs) -> TxnReply | WrongLeaderReply:
        args.validate()
        r = await self.run_one(BatchOp("txn", "", txn=args))
        return r if isinstance(r, WrongLeaderReply) else txn_reply(r)

    async def handle_append(self, args: AppendArgs) -> AppendReply | WrongLeaderReply:
        check_key(args.key)
        op = BatchOp("append", args.key, args.value, session=args.session, seq=args.seq)
        r = await self.run_one(op)
        return r if isinstance(r, WrongLeaderReply) else AppendReply(r.err)

    async def handle_open_session(
        self, args: OpenSessionArgs
    ) -> OpenSessionReply | WrongLeaderReply:
        r = await self.run_one(BatchOp("open", "", lease=args.lease))
        return r if isinstance(r, WrongLeaderReply) else OpenSessionReply(r.err, r.value)

    async def handle_lease_grant(self, args: LeaseGrantArgs) -> LeaseReply | WrongLeaderReply:
        args.validate()
        return _lease_reply(await self.run_one(BatchOp("lease_grant", "", ttl=args.ttl)))

    async def handle_lease_keepalive(self, args: LeaseArgs) -> LeaseReply | WrongLeaderReply:
        return _lease_reply(await self.run_one(BatchOp("lease_keepalive", "", lease=args.lease)))

    async def handle_lease_revoke(self, args: LeaseArgs) -> LeaseReply | WrongLeaderReply:
        return _lease_reply(await self.run_one(BatchOp("lease_revoke", "", lease=args.lease)))

    async def _expire(self, leases: list[int]) -> bool:
        """The lease keeper's revocation of expired leases, in one entry; whether it
        applied."""
        try:
            replies = await self.execute_many(
                [BatchOp("lease_revoke", "", lease=n) for n in leases]
            )
        except NotLeader:
            return False
        except EntryTooLarge:  # (a small RaftConfig.max_message_bytes): in halves
            if len(leases) == 1:
                raise
            half = len(leases) // 2
            return await self._expire(leases[:half]) and await self._expire(leases[half:])
        return replies is not None

    def _cut_off(self) -> bool:
        """Whether this node has heard from no leader (or, leading, from no majority) for
        an election timeout: its history may lag the cluster's without end."""
        return self.raft.leader_contact_age() > self.config.election_timeout[1]

    async def handle_watch(self, args: WatchArgs) -> WatchReply:
        """A long poll: the changes after ``after``, waiting up to ``wait`` for one. Any
        node in touch with a leader answers (every replica records the same changes at the
        same indexes); a cut-off one answers ``NoLeader``, so the client asks another."""
        args.validate()
        reply = await self._next_watch_reply(args, args.after, trio.current_time() + args.wait)
        if reply is not None:
            return reply
        try:  # none came: say through which index nothing did
            changes, through = self.machine.history.since(args.prefix, args.after, args.limit)
        except Compacted as exc:
            return WatchReply(COMPACTED, compacted_through=exc.compacted_through)
        return WatchReply(OK, [_change_record(c) for c in changes], through)

    def stream_watch(self, args: WatchArgs) -> AsyncIterator[WatchReply]:
        """``POST /watch_stream``: the long poll's answers as JSON lines, one per batch of
        changes, for ``wait`` seconds (then the stream ends: reconnect with the last
        ``through``); a last line with ``Compacted`` (or ``NoLeader``) ends it early."""
        args.validate()

        async def replies() -> AsyncIterator[WatchReply]:
            after, deadline = args.after, trio.current_time() + args.wait
            while (reply := await self._next_watch_reply(args, after, deadline)) is not None:
                yield reply
                if reply.err != OK:
                    return
                after = reply.through

        return replies()

    async def _next_watch_reply(
        self, args: WatchArgs, after: int, deadline: float
    ) -> WatchReply | None:
        """The next answer to a watch of ``args.prefix`` after ``after``: ``NoLeader`` on a
        cut-off node, else the next changes as this node applies them (waiting until
        ``deadline``), or ``Compacted``; ``None`` if none came by then. (It returns before
        the stream yields: the consumer never runs inside its cancel scope.)"""
        if self._cut_off():
            return WatchReply(NO_LEADER)
        try:
            with trio.move_on_at(deadline):
                changes, through = await self.watches.next_changes(
                    args.prefix, after, limit=args.limit
                )
                return WatchReply(OK, [_change_record(c) for c in changes], through)
        except Compacted as exc:
            return WatchReply(COMPACTED, compacted_through=exc.compacted_through)
        return None

    def watch(
        self, prefix: str, *, after: int
    ) -> AbstractAsyncContextManager[AsyncIterator[Change]]:
        """``async with node.watch(prefix, after=i) as changes: async for change in changes``:
        every change under ``prefix`` after index ``i``, in commit order, as this replica
        applies them. Raises :class:`~trioraft.kv.changes.Compacted` when they are no longer
        all kept."""
        return self.watches.watch(prefix, after=after)

    async def handle_read(self, args: BatchArgs, started: ReadStart | None) -> BatchReply:
        """``/read``: a batch of reads only, whose round started as the request arrived."""
        return await self.handle_batch(args, started, reads_only=True)

    async def handle_batch(
        self, args: BatchArgs, started: ReadStart | None = None, *, reads_only: bool = False
    ) -> BatchReply:
        args.validate(reads_only=reads_only)
        results, refused = await self.run_batch(args.ops, started)
        wrong_leader = bool(results) and results[0].err == WRONG_LEADER
        hint = self.leader_hint() if wrong_leader else ""
        return BatchReply(results, hint, self.raft.last_applied, refused)

    async def run_batch(
        self, ops: list[BatchOp], started: ReadStart | None = None
    ) -> tuple[list[OpResult], bool]:
        """Run validated ``ops`` in one entry: reads always, writes unless over the quota.
        Their results (either every one is ``WrongLeader`` or none is), and whether this
        node refused them all before proposing any, so that none applied. ``started``: a
        read round started for them as their request arrived (:meth:`read`)."""
        allowed = self._quota_allows()
        no_space = allowed is not None
        logged = [op for op in ops if allowed(op)] if allowed is not None else ops
        refused = False
        answered: list[OpResult] | None
        if not logged:
            answered = []
        elif all(op.stale for op in logged):
            answered = self.read_stale(logged)
        elif all(op.op in READ_OPS for op in logged):
            answered = await self.read(logged, started)
            refused = answered is None  # reads change nothing
        else:
            try:
                replies = await self.execute_many(logged)
            except NotLeader:
                replies, refused = None, True
            answered = None if replies is None else [as_result(reply) for reply in replies]
        if answered is None:
            results = [OpResult(WRONG_LEADER)] * len(ops)
        else:
            if allowed is None:
                results = answered
            else:
                answers = iter(answered)
                results = [next(answers) if allowed(op) else OpResult(NO_SPACE) for op in ops]
            if len(ops) > 1 or (ops and ops[0].op == "txn"):
                results = bound_reply(ops, results)
        overdue = [
            i
            for i, (op, result) in enumerate(zip(ops, results, strict=True))
            if op.op == "lease_keepalive"
            and result.err == OK  # confirmed: this node leads and the lease exists
            and not self.lease_keeper.renew(op.lease, result.ttl)
        ]
        if overdue:
            results, refused = await self._settle_overdue(ops, results, overdue, refused)
        counts = self.metrics.ops
        if len(ops) == 1:  # an embedded op: the hot path, kept to one dict update
            key = (ops[0].op, results[0].err)
            counts[key] = counts.get(key, 0) + 1
        else:
            for op, result in zip(ops, results, strict=True):
                self.metrics.count_op(op.op, result.err)
        if no_space:
            self.metrics.refused["quota"] += len(ops) - len(logged)
        return results, refused

    async def _settle_overdue(
        self, ops: list[BatchOp], results: list[OpResult], overdue: list[int], refused: bool
    ) -> tuple[list[OpResult], bool]:
        """The answers of keepalives (at ``overdue`` in ``ops``) confirmed for leases past
        their deadline, never said to live while their revocation may still apply: each
        waits (up to ``op_timeout``, or until this node's leadership ends) for the
        revocation, then answers ``NoLease`` (a read after it finds the keys gone). Should
        a lease still be there, a batch of reads answers ``WrongLeader`` (retried, it gets
        the true answer: any later leader holding the revocation commits it before it
        reads), any other batch ``NoLease``."""
        with trio.move_on_after(self.op_timeout):
            for i in overdue:
                await self.lease_keeper.wait_revoked(ops[i].lease)
        table = self.machine.leases.leases
        if any(ops[i].lease in table for i in overdue) and all(op.op in READ_OPS for op in ops):
            return [OpResult(WRONG_LEADER)] * len(ops), True
        results = list(results)
        for i in overdue:
            results[i] = as_result(LeaseReply(NO_LEASE, ops[i].lease))
        return results, refused

    def routes(self) -> dict[str, Route]:
        return {
            # A read's heartbeat round starts as its request arrives (see Route.on_arrival).
            "get": Route(GetArgs, self.handle_get, on_arrival=self.raft.start_read),
            "put": Route(PutArgs, self.handle_put),
            "delete": Route(DeleteArgs, self.handle_delete),
            "range": Route(RangeArgs, self.handle_range, on_arrival=self.raft.start_read),
            "txn": Route(TxnArgs, self.handle_txn),
            "append": Route(AppendArgs, self.handle_append),
            "open_session": Route(OpenSessionArgs, self.handle_open_session),
            "batch": Route(BatchArgs, self.handle_batch),
            "read": Route(BatchArgs, self.handle_read, on_arrival=self.raft.start_read),
            "lease_grant": Route(LeaseGrantArgs, self.handle_lease_grant),
            "lease_keepalive": Route(LeaseArgs, self.handle_lease_keepalive),
            "lease_revoke": Route(LeaseArgs, self.handle_lease_revoke),
            "watch": Route(WatchArgs, self.handle_watch, long_poll=True),
            "member_list": Route(MemberListArgs, self.handle_member_list),
            "member_add": Route(MemberAddArgs, self.handle_member_add),
            "member_promote": Route(MemberArgs, self.handle_member_promote),
            "member_remove": Route(MemberArgs, self.handle_member_remove),
            "transfer_leader": Route(TransferLeaderArgs, self.handle_transfer_leader),
        }

    def membership(self, configuration: Configuration | None = None) -> MembershipReply:
        """The OK reply of the membership routes: ``configuration`` (by default the latest
        this node knows), the leader's id, and on the leader each peer's match index."""
        conf = configuration or self.raft.configuration
        leader = self.raft.leader_id
        match = self.raft.match_indexes()
        return MembershipReply(
            OK,
            leader or "",
            list(conf.voters),
            list(conf.learners),
            {m: conf.addresses[m] for m in conf.members if m in conf.addresses},
            match,
            self.raft.commit_index,
            {m: url for m in conf.members if (url := self.client_url_of(m))},
        )

    def _wrong_leader(self) -> MembershipReply:
        return MembershipReply(WRONG_LEADER, self.leader_hint())

    async def handle_member_list(self, args: MemberListArgs) -> MembershipReply:
        return self.membership()

    async def _change(self, **change: Any) -> MembershipReply:
        """Make one membership change here (see the module docstring for the replies)."""
        if not self.raft.is_leader:
            return self._wrong_leader()
        try:
            configuration = await self.raft.change_membership(**change)
        except (MembershipChangeRefused, TransferAbandoned) as exc:
            raise BadRequest(str(exc), 409) from None
        except (NotLeader, LeadershipLost):
            return self._wrong_leader()
        return self.membership(configuration)

    async def handle_member_add(self, args: MemberAddArgs) -> MembershipReply:
        args.validate()
        conf = self.raft.configuration
        if args.id in conf.members:
            if (
                args.id in conf.learners
                and conf.addresses.get(args.id) == args.peer_url
                and conf.client_urls.get(args.id, "") == args.client_url
            ):
                return self.membership() if self.raft.is_leader else self._wrong_leader()
            raise BadRequest(f"body.id: {args.id!r} is a member already")
        return await self._change(add_learner=(args.id, args.peer_url), client_url=args.client_url)

    async def handle_member_promote(self, args: MemberArgs) -> MembershipReply:
        args.validate()
        if args.id in self.raft.configuration.voters:
            return self.membership() if self.raft.is_leader else self._wrong_leader()
        return await self._change(promote=args.id)

    async def handle_member_remove(self, args: MemberArgs) -> MembershipReply:
        args.validate()
        if args.id not in self.raft.configuration.members:
            return self.membership() if self.raft.is_leader else self._wrong_leader()
        # Removing the leader: it hands over first and answers WrongLeader naming the new
        # leader, which removes it when the client retries there (RaftNode.change_membership).
        return await self._change(remove=args.id)

    async def handle_transfer_leader(self, args: TransferLeaderArgs) -> MembershipReply:
        args.validate()
        if not self.raft.is_leader:
            return self._wrong_leader()
        if args.to == self.id:
            return self.membership()
        try:
            await self.raft.transfer_leadership(args.to or None)
        except TransferAbandoned as exc:
            raise BadRequest(str(exc), 409) from None
        except NotLeader:
            return self._wrong_leader()
        with trio.move_on_after(self.op_timeout):
            await self.raft.wait_until(lambda n: n.leader_id not in (None, self.id))
        return self.membership()

    @asynccontextmanager
    async def open_client(self, *, client_id: str | None = None) -> AsyncIterator[EmbeddedClient]:
        """A KV client for this process's own application (see :class:`EmbeddedClient`)."""
        urls = [*self.client_urls.values(), *([self.url] if self.url else [])]
        if any(not url.startswith(("http://", "https://")) for url in urls):
            raise ValueError("the embedded client needs the other servers' HTTP client_urls")
        async with open_coalescing_client(
            urls, client_id=client_id, token=self.client_token, tls=self.peer_tls
        ) as remote:
            yield EmbeddedClient(self, remote)

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        peer_host: str | None = None,
        peer_port: int = 0,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the node and serve clients on ``host:port`` and peers on
        ``peer_host:peer_port`` (default: ``host``, any free port) until cancelled (a crash).
        ``task_status`` gets the client URL; :attr:`peer_url` is set too.

        Raises :class:`~trioraft.StorageFailed` if a write or fsync failed (fail-stop)."""
        app = make_app(
            self.routes(),
            name=f"trioraft-node-{self.id}",
            max_body_bytes=self.max_request_bytes,
            status=self.status,
            client_token=self.client_token,
            get_routes=operator_pages(self),
            stream_routes={"watch_stream": StreamRoute(WatchArgs, self.stream_watch)},
        )
        count_refusals(app, self.metrics)
        log_context.set(self.log_fields)  # for the tasks below: see trioraft._logging
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.rsm.run)
                nursery.start_soon(self.lease_keeper.run)
                self.peer_url = await nursery.start(
                    partial(
                        serve_node,
                        self.raft,
                        host if peer_host is None else peer_host,
                        peer_port,
                        transport="tcp" if self.peers_over_tcp else "http",
                        peer_auth=self.peer_auth,
                        tls=self.tls,
                        max_body_bytes=self.config.max_message_bytes,
                    )
                )
                self.url = await nursery.start(
                    partial(
                        serve,
                        app,
                        host,
                        port,
                        tls=self.tls,
                        max_connections_per_address=self.max_connections_per_address,
                    )
                )
                task_status.started(self.url)
        finally:
            with trio.CancelScope(shield=True):
                if isinstance(self.transport, HttpTransport | TcpTransport):
                    await self.transport.aclose()
            if isinstance(self.storage, FileStorage):
                self.storage.close()

    def log_fields(self) -> dict[str, object]:
        """Who logs, for structured logs: this node's id, term and role."""
        return {"node": self.id, "term": self.raft.term, "role": self.raft.role.value}


#: The proposal outcome each RaftError stands for (see KVMetrics).
_FAILURE = {
    NotLeader: "not_leader",
    LeadershipLost: "leadership_lost",
    ProposalTimedOut: "timed_out",
}


class EmbeddedClient(OpsClient):
    """The KV client of an application that embeds ``node``: while the node leads, ops go
    straight into its log, in-process (concurrent callers share entries); otherwise they go
    to the leader through ``remote``. The contract is :class:`~trioraft.KVClient`'s, plus
    ``append``, which is exactly-once for the appends of one task at a time per client.
    """

    def __init__(self, node: KVNode, remote: OpsClient) -> None:
        super().__init__(remote.client_id)
        self.node = node
        self.remote = remote

    async def poll_watch(self, request: WatchArgs) -> WatchReply:
        return await self.node.handle_watch(request)  # this replica's history serves it

    async def run(self, op: BatchOp) -> tuple[OpResult, str]:
        if op.stale:  # this replica answers
            (result,), _ = await self.node.run_batch([op])
            return result, ""
        failures = 0  # attempts here whose op may have applied
        backoff = Backoff()
        seen_before = self.node.rsm.applied_index
        while self.node.raft.is_leader:
            (result,), refused = await self.node.run_batch([op])
            if result.err != WRONG_LEADER:
                return result, f"{failures} WrongLeader here" if failures else ""
            failures += not refused
            if failures:  # a retry of an attempt that may have applied (see Servers.call)
                (op,) = as_retries([op], seen_before)
            await backoff.wait()
        result, why = await self.remote.run(op)
        if failures:
            why = f"{failures} WrongLeader here, {why}" if why else f"{failures} WrongLeader here"
        return result, why


#: Where :func:`free_ports` looks: below Linux's ephemeral range (32768-60999 by default),
#: whose ports the kernel hands to outgoing connections.
_LOCAL_PORTS = (10_000, 32_768)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` ports free right now, for local clusters only: another process could bind one
    before the cluster does. They are drawn below the ephemeral range, so that no outgoing
    connection is given one meanwhile (a node restarted on its port would find it taken)."""
    low, high = _LOCAL_PORTS
    try:  # the kernel's own range, if it starts lower than usual
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            high = min(high, int(f.read().split()[0]))
    except (OSError, ValueError, IndexError):
        pass
    draw = random.Random(secrets.randbits(64))  # where to look; nothing replays it
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < n:
            sock = socket.socket()
            try:
                sock.bind((host, draw.randrange(low, high) if high > low else 0))
            except OSError:
                sock.close()  # taken: draw another
                continue
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


async def run_local_cluster(
    n: int,
    data_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    base_port: int = 0,
    max_raft_state: int = -1,
    config: RaftConfig | None = None,
    cluster_secret: bytes | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``n`` KV servers in this process (ids "1".."n"), each restarting from its folder
    under ``data_dir``, until cancelled. Clients use ports ``base_port .. base_port+n-1``,
    peers the ``n`` ports after them (free ports when ``base_port`` is 0). The peers share
    ``cluster_secret`` (a new random one by default). ``task_status`` gets the client URLs."""
    ports = list(range(base_port, base_port + 2 * n)) if base_port else free_ports(2 * n, host)
    secret = cluster_secret if cluster_secret is not None else secrets.token_bytes(32)
    ids = [str(k + 1) for k in range(n)]
    urls = {i: f"http://{host}:{port}" for i, port in zip(ids, ports[:n], strict=True)}
    # Peers over framed TCP: a fraction of HTTP's CPU per message (benchmarks/RESULTS.md).
    peer_urls = {i: f"tcp://{host}:{port}" for i, port in zip(ids, ports[n:], strict=True)}
    async with trio.open_nursery() as nursery:
        for k, i in enumerate(ids):
            node = KVNode(
                i,
                {j: url for j, url in peer_urls.items() if j != i},
                Path(data_dir) / f"node-{i}",
                client_urls={j: url for j, url in urls.items() if j != i},
                cluster_secret=secret,
                max_raft_state=max_raft_state,
                config=config,
            )
            await nursery.start(partial(node.serve, host, ports[k], peer_port=ports[n + k]))
        task_status.started(list(urls.values()))


def _change_record(change: Change) -> ChangeRecord:
    return ChangeRecord(
        change.index, change.key, change.kind, change.value, change.version, change.create_index
    )


def _lease_reply(r: OpResult | WrongLeaderReply) -> LeaseReply | WrongLeaderReply:
    return r if isinstance(r, WrongLeaderReply) else LeaseReply(r.err, r.lease, r.ttl)
