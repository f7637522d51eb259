"""The ``trioraft`` command line.

    trioraft node --id I --listen HOST:PORT --peer-listen HOST:PORT --data-dir DIR
                  --peer J=PEER_URL ... --client-url J=CLIENT_URL ...
                  --cluster-token-file FILE | --insecure
                  [--tls-cert F --tls-key F [--tls-ca F]] [--client-token-file F]
                  [--max-request-bytes N] [--quota-bytes N] [--max-raft-state N]
                  [--log-level LEVEL]              one server of a replicated KV cluster
    trioraft cluster --nodes N [--data-dir DIR] [--base-port P]
                                               a local N-server cluster in one process
    trioraft kvserver --listen HOST:PORT       the single-server KV
    trioraft get KEY --servers URL[,URL...]    print {"key", "value", "version"}
    trioraft put KEY VALUE --version N --servers URL[,URL...]
    trioraft append KEY VALUE --servers URL[,URL...]
    trioraft lock NAME --servers URL[,URL...] -- CMD...   run CMD holding the lock NAME

Client commands also take ``--token-file F`` (the client token), ``--cacert F`` (the CA
bundle that verifies the servers) and ``--cert F --key F`` (a client certificate).

Servers stop cleanly on SIGTERM or SIGINT; a node restarts from its data directory. Exit
status: 0 on success, 1 when a put is rejected, the system refuses, or a node's storage is
corrupt or fails (one line on stderr says which file and what to do), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from functools import partial

import trio

from ._errors import BadRequest, KVError, StorageCorrupt, StorageFailed
from ._gc import tune_gc
from .kv.clients import ClusterClient
from .kv.lock import Lock
from .kv.node import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_QUOTA_BYTES,
    KVNode,
    run_local_cluster,
)
from .kv.server import KVServer
from .rpc.http import serve
from .rpc.tls import ClientTls, ServerTls


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
    node.add_argument("--listen", type=parse_host_port, required=True, help="for clients")
    node.add_argument("--peer-listen", type=parse_host_port, required=True, help="for peers")
    node.add_argument("--peer", type=parse_peer, action="append", default=[])
    node.add_argument("--client-url", type=parse_peer, action="append", default=[])
    node.add_argument("--data-dir", required=True)
    secret = node.add_mutually_exclusive_group(required=True)
    secret.add_argument("--cluster-token-file", help="the cluster secret peers prove")
    secret.add_argument("--insecure", action="store_true", help="no peer authentication")
    node.add_argument("--tls-cert", help="certificate of both listeners (PEM)")
    node.add_argument("--tls-key", help="its private key (PEM)")
    node.add_argument("--tls-ca", help="CA bundle: verify peers, and require their certs")
    node.add_argument("--client-token-file", help="require this bearer token of clients")
    node.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    node.add_argument("--quota-bytes", type=int, default=DEFAULT_QUOTA_BYTES)
    node.add_argument("--max-raft-state", type=int, default=-1)
    add_log_level(node)

    cluster = commands.add_parser("cluster", help="run a local cluster in one process")
    cluster.add_argument("--nodes", type=int, default=3)
    cluster.add_argument("--data-dir", default=None, help="default: a temporary directory")
    cluster.add_argument("--base-port", type=int, default=0, help="default: free ports")
    cluster.add_argument("--max-raft-state", type=int, default=-1)
    add_log_level(cluster)

    kvserver = commands.add_parser("kvserver", help="run the single-server KV")
    kvserver.add_argument("--listen", type=parse_host_port, default=("127.0.0.1", 8000))
    kvserver.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    add_log_level(kvserver)

    def client_command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("--servers", required=True, help="comma-separated server URLs")
        sub.add_argument("--token-file", help="the client token the servers require")
        sub.add_argument("--cacert", dest="ca_file", help="CA bundle that verifies the servers")
        sub.add_argument("--cert", dest="cert_file", help="client certificate (PEM)")
        sub.add_argument("--key", dest="key_file", help="its private key (PEM)")
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


def add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error", "critical"],
        help="of the trioraft logger, on stderr (default: info)",
    )


def read_secret(path: str, what: str) -> bytes:
    """The secret in ``path`` (surrounding whitespace stripped); at least 16 bytes."""
    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as exc:
        raise SystemExit(f"trioraft: cannot read the {what} file: {exc}") from None
    if len(secret) < 16:
        raise SystemExit(f"trioraft: the {what} in {path} must be at least 16 bytes")
    return secret


def client_tls(args: argparse.Namespace) -> ClientTls | None:
    if args.ca_file is None and args.cert_file is None:
        return None
    return ClientTls(ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file)


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


def build_node(args: argparse.Namespace) -> KVNode:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("trioraft node: --tls-cert and --tls-key go together")
    tls = peer_tls = None
    if args.tls_cert is not None:
        tls = ServerTls(args.tls_cert, args.tls_key, args.tls_ca)
        peer_tls = ClientTls(ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key)
    secret = None
    if args.cluster_token_file is not None:
        secret = read_secret(args.cluster_token_file, "cluster token")
    token = None
    if args.client_token_file is not None:
        token = read_secret(args.client_token_file, "client token").decode()
    return KVNode(
        args.id,
        dict(args.peer),
        args.data_dir,
        client_urls=dict(args.client_url) or None,
        cluster_secret=secret,
        insecure=args.insecure,
        tls=tls,
        peer_tls=peer_tls,
        client_token=token,
        max_request_bytes=args.max_request_bytes,
        quota_bytes=args.quota_bytes,
        max_raft_state=args.max_raft_state,
    )


async def run_node(args: argparse.Namespace) -> None:
    host, port = args.listen
    peer_host, peer_port = args.peer_listen
    node = build_node(args)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signal, nursery.cancel_scope)
        url = await nursery.start(
            partial(node.serve, host, port, peer_host=peer_host, peer_port=peer_port)
        )
        print(f"trioraft node {args.id} listening on {url} (peers: {node.peer_url})", flush=True)


async def run_cluster(args: argparse.Namespace, data_dir: str) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signal, nursery.cancel_scope)
        urls = await nursery.start(
            lambda task_status: run_local_cluster(
                args.nodes,
                data_dir,
                base_port=args.base_port,
                max_raft_state=args.max_raft_state,
                cluster_secret=secrets.token_bytes(32),
                task_status=task_status,
            )
        )
        print(f"trioraft cluster of {args.nodes} in {data_dir}: {','.join(urls)}", flush=True)


async def run_client(args: argparse.Namespace, cmd: list[str]) -> int:
    token = None if args.token_file is None else read_secret(args.token_file, "token").decode()
    async with ClusterClient(args.servers.split(","), token=token, tls=client_tls(args)) as kv:
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
            try:
                await kv.append(args.key, args.value)
            except KVError as exc:
                print(json.dumps({"key": args.key, "err": exc.wire}))
                return 1
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
    if hasattr(args, "log_level"):
        logging.basicConfig(
            level=args.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    try:
        if args.command == "kvserver":
            trio.run(run_kvserver, *args.listen, args.max_request_bytes)
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
    except (OSError, StorageCorrupt, StorageFailed, BadRequest, ExceptionGroup) as exc:
        error = find_fatal_error(exc)
        if error is None:
            raise
        if isinstance(error, StorageCorrupt):
            print(f"trioraft {args.command}: storage corrupt: {error}", file=sys.stderr)
        else:
            print(f"trioraft {args.command}: {error}", file=sys.stderr)
        return 1


#: Errors that end a command with one line on stderr and exit status 1, no traceback.
_FATAL = (StorageCorrupt, StorageFailed, BadRequest, OSError)


def find_fatal_error(exc: BaseException) -> BaseException | None:
    """The error inside ``exc`` (Trio wraps task errors in exception groups) that explains
    the failure to an operator, if any; storage errors first."""
    if isinstance(exc, _FATAL):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        found = [e for inner in exc.exceptions if (e := find_fatal_error(inner)) is not None]
        found.sort(key=lambda e: not isinstance(e, StorageCorrupt | StorageFailed))
        return found[0] if found else None
    return None


if __name__ == "__main__":
    sys.exit(main())
