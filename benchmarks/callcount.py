"""Python function calls per sequential put, whole cluster, at several git revisions: a cost
measure that does not swing with the machine.

    python benchmarks/callcount.py REV [REV ...] [--ops 1000] [--diff 25]

On this kind of machine the CPU time of one and the same run swings by ±20 % from one
minute to the next, more than most changes move it; the number of function calls an op
makes does not (±1 % between runs). For each revision (``.`` is this working tree; others
are extracted with ``git archive`` as ``revisions.py`` does), a worker process runs three
``trioraft node``s of that revision in one Trio run (each built by that revision's own
command line parser: TCP peers, authenticated where it can be), waits for a leader, has a
child process send 200 puts to it one at a time to warm up, then ``--ops`` more under
``cProfile``, and counts the calls of all three nodes per put, by where the function lives:
trioraft, trio (and outcome), the HTTP server (Hypercorn, h11, Quart, Werkzeug), the
standard library and builtins. ``--diff N`` lists the N functions whose calls per put grew
most against the first revision. Calls are a proxy: a call of ``json.dumps`` and one of a
property count the same. Read a difference as "this code does more", then time it.
"""

from __future__ import annotations

import argparse
import base64
import collections
import cProfile
import json
import os
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
HTTP_SERVER = ("hypercorn", "h11", "quart", "quart_trio", "werkzeug")
GROUPS = ("trioraft", "trio", "HTTP server", "stdlib, builtins, other")


def group_of(path: str) -> str:
    """Where a profiled function lives, from its file's path."""
    parts = Path(path).parts
    if "trioraft" in parts:
        return "trioraft"
    if "site-packages" in parts:
        package = parts[parts.index("site-packages") + 1]
        if package in ("trio", "outcome"):
            return "trio"
        if package in HTTP_SERVER:
            return "HTTP server"
    return "stdlib, builtins, other"


def function_name(path: str, line: int, name: str) -> str:
    """A profiled function's name that is the same in every checkout."""
    parts = Path(path).parts
    for root in ("trioraft", "site-packages"):
        if root in parts:
            start = parts.index(root) + (root == "site-packages")
            return f"{'/'.join(parts[start:])}:{name}"
    return f"{path}:{name}" if path != "~" else name


def worker(ops: int, out: Path) -> None:
    """Run the cluster ``out`` describes (as ``measure`` wrote it: each node's command line,
    and the client URLs) in this process, profile ``ops`` puts, write the counts to
    ``out``. Imports nothing of the benchmarks': this process runs the revision's package."""
    import httpx
    import trio

    from trioraft import cli

    cluster = json.loads(out.read_text())
    client_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    async def puts(url: str, count: int, prefix: str) -> None:
        command = [sys.executable, __file__, "--client", url, str(count), prefix]
        await trio.run_process(command, env=client_env)

    async def main() -> cProfile.Profile:
        urls = cluster["urls"]
        profile = cProfile.Profile()
        async with trio.open_nursery() as nursery:
            for argv in cluster["argvs"]:
                nursery.start_soon(cli.run_node, cli.build_parser().parse_args(argv))
            leader = None
            async with httpx.AsyncClient() as http:
                with trio.fail_after(60):
                    while leader is None:
                        await trio.sleep(0.2)
                        for url in urls:
                            try:
                                status = (await http.get(f"{url}/status")).json()
                            except httpx.HTTPError:
                                continue
                            leader = url if status.get("role") == "leader" else leader
            await puts(leader, 200, "warm")
            profile.enable()
            await puts(leader, ops, "measured")
            profile.disable()
            nursery.cancel_scope.cancel()
        return profile

    stats = pstats.Stats(trio.run(main)).stats  # type: ignore[attr-defined]
    counts: dict[str, int] = collections.Counter()
    for (path, line, name), (_, calls, *_rest) in stats.items():
        counts[function_name(path, line, name) + "\t" + group_of(path)] += calls
    out.write_text(json.dumps({"ops": ops, "calls": counts}))


def client(url: str, count: int, prefix: str) -> None:
    """Send ``count`` puts one at a time (as little client as possible)."""
    sys.path.insert(0, str(HERE))
    from breakdown import RawClient

    raw = RawClient(url)
    for k in range(count):
        body = json.dumps({"key": f"{prefix}-{k}", "value": "x" * 16, "version": 0}).encode()
        reply = raw.post("/put", body)
        assert b'"OK"' in reply, reply


def measure(rev: str, root: Path, ops: int) -> dict:
    """Run ``rev``'s cluster in a worker process; the calls it counted."""
    from revisions import checkout
    from sidebyside import node_args

    from trioraft.kv.node import free_ports

    k = len(list(root.iterdir()))
    tree = checkout(rev, root / f"tree-{k}")
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    directory = root / f"cluster-{k}"
    directory.mkdir()
    hardened = "--peer-listen" in ((tree or HERE.parent) / "trioraft" / "cli.py").read_text()
    token = directory / "cluster-token"
    token.write_text(base64.b64encode(os.urandom(32)).decode())
    ports = free_ports(6)
    client = {i: f"http://127.0.0.1:{p}" for i, p in zip("123", ports[:3], strict=True)}
    peer_port = dict(zip("123", ports[3:], strict=True))
    argvs = [
        ["node", *node_args(i, client, peer_port, directory, "tcp", hardened, token)]
        for i in client
    ]
    out = root / f"counts-{k}.json"
    out.write_text(json.dumps({"argvs": argvs, "urls": list(client.values())}))
    command = [sys.executable, __file__, "--worker", str(out), "--ops", str(ops)]
    subprocess.run(command, env=env, cwd=root, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    if sys.argv[1:2] == ["--client"]:
        client(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revisions", nargs="*", help="git revisions; '.' is this tree")
    parser.add_argument("--ops", type=int, default=1000)
    parser.add_argument("--diff", type=int, default=0, help="functions to list")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker is not None:
        worker(opts.ops, opts.worker)
        return
    with tempfile.TemporaryDirectory(prefix="trioraft-callcount-") as tmp:
        found = {rev: measure(rev, Path(tmp), opts.ops) for rev in opts.revisions}
    per_op = {
        rev: {key: calls / result["ops"] for key, calls in result["calls"].items()}
        for rev, result in found.items()
    }
    print(f"Function calls per sequential put, 3 nodes in one process, {opts.ops} puts")
    print("| revision | calls/put | / first's | " + " | ".join(GROUPS) + " |")
    print("|---|---:|---:|" + "---:|" * len(GROUPS))
    first = None
    for rev, calls in per_op.items():
        total = sum(calls.values())
        first = first or total
        by_group = collections.Counter()
        for key, n in calls.items():
            by_group[key.split("\t")[1]] += n
        cells = [f"{by_group[g]:,.0f}" for g in GROUPS]
        print(f"| {rev} | {total:,.0f} | {total / first:.3f} | " + " | ".join(cells) + " |")
    if opts.diff and len(per_op) > 1:
        base, *others = per_op.values()
        for rev, calls in zip(opts.revisions[1:], others, strict=True):
            print(f"\nGrown most from {opts.revisions[0]} to {rev} (calls per put):")
            keys = sorted(set(base) | set(calls), key=lambda k: base.get(k, 0) - calls.get(k, 0))
            for key in keys[: opts.diff]:
                before, after = base.get(key, 0.0), calls.get(key, 0.0)
                name = key.split("\t")[0]
                print(f"  {after - before:+7.1f}  ({before:.1f} -> {after:.1f})  {name}")


if __name__ == "__main__":
    main()
