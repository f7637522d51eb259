"""Where one sequential put's (and get's) time goes: a timeline of its steps, from timestamps.

    python benchmarks/breakdown.py [--ops 400] [--peer-transport http|tcp] [--out DIR]
    python benchmarks/breakdown.py --profile [--ops 1000] [--peer-transport http|tcp]

Starts three ``trace_node.py`` processes (``trioraft node`` with every step of a put's path
stamped, see that file) in their default configuration (HTTP peers unless told ``tcp``),
finds the leader, and from this process sends ``--ops`` puts one at a time (16 B values,
fresh keys) over one kept-alive connection with a minimal blocking HTTP client, stamping
each send and each complete reply; then as many gets of the keys it wrote (ReadIndex: their
heartbeat round starts as the request's head arrives, ``RaftNode.start_read``); then the
same number of puts through ``ClusterClient`` (one task), timing the call. The nodes are
stopped, their stamps read back and matched to each op (a put by its log index, a get by
its time; ``time.perf_counter`` is the system-wide monotonic clock on Linux, so stamps of
different processes compare). Prints, for the raw client, the median time from the send to
each step and the median length of each segment, and for ``ClusterClient`` its p50 and its
process's CPU per op beside the raw client's; writes the JSON into ``--out``.

The wrappers cost a few µs per step, so the total is a little above an untraced run's.

``--profile`` runs the nodes untraced but with a sampling profiler of their CPU time (see
``trace_node.py``) under the same sequential load, and prints each node's CPU per op by
where it was spent (the innermost recognised frame of each sample: HTTP server, our request
path, peer RPC client, Raft, storage, the scheduler...).
"""

from __future__ import annotations

import argparse
import base64
import bisect
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio
from _load import pid_cpu

