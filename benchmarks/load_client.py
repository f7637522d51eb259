"""A load-generating process: one coalescing client shared by ``--concurrency`` tasks.

    python benchmarks/load_client.py --urls URL,URL,URL --concurrency 256 --seconds 5 \
        --value-bytes 16 --prefix run1 [--op put|get]

Puts write fresh keys ``PREFIX-K`` at version 0; gets read ``PREFIX-(K mod 1000)``. Prints
one JSON summary (throughput, latency percentiles, this process's CPU, requests sent).
"""

from __future__ import annotations

import argparse
import json

import trio
from _load import closed_loop, kv_op

from trioraft.kv.coalescing import open_coalescing_client


async def main(args: argparse.Namespace) -> None:
    async with open_coalescing_client(args.urls.split(","), rpc_timeout=5.0) as kv:
        op = kv_op(kv, args.op, args.prefix, args.value_bytes)
        summary = await closed_loop(op, args.concurrency, args.seconds)
        summary["requests"] = kv.requests
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--urls", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--value-bytes", type=int, default=16)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--op", choices=["put", "get"], default="put")
    trio.run(main, parser.parse_args())
