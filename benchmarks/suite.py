"""The benchmark suite: trioraft clusters as separate processes, side by side with the HTTP
stack's own limit (a bare quart-trio echo endpoint) and PySyncObj, in one run.

    pip install -e '.[benchmark]' && apt-get install wrk
    python benchmarks/suite.py [--seconds 4] [--nodes 3 5] [--clients 1 16 64 256]
                               [--values 16 1024] [--peer-transport http tcp] [--out DIR]
    python benchmarks/suite.py --plot REPORT.json      # redraw the PNG of a saved run
    python benchmarks/suite.py --table REPORT.json     # the README's tables of a saved run
    python benchmarks/suite.py --quick [--against DIR] [sidebyside.py's options]

Scenarios, for each cluster size, value size and number of concurrent clients (fsync on):
- ``embedded``: the leader's own application tasks write through ``KVNode.open_client``.
- ``remote``: one op per HTTP request to the leader, driven by wrk (one connection a client).
- ``coalesced``: one coalescing client (``/batch``) shared by that many tasks, in its own
  process.
- ``reads``: gets through the coalescing client.
- references: ``echo`` (wrk against the echo endpoint) and ``pysyncobj`` (a 3-node
  ``ReplDict``; the leader's process drives it, as the embedded load does).
Then the open-loop latency at 1/8, 1/4, 1/2 and 3/4 of the embedded peak, and PySyncObj's
at half of it. The echo reference is measured again beside each remote row (the machine's speed
drifts over a run); for the rows of the one-op target (3 nodes, smallest value) remote and
echo are measured alternately ``--pairs`` times and their medians compared, and so are the
coalescing client's writes and reads at 256 tasks (the reads target). Finally every
node is killed (SIGKILL) and restarted, and a sample of the acknowledged keys of every write
scenario must read back: the runs were durable.

Every row reports the CPU seconds of each server process and of the load generator, so a
saturated load generator shows. Writes JSON and PNG plots into ``--out``.

Last, the side-by-side rows (``sidebyside.py``, ``--pairs`` alternating rounds of
``--seconds``; ``--no-side-by-side`` leaves them out): the echo endpoint, a raw trio TCP
echo, a 3-member etcd (skipped with a note when ``etcd`` is absent) and ``trioraft node``
clusters over HTTP and TCP peers (and over TCP with lease reads, and without peer
authentication: what it costs) under the same wrk loads (1, 16 and 64 connections, one put
per request; gets with 1 and 16), the Python clients one op at a time, and one fsync.

``--quick`` runs only side-by-side rows, short, for a change's A/B in under two minutes:
the default configuration (TCP peers) beside the echo endpoint, the raw echo and etcd, with
1 and 16 connections (``QUICK``; 3 rounds of 1 s samples), unless ``--systems`` or
``--loads`` say otherwise; with ``--against DIR`` (a checkout of the baseline: ``git
archive BASE trioraft | tar -x -C DIR``) the nodes of both trees alternate in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import sidebyside
from _load import pid_cpu
from tqdm import tqdm

from trioraft.kv.node import free_ports

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_line(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    """The next line the process prints (it must print one within ``timeout``)."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line or time.monotonic() > deadline:
        raise RuntimeError(f"process {proc.args} exited or said nothing")
    return line


