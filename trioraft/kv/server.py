"""The single-server KV service: a :class:`VersionedKV` behind ``/get``, ``/put`` and ``/batch``.

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
from .machine import VersionedKV
from .messages import (
    BatchArgs,
    BatchReply,
    GetArgs,
    GetReply,
    PutArgs,
    PutReply,
    as_result,
    check_key,
)
from .metrics import KVCollector, KVMetrics, count_refusals


class KVServer:
    """The single-server KV service: a :class:`VersionedKV` behind ``/get`` and ``/put``."""

    def __init__(self, *, max_body_bytes: int = 1 << 20) -> None:
        self.state = VersionedKV()
        self.max_body_bytes = max_body_bytes
        self.metrics = KVMetrics()
        self.registry = new_registry(KVCollector(self.metrics, self._gauges, replicated=False))

    def _gauges(self) -> dict[str, tuple[str, float]]:
        return {"kv_keys": ("Keys in the store.", len(self.state))}

    async def handle_get(self, args: GetArgs) -> GetReply:
        check_key(args.key)
        reply = self.state.get(args.key)
        self.metrics.count_op("get", reply.err)
        return reply

    async def handle_put(self, args: PutArgs) -> PutReply:
        check_key(args.key)
        reply = self.state.put(args.key, args.value, args.version)
        self.metrics.count_op("put", reply.err)
        return reply

    async def handle_batch(self, args: BatchArgs) -> BatchReply:
        args.validate()
        for i, op in enumerate(args.ops):
            if op.op not in ("get", "put"):
                raise BadRequest(f"ops[{i}].op: the single-server KV has no {op.op}")
        results = [
            as_result(self.state.get(op.key))
            if op.op == "get"
            else as_result(self.state.put(op.key, op.value, op.version))
            for op in args.ops
        ]
        for op, result in zip(args.ops, results, strict=True):
            self.metrics.count_op(op.op, result.err)
        return BatchReply(results)

    def routes(self) -> dict[str, Route]:
        return {
            "get": Route(GetArgs, self.handle_get),
            "put": Route(PutArgs, self.handle_put),
            "batch": Route(BatchArgs, self.handle_batch),
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
