"""The single-server KV service: a :class:`VersionedKV` behind ``/get``, ``/put`` and ``/batch``."""

from __future__ import annotations

from quart_trio import QuartTrio

from .._errors import BadRequest
from ..rpc.http import Route, make_app
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


class KVServer:
    """The single-server KV service: a :class:`VersionedKV` behind ``/get`` and ``/put``."""

    def __init__(self, *, max_body_bytes: int = 1 << 20) -> None:
        self.state = VersionedKV()
        self.max_body_bytes = max_body_bytes

    async def handle_get(self, args: GetArgs) -> GetReply:
        check_key(args.key)
        return self.state.get(args.key)

    async def handle_put(self, args: PutArgs) -> PutReply:
        check_key(args.key)
        return self.state.put(args.key, args.value, args.version)

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
        return BatchReply(results)

    def routes(self) -> dict[str, Route]:
        return {
            "get": Route(GetArgs, self.handle_get),
            "put": Route(PutArgs, self.handle_put),
            "batch": Route(BatchArgs, self.handle_batch),
        }

    def app(self) -> QuartTrio:
        return make_app(
            self.routes(),
            name="trioraft-kvserver",
            max_body_bytes=self.max_body_bytes,
            status=lambda: {"role": "kvserver", "keys": len(self.state)},
        )