class Cluster:
    """``n`` bench_node processes on loopback, with data directories under ``directory``;
    peers talk over HTTP (the default) or framed TCP (``transport="tcp"``)."""

    def __init__(self, n: int, directory: Path, transport: str = "http") -> None:
        self.ids = [str(i + 1) for i in range(n)]
        ports = free_ports(2 * n)
        self.urls = {i: f"http://127.0.0.1:{p}" for i, p in zip(self.ids, ports, strict=False)}
        self.peer_ports = dict(zip(self.ids, ports[n:], strict=True))
        self.secret_hex = secrets.token_hex(32)
        self.transport = transport
        self.directory = directory
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        for i in self.ids:
            others = [j for j in self.ids if j != i]
            scheme = "tcp" if self.transport == "tcp" else "http"
            peers = [f"--peer={j}={scheme}://127.0.0.1:{self.peer_ports[j]}" for j in others]
            peers += [f"--client-url={j}={self.urls[j]}" for j in others]
            peers += [f"--peer-port={self.peer_ports[i]}", f"--secret-hex={self.secret_hex}"]
            self.procs[i] = subprocess.Popen(
                [
                    PYTHON,
                    str(HERE / "bench_node.py"),
                    "--id",
                    i,
                    "--listen",
                    self.urls[i].removeprefix("http://"),
                    *peers,
                    "--data-dir",
                    str(self.directory / f"node-{i}"),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
        for proc in self.procs.values():
            wait_line(proc)

    def kill(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            proc.wait()

    def leader(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, url in self.urls.items():
                try:
                    status = httpx.get(f"{url}/status", timeout=1).json()
                except httpx.HTTPError:
                    continue
                if status.get("role") == "leader":
                    return i
            time.sleep(0.05)
        raise RuntimeError("no leader elected")

    def cpu(self) -> dict[str, float]:
        return {i: pid_cpu(p.pid) for i, p in self.procs.items()}


@contextmanager
def measured(cluster: Cluster | None) -> Iterator[dict]:
    """Fills in the CPU seconds used by each server and by child load generators."""
    out: dict = {}
    before = cluster.cpu() if cluster else {}
    children = children_cpu()
    yield out
    if cluster:
        after = cluster.cpu()
        out["server_cpu_s"] = {i: round(after[i] - before[i], 2) for i in after}
    out["loadgen_child_cpu_s"] = round(children_cpu() - children, 2)


def run_wrk(url: str, op: str, prefix: str, clients: int, seconds: float, value: int) -> dict:
    result = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{clients}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(HERE / "wrk_kv.lua"),
            url,
            "--",
            op,
            prefix,
            str(value),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    summary["ops_per_s"] = round(summary["requests"] / summary["seconds"], 1)
    return summary


def run_coalesced(
    urls: list[str], op: str, prefix: str, clients: int, seconds: float, value: int
) -> dict:
    result = subprocess.run(
        [
            PYTHON,
            str(HERE / "load_client.py"),
            "--urls",
            ",".join(urls),
            "--op",
            op,
            "--prefix",
            prefix,
            "--concurrency",
            str(clients),
            "--seconds",
            str(seconds),
            "--value-bytes",
            str(value),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_embedded(
    url: str, prefix: str, clients: int, seconds: float, value: int, rate: float = 0.0
) -> dict:
    body = {
        "concurrency": clients,
        "seconds": seconds,
        "value_bytes": value,
        "prefix": prefix,
        "rate": rate,
    }
    reply = httpx.post(f"{url}/bench_embedded", json=body, timeout=seconds + 60)
    reply.raise_for_status()
    return json.loads(reply.json()["summary"])


class PySyncObjCluster:
    def __init__(self) -> None:
        ports = free_ports(3)
        self.addrs = [f"127.0.0.1:{p}" for p in ports]
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        for me in self.addrs:
            partners = [f"--partner={a}" for a in self.addrs if a != me]
            self.procs.append(
                subprocess.Popen(
                    [PYTHON, str(HERE / "pysyncobj_node.py"), "--self", me, *partners],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in self.procs:
            wait_line(proc)

    def run(self, command: dict) -> dict:
        for _ in range(20):
            before = {p.pid: pid_cpu(p.pid) for p in self.procs}
            for proc in self.procs:
                assert proc.stdin is not None
                proc.stdin.write(json.dumps(command) + "\n")
                proc.stdin.flush()
            replies = [json.loads(wait_line(p, command["seconds"] + 60)) for p in self.procs]
            leaders = [r for r in replies if r.get("leader")]
            if leaders:
                summary = leaders[0]
                summary["server_cpu_s"] = {
                    str(k): round(pid_cpu(p.pid) - before[p.pid], 2)
                    for k, p in enumerate(self.procs)
                }
                return summary
            time.sleep(0.5)  # no leader yet
        raise RuntimeError("PySyncObj elected no leader")

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


def echo_now(clients: int, seconds: float, value: int) -> float:
    """The echo endpoint's rate under the same wrk load, measured now."""
    echo, url = start_echo()
    try:
        return run_wrk(url, "echo", "e", clients, seconds, value)["ops_per_s"]
    finally:
        echo.kill()
        echo.wait()


def alternating(
    first: dict, url: str, prefix: str, clients: int, seconds: float, value: int, pairs: int
) -> dict:
    """The remote row's rate and the echo's, measured alternately ``pairs`` times (the first
    remote sample is ``first``): the median of each. A remote sample with refused requests
    (a leader change) is left out."""
    remote = [first["ops_per_s"]] if not first["not_ok"] else []
    echo = [echo_now(clients, seconds, value)]
    for k in range(1, pairs):
        again = run_wrk(url, "put", f"{prefix}-pair{k}", clients, seconds, value)
        if not again["not_ok"]:
            remote.append(again["ops_per_s"])
        echo.append(echo_now(clients, seconds, value))
    return {
        "remote_samples_per_s": remote,
        "echo_adjacent_samples_per_s": echo,
        "remote_median_per_s": round(statistics.median(remote), 1) if remote else None,
        "echo_adjacent_per_s": round(statistics.median(echo), 1),
    }


def reads_against_writes(
    writes: dict,
    reads: dict,
    urls: list[str],
    n: int,
    clients: int,
    seconds: float,
    value: int,
    pairs: int,
) -> dict:
    """The coalescing client's writes and reads (of the keys the reads row reads), measured
    alternately ``pairs`` times (the first pair is the rows' own samples): the median of
    each, for the reads target."""
    put_rates, get_rates = [writes["ops_per_s"]], [reads["ops_per_s"]]
    for k in range(1, pairs):
        prefix, read_prefix = f"coalesced-{n}-{value}-{clients}-pair{k}", f"coalesced-{n}-{value}-1"
        put_rates.append(run_coalesced(urls, "put", prefix, clients, seconds, value)["ops_per_s"])
        get_rates.append(
            run_coalesced(urls, "get", read_prefix, clients, seconds, value)["ops_per_s"]
        )
    return {
        "writes_samples_per_s": put_rates,
        "reads_samples_per_s": get_rates,
        "writes_median_per_s": round(statistics.median(put_rates), 1),
        "reads_median_per_s": round(statistics.median(get_rates), 1),
    }


def start_echo() -> tuple[subprocess.Popen, str]:
    (port,) = free_ports(1)
    proc = subprocess.Popen(
        [PYTHON, str(HERE / "echo_server.py"), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    wait_line(proc)
    time.sleep(0.3)
    return proc, f"http://127.0.0.1:{port}"


#: ``--quick``'s systems and loads, unless given: the default configuration only, without
#: 64 connections, so that an A/B (``--against``) stays under two minutes here.
QUICK = {"--systems": ["echo", "raw-echo", "etcd", "trioraft-tcp"], "--loads": ["1", "16"]}


def quick_args(argv: list[str]) -> list[str]:
    """``sidebyside.py``'s arguments for ``--quick ARGV``: ``QUICK``'s where ARGV is silent."""
    defaults = [[option, *values] for option, values in QUICK.items() if option not in argv]
    return [*argv, *(arg for group in defaults for arg in group)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Also: suite.py --quick [--against DIR] [sidebyside.py's options] (a change's "
        "A/B in under two minutes), suite.py --table FILE, suite.py --plot FILE.",
    )
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 5])
    parser.add_argument(
        "--peer-transport", nargs="+", choices=["http", "tcp"], default=["http", "tcp"]
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--values", type=int, nargs="+", default=[16, 1024])
    parser.add_argument(
        "--scenarios", nargs="+", default=["embedded", "remote", "coalesced", "reads"]
    )
    parser.add_argument("--no-references", action="store_true")
    parser.add_argument(
        "--pairs",
        type=int,
        default=3,
        help="alternating samples for the one-op ratio (remote/echo) and the reads target "
        "(coalesced writes/reads), 3 nodes, smallest value",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--data", type=Path, default=None, help="data directories (a real disk)")
    parser.add_argument("--no-side-by-side", dest="side_by_side", action="store_false")
    opts = parser.parse_args()
    if shutil.which("wrk") is None and ({"remote"} & set(opts.scenarios) or not opts.no_references):
        sys.exit("wrk is needed (apt-get install wrk)")

    plan = []
    if not opts.no_references:
        plan += [("echo", 1, v, c) for v in opts.values for c in opts.clients]
        plan += [("pysyncobj", 3, v, c) for v in opts.values for c in opts.clients]
    configs = [(t, n) for t in opts.peer_transport for n in opts.nodes]
    for t, n in configs:
        plan += [(s, n, v, c, t) for s in opts.scenarios for v in opts.values for c in opts.clients]
    rows: list[dict] = []
    durability: list[dict] = []
    progress = tqdm(total=len(plan) + 2 * len(configs), unit="run", dynamic_ncols=True)
    seconds = opts.seconds
    stamp = time.strftime("%Y%m%d-%H%M%S")

    def record(row: dict) -> None:
        rows.append(row)
        progress.set_postfix_str(
            f"{row['scenario']} {row.get('peer_transport', '')} "
            f"n={row['nodes']} c={row['clients']} "
            f"v={row['value_bytes']}: {row['ops_per_s']:.0f}/s"
        )
        progress.update()

    if not opts.no_references:
        echo, echo_url = start_echo()
        try:
            for _, _, v, c in [p for p in plan if p[0] == "echo"]:
                with measured(None) as cpu:
                    summary = run_wrk(echo_url, "echo", "e", c, seconds, v)
                summary["server_cpu_s"] = {"echo": None}
                record(
                    {
                        "scenario": "echo",
                        "nodes": 1,
                        "value_bytes": v,
                        "clients": c,
                        **summary,
                        **cpu,
                    }
                )
        finally:
            echo.kill()
            echo.wait()
        pso = PySyncObjCluster()
        pso.start()
        try:
            for _, _, v, c in [p for p in plan if p[0] == "pysyncobj"]:
                command = {
                    "concurrency": c,
                    "seconds": seconds,
                    "value_bytes": v,
                    "prefix": f"p{v}-{c}",
                }
                record(
                    {
                        "scenario": "pysyncobj",
                        "nodes": 3,
                        "value_bytes": v,
                        "clients": c,
                        **pso.run(command),
                    }
                )
        finally:
            pso.stop()

    latency_at_half: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="trioraft-bench-", dir=opts.data) as tmp:
        for transport, n in configs:
            cluster = Cluster(n, Path(tmp) / f"cluster-{transport}-{n}", transport)
            cluster.start()
            acknowledged: list[tuple[str, str]] = []  # (key, value) that must survive
            try:
                urls = list(cluster.urls.values())
                runs = [p for p in plan if p[1:2] + p[4:] == (n, transport)]
                for scenario, _, v, c, _ in runs:
                    prefix = f"{scenario}-{n}-{v}-{c}"
                    url = cluster.urls[cluster.leader()]  # leadership may move under load
                    with measured(cluster) as cpu:
                        if scenario == "embedded":
                            summary = run_embedded(url, prefix, c, seconds, v)
                        elif scenario == "remote":
                            summary = run_wrk(url, "put", prefix, c, seconds, v)
                        elif scenario == "coalesced":
                            summary = run_coalesced(urls, "put", prefix, c, seconds, v)
                        else:
                            summary = run_coalesced(
                                urls, "get", f"coalesced-{n}-{v}-1", c, seconds, v
                            )
                    if scenario == "remote" and not opts.no_references:
                        # The machine's speed drifts over a run: the echo reference is
                        # measured again right after each remote row, for its ratio; for
                        # the rows the target uses, in several alternating pairs.
                        pairs = opts.pairs if n == 3 and v == opts.values[0] else 1
                        summary.update(alternating(summary, url, prefix, c, seconds, v, pairs))
                    if scenario == "reads" and n == 3 and v == opts.values[0]:
                        # The reads target's ratio, from several alternating pairs.
                        writes = next(
                            (
                                r
                                for r in reversed(rows)
                                if (r["scenario"], r["nodes"], r["value_bytes"], r["clients"])
                                == ("coalesced", n, v, c)
                                and r["peer_transport"] == transport
                            ),
                            None,
                        )
                        if writes is not None:
                            paired = reads_against_writes(
                                writes, summary, urls, n, c, seconds, v, opts.pairs
                            )
                            summary.update(paired)
                    sample = summary.get("acknowledged_op")  # embedded and coalesced loads
                    if scenario == "remote" and summary["not_ok"] == 0:  # else: which were OK?
                        acknowledged.append((f"{prefix}-0-{summary['requests'] // 2}", "x" * v))
                    elif scenario in ("embedded", "coalesced") and sample is not None:
                        acknowledged.append((f"{prefix}-{sample}", "x" * v))
                    record(
                        {
                            "scenario": scenario,
                            "nodes": n,
                            "value_bytes": v,
                            "clients": c,
                            "peer_transport": transport,
                            **summary,
                            **cpu,
                        }
                    )
                peak = max(
                    (
                        r
                        for r in rows
                        if r["scenario"] == "embedded"
                        and r["nodes"] == n
                        and r["value_bytes"] == opts.values[0]
                        and r.get("peer_transport") == transport
                    ),
                    key=lambda r: r["ops_per_s"],
                    default=None,
                )
                if peak is not None:
                    # Open loop at fractions of the peak: the targets are p50 at 1/2 and 3/4.
                    url = cluster.urls[cluster.leader()]
                    for fraction in (0.125, 0.25, 0.5, 0.75):
                        rate = round(peak["ops_per_s"] * fraction)
                        prefix = f"open-{n}-{fraction}"
                        with measured(cluster) as cpu:
                            load = run_embedded(url, prefix, 0, seconds, opts.values[0], rate)
                        latency_at_half.append(
                            {
                                "system": "trioraft embedded",
                                "nodes": n,
                                "peer_transport": transport,
                                "fraction_of_peak": fraction,
                                **load,
                                **cpu,
                            }
                        )
                    if n == 3 and not opts.no_references and transport == configs[0][0]:
                        pso = PySyncObjCluster()
                        pso.start()
                        try:
                            command = {
                                "concurrency": 0,
                                "seconds": seconds,
                                "rate": round(peak["ops_per_s"] / 2),
                                "value_bytes": opts.values[0],
                                "prefix": "half",
                            }
                            latency_at_half.append(
                                {"system": "pysyncobj", "nodes": 3, **pso.run(command)}
                            )
                        finally:
                            pso.stop()
                progress.update()
                cluster.kill()  # a crash of every server at once
                restart_started = time.monotonic()
                cluster.start()
                cluster.leader(timeout=60)
                restarted_in = time.monotonic() - restart_started
                missing = check_durable(urls, acknowledged)
                durability.append(
                    {
                        "nodes": n,
                        "peer_transport": transport,
                        "checked": len(acknowledged),
                        "missing": missing,
                        "restart_s": round(restarted_in, 2),
                    }
                )
                progress.update()
            finally:
                cluster.stop()
    progress.close()

    side_by_side = None
    if opts.side_by_side:
        side_args = ["--seconds", str(seconds), "--rounds", str(opts.pairs), "--systems"]
        side_args += [*sidebyside.DEFAULT_SYSTEMS, sidebyside.LEASE_SYSTEM]
        side_args += [sidebyside.INSECURE_SYSTEM]  # what peer authentication costs
        side_args += ["--data", str(opts.data)] if opts.data else []
        side_by_side = sidebyside.run(sidebyside.build_parser().parse_args(side_args))

    etcd_best = None
    if side_by_side is not None:
        etcd_best = max(
            (r["ops_per_s"] for r in side_by_side["rows"] if r["system"] == "etcd"), default=None
        )
    report = {
        "suite": "trioraft",
        "time": stamp,
        "seconds_per_run": seconds,
        "cpus": os.cpu_count(),
        "rows": rows,
        "latency_at_half_peak": latency_at_half,
        "durability": durability,
        "ratios": {t: ratios(rows, latency_at_half, t, etcd_best) for t in opts.peer_transport},
        "side_by_side": side_by_side,
    }
    opts.out.mkdir(parents=True, exist_ok=True)
    path = opts.out / f"suite-{stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    plot(report, opts.out / f"suite-{stamp}.png")
    print(json.dumps(report["ratios"], indent=2))
    if side_by_side is not None:
        print(sidebyside.table(side_by_side))
    print(json.dumps(report["durability"]))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    if any(d["missing"] for d in durability):
        sys.exit("acknowledged writes were lost")


def check_durable(urls: list[str], acknowledged: list[tuple[str, str]]) -> list[str]:
    """The acknowledged keys that do not read back (version 1, the value written)."""
    missing = []
    for key, value in acknowledged:
        for _ in range(100):
            replies = []
            for url in urls:
                try:
                    replies.append(httpx.post(f"{url}/get", json={"key": key}, timeout=5).json())
                except httpx.HTTPError:
                    continue
            answered = [r for r in replies if r.get("err") != "WrongLeader"]
            if answered:
                if answered[0].get("value") != value or answered[0].get("version") != 1:
                    missing.append(key)
                break
            time.sleep(0.1)
        else:
            missing.append(key)
    return missing


def best(
    rows: list[dict],
    scenario: str,
    nodes: int,
    value: int,
    clients: int | None = None,
    transport: str | None = None,
):
    candidates = [
        r
        for r in rows
        if r["scenario"] == scenario
        and r["nodes"] == nodes
        and r["value_bytes"] == value
        and (clients is None or r["clients"] == clients)
        and r.get("peer_transport") in (None, transport)
        and not r.get("not_ok")  # wrk counts refused requests too
    ]
    return max((r["ops_per_s"] for r in candidates), default=None)


def ratios(
    rows: list[dict], latency_at_half: list[dict], transport: str, etcd_best: float | None = None
) -> dict:
    """The issues' targets, as measured side by side in this run (3 nodes, smallest value,
    peers over ``transport``); ``etcd_best``: etcd's most puts per second in the side-by-side
    rows (any number of connections), if they ran."""
    values = sorted({r["value_bytes"] for r in rows})
    if not values:
        return {}
    v = values[0]
    echo = best(rows, "echo", 1, v)
    pso = best(rows, "pysyncobj", 3, v)
    embedded = best(rows, "embedded", 3, v, transport=transport)
    remote = best(rows, "remote", 3, v, transport=transport)
    coalesced = best(rows, "coalesced", 3, v, clients=256, transport=transport)
    reads = best(rows, "reads", 3, v, clients=256, transport=transport)
    paired = [
        r
        for r in rows
        if r["scenario"] == "reads"
        and r["nodes"] == 3
        and r["clients"] == 256
        and r.get("peer_transport") == transport
        and "reads_median_per_s" in r
    ]
    # Alternating medians where the run has them (a run from before: the best samples).
    reads_and_writes = (
        (paired[-1]["reads_median_per_s"], paired[-1]["writes_median_per_s"])
        if paired
        else (reads, coalesced)
    )

    def open_loop(fraction: float) -> dict | None:
        return next(
            (
                r
                for r in latency_at_half
                if r["system"] == "trioraft embedded"
                and r["nodes"] == 3
                and r["peer_transport"] == transport
                and r.get("fraction_of_peak", 0.5) == fraction
            ),
            None,
        )

    half, three_quarters = open_loop(0.5), open_loop(0.75)
    pso_half = next((r for r in latency_at_half if r["system"] == "pysyncobj"), None)

    def ratio(a, b):
        return round(a / b, 2) if a and b else None

    remote_rows = [
        r
        for r in rows
        if r["scenario"] == "remote"
        and r["nodes"] == 3
        and r["value_bytes"] == v
        and r.get("peer_transport") == transport
        and r.get("echo_adjacent_per_s")
    ]
    adjacent_echo = max((r["echo_adjacent_per_s"] for r in remote_rows), default=None)

    def median_rate(row: dict) -> float | None:
        if "remote_median_per_s" in row:
            return row["remote_median_per_s"]
        return None if row["not_ok"] else row["ops_per_s"]  # a run from before the pairs

    remote_median = max((m for r in remote_rows if (m := median_rate(r)) is not None), default=None)

    return {
        "peer_transport": transport,
        "value_bytes": v,
        "echo_peak_per_s": echo,
        "pysyncobj_peak_per_s": pso,
        "embedded_peak_per_s": embedded,
        "embedded_vs_pysyncobj": ratio(embedded, pso),
        "embedded_p50_ms_at_half_peak": half and half["p50_ms"],
        "embedded_p50_ms_at_three_quarters_peak": three_quarters and three_quarters["p50_ms"],
        "embedded_open_loop_p50_ms_by_rate": {
            r["offered_per_s"]: r["p50_ms"]
            for r in latency_at_half
            if r["system"] == "trioraft embedded"
            and r["nodes"] == 3
            and r["peer_transport"] == transport
        },
        "pysyncobj_p50_ms_at_same_rate": pso_half and pso_half["p50_ms"],
        "remote_one_op_per_request_vs_echo": ratio(remote, echo),
        "echo_peak_beside_remote_per_s": adjacent_echo,
        "remote_one_op_per_request_vs_echo_beside_it": ratio(remote_median, adjacent_echo),
        "coalesced_256_vs_echo": ratio(coalesced, echo),
        "reads_256_vs_writes_256_coalesced": ratio(*reads_and_writes),
        "etcd_best_per_s": etcd_best,
        "coalesced_256_vs_etcd_best": ratio(coalesced, etcd_best),
        "embedded_peak_vs_etcd_best": ratio(embedded, etcd_best),
    }


def table(report: dict) -> str:
    """Markdown: ops/s (p50 ms) per scenario and client count for 3 nodes and the smallest
    value, then the issue's ratios per peer transport."""
    rows = [r for r in report["rows"] if r["nodes"] in (1, 3)]
    v = min(r["value_bytes"] for r in rows)
    clients = sorted({r["clients"] for r in rows})
    lines = [
        f"| 3 nodes, {v} B; clients: | peers | " + " | ".join(map(str, clients)) + " |",
        "|---|---|" + "---:|" * len(clients),
    ]
    names = {
        "echo": "echo endpoint (reference)",
        "pysyncobj": "PySyncObj (reference)",
        "embedded": "embedded writes",
        "remote": "remote, one op per request",
        "coalesced": "remote, coalescing client",
        "reads": "reads, coalescing client",
    }
    for scenario, name in names.items():
        for transport in ("-", "http", "tcp"):
            cells = []
            for c in clients:
                match = [
                    r
                    for r in rows
                    if r["scenario"] == scenario
                    and r["value_bytes"] == v
                    and r["clients"] == c
                    and r.get("peer_transport", "-") == transport
                ]
                if match:
                    row = match[0]
                    failed = "*" if row.get("not_ok") or row.get("errors") else ""
                    cells.append(f"{row['ops_per_s']:,.0f} ({row['p50_ms']:.3g}){failed}")
            if cells:
                lines.append(f"| {name} | {transport} | " + " | ".join(cells) + " |")
    lines += ["", "\\* some ops failed: see the row's `not_ok` or `errors` in the JSON"]
    lines += ["", "| ratio | " + " | ".join(report["ratios"]) + " |"]
    lines.append("|---|" + "---:|" * len(report["ratios"]))
    keys = next(iter(report["ratios"].values())).keys()
    for key in keys:
        values = [str(report["ratios"][t].get(key)) for t in report["ratios"]]
        lines.append(f"| {key} | " + " | ".join(values) + " |")
    if report.get("side_by_side"):
        lines += ["", sidebyside.table(report["side_by_side"])]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    values = sorted({r["value_bytes"] for r in rows})
    fig, axes = plt.subplots(3, len(values), figsize=(6 * len(values), 12), squeeze=False)
    series = sorted({(r["scenario"], r["nodes"], r.get("peer_transport", "")) for r in rows})
    for col, v in enumerate(values):
        for scenario, nodes, transport in series:
            points = sorted(
                (
                    (r["clients"], r)
                    for r in rows
                    if (r["scenario"], r["nodes"], r.get("peer_transport", ""), r["value_bytes"])
                    == (scenario, nodes, transport, v)
                ),
                key=lambda p: p[0],
            )
            if not points:
                continue
            xs = [c for c, _ in points]
            label = scenario if scenario == "echo" else f"{scenario} {nodes}n {transport}".strip()
            style = "--" if scenario in ("echo", "pysyncobj") else "-"
            color = plt.cm.tab20.colors[series.index((scenario, nodes, transport)) % 20]
            for row, metric in enumerate(["ops_per_s", "p50_ms", "p99_ms"]):
                ys = [r[metric] for _, r in points]
                axes[row][col].plot(xs, ys, style, marker="o", color=color, label=label)
        for row, title in enumerate(["throughput (ops/s)", "p50 latency (ms)", "p99 latency (ms)"]):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("concurrent clients")
            ax.set_title(f"{title}, {v}-byte values")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][col].legend(fontsize=7)
    fig.suptitle(f"trioraft benchmark suite {report['time']} ({report['cpus']} CPUs, fsync on)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--plot":  # re-plot a saved report
        saved = Path(sys.argv[2])
        plot(json.loads(saved.read_text()), saved.with_suffix(".png"))
    elif len(sys.argv) == 3 and sys.argv[1] == "--table":
        print(table(json.loads(Path(sys.argv[2]).read_text())))
    elif len(sys.argv) >= 2 and sys.argv[1] == "--quick":
        sidebyside.main(quick_args(sys.argv[2:]))
    else:
        main()
