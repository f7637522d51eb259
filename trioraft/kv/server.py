"""The single-server KV service: a :class:`VersionedKV` behind ``/get``, ``/put``, ``/delete``,
``/range``, ``/txn`` and ``/batch``.

It speaks the replicated KV's protocol but for sessions, appends, leases and watches, and
stands in for the log index with a counter of its own: each request (a whole batch included)
is applied at the next number, so ``mod_index`` and ``create_index`` grow as they do on a
cluster.
``GET /status`` describes it; ``GET /metrics`` (Prometheus: ops by kind and result, refused
requests by reason, keys, the process's collectors), ``GET /healthz`` and ``GET /readyz``
(200 while it serves) are there for operators, as on a replicated node.
"""

from __future__ import annotations

from quart import Response
from quart_trio import QuartTrio

from .._errors import BadRequest
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..metrics import exposition, new_registry
from ..rpc.http import GetRoute, Route, bytes_response, json_response, make_app
from .machine import KVMachine
from .messages import (
    BatchArgs,
    BatchOp,
    BatchReply,
    DeleteArgs,
    DeleteReply,
    GetArgs,
    GetReply,
    OpResult,
    PutArgs,
    PutReply,
    RangeArgs,
    RangeReply,
    TxnArgs,
    TxnReply,
    as_result,
    bound_reply,
    check_key,
    log_op,
    range_reply,
    txn_reply,
)
from .metrics import KVCollector, KVMetrics, count_refusals

#: What the single server does not offer: appends and the sessions they need, and leases
#: (nothing would expire them).
_REPLICATED_ONLY = ("append", "open", "lease_grant", "lease_keepalive", "lease_revoke")


class KVServer:
    """The single-server KV service (see the module docstring)."""

    def __init__(self, *, max_body_bytes: int = 1 << 20) -> None:
        self.machine = KVMachine(keep_changes=False)  # no watch history to fill
        self.state = self.machine.kv
        self.index = 0  # the last request's number: what a log index is on a cluster
        self.max_body_bytes = max_body_bytes
        self.metrics = KVMetrics()
        self.registry = new_registry(KVCollector(self.metrics, self._gauges, replicated=False))

    def _gauges(self) -> dict[str, tuple[str, float]]:
        return {"kv_keys": ("Keys in the store.", len(self.state))}

    def run_batch(self, ops: list[BatchOp]) -> list[OpResult]:
        """Apply validated ``ops``, in order, at the next index."""
        self.index += 1
        answers = [as_result(self.machine.apply(log_op(op), self.index)) for op in ops]
        results = bound_reply(ops, answers)
        for op, result in zip(ops, results, strict=True):
            self.metrics.count_op(op.op, result.err)
        return results

    async def handle_get(self, args: GetArgs) -> GetReply:
        check_key(args.key)
        (r,) = self.run_batch([BatchOp("get", args.key)])
        return GetReply(r.value, r.version, r.err, r.mod_index, r.create_index, r.index)

    async def handle_put(self, args: PutArgs) -> PutReply:
        check_key(args.key)
        (r,) = self.run_batch(
            [BatchOp("put", args.key, args.value, args.version, lease=args.lease)]
        )
        return PutReply(r.err)

    async def handle_delete(self, args: DeleteArgs) -> DeleteReply:
        check_key(args.key)
        (r,) = self.run_batch([BatchOp("delete", args.key, version=args.version)])
        return DeleteReply(r.err)

    async def handle_range(self, args: RangeArgs) -> RangeReply:
        args.validate()
        (r,) = self.run_batch([BatchOp("range", "", range=args)])
        return range_reply(r)

    async def handle_txn(self, args: TxnArgs) -> TxnReply:
        args.validate()
        (r,) = self.run_batch([BatchOp("txn", "", txn=args)])
        return txn_reply(r)

    async def handle_batch(self, args: BatchArgs, *, reads_only: bool = False) -> BatchReply:
        args.validate(reads_only=reads_only)
        for i, op in enumerate(args.ops):
            if op.op in _REPLICATED_ONLY:
                raise BadRequest(f"ops[{i}].op: the single-server KV has no {op.op}")
        return BatchReply(self.run_batch(args.ops), index=self.index)

    async def handle_read(self, args: BatchArgs) -> BatchReply:
        return await self.handle_batch(args, reads_only=True)

    def routes(self) -> dict[str, Route]:
        return {
            "get": Route(GetArgs, self.handle_get),
            "put": Route(PutArgs, self.handle_put),
            "delete": Route(DeleteArgs, self.handle_delete),
            "range": Route(RangeArgs, self.handle_range),
            "txn": Route(TxnArgs, self.handle_txn),
            "batch": Route(BatchArgs, self.handle_batch),
            "read": Route(BatchArgs, self.handle_read),
        }

    def pages(self) -> dict[str, GetRoute]:
        async def metrics() -> Response:
            return bytes_response(exposition(self.registry), METRICS_CONTENT_TYPE)

        async def serving() -> Response:
            return json_response({"healthy": True, "ready": True})

        return {
            "metrics": GetRoute(metrics),
            "healthz": GetRoute(serving),
            "readyz": GetRoute(serving),
        }

    def app(self) -> QuartTrio:
        app = make_app(
            self.routes(),
            name="trioraft-kvserver",
            max_body_bytes=self.max_body_bytes,
            status=lambda: {"role": "kvserver", "keys": len(self.state)},
            get_routes=self.pages(),
        )
        count_refusals(app, self.metrics)
        return app
