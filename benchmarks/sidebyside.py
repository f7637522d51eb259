"""trioraft side by side with etcd and the machine's limits, in alternating rounds.

    python benchmarks/sidebyside.py [--seconds 1] [--rounds 3] [--loads 1 16 64]
                                    [--systems echo echo-ours raw-echo etcd trioraft-http
                                               trioraft-tcp]
                                    [--against DIR] [--no-python-clients] [--no-gets]
                                    [--data DIR] [--out DIR]
    python benchmarks/sidebyside.py --table REPORT.json     # a saved run's tables

Every system runs at once, each as its own processes on loopback, fsync on:
- ``echo``: the quart-trio echo endpoint (``echo_server.py``), this HTTP stack's floor;
- ``echo-ours``: the same Quart echo served as trioraft serves its nodes' apps
  (``echo_server.py --ours``: replies written on the spot, one idle timer per connection),
  the floor of one request to a node;
- ``asgi-echo``: the same echo as a plain ASGI app on Hypercorn, no Quart (not run unless
  named in ``--systems``);
- ``raw-echo``: a raw trio TCP server answering each HTTP request with its body
  (``raw_echo.py``), the floor of trio's sockets under the same load;
- ``etcd``: a 3-member etcd cluster (``etcd`` on the PATH, its defaults: fsync on), one put
  per request through its JSON gateway (``POST /v3/kv/put``); skipped with a note when
  ``etcd`` is absent;
- ``trioraft-tcp``: three ``trioraft node`` processes as the README starts them (an
  authenticated cluster, ``tcp://`` peers: the recommended transport, the one ``trioraft
  cluster`` uses); ``trioraft-http``: the same with ``http://`` peers;
  ``trioraft-tcp-lease`` (only when named): ``trioraft-tcp`` with ``--lease-reads 0.25``;
  ``trioraft-tcp-insecure`` (only when named): ``trioraft-tcp`` with ``--insecure`` (no peer
  authentication), for what authentication costs;
- ``--against DIR`` adds ``trioraft-http@B`` and ``trioraft-tcp@B`` beside whichever of the
  two runs: the same nodes run from another checkout of the library (``DIR`` holds its
  ``trioraft`` package), for a change's A/B in the same run; their Python client rows use
  that checkout's client.

Every load is wrk sending one op per request to the leader with ``C`` connections (``1``:
sequential latency) for ``--seconds``. A round runs every load on every system, in an
order rotated from round to round; the rows are the medians over rounds of ops/s, p50 and
p99, and the cluster's CPU seconds per op (the sum of its processes' CPU time deltas over the
sample, divided by the ops). A sample in which wrk saw a failed request (a leader change)
is left out of its row's medians. After the put loads, each round runs ``get c=1`` and
``get c=16`` on every trioraft cluster (unless ``--no-gets``; 16 only if it is among the
loads): one linearizable get per request (ReadIndex: a heartbeat round, shared by the gets
waiting for it; with lease reads, none) of 100 keys written before the first round, for the
sequential get's p50 and the gets per second beside the echo endpoint's. In each round, after the
wrk loads, the Python clients, one task doing one op at a time, in the same rotated order:
``ClusterClient`` against each trioraft cluster, and a bare httpx client against the echo
endpoint, with the client process's own CPU per op.
Then every trioraft node is killed (SIGKILL) and restarted, and a sample of the puts wrk
saw acknowledged must read back. Finally the median of many appends + fsync of a small record
in the data directory's filesystem. Prints a Markdown table and writes the JSON into ``--out``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from _load import pid_cpu

from trioraft.kv.node import free_ports

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable

#: The systems run unless ``--systems`` names others.
DEFAULT_SYSTEMS = ["echo", "echo-ours", "raw-echo", "etcd", "trioraft-http", "trioraft-tcp"]
#: ``trioraft-tcp`` with lease reads (``trioraft node --lease-reads``): gets skip the
#: heartbeat round while the lease holds.
LEASE_SYSTEM = "trioraft-tcp-lease"
LEASE = ("--lease-reads", "0.25")
#: ``trioraft-tcp`` without peer authentication (``trioraft node --insecure``).
INSECURE_SYSTEM = "trioraft-tcp-insecure"
#: The get loads' connections (those among ``--loads``).
GET_LOADS = (1, 16)
#: Keys the get loads read (written once, before the first round).
GET_KEYS = 100


@dataclass
class System:
    """A running system under test: where wrk sends its load and which processes to meter."""

    name: str
    url: str  # the leader's client URL (for clusters)
    wrk_script: str  # wrk_kv.lua or wrk_etcd.lua
    wrk_op: str  # "put" or "echo" (wrk_kv.lua's first argument)
    pids: list[int] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)  # every member's client URL (trioraft)
    leader: object = None  # a callable answering the leader's URL now, for clusters
    restart: object = None  # for trioraft: kill every node (SIGKILL) and start them again
    library: Path | None = None  # the checkout its nodes (and its Python client) run from

    def cpu(self) -> float:
        return sum(pid_cpu(p) for p in self.pids)

    def target(self) -> str:
        if callable(self.leader):
            self.url = self.leader()
        return self.url


def wait_for(predicate, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = predicate()
        except (httpx.HTTPError, OSError, ValueError, KeyError):
            found = None
        if found:
            return found
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def echo_server(script: str, name: str, op: str, *extra: str) -> Iterator[System]:
    (port,) = free_ports(1)
    proc = subprocess.Popen(
        [PYTHON, str(HERE / script), "--listen", f"127.0.0.1:{port}", *extra],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.post(f"{url}/echo", content=b"{}", timeout=1).is_success, 30, name)
        yield System(name, url, "wrk_kv.lua", op, [proc.pid])
    finally:
        stop_all([proc])


def etcd_leader(urls: list[str]) -> str:
    for url in urls:
        status = httpx.post(f"{url}/v3/maintenance/status", json={}, timeout=1).json()
        if status.get("leader") and status["leader"] == status["header"]["member_id"]:
            return url
    raise ValueError("no etcd leader yet")


@contextmanager
def etcd_cluster(directory: Path, n: int = 3) -> Iterator[System]:
    """``n`` etcd members on loopback in their default configuration (fsync on)."""
    names = [f"m{i + 1}" for i in range(n)]
    ports = free_ports(2 * n)
    client = {m: f"http://127.0.0.1:{p}" for m, p in zip(names, ports[:n], strict=True)}
    peer = {m: f"http://127.0.0.1:{p}" for m, p in zip(names, ports[n:], strict=True)}
    initial = ",".join(f"{m}={peer[m]}" for m in names)
    procs = []
    try:
        for m in names:
            log = open(directory / f"etcd-{m}.log", "wb")  # noqa: SIM115 (closed with the process)
            procs.append(
                subprocess.Popen(
                    [
                        "etcd",
                        f"--name={m}",
                        f"--data-dir={directory / f'etcd-{m}'}",
                        f"--listen-client-urls={client[m]}",
                        f"--advertise-client-urls={client[m]}",
                        f"--listen-peer-urls={peer[m]}",
                        f"--initial-advertise-peer-urls={peer[m]}",
                        f"--initial-cluster={initial}",
                        "--initial-cluster-state=new",
                        "--initial-cluster-token=sidebyside",
                        "--logger=zap",
                        "--log-level=error",
                    ],
                    stdout=log,
                    stderr=log,
                )
            )
            log.close()
        urls = list(client.values())
        leader = wait_for(lambda: etcd_leader(urls), 60, "an etcd leader")
        yield System(
            "etcd",
            str(leader),
            "wrk_etcd.lua",
            "put",
            [p.pid for p in procs],
            urls,
            leader=lambda: etcd_leader(urls),
        )
    finally:
        stop_all(procs)


def trioraft_leader(urls: list[str]) -> str:
    for url in urls:
        if httpx.get(f"{url}/status", timeout=1).json().get("role") == "leader":
            return url
    raise ValueError("no trioraft leader yet")


def node_args(
    i: str,
    client: dict[str, str],
    peer_port: dict[str, int],
    directory: Path,
    transport: str,
    hardened: bool,
    token: Path | None,
) -> list[str]:
    """``trioraft node`` arguments for node ``i`` of the nodes ``client`` names (their
    client URLs), on loopback, data under ``directory``, in the form its checkout takes:
    since the hardening (``hardened``), ``--peer-listen``, ``--log-level`` and the cluster
    token file ``token`` (``None``: ``--insecure``); before it, ``--peer-port`` alone."""
    args = ["--id", i, "--listen", client[i].removeprefix("http://")]
    args += ["--data-dir", str(directory / f"node-{i}")]
    if hardened:
        args += ["--peer-listen", f"127.0.0.1:{peer_port[i]}", "--log-level", "warning"]
        args += ["--cluster-token-file", str(token)] if token is not None else ["--insecure"]
    else:
        args += [f"--peer-port={peer_port[i]}"]
    for j in client:
        if j != i:
            args += [f"--peer={j}={transport}://127.0.0.1:{peer_port[j]}"]
            args += [f"--client-url={j}={client[j]}"]
    return args


@contextmanager
def trioraft_cluster(
    directory: Path,
    name: str,
    transport: str,
    library: Path | None,
    n: int = 3,
    extra: tuple[str, ...] = (),
    authenticated: bool = True,
) -> Iterator[System]:
    """``n`` ``trioraft node`` processes, as the README starts them (an authenticated
    cluster, unless not ``authenticated``: ``--insecure``); peers over ``transport``; run
    from the checkout ``library`` if given; each node with the flags ``extra`` too. A
    checkout from before the hardening (no ``--peer-listen``) gets the command line it
    took then: ``--peer-port``, no authentication, no ``--log-level``."""
    hardened = "--peer-listen" in ((library or HERE.parent) / "trioraft" / "cli.py").read_text()
    ids = [str(i + 1) for i in range(n)]
    ports = free_ports(2 * n)
    client = {i: f"http://127.0.0.1:{p}" for i, p in zip(ids, ports[:n], strict=True)}
    peer_port = dict(zip(ids, ports[n:], strict=True))
    directory.mkdir(parents=True, exist_ok=True)
    token = directory / "cluster-token"
    token.write_text(base64.b64encode(os.urandom(32)).decode())
    env = dict(os.environ)
    if library is not None:
        env["PYTHONPATH"] = str(library)
    procs: list[subprocess.Popen] = []

    def launch() -> None:
        for i in ids:
            cluster_token = token if authenticated else None
            args = node_args(i, client, peer_port, directory, transport, hardened, cluster_token)
            args += extra
            log = open(directory / f"node-{i}.log", "ab")  # noqa: SIM115 (closed with the process)
            procs.append(
                subprocess.Popen(
                    [PYTHON, "-m", "trioraft.cli", "node", *args],
                    stdout=log,
                    stderr=log,
                    env=env,
                    cwd=directory,  # so that this checkout's package is not on the path
                )
            )
            log.close()

    urls = list(client.values())

    def crash_and_restart() -> None:
        """SIGKILL every node at once, start them again on their data directories."""
        for proc in procs:
            proc.kill()
            proc.wait()
        procs.clear()
        launch()
        system.pids = [p.pid for p in procs]
        wait_for(lambda: trioraft_leader(urls), 60, f"a leader of {name} after the restart")

    try:
        launch()
        leader = wait_for(lambda: trioraft_leader(urls), 60, f"a leader of {name}")
        system = System(
            name,
            str(leader),
            "wrk_kv.lua",
            "put",
            [p.pid for p in procs],
            urls,
            leader=lambda: trioraft_leader(urls),
            restart=crash_and_restart,
            library=library,
        )
        yield system
    finally:
        stop_all(procs)


def start_together(stack: ExitStack, managers: list) -> list[System]:
    """Enter every context manager at once (each waits for its processes), in threads; each
    one entered is exited with ``stack``, even if another failed to start."""
    with ThreadPoolExecutor(len(managers)) as pool:
        futures = [pool.submit(m.__enter__) for m in managers]
    systems, failure = [], None
    for manager, future in zip(managers, futures, strict=True):
        try:
            systems.append(future.result())
        except Exception as exc:
            failure = failure or exc
            continue
        stack.push(manager.__exit__)
    if failure is not None:
        raise failure
    return systems


def run_wrk(
    system: System, connections: int, seconds: float, prefix: str, value: int, op: str = ""
) -> dict:
    """One wrk sample of ``system``'s op (or ``op``: ``get`` reads keys ``PREFIX-1..100``)."""
    url = system.target()
    script = HERE / system.wrk_script
    extra = (
        [prefix, str(value)]
        if system.wrk_script == "wrk_etcd.lua"
        else [op or system.wrk_op, prefix, str(value)]
    )
    before = system.cpu()
    result = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
            "--",
            *extra,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    cpu = system.cpu() - before
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    summary["ops_per_s"] = round(summary["requests"] / summary["seconds"], 1)
    summary["cpu_s"] = round(cpu, 3)
    summary["cpu_ms_per_op"] = round(1000 * cpu / max(1, summary["requests"]), 4)
    return summary


