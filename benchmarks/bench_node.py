"""One trioraft KV server for the benchmark suite: ``trioraft node`` plus one extra route.

    python benchmarks/bench_node.py --id 1 --listen 127.0.0.1:9001 --peer-port 9101
        --peer 2=PEER_URL ... --client-url 2=CLIENT_URL ... --data-dir D --secret-hex HEX

Peer URLs ``tcp://HOST:PORT`` put the peers on framed TCP, ``http://`` on HTTP.

``POST /bench_embedded {"concurrency", "rate", "seconds", "value_bytes", "prefix", "op"}``
runs an embedded load in this process (the application's own tasks writing through
``KVNode.open_client``, no HTTP hop while this node leads) and answers its summary. With
``rate > 0`` the load is an open loop at that rate, otherwise a closed loop. The process
adopts ``trioraft.tune_gc`` as ``trioraft node`` does.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from functools import partial

import trio
from _load import closed_loop, kv_op, open_loop

from trioraft import tune_gc
from trioraft.cli import parse_host_port, parse_member_url, stop_on_signal
from trioraft.kv.node import KVNode
from trioraft.rpc.http import Route


@dataclass(frozen=True)
class EmbeddedLoad:
    concurrency: int
    seconds: float
    value_bytes: int
    prefix: str
    rate: float = 0.0
    op: str = "put"


@dataclass(frozen=True)
class LoadReport:
    summary: str  # JSON


class BenchNode(KVNode):
    async def handle_bench_embedded(self, args: EmbeddedLoad) -> LoadReport:
        async with self.open_client(client_id=f"bench-{args.prefix}") as kv:
            op = kv_op(kv, args.op, args.prefix, args.value_bytes)
            if args.rate > 0:
                summary = await open_loop(op, args.rate, args.seconds)
            else:
                summary = await closed_loop(op, args.concurrency, args.seconds)
        summary["leader_at_end"] = self.raft.is_leader
        return LoadReport(json.dumps(summary))

    def routes(self) -> dict[str, Route]:
        bench = Route(EmbeddedLoad, self.handle_bench_embedded)
        return {**super().routes(), "bench_embedded": bench}


async def main(args: argparse.Namespace) -> None:
    host, port = args.listen
    node = BenchNode(
        args.id,
        dict(args.peer),
        args.data_dir,
        client_urls=dict(args.client_url) or None,
        cluster_secret=bytes.fromhex(args.secret_hex),
        # Every load generator here connects from 127.0.0.1: the rows with 256 clients
        # would meet the bound of one address (256 connections) and lose connections.
        max_connections_per_address=None,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signal, nursery.cancel_scope)
        url = await nursery.start(partial(node.serve, host, port, peer_port=args.peer_port))
        print(f"bench node {args.id} listening on {url}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--id", required=True)
    parser.add_argument("--listen", type=parse_host_port, required=True)
    parser.add_argument(
        "--peer", type=parse_member_url(("http", "https", "tcp")), action="append", default=[]
    )
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--peer-port", type=int, required=True)
    parser.add_argument("--secret-hex", required=True, help="the cluster secret, in hex")
    parser.add_argument(
        "--client-url", type=parse_member_url(("http", "https")), action="append", default=[]
    )
    options = parser.parse_args()
    tune_gc()
    trio.run(main, options)
