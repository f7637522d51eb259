"""The operator's pages of a KV node's client listener: metrics, health, readiness, backup.

    GET /metrics   Prometheus text: the node's trioraft_* metrics and the process's
    GET /healthz   200 while the node runs; 503 once it has stopped (a failed disk)
    GET /readyz    200 if a leader reached this node within its election timeout (a
                   leader: if a majority answered it within one) and it has applied
                   within ``ready_max_lag`` entries of its commit index; else 503. Both
                   answer JSON with the reason.
    GET /backup    the leader's backup file (see :mod:`trioraft.kv.backup`); 503 with
                   ``{"error", "leader"}`` on any other node, and while another backup
                   is being made or sent. It exposes every key, so it requires the client
                   token when the node has one.

Invariants:
- A backup holds every write acknowledged before the request came: the leader first puts
  a barrier op through the log and waits until it is applied (everything acknowledged
  before is in an earlier entry), then copies the machine at the index applied, with no
  checkpoint between reading the index and copying. The copy is serialized and hashed in
  a worker thread, so a large state does not stall the node.
- A node holds at most one backup at a time: its state, serialized once, is streamed to
  the client in pieces (no second copy), and another backup is refused until that
  serialization is gone (sent, dropped with its connection, or cut once its client has
  taken longer than ``BACKUP_MIN_SECONDS`` or ``BACKUP_MIN_BYTES_PER_S`` allow). So
  backups cost at most one serialized state of memory however many clients ask (a copy
  of the machine lives only until it is serialized).
- None of these pages changes the node's state (the barrier is a read).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import trio
from quart import Response, request

from .._errors import RaftError
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..metrics import exposition
from ..rpc.http import GetRoute, bytes_response, json_response
from .backup import CONTENT_TYPE, backup_pieces

if TYPE_CHECKING:
    from .node import KVNode

#: Entries a node may have committed but not applied and still be ready.
DEFAULT_READY_MAX_LAG = 1000

#: The barrier op a backup puts through the log: a get, which changes nothing.
_BARRIER = {"op": "get", "key": ""}

#: A backup's reply leaves in pieces of at most this many bytes.
_PIECE_BYTES = 1 << 20
#: A backup's client takes it at this rate at least, or in this many seconds: past that
#: its reply is cut (the file does not verify; the client tries again), so that a reader
#: slow enough to pass the send timeout cannot hold the node's one backup for good.
BACKUP_MIN_BYTES_PER_S = 1 << 20
BACKUP_MIN_SECONDS = 60.0


def readiness(node: KVNode) -> tuple[bool, dict[str, Any]]:
    """Whether ``node`` is ready for traffic, and why (see the module docstring)."""
    raft = node.raft
    about: dict[str, Any] = {"id": raft.id, "role": raft.role.value, "term": raft.term}
    if raft.failure is not None:
        return False, {**about, "reason": f"the node stopped: {raft.failure}"}
    age = raft.leader_contact_age()
    timeout = raft.config.election_timeout[1]
    if age > timeout:
        if raft.is_leader:
            why = f"a majority last answered this leader {age:.2f} s ago"
        elif math.isinf(age):
            why = "no leader known"
        else:
            why = f"the leader ({raft.leader_id}) last reached this node {age:.2f} s ago"
        return False, {**about, "reason": f"{why} (election timeout {timeout} s)"}
    lag = raft.commit_index - raft.last_applied
    if lag > node.ready_max_lag:
        return False, {
            **about,
            "reason": f"applied index {raft.last_applied} lags the commit index "
            f"{raft.commit_index} by {lag} entries (at most {node.ready_max_lag})",
        }
    return True, {**about, "leader": raft.leader_id}


class _Backup:
    """One backup's pieces while it is made and sent. A node's pages keep a weak reference
    to it: it is under way while that is alive and ``over`` is not set (set as its stream
    ends, however it ends; a stream never started is freed with its reply)."""

    __slots__ = ("__weakref__", "over", "pieces")

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.over = False

    def under_way(self) -> bool:
        return not self.over


async def backup_pieces_of(node: KVNode) -> list[bytes] | None:
    """The pieces of a backup of ``node``'s state with every write acknowledged so far, or
    ``None`` if it is not the leader (or could not tell whether its barrier committed)."""
    if not node.raft.is_leader:
        return None
    try:
        await node.rsm.submit_many([_BARRIER])
    except RaftError:
        return None
    index = node.rsm.applied_index
    term = node.raft.log.term_at(index) or 0
    copy = node.machine.copy()
    node.metrics.backups += 1
    return await trio.to_thread.run_sync(
        lambda: backup_pieces(index, term, node.id, list(copy.snapshot_pieces()))
    )


async def _stream(backup: _Backup) -> AsyncIterator[bytes]:
    """``backup``'s pieces, cut to ``_PIECE_BYTES``; its memory is let go as it ends."""
    try:
        for piece in backup.pieces:
            for start in range(0, len(piece), _PIECE_BYTES):
                yield piece[start : start + _PIECE_BYTES]
    finally:
        backup.pieces, backup.over = [], True


def operator_pages(node: KVNode) -> dict[str, GetRoute]:
    """The ``GET`` pages above, for ``make_app(get_routes=...)``."""
    under_way: weakref.ref[_Backup] | None = None

    async def metrics() -> Response:
        return bytes_response(exposition(node.registry), METRICS_CONTENT_TYPE)

    async def healthz() -> Response:
        if node.raft.failure is not None:
            return json_response({"healthy": False, "reason": str(node.raft.failure)}, 503)
        return json_response({"healthy": True})

    async def readyz() -> Response:
        ready, about = readiness(node)
        return json_response({"ready": ready, **about}, 200 if ready else 503)

    async def backup() -> Response:
        nonlocal under_way
        if request.method == "HEAD":  # (Quart would make a whole backup to drop it)
            return json_response({"error": "GET /backup only"}, 405)
        if under_way is not None and (last := under_way()) is not None and last.under_way():
            error = "another backup is being made or sent: retry once it is done"
            return json_response({"error": error, "leader": node.raft.leader_id}, 503)
        made = _Backup()
        under_way = weakref.ref(made)  # before any wait: the check above sees it
        try:
            pieces = await backup_pieces_of(node)
        finally:
            made.over = True  # cancelled or refused: no backup under way
        if pieces is None:
            return json_response({"error": "not the leader", "leader": node.raft.leader_id}, 503)
        made.pieces, made.over = pieces, False
        length = sum(map(len, pieces))
        headers = {"Content-Length": str(length)}
        response = Response(_stream(made), 200, headers, content_type=CONTENT_TYPE)
        response.timeout = max(BACKUP_MIN_SECONDS, length / BACKUP_MIN_BYTES_PER_S)
        return response

    return {
        "metrics": GetRoute(metrics),
        "healthz": GetRoute(healthz),
        "readyz": GetRoute(readyz),
        "backup": GetRoute(backup, private=True),
    }