from trioraft.kv.clients import ClusterClient
from trioraft.kv.node import free_ports

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class RawClient:
    """HTTP/1.1 POSTs over one kept-alive socket, blocking: as little client as possible."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.address = (host, int(port))
        self.host = f"{host}:{port}"
        self.connect()

    def connect(self) -> None:
        self.sock = socket.create_connection(self.address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def post(self, path: str, body: bytes) -> bytes:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.sock.sendall(head + body)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.receive()
        header, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = 0
        close = False
        for line in header.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True  # Hypercorn ends a connection after keep_alive_max_requests
        while len(rest) < length:
            rest += self.receive()
        self.buffer = rest[length:]
        if close:
            self.sock.close()
            self.connect()
        return rest[:length]

    def receive(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the node closed the connection")
        return data


def start_nodes(
    directory: Path, transport: str, trace_dir: Path, variable: str = "TRACE_OUT"
) -> tuple[list, list[str]]:
    ids = ["1", "2", "3"]
    ports = free_ports(6)
    client = {i: f"http://127.0.0.1:{p}" for i, p in zip(ids, ports[:3], strict=True)}
    peer_port = dict(zip(ids, ports[3:], strict=True))
    token = directory / "cluster-token"
    token.write_text(base64.b64encode(os.urandom(32)).decode())
    procs = []
    for i in ids:
        args = ["node", "--id", i, "--listen", client[i].removeprefix("http://")]
        args += ["--peer-listen", f"127.0.0.1:{peer_port[i]}"]
        args += ["--data-dir", str(directory / f"node-{i}"), "--cluster-token-file", str(token)]
        args += ["--log-level", "warning"]
        for j in ids:
            if j != i:
                args += [f"--peer={j}={transport}://127.0.0.1:{peer_port[j]}"]
                args += [f"--client-url={j}={client[j]}"]
        env = {**os.environ, variable: str(trace_dir / f"node-{i}.json")}
        procs.append(subprocess.Popen([PYTHON, str(HERE / "trace_node.py"), *args], env=env))
    return procs, list(client.values())


def find_leader(urls: list[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for url in urls:
            try:
                if httpx.get(f"{url}/status", timeout=1).json().get("role") == "leader":
                    return url
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    raise RuntimeError("no leader")


def raw_puts(
    url: str, ops: int, value: int, prefix: str = "raw"
) -> tuple[list[tuple[float, float]], float]:
    client = RawClient(url)
    for k in range(50):  # warm-up, not recorded
        warm = {"key": f"{prefix}-warm-{k}", "value": "x", "version": 0}
        client.post("/put", json.dumps(warm).encode())
    times = []
    cpu = cpu_self()
    for k in range(ops):
        body = json.dumps({"key": f"{prefix}-{k}", "value": "x" * value, "version": 0}).encode()
        sent = time.perf_counter()
        reply = client.post("/put", body)
        times.append((sent, time.perf_counter()))
        assert b'"OK"' in reply, reply
    return times, cpu_self() - cpu


def raw_gets(url: str, ops: int, prefix: str = "raw") -> list[tuple[float, float]]:
    """``ops`` sequential gets of the keys ``raw_puts`` wrote (ReadIndex: no log write)."""
    client = RawClient(url)
    for k in range(50):
        client.post("/get", json.dumps({"key": f"{prefix}-warm-{k}"}).encode())
    times = []
    for k in range(ops):
        body = json.dumps({"key": f"{prefix}-{k}"}).encode()
        sent = time.perf_counter()
        reply = client.post("/get", body)
        times.append((sent, time.perf_counter()))
        assert b'"OK"' in reply, reply
    return times


def cluster_client_puts(urls: list[str], ops: int, value: int) -> tuple[list[float], float]:
    async def run() -> tuple[list[float], float]:
        async with ClusterClient(urls) as kv:
            for k in range(50):
                await kv.put(f"warm-cc-{k}", "x", 0)
            latencies = []
            cpu = cpu_self()
            for k in range(ops):
                started = time.perf_counter()
                await kv.put(f"cc-{k}", "x" * value, 0)
                latencies.append(time.perf_counter() - started)
            return latencies, cpu_self() - cpu

    return trio.run(run)


class Events:
    """One process's stamps, by name, in time order."""

    def __init__(self, raw: list) -> None:
        self.by_name: dict[str, list[tuple[float, Any]]] = {}
        for name, t, detail in raw:
            self.by_name.setdefault(name, []).append((t, detail))
        self.times = {n: [t for t, _ in found] for n, found in self.by_name.items()}

    def first_after(self, name: str, t: float, detail: Any = ..., until: float = 1e18):
        """The first ``name`` stamp at or after ``t`` (and before ``until``) whose detail
        matches (``...``: any), as (time, detail), or None."""
        found = self.by_name.get(name, [])
        k = bisect.bisect_left(self.times.get(name, []), t)
        while k < len(found) and found[k][0] < until:
            if detail is ... or found[k][1] == detail:
                return found[k]
            k += 1
        return None


class Milestones:
    """When each named step of an op came, in ms after the op's send; their medians."""

    def __init__(self) -> None:
        self.by_name: dict[str, list[float]] = {}

    def at(self, name: str, t: float | None, sent: float) -> None:
        if t is not None:
            self.by_name.setdefault(name, []).append(1000 * (t - sent))

    def timeline(self) -> list[dict[str, Any]]:
        """The steps in the order of their medians."""
        rows = ((name, statistics.median(v), len(v)) for name, v in self.by_name.items())
        return [
            {"step": name, "median_ms": round(m, 3), "ops": n}
            for name, m, n in sorted(rows, key=lambda row: row[1])
        ]