class PythonClient:
    """A ``load_client.py --serve`` process kept for the whole run: it imports and opens its
    client once (a process per sample would spend more time starting than measuring), then
    runs one sequential load (one task, one op at a time) per request."""

    def __init__(self, system: System, client: str, value: int) -> None:
        self.system, self.client = system, client
        env = dict(os.environ)
        if system.library is not None:  # the client of the checkout under test, too
            env["PYTHONPATH"] = str(system.library)
        urls = system.urls or [system.url]
        self.proc = subprocess.Popen(
            [
                PYTHON,
                str(HERE / "load_client.py"),
                *("--client", client, "--urls", ",".join(urls), "--concurrency", "1"),
                *("--value-bytes", str(value), "--serve"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def run(self, seconds: float, prefix: str) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        before = self.system.cpu()
        self.proc.stdin.write(json.dumps({"prefix": prefix, "seconds": seconds}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.client} client of {self.system.name} exited")
        cpu = self.system.cpu() - before
        summary = json.loads(line)
        ops = max(1, summary["ops"])
        summary["server_cpu_ms_per_op"] = round(1000 * cpu / ops, 4)  # warm-up included: rough
        summary["client_cpu_ms_per_op"] = round(1000 * summary["cpu_s"] / ops, 4)
        return summary

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def check_durable(system: System, samples: dict[tuple[str, str], list[dict]]) -> dict:
    """Kill every node of ``system`` at once and restart it; then a sample of the puts wrk
    saw acknowledged (the middle key of each sample with no failed request) must read back."""
    acknowledged = []
    for (name, load), found in samples.items():
        if name != system.name or not load.startswith("wrk c="):
            continue
        for r, sample in enumerate(found):
            if sample["not_ok"] == 0 and sample["requests"] > 1:
                acknowledged.append(
                    f"r{r}c{load.removeprefix('wrk c=')}-0-{sample['requests'] // 2}"
                )
    started = time.monotonic()
    assert callable(system.restart)
    system.restart()
    restart_s = time.monotonic() - started
    missing = []
    for key in acknowledged:
        reply = wait_for(
            lambda key=key: (
                httpx.post(f"{system.target()}/get", json={"key": key}, timeout=5)
                .json()
                .get("version")
            ),
            30,
            f"{key} from {system.name}",
        )
        if reply != 1:
            missing.append(key)
    print(
        f"{system.name}: killed, restarted in {restart_s:.1f} s, {len(acknowledged)} "
        f"acknowledged keys checked, missing: {missing}",
        flush=True,
    )
    return {
        "system": system.name,
        "checked": len(acknowledged),
        "missing": missing,
        "restart_s": round(restart_s, 2),
    }


def fsync_cost(directory: Path, count: int = 300, record: int = 64) -> dict:
    """Append ``record`` bytes and fsync, ``count`` times, in ``directory``'s filesystem."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        data = b"x" * record
        for _ in range(count):
            os.write(fd, data)
            started = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return {
        "count": count,
        "record_bytes": record,
        "p50_ms": round(1000 * times[len(times) // 2], 3),
        "p99_ms": round(1000 * times[int(0.99 * len(times))], 3),
    }


def median_row(samples: list[dict]) -> dict:
    good = [s for s in samples if not s.get("not_ok") and not s.get("errors")] or samples
    keys = ["ops_per_s", "p50_ms", "p99_ms", "cpu_ms_per_op"]
    keys += ["client_cpu_ms_per_op", "server_cpu_ms_per_op"]
    row = {k: round(statistics.median(s[k] for s in good), 3) for k in keys if k in good[0]}
    row["samples"] = len(samples)
    row["failed_samples"] = len(samples) - len(good) if good is not samples else len(samples)
    row["ops_per_s_samples"] = [s["ops_per_s"] for s in samples]
    return row


def run(opts: argparse.Namespace) -> dict:
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed (apt-get install wrk)")
    notes: list[str] = []
    systems_wanted = list(opts.systems)
    if "etcd" in systems_wanted and shutil.which("etcd") is None:
        notes.append("etcd rows skipped: no `etcd` on the PATH (apt-get install etcd-server)")
        systems_wanted.remove("etcd")
    samples: dict[tuple[str, str], list[dict]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="trioraft-sbs-", dir=opts.data) as tmp,
        ExitStack() as stack,
    ):
        root = Path(tmp)
        managers = []
        for name in systems_wanted:
            if name == "echo":
                managers.append(echo_server("echo_server.py", name, "echo"))
            elif name == "echo-ours":
                managers.append(echo_server("echo_server.py", name, "echo", "--ours"))
            elif name == "asgi-echo":
                managers.append(echo_server("echo_server.py", name, "echo", "--bare"))
            elif name == "raw-echo":
                managers.append(echo_server("raw_echo.py", name, "echo"))
            elif name == "etcd":
                managers.append(etcd_cluster(root))
            elif name == LEASE_SYSTEM:
                managers.append(trioraft_cluster(root / name, name, "tcp", None, extra=LEASE))
            elif name == INSECURE_SYSTEM:
                managers.append(
                    trioraft_cluster(root / name, name, "tcp", None, authenticated=False)
                )
            elif name.startswith("trioraft-"):
                transport = name.removeprefix("trioraft-")
                managers.append(trioraft_cluster(root / name, name, transport, None))
                if opts.against is not None:
                    other = f"{name}@B"
                    managers.append(trioraft_cluster(root / other, other, transport, opts.against))
        systems = start_together(stack, managers)
        with ThreadPoolExecutor(len(systems)) as pool:  # warm up, all at once: connections,
            list(pool.map(lambda s: run_wrk(s, 4, 1, "warm", opts.value), systems))  # caches
        readers = [s for s in systems if s.name.startswith("trioraft") and opts.gets]
        for system in readers:  # the keys the get loads read
            for k in range(1, GET_KEYS + 1):
                httpx.post(
                    f"{system.target()}/put",
                    json={"key": f"g-{k}", "value": "x" * opts.value, "version": 0},
                    timeout=10,
                ).raise_for_status()
        python_clients: dict[int, PythonClient] = {}
        for k, system in enumerate(systems if opts.python_clients else []):
            if system.name.startswith("trioraft") or system.name == "echo":
                kind = "echo" if system.name == "echo" else "cluster"
                python_clients[k] = PythonClient(system, kind, opts.value)
                stack.callback(python_clients[k].close)
        order = list(range(len(systems)))

        def sample(r: int, system: System, connections: int, prefix: str, op: str = "") -> None:
            """One wrk sample of ``system`` (``op``: ``get``, or its own op), kept and shown."""
            summary = run_wrk(system, connections, opts.seconds, prefix, opts.value, op)
            load = f"wrk {op} c={connections}" if op else f"wrk c={connections}"
            samples.setdefault((system.name, load), []).append(summary)
            print(
                f"round {r} {system.name:>16} {load:<12} {summary['ops_per_s']:>9.1f}/s "
                f"p50 {summary['p50_ms']:.3f} ms p99 {summary['p99_ms']:.3f} ms "
                f"cpu/op {summary['cpu_ms_per_op']:.3f} ms"
                + (f" NOT OK {summary['not_ok']}" if summary["not_ok"] else ""),
                flush=True,
            )

        for r in range(opts.rounds):
            rotated = order[r % len(order) :] + order[: r % len(order)]
            for connections in opts.loads:
                for k in rotated:
                    sample(r, systems[k], connections, f"r{r}c{connections}")
            for connections in [c for c in GET_LOADS if c in opts.loads]:
                for k in rotated:
                    if systems[k] in readers:
                        sample(r, systems[k], connections, "g", "get")
            for k in rotated:
                if k not in python_clients:
                    continue
                system, client = systems[k], python_clients[k].client
                summary = python_clients[k].run(opts.seconds, f"py{r}")
                samples.setdefault((system.name, f"python {client} client, 1 task"), []).append(
                    summary
                )
                print(
                    f"round {r} {system.name:>16} python {client}: "
                    f"{summary['ops_per_s']:.1f}/s "
                    f"p50 {summary['p50_ms']:.3f} ms client cpu/op "
                    f"{summary['client_cpu_ms_per_op']:.3f} ms",
                    flush=True,
                )
        clusters = [system for system in systems if system.restart]
        with ThreadPoolExecutor(max(1, len(clusters))) as pool:  # their restarts overlap
            durability = list(pool.map(lambda system: check_durable(system, samples), clusters))
        fsync = fsync_cost(root)
    rows = [
        {"system": name, "load": load, **median_row(found)}
        for (name, load), found in samples.items()
    ]
    return {
        "suite": "sidebyside",
        "time": time.strftime("%Y%m%d-%H%M%S"),
        "cpus": os.cpu_count(),
        "seconds_per_sample": opts.seconds,
        "rounds": opts.rounds,
        "value_bytes": opts.value,
        "against": str(opts.against) if opts.against else None,
        "notes": notes,
        "fsync": fsync,
        "durability": durability,
        "rows": rows,
        "samples": [
            {"system": name, "load": load, "samples": found}
            for (name, load), found in samples.items()
        ],
    }


def table(report: dict) -> str:
    """Markdown: one line per system and load, then the ratios the issues state."""
    lines = [
        f"{report['rounds']} alternating rounds of {report['seconds_per_sample']} s, medians; "
        f"{report['value_bytes']} B values; fsync on everywhere.",
        "",
        "| system | load | ops/s | p50 ms | p99 ms | server CPU ms/op | client CPU ms/op |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        cpu = row.get("cpu_ms_per_op", row.get("server_cpu_ms_per_op"))
        client = row.get("client_cpu_ms_per_op")
        lines.append(
            f"| {row['system']} | {row['load']} | {row['ops_per_s']:,.0f} | {row['p50_ms']:.3f} "
            f"| {row['p99_ms']:.3f} | {'-' if cpu is None else f'{cpu:.3f}'} "
            f"| {'-' if client is None else f'{client:.3f}'} |"
        )
    fsync = report["fsync"]
    lines.append(
        f"| one fsync ({fsync['record_bytes']} B append, {fsync['count']} times) | - | - "
        f"| {fsync['p50_ms']:.3f} | {fsync['p99_ms']:.3f} | - | - |"
    )
    for note in report["notes"]:
        lines += ["", f"Note: {note}"]
    for check in report.get("durability", []):
        lines += [
            "",
            f"Durability: {check['system']} killed (SIGKILL, every node) and restarted in "
            f"{check['restart_s']} s; {check['checked']} acknowledged keys checked, "
            f"missing: {check['missing'] or 'none'}",
        ]
    by = {(r["system"], r["load"]): r for r in report["rows"]}
    ratios = []

    def ratio(label: str, a: tuple[str, str], b: tuple[str, str], key: str) -> None:
        if a in by and b in by and by[b].get(key) and by[a].get(key) is not None:
            ratios.append(f"| {label} | {by[a][key] / by[b][key]:.2f} |")

    for name in dict.fromkeys(r["system"] for r in report["rows"]):
        if not name.startswith("trioraft"):
            continue
        ratio(
            f"{name} sequential p50 / etcd's (target ≤ 1.5)",
            (name, "wrk c=1"),
            ("etcd", "wrk c=1"),
            "p50_ms",
        )
        ratio(
            f"{name} sequential p99 / etcd's (target ≤ 2)",
            (name, "wrk c=1"),
            ("etcd", "wrk c=1"),
            "p99_ms",
        )
        ratio(
            f"{name} sequential get p50 / echo's sequential p50 (target ≤ 1.2)",
            (name, "wrk get c=1"),
            ("echo", "wrk c=1"),
            "p50_ms",
        )
        ratio(
            f"{name} puts/s, 16 connections / echo's (target ≥ 0.9)",
            (name, "wrk c=16"),
            ("echo", "wrk c=16"),
            "ops_per_s",
        )
        ratio(
            f"{name} gets/s, 16 connections / echo's (target ≥ 0.9)",
            (name, "wrk get c=16"),
            ("echo", "wrk c=16"),
            "ops_per_s",
        )
        ratio(
            f"{name} puts/s, 16 connections / echo-ours's (the echo served as nodes serve)",
            (name, "wrk c=16"),
            ("echo-ours", "wrk c=16"),
            "ops_per_s",
        )
        ratio(
            f"{name} sequential put p50 / echo-ours's sequential p50",
            (name, "wrk c=1"),
            ("echo-ours", "wrk c=1"),
            "p50_ms",
        )
        ratio(
            f"{name} puts/s, 16 connections / etcd's",
            (name, "wrk c=16"),
            ("etcd", "wrk c=16"),
            "ops_per_s",
        )
        ratio(
            f"{name} puts/s, 64 connections / etcd's",
            (name, "wrk c=64"),
            ("etcd", "wrk c=64"),
            "ops_per_s",
        )
        ratio(
            f"{name} CPU per put, 16 connections / etcd's",
            (name, "wrk c=16"),
            ("etcd", "wrk c=16"),
            "cpu_ms_per_op",
        )
    insecure = [r["load"] for r in report["rows"] if r["system"] == INSECURE_SYSTEM]
    for load in insecure:  # what peer authentication costs (issue 17: at most 5 % of a row)
        for key, what in (("ops_per_s", "ops/s"), ("cpu_ms_per_op", "CPU/op")):
            ratio(
                f"authenticated / not (trioraft-tcp / {INSECURE_SYSTEM}), {load}, {what}",
                ("trioraft-tcp", load),
                (INSECURE_SYSTEM, load),
                key,
            )
    for name in dict.fromkeys(r["system"] for r in report["rows"] if r["system"].endswith("@B")):
        a = name.removesuffix("@B")
        for load in sorted({r["load"] for r in report["rows"] if r["system"] == name}):
            for key, what in (
                ("ops_per_s", "ops/s"),
                ("p50_ms", "p50"),
                ("cpu_ms_per_op", "CPU/op"),
            ):
                ratio(f"A/B: {a} / {name}, {load}, {what}", (a, load), (name, load), key)
    if ratios:
        lines += ["", "| ratio, from the medians above | |", "|---|---:|", *ratios]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per sample (wrk: whole s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loads", type=int, nargs="+", default=[1, 16, 64], help="connections")
    parser.add_argument(
        "--systems",
        nargs="+",
        default=DEFAULT_SYSTEMS,
    )
    parser.add_argument("--value", type=int, default=16, help="value bytes")
    parser.add_argument("--against", type=Path, default=None, help="checkout B (its trioraft/)")
    parser.add_argument("--no-python-clients", dest="python_clients", action="store_false")
    parser.add_argument("--no-gets", dest="gets", action="store_false", help="no get rows")
    parser.add_argument("--data", type=Path, default=None, help="data directories (a real disk)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--table", type=Path, default=None, help="print a saved report's table")
    return parser


def main(argv: list[str] | None = None) -> None:
    opts = build_parser().parse_args(argv)
    if opts.table is not None:
        print(table(json.loads(opts.table.read_text())))
        return
    started = time.monotonic()
    report = run(opts)
    report["wall_s"] = round(time.monotonic() - started, 1)
    opts.out.mkdir(parents=True, exist_ok=True)
    path = opts.out / f"sidebyside-{report['time']}.json"
    path.write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"wrote {path} in {report['wall_s']} s")


if __name__ == "__main__":
    main()
