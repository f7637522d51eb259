"""The ``trioraft`` command line.

    trioraft node --id I --listen HOST:PORT --peer-listen HOST:PORT --data-dir DIR
                  --peer J=PEER_URL ... --client-url J=CLIENT_URL ...
                  --cluster-token-file FILE | --insecure
                  [--tls-cert F --tls-key F [--tls-ca F]] [--client-token-file F]
                  [--max-request-bytes N] [--quota-bytes N] [--max-raft-state N]
                  [--lease-reads SECONDS] [--max-learners N] [--join]
                  [--log-level LEVEL] [--log-format text|json]
                                               one server of a replicated KV cluster
    trioraft cluster --nodes N [--data-dir DIR] [--base-port P]
                                               a local N-server cluster in one process
    trioraft kvserver --listen HOST:PORT       the single-server KV
    trioraft get KEY --servers URL[,URL...]    print {"key", "value", "version", "mod_index",
                                               "create_index"}
    trioraft put KEY VALUE --version N --servers URL[,URL...]
    trioraft delete KEY --version N --servers URL[,URL...]
    trioraft range [PREFIX] [--start S] [--end E] [--limit N] --servers URL[,URL...]
                                               print one page: {"index", "items", "more", "next"}
    trioraft txn JSON --servers URL[,URL...]   JSON: {"compare", "success", "failure"} as
                                               POST /txn takes it; print the outcome
    trioraft append KEY VALUE --servers URL[,URL...]
    trioraft watch [PREFIX] [--after I] --servers URL[,URL...]
                                               print each change after index I, as JSON lines
    trioraft lease grant TTL | keepalive ID | revoke ID --servers URL[,URL...]
    trioraft lock NAME [--ttl S] --servers URL[,URL...] -- CMD...
                                               run CMD holding the lock NAME (under a lease
                                               of S seconds: CMD stops if the lock is lost)
    trioraft status --servers URL[,URL...] [--watch [--interval S]] [--json]
                                               one table of the cluster
    trioraft backup FILE --servers URL[,URL...] [--patience S]
                                               a consistent backup, from the leader
    trioraft member list --servers URL[,URL...]
                                               print {"voters", "learners", "addresses",
                                               "leader"}
    trioraft member add ID --peer-url URL [--client-url URL] [--learner] --servers URL[,...]
                                               add a learner; without --learner, wait until
                                               it has caught up, then promote it
    trioraft member promote ID | remove ID --servers URL[,URL...]
                                               (removing the leader hands over first)
    trioraft transfer-leader [--to ID] --servers URL[,URL...]
    trioraft restore FILE --data-dir DIR --id I
                                               seed a new cluster's node from a backup
    trioraft inspect DATA_DIR [--dump] [--json]
                                               check a data directory, read-only

Client commands (and ``status``, ``backup``) also take ``--token-file F`` (the client
token), ``--cacert F`` (the CA bundle that verifies the servers) and ``--cert F --key F`` (a
client certificate).

Servers stop cleanly on SIGTERM or SIGINT; a node restarts from its data directory. Exit
status: 0 on success, 1 when a put or delete is rejected or a txn's compares fail (it then
ran its failure branch), the system refuses, a backup cannot be
taken or restored, a server does not answer ``status``, or a node's storage is corrupt or
fails (one line on stderr says which file and what to do), 2 on bad usage; ``inspect``
exits 0 when everything verifies, 1 on corruption, 3 on a torn log tail (which a starting
node cuts).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from functools import partial

import trio

from ._errors import (
    BadRequest,
    DataDirectoryConflict,
    KVError,
    StorageCorrupt,
    StorageFailed,
)
from ._gc import tune_gc
from ._logging import JsonFormatter, log_context
from .kv.admin import AdminClient, open_admin_client
from .kv.backup import BackupInfo, BadBackup, RestoreRefused, download_backup, restore
from .kv.changes import Compacted
from .kv.clients import ClusterClient
from .kv.lease_lock import LockLost, lease_lock
from .kv.lock import Lock
from .kv.machine import KVMachine
from .kv.messages import (
    DEFAULT_RANGE_LIMIT,
    MembershipReply,
    TxnArgs,
    check_member_id,
    check_member_url,
)
from .kv.node import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_QUOTA_BYTES,
    KVNode,
    run_local_cluster,
)
from .kv.server import KVServer
from .kv.status import fetch_statuses, render_table
from .raft.config import RaftConfig
from .raft.inspect import Inspection, inspect_data_dir
from .rpc.codec import decode, encode
from .rpc.http import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    header_safe,
    serve,
)
from .rpc.tls import ClientTls, ServerTls


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parse_member_url(schemes: tuple[str, ...]) -> Callable[[str], tuple[str, str]]:
    """The parser of ``ID=URL``: a member id and where it is reached (a URL of one of
    ``schemes``), checked as the membership routes check them."""

    def parse(text: str) -> tuple[str, str]:
        member, sep, url = text.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected ID=URL, got {text!r}")
        try:
            check_member_id(member, "ID")
            check_member_url(url, "URL", schemes)
        except BadRequest as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc.message}") from None
        return member, url

    return parse


def parse_member_id(text: str) -> str:
    try:
        check_member_id(text, "the id")
    except BadRequest as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trioraft", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    node = commands.add_parser("node", help="run one server of a replicated KV cluster")
    node.add_argument("--id", type=parse_member_id, required=True)
    node.add_argument("--listen", type=parse_host_port, required=True, help="for clients")
    node.add_argument("--peer-listen", type=parse_host_port, required=True, help="for peers")
    node.add_argument(
        "--peer", type=parse_member_url(("http", "https", "tcp")), action="append", default=[]
    )
    node.add_argument(
        "--client-url", type=parse_member_url(("http", "https")), action="append", default=[]
    )
    node.add_argument("--data-dir", required=True)
    secret = node.add_mutually_exclusive_group(required=True)
    secret.add_argument("--cluster-token-file", help="the cluster secret peers prove")
    secret.add_argument("--insecure", action="store_true", help="no peer authentication")
    node.add_argument("--tls-cert", help="certificate of both listeners (PEM)")
    node.add_argument("--tls-key", help="its private key (PEM)")
    node.add_argument("--tls-ca", help="CA bundle: verify peers, and require their certs")
    node.add_argument("--client-token-file", help="require this bearer token of clients")
    node.add_argument("--max-request-bytes", type=positive_int, default=DEFAULT_MAX_REQUEST_BYTES)
    add_connections_per_address(node)
    node.add_argument("--quota-bytes", type=positive_int, default=DEFAULT_QUOTA_BYTES)
    node.add_argument("--max-raft-state", type=int, default=-1)
    node.add_argument(
        "--heartbeat-interval",
        type=positive_int,
        default=100,
        metavar="MS",
        help="how often the leader sends to an idle follower (default 100 ms)",
    )
    node.add_argument(
        "--election-timeout",
        type=positive_int,
        default=300,
        metavar="MS",
        help="a follower that hears no leader for a time drawn from MS..2*MS campaigns "
        "(default 300 ms; above the heartbeat interval; the same on every member)",
    )
    node.add_argument(
        "--lease-reads",
        type=float,
        metavar="SECONDS",
        help="serve reads without a heartbeat round for this long after a majority answered "
        "the leader (below the shortest election timeout; assumes the members' clocks "
        "run at rates within that margin)",
    )
    node.add_argument(
        "--max-learners",
        type=non_negative_int,
        default=1,
        help="the most learners the cluster holds at once (as etcd's default: 1)",
    )
    node.add_argument(
        "--join",
        action="store_true",
        help="join a running cluster: start (empty data dir) knowing no configuration; "
        "`trioraft member add` adds it",
    )
    add_log_level(node)

    cluster = commands.add_parser("cluster", help="run a local cluster in one process")
    cluster.add_argument("--nodes", type=positive_int, default=3)
    cluster.add_argument("--data-dir", default=None, help="default: a temporary directory")
    cluster.add_argument("--base-port", type=int, default=0, help="default: free ports")
    cluster.add_argument("--max-raft-state", type=int, default=-1)
    add_log_level(cluster)

    kvserver = commands.add_parser("kvserver", help="run the single-server KV")
    kvserver.add_argument("--listen", type=parse_host_port, default=("127.0.0.1", 8000))
    kvserver.add_argument(
        "--max-request-bytes", type=positive_int, default=DEFAULT_MAX_REQUEST_BYTES
    )
    add_connections_per_address(kvserver)
    add_log_level(kvserver)

    def client_command(
        name: str, help: str, under: argparse._SubParsersAction | None = None
    ) -> argparse.ArgumentParser:
        sub = (under or commands).add_parser(name, help=help)
        sub.add_argument("--servers", required=True, help="comma-separated server URLs")
        sub.add_argument("--token-file", help="the client token the servers require")
        sub.add_argument("--cacert", dest="ca_file", help="CA bundle that verifies the servers")
        sub.add_argument("--cert", dest="cert_file", help="client certificate (PEM)")
        sub.add_argument("--key", dest="key_file", help="its private key (PEM)")
        sub.add_argument(
            "--timeout",
            type=positive_float,
            default=DEFAULT_CLIENT_TIMEOUT,
            help=f"give up after this many seconds (default {DEFAULT_CLIENT_TIMEOUT:g}; "
            "not for lock, which waits its turn, nor watch)",
        )
        return sub

    get = client_command("get", "read a key")
    get.add_argument("key")
    get.add_argument(
        "--stale", action="store_true", help="as the first server has applied it (may be behind)"
    )
    put = client_command("put", "write a key at a version")
    put.add_argument("key")
    put.add_argument("value")
    put.add_argument("--version", type=int, required=True, help="the version it must be at")
    put.add_argument("--lease", type=positive_int, default=0, help="under this lease (its id)")
    delete = client_command("delete", "delete a key at a version")
    delete.add_argument("key")
    delete.add_argument("--version", type=int, required=True, help="the version it must be at")
    range_ = client_command("range", "list keys in order, with their values (one page)")
    range_.add_argument("prefix", nargs="?", default="", help="only keys under it")
    range_.add_argument("--start", default="", help="from this key on (a page's next)")
    range_.add_argument("--end", default="", help="before this key")
    range_.add_argument(
        "--limit", type=positive_int, default=DEFAULT_RANGE_LIMIT, help="keys in the page"
    )
    txn = client_command("txn", "compare keys, then run one branch of ops, atomically")
    txn.add_argument("request", type=parse_txn, help='{"compare", "success", "failure"}')
    append = client_command("append", "append to a key's value (replicated KV)")
    append.add_argument("key")
    append.add_argument("value")
    watch = client_command("watch", "print each change under a prefix, as JSON lines")
    watch.add_argument("prefix", nargs="?", default="")
    watch.add_argument("--after", type=int, default=0, help="changes after this index")
    lease = client_command("lease", "grant, keep alive (once) or revoke a lease")
    lease.add_argument("action", choices=["grant", "keepalive", "revoke"])
    lease.add_argument("value", type=positive_int, help="grant: the TTL in seconds; else the id")
    lock = client_command("lock", "run a command while holding a lock")
    lock.add_argument("name")
    lock.add_argument(
        "--ttl",
        type=positive_int,
        help="hold it under a lease of this many seconds (replicated KV): the lock is freed "
        "that long after this process dies, and CMD is stopped if the lock is lost",
    )

    status = client_command("status", "one table of the cluster, from every server")
    status.add_argument("--watch", action="store_true", help="refresh it in place")
    status.add_argument("--interval", type=float, default=1.0, help="seconds (default 1)")
    status.add_argument("--json", action="store_true", help="JSON, for scripts")
    backup = client_command("backup", "save a consistent backup, from the leader")
    backup.add_argument("file")
    backup.add_argument(
        "--patience", type=float, default=30.0, help="seconds to find a leader (default 30)"
    )
    member = commands.add_parser("member", help="list or change the cluster's members")
    member_actions = member.add_subparsers(dest="member_action", required=True)
    client_command("list", "voters, learners, peer addresses and the leader", member_actions)
    member_add = client_command(
        "add", "add a member: a learner that catches up, then a voter", member_actions
    )
    member_add.add_argument("id")
    member_add.add_argument("--peer-url", required=True, help="where its peers reach it")
    member_add.add_argument("--client-url", default="", help="where clients reach it")
    member_add.add_argument("--learner", action="store_true", help="add it as a learner only")
    for action, what in (("promote", "make a caught-up learner a voter"),
                         ("remove", "remove a member (the leader hands over first)")):  # fmt: skip
        client_command(action, what, member_actions).add_argument("id")
    transfer = client_command("transfer-leader", "hand leadership to another voter")
    transfer.add_argument("--to", default="", help="this voter (default: the most up to date)")
    restore_ = commands.add_parser("restore", help="seed a new cluster's node from a backup")
    restore_.add_argument("file")
    restore_.add_argument("--data-dir", required=True, help="absent or empty")
    restore_.add_argument(
        "--id", type=parse_member_id, required=True, help="the id the node will run with"
    )
    inspect = commands.add_parser("inspect", help="check a data directory (read-only)")
    inspect.add_argument("data_dir")
    inspect.add_argument("--dump", action="store_true", help="print every log entry")
    inspect.add_argument("--json", action="store_true", help="JSON, for scripts")
    return parser


#: Client commands (but lock and watch) give up after this many seconds without an answer.
DEFAULT_CLIENT_TIMEOUT = 10.0


def parse_txn(text: str) -> TxnArgs:
    """A ``txn`` request as ``POST /txn`` takes it, checked as a server would."""
    try:
        request = decode(TxnArgs, json.loads(text))
        request.validate("txn")
    except (ValueError, RecursionError, BadRequest) as exc:
        message = exc.message if isinstance(exc, BadRequest) else f"not JSON: {exc}"
        raise argparse.ArgumentTypeError(message) from None
    return request


#: The largest integer any flag takes (the wire's, a 64-bit signed integer).
MAX_FLAG_INT = 2**63 - 1


def positive_int(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_FLAG_INT:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def non_negative_int(text: str) -> int:
    if not text.isdigit() or int(text) > MAX_FLAG_INT:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(text)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_connections_per_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-connections-per-address",
        type=positive_int,
        default=DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
        metavar="N",
        help="client connections one address may hold at once; its next ones are closed "
        f"(default {DEFAULT_MAX_CONNECTIONS_PER_ADDRESS}, of the listener's "
        f"{DEFAULT_MAX_CONNECTIONS}; raise it behind a proxy)",
    )


def add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error", "critical"],
        help="of the trioraft logger, on stderr (default: info)",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text lines, or one JSON object a line with node id, term and role (default: text)",
    )


def configure_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])


#: The longest secret a token file may hold (a file that never ends, /dev/zero say, is
#: refused after this much, not read into memory for good).
MAX_SECRET_BYTES = 4096


def read_secret(path: str, what: str) -> bytes:
    """The secret in ``path`` (surrounding whitespace stripped); 16 to MAX_SECRET_BYTES bytes."""
    try:
        with open(path, "rb") as f:
            raw = f.read(2 * MAX_SECRET_BYTES)  # room for whitespace around the secret
    except OSError as exc:
        raise SystemExit(f"trioraft: cannot read the {what} file: {exc}") from None
    secret = raw.strip()
    if len(secret) > MAX_SECRET_BYTES or len(raw) == 2 * MAX_SECRET_BYTES:
        raise SystemExit(f"trioraft: the {what} in {path} must be at most {MAX_SECRET_BYTES} bytes")
    if len(secret) < 16:
        raise SystemExit(f"trioraft: the {what} in {path} must be at least 16 bytes")
    return secret


def read_token(path: str, what: str) -> str:
    """A secret sent in an HTTP header (``Authorization: Bearer``)."""
    token = read_secret(path, what).decode("ascii", errors="replace")
    if not header_safe(token):
        raise SystemExit(f"trioraft: the {what} in {path} must be printable ASCII without spaces")
    return token


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


async def run_kvserver(
    host: str, port: int, max_body_bytes: int, max_connections_per_address: int
) -> None:
    server = KVServer(max_body_bytes=max_body_bytes)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signal, nursery.cancel_scope)
        url = await nursery.start(
            partial(
                serve,
                server.app(),
                host,
                port,
                max_connections_per_address=max_connections_per_address,
            )
        )
        print(f"trioraft kvserver listening on {url}", flush=True)


def build_node(args: argparse.Namespace) -> KVNode:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("trioraft node: --tls-cert and --tls-key go together")
    for flag, pairs in (("--peer", args.peer), ("--client-url", args.client_url)):
        ids = [peer_id for peer_id, _ in pairs]
        if args.id in ids:
            raise SystemExit(f"trioraft node: {flag} {args.id}=... names this node itself")
        if len(set(ids)) != len(ids):
            raise SystemExit(f"trioraft node: {flag} names a node twice")
    if len({url.split("://")[0] for _, url in args.peer}) > 1:
        raise SystemExit("trioraft node: the --peer URLs mix transports (all http(s) or all tcp)")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key),
                       ("--tls-ca", args.tls_ca)):  # fmt: skip
        if path is not None and not os.access(path, os.R_OK):
            raise SystemExit(f"trioraft node: {flag} {path}: cannot read the file")
    tls = peer_tls = None
    if args.tls_cert is not None:
        tls = ServerTls(args.tls_cert, args.tls_key, args.tls_ca)
        peer_tls = ClientTls(ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key)
    secret = None
    if args.cluster_token_file is not None:
        secret = read_secret(args.cluster_token_file, "cluster token")
    token = None
    if args.client_token_file is not None:
        token = read_token(args.client_token_file, "client token")
    shortest = args.election_timeout / 1000
    if args.heartbeat_interval / 1000 >= shortest:
        raise SystemExit(
            f"trioraft node: --heartbeat-interval {args.heartbeat_interval} must be below "
            f"--election-timeout {args.election_timeout}"
        )
    try:
        config = RaftConfig(
            election_timeout=(shortest, 2 * shortest),
            heartbeat_interval=args.heartbeat_interval / 1000,
            lease_duration=args.lease_reads,
            max_learners=args.max_learners,
        )
    except ValueError as exc:  # the others are checked above, or as they are parsed
        raise SystemExit(f"trioraft node: --lease-reads: {exc}") from None
    return KVNode(
        args.id,
        dict(args.peer),
        args.data_dir,
        config=config,
        client_urls=dict(args.client_url) or None,
        cluster_secret=secret,
        insecure=args.insecure,
        tls=tls,
        peer_tls=peer_tls,
        client_token=token,
        max_request_bytes=args.max_request_bytes,
        max_connections_per_address=args.max_connections_per_address,
        quota_bytes=args.quota_bytes,
        max_raft_state=args.max_raft_state,
        joining=args.join,
    )


async def run_admin(args: argparse.Namespace) -> int:
    """``member ...`` and ``transfer-leader``: print the configuration after it, as JSON."""
    token = None if args.token_file is None else read_token(args.token_file, "token")
    name = (
        "transfer-leader" if args.command == "transfer-leader" else f"member {args.member_action}"
    )
    try:
        opened = open_admin_client(args.servers.split(","), token=token, tls=client_tls(args))
        async with opened as admin:
            with trio.move_on_after(args.timeout):
                reply = await admin_step(admin, args)
                print(json.dumps(membership_json(reply)))
                return 0
    except ValueError as exc:  # a server URL that is none
        print(f"trioraft {name}: {exc}", file=sys.stderr)
        return 2
    except BadRequest as exc:
        print(f"trioraft {name}: refused ({exc.status}): {exc.message}", file=sys.stderr)
        return 1
    print(f"trioraft {name}: no answer from {args.servers} in {args.timeout:g} s", file=sys.stderr)
    return 1


async def admin_step(admin: AdminClient, args: argparse.Namespace) -> MembershipReply:
    if args.command == "transfer-leader":
        return await admin.transfer_leader(args.to)
    action = args.member_action
    if action == "list":
        return await admin.member_list()
    if action == "promote":
        return await admin.member_promote(args.id)
    if action == "remove":
        return await admin.member_remove(args.id)
    reply = await admin.member_add(args.id, args.peer_url, args.client_url)
    if args.learner:
        return reply
    await admin.wait_caught_up(args.id)
    return await admin.member_promote(args.id)


def membership_json(reply: MembershipReply) -> dict[str, object]:
    return {
        "voters": reply.voters,
        "learners": reply.learners,
        "addresses": reply.addresses,
        "client_urls": reply.client_urls,
        "leader": reply.leader,
    }


async def run_node(args: argparse.Namespace) -> None:
    host, port = args.listen
    peer_host, peer_port = args.peer_listen
    log_context.set(lambda: {"node": args.id})  # until the node runs, and then its own
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


async def run_status(args: argparse.Namespace) -> int:
    urls = args.servers.split(",")
    while True:
        rows = await fetch_statuses(urls, tls=client_tls(args))
        if args.json:
            print(json.dumps(rows, indent=None if args.watch else 2), flush=True)
        elif args.watch:
            print(f"\x1b[H\x1b[J{render_table(rows)}", flush=True)  # home, clear, redraw
        else:
            print(render_table(rows))
        if not args.watch:
            return 1 if any("error" in row for row in rows) else 0
        await trio.sleep(args.interval)


async def run_backup(args: argparse.Namespace) -> int:
    token = None if args.token_file is None else read_token(args.token_file, "token")
    bar = ProgressBar() if sys.stderr.isatty() else None
    info = await download_backup(
        args.servers.split(","),
        args.file,
        token=token,
        tls=client_tls(args),
        patience=args.patience,
        progress=bar,
    )
    if bar is not None:
        bar.done()
    print(json.dumps({"file": args.file, **backup_summary(info)}))
    return 0


def backup_summary(info: BackupInfo) -> dict[str, object]:
    return {
        "index": info.index,
        "term": info.term,
        "node": info.node,
        "data_bytes": info.data_bytes,
        "sha256": info.sha256,
    }


class ProgressBar:
    """A one-line progress bar on stderr (a terminal's), redrawn as bytes arrive."""

    WIDTH = 30

    def __call__(self, done: int, total: int | None) -> None:
        if total:
            filled = self.WIDTH * done // total
            bar = "#" * filled + "." * (self.WIDTH - filled)
            line = f"[{bar}] {100 * done // total:3d}% {done:,}/{total:,} bytes"
        else:
            line = f"{done:,} bytes"
        sys.stderr.write(f"\r{line}")
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\n")


async def run_restore(args: argparse.Namespace) -> int:
    info = await restore(args.file, args.data_dir)
    summary = {"data_dir": args.data_dir, "id": args.id, **backup_summary(info)}
    print(json.dumps(summary))
    print(
        f"restored: start node {args.id} with --data-dir {args.data_dir} and the new "
        "cluster's --peer and --client-url flags (every member restored from the same file)",
        file=sys.stderr,
    )
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    report = inspect_data_dir(args.data_dir, check_snapshot=KVMachine.check_snapshot)
    if args.json:
        print(json.dumps(inspection_json(report, args.dump), indent=2))
    else:
        print(inspection_text(report))
        if args.dump:
            for index, entry in report.entries:
                print(json.dumps({"index": index, "term": entry.term, "command": entry.command}))
    for problem in report.problems:
        print(f"trioraft inspect: storage corrupt: {problem}", file=sys.stderr)
    return report.exit_status


def inspection_json(report: Inspection, dump: bool) -> dict[str, object]:
    hard, snap, log = report.hard_state, report.snapshot, report.log
    out: dict[str, object] = {
        "data_dir": report.directory,
        "verdict": report.verdict,
        "problems": report.problems,
        "hard_state": None if hard is None else {"term": hard.term, "voted_for": hard.voted_for},
        "snapshot": None
        if snap is None
        else {"index": snap.index, "term": snap.term, "bytes": len(snap.data)},
        "log": None if log is None else vars(log),
        "temporary_files": report.temporary_files,
    }
    if dump:
        out["entries"] = [
            {"index": index, "term": entry.term, "command": entry.command}
            for index, entry in report.entries
        ]
    return out


def inspection_text(report: Inspection) -> str:
    hard, snap, log = report.hard_state, report.snapshot, report.log
    lines = [("data directory", report.directory)]
    if hard is not None:
        lines.append(("hard state", f"term {hard.term}, voted for {hard.voted_for or '-'}"))
    if snap is not None:
        checked = ", restores" if report.snapshot_checked else ""
        lines.append(
            (
                "snapshot",
                f"index {snap.index}, term {snap.term}, {len(snap.data):,} bytes "
                f"(checksum ok{checked})",
            )
        )
    elif not report.problems or hard is not None:
        lines.append(("snapshot", "none"))
    if log is not None:
        if log.records:
            what = (
                f"entries {log.first_index}..{log.last_index} ({log.records:,}), "
                f"terms {log.first_term}..{log.last_term}"
            )
        else:
            what = "no entries"
        lines.append(
            (
                "log",
                f"{what}, continues from index {log.base_index} (term {log.base_term}), "
                f"{log.file_bytes:,} bytes (every record's checksum ok), "
                f"synced through index {log.synced_through}",
            )
        )
        if log.torn:
            lines.append(
                (
                    "torn tail",
                    f"offset {log.valid_bytes}: {log.file_bytes - log.valid_bytes} bytes "
                    f"({log.torn}); a starting node cuts them",
                )
            )
        if log.dropped_at_start:
            lines.append(("note", "records up to the snapshot are dropped when the node starts"))
    lines += [("problem", problem) for problem in report.problems]
    if report.temporary_files:
        lines.append(("leftovers", ", ".join(report.temporary_files) + " (never read; harmless)"))
    verdicts = {
        "ok": "ok: everything verifies",
        "torn": "torn tail: a node starts after cutting it (exit status 3)",
        "corrupt": "CORRUPT: a node refuses to start (exit status 1); see stderr",
    }
    lines.append(("verdict", verdicts[report.verdict]))
    width = max(len(label) for label, _ in lines)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in lines)


