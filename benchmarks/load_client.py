"""A load-generating process: one client shared by ``--concurrency`` tasks.

    python benchmarks/load_client.py --urls URL,URL,URL --concurrency 256 --seconds 5 \
        --value-bytes 16 --prefix run1 [--op put|get|stale-get|log-get]
        [--client coalescing|cluster|echo]
        [--serve]

With ``--serve`` the process opens its client once and then runs one load per line of
stdin (``{"prefix": P, "seconds": S}``), printing each summary on a line of its own.

``--client coalescing`` (the default) shares one coalescing client; ``cluster`` one
``ClusterClient`` (one op per request); ``echo`` a bare ``httpx.AsyncClient`` posting a put's
body to ``/echo`` of the first URL (the floor of a Python HTTP client on this stack). Puts
write fresh keys ``PREFIX-K`` at version 0; gets read ``PREFIX-(K mod 1000)``. Prints one
JSON summary (throughput, latency percentiles, this process's CPU, requests sent).
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import AsyncExitStack

import httpx
import trio
from _load import Op, closed_loop, kv_op

from trioraft.kv.clients import ClusterClient
from trioraft.kv.coalescing import open_coalescing_client
from trioraft.kv.messages import TxnOp


class EchoClient:
    """A put or get as an ``httpx`` POST of its JSON body to the echo endpoint."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = f"{url}/echo"

    async def put(self, key: str, value: str, version: int) -> None:
        body = {"key": key, "value": value, "version": version}
        (await self.client.post(self.url, json=body)).raise_for_status()

    async def get(self, key: str) -> None:
        (await self.client.post(self.url, json={"key": key})).raise_for_status()


async def main(args: argparse.Namespace) -> None:
    urls = args.urls.split(",")
    async with AsyncExitStack() as stack:
        if args.client == "coalescing":
            kv = await stack.enter_async_context(open_coalescing_client(urls, rpc_timeout=5.0))
        elif args.client == "cluster":
            kv = await stack.enter_async_context(ClusterClient(urls, rpc_timeout=5.0))
        else:
            http = await stack.enter_async_context(httpx.AsyncClient(timeout=5.0))
            kv = EchoClient(http, urls[0])
        if not args.serve:
            print(json.dumps(await run(kv, args, args.prefix, args.seconds)), flush=True)
            return
        while line := await trio.to_thread.run_sync(sys.stdin.readline):
            command = json.loads(line)
            summary = await run(kv, args, command["prefix"], command["seconds"])
            print(json.dumps(summary), flush=True)


def read_op(kv: object, kind: str, prefix: str) -> Op:
    """Reads of ``PREFIX-(K mod 1000)`` other than the plain get: ``stale-get`` (from what
    the server asked has applied) and ``log-get`` (a txn whose only op is the get: it goes
    through the log as a write does, as every read did before ReadIndex)."""

    async def stale_get(k: int) -> None:
        await kv.get(f"{prefix}-{k % 1000}", stale=True)  # type: ignore[attr-defined]

    async def log_get(k: int) -> None:
        await kv.txn([], [TxnOp("get", f"{prefix}-{k % 1000}")])  # type: ignore[attr-defined]

    return stale_get if kind == "stale-get" else log_get


async def run(kv: object, args: argparse.Namespace, prefix: str, seconds: float) -> dict:
    requests = getattr(kv, "requests", 0)
    if args.op in ("stale-get", "log-get"):
        op = read_op(kv, args.op, prefix)
    else:
        op = kv_op(kv, args.op, prefix, args.value_bytes)
    summary = await closed_loop(op, args.concurrency, seconds)
    summary["requests"] = getattr(kv, "requests", requests + summary["ops"]) - requests
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--urls", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--value-bytes", type=int, default=16)
    parser.add_argument("--prefix", default="load")
    parser.add_argument(
        "--serve", action="store_true", help="a load per stdin line {prefix, seconds}"
    )
    parser.add_argument("--op", choices=["put", "get", "stale-get", "log-get"], default="put")
    parser.add_argument("--client", choices=["coalescing", "cluster", "echo"], default="coalescing")
    trio.run(main, parser.parse_args())