def analyse(
    times: list[tuple[float, float]], traces: dict[str, Events], leader: str
) -> dict[str, Any]:
    lead = traces[leader]
    followers = [i for i in traces if i != leader]
    milestones = Milestones()
    leader_fsyncs = 0
    committed_by: dict[str, int] = {}
    for sent, received in times:

        def at(name: str, t: float | None, sent: float = sent) -> None:
            milestones.at(name, t, sent)

        start = lead.first_after("dispatch:start", sent, "put", received)
        submit = lead.first_after("raft_submit", sent, ..., received)
        if start is None or submit is None:
            continue
        index = submit[1]
        asgi = lead.first_after("asgi:start", sent, "/put", received)
        at("leader: Hypercorn has the request's head (the ASGI app is called)", asgi and asgi[0])
        view = lead.first_after("view:start", asgi[0] if asgi else sent, ..., received)
        at("leader: Quart's view starts", view and view[0])
        at("leader: request reaches our code (dispatch)", start[0])
        at("leader: handle_put starts", (lead.first_after("handle_put:start", sent) or [None])[0])
        at("leader: entry appended to the Raft log (submit)", submit[0])
        append = lead.first_after("storage_append:end", submit[0], index, received)
        at("leader: entry written to its log file (no fsync)", append and append[0])
        calls = []
        for peer in followers:
            call = lead.first_after("peer_call:start", submit[0], [peer, "append_entries", index])
            end = lead.first_after("peer_call:end", submit[0], [peer, "append_entries", index])
            f = traces[peer]
            f_start = f.first_after("follower_append:start", submit[0], index)
            f_end = f.first_after("follower_append:end", submit[0], index)
            f_dispatch = f.first_after("dispatch:start", call[0] if call else submit[0])
            f_sync = f.first_after("follower_fsync:start", f_start[0] if f_start else submit[0])
            f_synced = f.first_after("follower_fsync:end", f_start[0] if f_start else submit[0])
            calls.append(
                (end[0] if end else 1e18, call, f_dispatch, f_start, f_sync, f_synced, f_end, end)
            )
        calls.sort(key=lambda c: c[0])
        for rank, (_, call, f_dispatch, f_start, f_sync, f_synced, f_end, end) in enumerate(calls):
            who = f"follower answering {'first' if rank == 0 else 'second'}"
            at(f"{who}: leader sends AppendEntries", call and call[0])
            if f_dispatch and f_start and f_dispatch[0] <= f_start[0]:
                at(f"{who}: request reaches our code (dispatch)", f_dispatch[0])
            at(f"{who}: handle_append_entries starts", f_start and f_start[0])
            at(f"{who}: fsync starts", f_sync and f_sync[0])
            at(f"{who}: fsync ends", f_synced and f_synced[0])
            at(f"{who}: handle_append_entries returns", f_end and f_end[0])
            at(f"{who}: leader has the reply", end and end[0])
        fsync = lead.first_after("leader_fsync:start", submit[0], ..., received)
        if fsync is not None:
            leader_fsyncs += 1
            at("leader: its own fsync starts (in a thread)", fsync[0])
            at(
                "leader: its own fsync ends",
                (lead.first_after("leader_fsync:end", fsync[0]) or [None])[0],
            )
        commit = next(
            (c for c in lead.by_name.get("commit", []) if c[1] >= index and c[0] >= submit[0]),
            None,
        )
        at("leader: entry committed", commit and commit[0])
        if commit is not None:
            replies = sorted(c[0] for c in calls)
            own = fsync and lead.first_after("leader_fsync:end", fsync[0])
            near = {"second follower's reply": replies[1], "first follower's reply": replies[0]}
            if own:
                near["leader's fsync"] = own[0]
            cause = min(near, key=lambda k: abs(near[k] - commit[0]))
            committed_by[cause] = committed_by.get(cause, 0) + 1
        at("leader: applied", (lead.first_after("apply:end", submit[0], index) or [None])[0])
        at(
            "leader: handle_put returns",
            (lead.first_after("handle_put:end", submit[0]) or [None])[0],
        )
        at(
            "leader: dispatch returns (reply encoded)",
            (lead.first_after("dispatch:end", submit[0], "put") or [None])[0],
        )
        milestones.at("client has the whole reply", received, sent)
    return {
        "ops": len(times),
        "timeline_ms_from_send": milestones.timeline(),
        "leader_fsynced_in_ops": leader_fsyncs,
        "commit_followed": committed_by,
    }


