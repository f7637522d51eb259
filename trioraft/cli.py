"""The ``trioraft`` command line.

    trioraft kvserver --listen HOST:PORT        run the single-server KV until interrupted
    trioraft get KEY --servers URL              print a key's value and version as JSON
    trioraft put KEY VALUE --version N --servers URL
    trioraft lock NAME --servers URL -- CMD...  run CMD while holding the lock NAME

Exit status: 0 on success (a server stops cleanly on SIGTERM or SIGINT), 1 when a put is
rejected or the system refuses (the error is printed), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from collections.abc import Sequence

import trio

from ._errors import KVError
from ._rpc import serve
from .kv import KVClient, KVServer
from .lock import Lock


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trioraft", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    kvserver = commands.add_parser("kvserver", help="run the single-server KV")
    kvserver.add_argument("--listen", type=parse_host_port, default=("127.0.0.1", 8000))
    kvserver.add_argument("--max-body-bytes", type=int, default=1 << 20)

    def client_command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("--servers", required=True, help="the server's URL")
        return sub

    get = client_command("get", "read a key")
    get.add_argument("key")
    put = client_command("put", "write a key at a version")
    put.add_argument("key")
    put.add_argument("value")
    put.add_argument("--version", type=int, required=True, help="the version it must be at")
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


async def run_client(args: argparse.Namespace, cmd: list[str]) -> int:
    async with KVClient(args.servers) as kv:
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
        async with Lock(kv, args.name):
            return await trio.to_thread.run_sync(lambda: subprocess.call(cmd))


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    cmd = words[words.index("--") + 1 :] if "--" in words else []
    parser = build_parser()
    args = parser.parse_args(words[: len(words) - len(cmd) - (1 if "--" in words else 0)])
    if args.command == "lock" and not cmd:
        parser.error("trioraft lock: give the command to run after --")
    try:
        if args.command == "kvserver":
            trio.run(run_kvserver, *args.listen, args.max_body_bytes)
            return 0
        return trio.run(run_client, args, cmd)
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
