"""The ``trioraft`` command line.

    trioraft node --id I --listen HOST:PORT --peer J=URL [--peer ...] --data-dir DIR
                  [--max-raft-state N]         one server of a replicated KV cluster
                  [--peer-port P --client-url J=URL ...]
                                               peers over framed TCP (peer URLs tcp://H:P)
    trioraft cluster --nodes N [--data-dir DIR] [--base-port P]
                                               a local N-server cluster in one process
    trioraft kvserver --listen HOST:PORT       the single-server KV
    trioraft get KEY --servers URL[,URL...]    print {"key", "value", "version"}
    trioraft put KEY VALUE --version N --servers URL[,URL...]
    trioraft append KEY VALUE --servers URL[,URL...]
    trioraft lock NAME --servers URL[,URL...] -- CMD...   run CMD holding the lock NAME

Servers stop cleanly on SIGTERM or SIGINT; a node restarts from its data directory. Exit
status: 0 on success, 1 when a put is rejected or the system refuses (the error is
printed), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from functools import partial

import trio

from ._errors import KVError
from ._gc import tune_gc
from .kv.clients import ClusterClient
from .kv.lock import Lock
from .kv.node import KVNode, run_local_cluster
from .kv.server import KVServer
from .rpc.http import serve


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parse_peer(text: str) -> tuple[str, str]:
    peer_id, sep, url = text.partition("=")
    if not sep or not peer_id or not url.startswith(("http://", "https://", "tcp://")):
        raise argparse.ArgumentTypeError(f"expected ID=URL, got {text!r}")
    return peer_id, url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trioraft", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    node = commands.add_parser("node", help="run one server of a replicated KV cluster")
    node.add_argument("--id", required=True)
    node.add_argument("--listen", type=parse_host_port, required=True)
    node.add_argument("--peer", type=parse_peer, action="append", default=[])
    node.add_argument("--data-dir", required=True)
    node.add_argument("--max-raft-state", type=int, default=-1)
    node.add_argument("--peer-port", type=int, default=None, help="serve peers over TCP here")
    node.add_argument("--client-url", type=parse_peer, action="append", default=[])

    cluster = commands.add_parser("cluster", help="run a local cluster in one process")
    cluster.add_argument("--nodes", type=int, default=3)
    cluster.add_argument("--data-dir", default=None, help="default: a temporary directory")
    cluster.add_argument("--base-port", type=int, default=0, help="default: free ports")
    cluster.add_argument("--max-raft-state", type=int, default=-1)

    kvserver = commands.add_parser("kvserver", help="run the single-server KV")
    kvserver.add_argument("--listen", type=parse_host_port, default=("127.0.0.1", 8000))
    kvserver.add_argument("--max-body-bytes", type=int, default=1 << 20)

    def client_command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("--servers", required=True, help="comma-separated server URLs")
        return sub

    get = client_command("get", "read a key")
    get.add_argument("key")
    put = client_command("put", "write a key at a version")
    put.add_argument("key")
    put.add_argument("value")
    put.add_argument("--version", type=int, required=True, help="the version it must be at")
    append = client_command("append", "append to a key's value (replicated KV)")
    append.add_argument("key")
    append.add_argument("value")
    lock = client_command("lock", "run a command while holding a lock")
    lock.add_argument("name")
    return parser


async def stop_on_signal(scope: trio.CancelScope) -> None:
    """Cancel ``scope`` at the first SIGTERM or SIGINT: the process then exits cleanly."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


async def run_kvserver(host: str, port: int, max_body_bytes: int) -> None:
    server = KVServer(max_body_bytes=max_body_bytes)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signal, nursery.cancel_scope)
        url = await nursery.start(serve, server.app(), host, port)
        print(f"trioraft kvserver listening on {url}", flush=True)


async def run_node(args: argparse.Namespace) -> None:
    host, port = args.listen
    node = KVNode(
        args.id,
        dict(args.peer),
        args.data_dir,
        max_raft_state=args.max_raft_state,
        client_urls=dict(args.client_url) or None,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signal, nursery.cancel_scope)
        url = await nursery.start(partial(node.serve, host, port, peer_port=args.peer_port))
        print(f"trioraft node {args.id} listening on {url}", flush=True)


async def run_cluster(args: argparse.Namespace, data_dir: str) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signal, nursery.cancel_scope)
        urls = await nursery.start(
            lambda task_status: run_local_cluster(
                args.nodes,
                data_dir,
                base_port=args.base_port,
                max_raft_state=args.max_raft_state,
                task_status=task_status,
            )
        )
        print(f"trioraft cluster of {args.nodes} in {data_dir}: {','.join(urls)}", flush=True)


async def run_client(args: argparse.Namespace, cmd: list[str]) -> int:
    async with ClusterClient(args.servers.split(",")) as kv:
        if args.command == "get":
            value, version = await kv.get(args.key)
            print(json.dumps({"key": args.key, "value": value, "version": version}))
            return 0
        if args.command == "put":
            try:
                await kv.put(args.key, args.value, args.version)
            except KVError as exc:
                print(json.dumps({"key": args.key, "err": exc.wire}))
                return 1
            print(json.dumps({"key": args.key, "err": "OK", "version": args.version + 1}))
            return 0
        if args.command == "append":
            await kv.append(args.key, args.value)
            print(json.dumps({"key": args.key, "err": "OK"}))
            return 0
        async with Lock(kv, args.name):
            return await trio.to_thread.run_sync(lambda: subprocess.call(cmd))


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    cmd = words[words.index("--") + 1 :] if "--" in words else []
    parser = build_parser()
    args = parser.parse_args(words[: len(words) - len(cmd) - (1 if "--" in words else 0)])
    if args.command == "lock" and not cmd:
        parser.error("trioraft lock: give the command to run after --")
    if args.command in ("kvserver", "node", "cluster"):
        tune_gc()  # this process serves: see trioraft/_gc.py
    try:
        if args.command == "kvserver":
            trio.run(run_kvserver, *args.listen, args.max_body_bytes)
        elif args.command == "node":
            trio.run(run_node, args)
        elif args.command == "cluster":
            if args.data_dir is None:
                with tempfile.TemporaryDirectory(prefix="trioraft-") as data_dir:
                    trio.run(run_cluster, args, data_dir)
            else:
                trio.run(run_cluster, args, args.data_dir)
        else:
            return trio.run(run_client, args, cmd)
        return 0
    except (OSError, ExceptionGroup) as exc:
        error = find_os_error(exc)
        if error is None:
            raise
        print(f"trioraft {args.command}: {error}", file=sys.stderr)
        return 1


def find_os_error(exc: BaseException) -> OSError | None:
    """The OSError inside ``exc`` (Trio wraps task errors in exception groups), if any."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := find_os_error(inner)) is not None:
                return found
    return None


if __name__ == "__main__":
    sys.exit(main())