def analyse_gets(
    times: list[tuple[float, float]], traces: dict[str, Events], leader: str
) -> list[dict[str, Any]]:
    """The timeline of sequential ReadIndex gets: the request's path on the leader beside
    the heartbeat round it started as it arrived (``RaftNode.start_read``)."""
    lead = traces[leader]
    followers = [i for i in traces if i != leader]
    milestones = Milestones()
    for sent, received in times:

        def at(name: str, t: float | None, sent: float = sent) -> None:
            milestones.at(name, t, sent)

        asgi = lead.first_after("asgi:start", sent, "/get", received)
        started = lead.first_after("start_read", sent, ..., received)
        if asgi is None or started is None:
            continue
        at("leader: Hypercorn has the request's head (the ASGI app is called)", asgi[0])
        at("leader: the read's heartbeat round starts (start_read)", started[0])
        calls = []
        for peer in followers:
            call = lead.first_after("peer_call:start", started[0], [peer, "append_entries", None])
            if call is None or call[0] > received:
                continue
            end = lead.first_after("peer_call:end", call[0], [peer, "append_entries", None])
            f = traces[peer]
            f_start = f.first_after("follower_append:start", call[0], None)
            f_end = f.first_after("follower_append:end", call[0], None)
            calls.append((end[0] if end else 1e18, call, f_start, f_end, end))
        calls.sort(key=lambda c: c[0])
        for rank, (_, call, f_start, f_end, end) in enumerate(calls):
            who = f"follower answering {'first' if rank == 0 else 'second'}"
            at(f"{who}: leader sends the heartbeat", call[0])
            at(f"{who}: handle_append_entries starts", f_start and f_start[0])
            at(f"{who}: handle_append_entries returns", f_end and f_end[0])
            at(f"{who}: leader has the reply", end and end[0])
        view = lead.first_after("view:start", asgi[0], ..., received)
        at("leader: Quart's view starts", view and view[0])
        at(
            "leader: request reaches our code (dispatch)",
            (lead.first_after("dispatch:start", asgi[0], "get", received) or [None])[0],
        )
        at(
            "leader: read_index starts",
            (lead.first_after("read_index:start", asgi[0], ..., received) or [None])[0],
        )
        at(
            "leader: read_index returns (round confirmed)",
            (lead.first_after("read_index:end", asgi[0], ..., received) or [None])[0],
        )
        at(
            "leader: dispatch returns (reply encoded)",
            (lead.first_after("dispatch:end", asgi[0], "get", received) or [None])[0],
        )
        milestones.at("client has the whole reply", received, sent)
    return milestones.timeline()


#: Where a CPU sample is spent: the innermost frame that matches one of these (file part,
#: function or None for any) names its bucket; a stack with none of them is the scheduler's
#: if trio's core is on it.
BUCKETS = [
    ("/trioraft/raft/node.py", "_call", "leader: peer RPC client (sending AppendEntries)"),
    ("/httpx/", None, "peer RPC client: httpx"),
    ("/httpcore/", None, "peer RPC client: httpx"),
    ("/trioraft/rpc/tcp.py", None, "framed TCP (client or server side)"),
    ("/trioraft/raft/storage.py", None, "storage: log append, fsync"),
    ("/trioraft/raft/node.py", "handle_append_entries", "follower: AppendEntries handler"),
    ("/trioraft/rpc/auth.py", None, "peer authentication (HMAC, replay window)"),
    ("/trioraft/kv/", None, "KV: handler, proposal, apply"),
    ("/trioraft/raft/", None, "Raft: leader tasks, commit, applier"),
    ("/trioraft/rpc/http.py", None, "our request path: JSON, routing, rendering"),
    ("/trioraft/rpc/codec.py", None, "our request path: JSON, routing, rendering"),
    ("/trioraft/metrics.py", None, "metrics"),
    ("/trioraft/", None, "trioraft: other (app, metrics, logging)"),
    ("/h11/", None, "HTTP server: Hypercorn, h11, Quart, Werkzeug"),
    ("/hypercorn/", None, "HTTP server: Hypercorn, h11, Quart, Werkzeug"),
    ("/quart/", None, "HTTP server: Hypercorn, h11, Quart, Werkzeug"),
    ("/quart_trio/", None, "HTTP server: Hypercorn, h11, Quart, Werkzeug"),
    ("/werkzeug/", None, "HTTP server: Hypercorn, h11, Quart, Werkzeug"),
    ("/trio/_threads.py", None, "trio: worker threads (to_thread)"),
]