async def run_client(args: argparse.Namespace, cmd: list[str]) -> int:
    token = None if args.token_file is None else read_token(args.token_file, "token")
    try:
        client = ClusterClient(args.servers.split(","), token=token, tls=client_tls(args))
    except (ValueError, OSError) as exc:  # a server URL that is none; a TLS file unreadable
        print(f"trioraft {args.command}: {exc}", file=sys.stderr)
        return 2
    async with client as kv:
        if args.command == "lock":
            return await run_locked(kv, args.name, args.ttl, cmd)
        if args.command == "watch":
            return await run_watch(kv, args.prefix, args.after)
        with trio.move_on_after(args.timeout):
            return await run_op(kv, args)
        servers = args.servers
        print(f"trioraft {args.command}: no answer from {servers} in {args.timeout:g} s",
              file=sys.stderr)  # fmt: skip
        return 1


async def run_locked(kv: ClusterClient, name: str, ttl: int | None, cmd: list[str]) -> int:
    """Run ``cmd`` while holding the lock ``name``; its exit status. Under a lease
    (``ttl``), a lost lock stops ``cmd`` (SIGTERM, then SIGKILL 5 s later) and exits 75."""
    if ttl is None:
        async with Lock(kv, name):
            return await trio.to_thread.run_sync(lambda: subprocess.call(cmd))
    try:
        async with lease_lock(kv, name, ttl=ttl) as token:
            env = {**os.environ, "TRIORAFT_LOCK_TOKEN": str(token)}
            process = await trio.run_process(cmd, stdin=None, check=False, env=env)
            return process.returncode
    except LockLost as exc:
        print(f"trioraft lock: {exc}; the command was stopped", file=sys.stderr)
        return 75  # EX_TEMPFAIL