def bucket(stack: str) -> str:
    frames = stack.split(";")
    loop = max(
        (
            k
            for k, f in enumerate(frames)
            if f.endswith(("/trio/_core/_run.py:unrolled_run", "/trio/_core/_run.py:run"))
        ),
        default=-1,
    )
    tasks = frames[loop + 1 :]  # what the run loop was running (a task's stack), or its I/O wait
    if loop >= 0 and all("/trio/_core/" in f or "/selectors.py" in f for f in tasks):
        return "trio: scheduler, I/O wait, signal wake-ups"
    for frame in reversed(tasks):
        path, _, function = frame.rpartition(":")
        for part, name, label in BUCKETS:
            if part in path and (name is None or name == function):
                return label
    return "other (stdlib, trio outside the run loop)"


def summarize(found: list, ops: int, measured: float | None = None) -> dict[str, float]:
    """A node's samples by bucket, as ms of CPU per op: the samples' shares of ``measured``
    ms per op (its CPU by /proc) if given, else 2 ms a sample."""
    counts: dict[str, int] = {}
    for stack, n in found:
        label = bucket(stack)
        counts[label] = counts.get(label, 0) + n
    total = sum(counts.values())
    scale = measured / total if measured is not None else 2 / ops
    return {k: round(v * scale, 3) for k, v in sorted(counts.items(), key=lambda x: -x[1])}


def profile(opts: argparse.Namespace) -> None:
    """CPU profiles of the three nodes while one client sends sequential puts."""
    with tempfile.TemporaryDirectory(prefix="trioraft-profile-", dir=opts.data) as tmp:
        root = Path(tmp)
        procs, urls = start_nodes(root, opts.peer_transport, root, "PROFILE_OUT")
        try:
            leader_url = find_leader(urls)
            leader = str(urls.index(leader_url) + 1)
            raw_puts(leader_url, 1, opts.value, "warm")  # warm-up, then the profiles start afresh
            for proc in procs:
                proc.send_signal(signal.SIGUSR1)
            time.sleep(0.2)
            cpu_before = [pid_cpu(p.pid) for p in procs]
            times, _ = raw_puts(leader_url, opts.ops, opts.value)
            cpu_after = [pid_cpu(p.pid) for p in procs]
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait()
        stacks = {
            str(i + 1): json.loads((root / f"node-{i + 1}.json").read_text()) for i in range(3)
        }
    raw = sorted(r - s for s, r in times)
    print(
        f"peers over {opts.peer_transport}; {opts.ops} sequential puts, p50 "
        f"{1000 * raw[len(raw) // 2]:.3f} ms; each node's CPU per op by where it was spent:"
    )
    report: dict[str, dict[str, float]] = {}
    for node, found in stacks.items():
        role = "leader" if node == leader else f"follower {node}"
        ops = opts.ops + 50  # raw_puts warms up with 50 more
        measured = 1000 * (cpu_after[int(node) - 1] - cpu_before[int(node) - 1]) / ops
        report[role] = summarize(found, ops, measured)
    print_profile(report)
    opts.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = opts.out / f"profile-{opts.peer_transport}-{stamp}.json"
    path.write_text(
        json.dumps({"ms_cpu_per_op_by_bucket": report, "leader": leader, "stacks": stacks})
    )
    print(f"wrote {path}")