async def run_watch(kv: ClusterClient, prefix: str, after: int) -> int:
    """Print every change under ``prefix`` after ``after``, one JSON line each, until
    interrupted; exit 1 with ``Compacted`` when they are no longer kept."""
    try:
        async with kv.watch(prefix, after=after) as changes:
            async for change in changes:
                print(json.dumps(change.to_wire()), flush=True)
    except Compacted as exc:
        print(json.dumps({"err": "Compacted", "compacted_through": exc.compacted_through}))
        return 1
    return 0


async def run_op(kv: ClusterClient, args: argparse.Namespace) -> int:
    """One get, put, delete, range, txn or append; its exit status."""
    if args.command == "get":
        got = await kv.get(args.key, stale=args.stale)
        indexes = {"mod_index": got.mod_index, "create_index": got.create_index}
        if args.stale:
            indexes["index"] = got.index
        print(json.dumps({"key": args.key, "value": got.value, "version": got.version, **indexes}))
        return 0
    if args.command == "range":
        bounds = {"prefix": args.prefix, "start": args.start, "end": args.end}
        page = await kv.range(**bounds, limit=args.limit)
        print(json.dumps(encode(page)))
        return 0
    try:
        if args.command == "lease":
            if args.action == "grant":
                lease = await kv.lease_grant(args.value)
                print(json.dumps({"err": "OK", "lease": lease, "ttl": args.value}))
            elif args.action == "keepalive":
                ttl = await kv.lease_keepalive(args.value)
                print(json.dumps({"err": "OK", "lease": args.value, "ttl": ttl}))
            else:
                existed = await kv.lease_revoke(args.value)
                print(json.dumps({"err": "OK" if existed else "NoLease", "lease": args.value}))
                return 0 if existed else 1
        elif args.command == "put":
            await kv.put(args.key, args.value, args.version, lease=args.lease)
            print(json.dumps({"key": args.key, "err": "OK", "version": args.version + 1}))
        elif args.command == "delete":
            await kv.delete(args.key, args.version)
            print(json.dumps({"key": args.key, "err": "OK"}))
        elif args.command == "txn":
            request: TxnArgs = args.request
            outcome = await kv.txn(request.compare, request.success, request.failure)
            print(json.dumps(encode(outcome)))
            return 0 if outcome.succeeded else 1
        else:
            await kv.append(args.key, args.value)
            print(json.dumps({"key": args.key, "err": "OK"}))
    except KVError as exc:
        key = {"key": args.key} if hasattr(args, "key") else {}
        print(json.dumps({**key, "err": exc.wire}))
        return 1
    return 0


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
        configure_logging(args.log_level, args.log_format)
    try:
        if args.command == "kvserver":
            trio.run(
                run_kvserver, *args.listen, args.max_request_bytes, args.max_connections_per_address
            )
        elif args.command == "node":
            trio.run(run_node, args)
        elif args.command == "cluster":
            if args.data_dir is None:
                with tempfile.TemporaryDirectory(prefix="trioraft-") as data_dir:
                    trio.run(run_cluster, args, data_dir)
            else:
                trio.run(run_cluster, args, args.data_dir)
        elif args.command == "status":
            return trio.run(run_status, args)
        elif args.command == "backup":
            return trio.run(run_backup, args)
        elif args.command == "restore":
            return trio.run(run_restore, args)
        elif args.command == "inspect":
            return run_inspect(args)
        elif args.command in ("member", "transfer-leader"):
            return trio.run(run_admin, args)
        else:
            return trio.run(run_client, args, cmd)
        return 0
    except KeyboardInterrupt:
        if args.command != "status":
            raise
        return 0  # the way out of --watch
    except (BadBackup, RestoreRefused) as exc:
        print(f"trioraft {args.command}: {exc}", file=sys.stderr)
        return 1
    except (*_FATAL, ExceptionGroup) as exc:
        error = find_fatal_error(exc)
        if error is None:
            raise
        if isinstance(error, StorageCorrupt):
            print(f"trioraft {args.command}: storage corrupt: {error}", file=sys.stderr)
        else:
            print(f"trioraft {args.command}: {error}", file=sys.stderr)
        return 1


#: Errors that end a command with one line on stderr and exit status 1, no traceback.
_FATAL = (StorageCorrupt, StorageFailed, DataDirectoryConflict, BadRequest, OSError)


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