def print_profile(report: dict[str, dict[str, float]]) -> None:
    for role, buckets in report.items():
        total = sum(buckets.values())
        print(f"{role}: {total:.3f} ms CPU per op (/proc), by bucket:")
        for label, ms in buckets.items():
            print(f"  {ms:7.3f} ms  {100 * ms / total:5.1f} %  {label}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=400)
    parser.add_argument("--value", type=int, default=16)
    parser.add_argument("--peer-transport", choices=["http", "tcp"], default="http")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--profile", action="store_true", help="CPU profiles, no timestamps")
    parser.add_argument("--summarize", type=Path, help="print a saved profile's table again")
    opts = parser.parse_args()
    if opts.summarize is not None:  # a profile saved by this version: buckets again
        saved = json.loads(opts.summarize.read_text())
        report = {}
        for node, found in saved["stacks"].items():
            role = "leader" if node == saved["leader"] else f"follower {node}"
            report[role] = summarize(found, 1, sum(saved["ms_cpu_per_op_by_bucket"][role].values()))
        print_profile(report)
        return
    if opts.profile:
        profile(opts)
        return
    with tempfile.TemporaryDirectory(prefix="trioraft-breakdown-", dir=opts.data) as tmp:
        root = Path(tmp)
        procs, urls = start_nodes(root, opts.peer_transport, root)
        try:
            leader_url = find_leader(urls)
            leader = str(urls.index(leader_url) + 1)
            cpu_before = [pid_cpu(p.pid) for p in procs]
            times, raw_cpu = raw_puts(leader_url, opts.ops, opts.value)
            cpu_after = [pid_cpu(p.pid) for p in procs]
            get_times = raw_gets(leader_url, opts.ops)
            cc_latencies, cc_cpu = cluster_client_puts(urls, opts.ops, opts.value)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait()
        traces = {
            str(i + 1): Events(json.loads((root / f"node-{i + 1}.json").read_text()))
            for i in range(3)
        }
    result = analyse(times, traces, leader)
    result["get_timeline_ms_from_send"] = analyse_gets(get_times, traces, leader)
    gets = sorted(r - s for s, r in get_times)
    result["raw_client_gets"] = {
        "p50_ms": round(1000 * gets[len(gets) // 2], 3),
        "p99_ms": round(1000 * gets[int(0.99 * len(gets))], 3),
    }
    raw = sorted(r - s for s, r in times)
    cc = sorted(cc_latencies)
    result["peer_transport"] = opts.peer_transport
    result["server_cpu_ms_per_op"] = {
        ("leader " if str(i + 1) == leader else "follower ") + str(i + 1): round(
            1000 * (cpu_after[i] - cpu_before[i]) / (opts.ops + 50), 3
        )
        for i in range(3)
    }
    result["raw_client"] = {
        "p50_ms": round(1000 * raw[len(raw) // 2], 3),
        "p99_ms": round(1000 * raw[int(0.99 * len(raw))], 3),
        "client_cpu_ms_per_op": round(1000 * raw_cpu / opts.ops, 3),
    }
    result["cluster_client"] = {
        "p50_ms": round(1000 * cc[len(cc) // 2], 3),
        "p99_ms": round(1000 * cc[int(0.99 * len(cc))], 3),
        "client_cpu_ms_per_op": round(1000 * cc_cpu / opts.ops, 3),
    }
    print(f"peers over {opts.peer_transport}; {opts.ops} sequential puts; medians over ops:")
    print("| ms after the client's send | step |")
    print("|---:|---|")
    for row in result["timeline_ms_from_send"]:
        print(f"| {row['median_ms']:.3f} | {row['step']} ({row['ops']} ops) |")
    print(f"\n{opts.ops} sequential gets (ReadIndex), medians over ops:")
    print("| ms after the client's send | step |")
    print("|---:|---|")
    for row in result["get_timeline_ms_from_send"]:
        print(f"| {row['median_ms']:.3f} | {row['step']} ({row['ops']} ops) |")
    print(f"raw client gets: {result['raw_client_gets']}\n")
    print(f"leader fsynced itself in {result['leader_fsynced_in_ops']} of {opts.ops} ops")
    print(f"commit came nearest to: {result['commit_followed']}")
    print(f"server CPU per op (raw phase, warm-up included): {result['server_cpu_ms_per_op']}")
    print(f"raw client: {result['raw_client']}")
    print(f"ClusterClient: {result['cluster_client']}")
    opts.out.mkdir(parents=True, exist_ok=True)
    path = opts.out / f"breakdown-{opts.peer_transport}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
