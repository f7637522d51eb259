"""Operating a cluster of real ``trioraft node`` processes: readiness through a partition,
backup during writes and restore into a new cluster; offline inspection of data
directories."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx
import pytest
import trio

from tests.processes import ProcessCluster
from trioraft import ClusterClient, FileStorage, Versioned
from trioraft.kv import operate
from trioraft.kv.backup import read_backup
from trioraft.kv.node import KVNode
from trioraft.raft.log import Entry
from trioraft.raft.storage import HardState, parse_log
from trioraft.testing import RELIABLE, Network

pytestmark = pytest.mark.xdist_group("http-cluster")

TRIORAFT = [sys.executable, "-m", "trioraft"]


async def cli(*args: str) -> tuple[int, str, str]:
    result = await trio.run_process(
        [*TRIORAFT, *args], capture_stdout=True, capture_stderr=True, check=False
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def readyz(url: str) -> tuple[int, dict]:
    async with httpx.AsyncClient(timeout=1) as http:
        try:
            response = await http.get(f"{url}/readyz")
        except httpx.HTTPError:
            return 0, {}
        return response.status_code, response.json()


async def wait_ready(url: str, status: int) -> dict:
    """``url``'s /readyz once it answers ``status``; bound it with ``trio.fail_after``."""
    # Another process: polling its endpoint is the only signal there is.
    while (answer := await readyz(url))[0] != status:  # noqa: ASYNC110
        await trio.sleep(0.05)
    return answer[1]


async def test_readyz_flips_on_a_node_cut_off_from_the_majority(
    tmp_path: Path, nursery: trio.Nursery, seed: int
) -> None:
    """The peers talk through fault proxies; cutting the leader off from both others makes
    its /readyz answer 503 (with the reason) while the majority elects a leader and stays
    ready; healing brings it back to 200."""
    cluster = ProcessCluster(3, tmp_path)
    network = Network(seed, RELIABLE)
    await cluster.route_peers_through(network, nursery)
    try:
        with trio.fail_after(60):
            await cluster.start_all(nursery)
            leader = await cluster.wait_leader()
            for url in cluster.urls.values():
                await wait_ready(url, 200)
            others = [i for i in cluster.ids if i != leader]

            network.disconnect(leader, others)
            refusal = await wait_ready(cluster.urls[leader], 503)
            assert refusal["ready"] is False and "election timeout" in refusal["reason"]
            while (new_leader := await cluster.leader()) in (None, leader):  # noqa: ASYNC110
                await trio.sleep(0.05)
            for i in others:
                assert (await wait_ready(cluster.urls[i], 200))["leader"] == new_leader
            assert (await readyz(cluster.urls[leader]))[0] == 503

            network.connect(leader, others)
            back = await wait_ready(cluster.urls[leader], 200)
            assert back["role"] == "follower" and back["leader"] in others
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{cluster.urls[leader]}/healthz")).json() == {
                    "healthy": True
                }
    finally:
        await cluster.stop_all()


async def test_backup_during_writes_restores_into_a_new_cluster(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    (tmp_path / "old").mkdir()
    cluster = ProcessCluster(3, tmp_path / "old")
    servers = ",".join(cluster.urls.values())
    backup = tmp_path / "cluster.backup"
    acknowledged: list[str] = []
    try:
        with trio.fail_after(120):
            await cluster.start_all(nursery)
            await cluster.wait_leader()
            enough = trio.Event()
            stop = trio.Event()

            async def write() -> None:
                async with ClusterClient(list(cluster.urls.values())) as kv:
                    k = 0
                    while not stop.is_set():
                        await kv.put(f"key-{k}", f"value-{k}", 0)
                        acknowledged.append(f"key-{k}")
                        k += 1
                        if k == 40:
                            enough.set()

            nursery.start_soon(write)
            await enough.wait()
            before_backup = list(acknowledged)
            code, out, err = await cli("backup", str(backup), "--servers", servers)
            written_during = len(acknowledged) - len(before_backup)
            stop.set()
            assert code == 0, err
            summary = json.loads(out)
            assert summary["index"] > 0 and len(summary["sha256"]) == 64
            assert backup.stat().st_mode & 0o077 == 0  # every key is in it: owner only
        await cluster.stop_all()
        assert written_during > 0  # the backup ran while writes went on

        # A damaged or truncated backup is refused, and leaves no data directory behind.
        raw = backup.read_bytes()
        flipped = tmp_path / "flipped.backup"
        flipped.write_bytes(raw[:100] + bytes([raw[100] ^ 1]) + raw[101:])
        truncated = tmp_path / "truncated.backup"
        truncated.write_bytes(raw[: len(raw) // 2])
        for bad, what in ((flipped, "checksum"), (truncated, "truncated")):
            code, _, err = await cli(
                "restore", str(bad), "--data-dir", str(tmp_path / "x"), "--id", "1"
            )
            assert code == 1 and what in err and len(err.splitlines()) == 1
            assert not (tmp_path / "x").exists()

        new = tmp_path / "new"
        new.mkdir()
        for i in cluster.ids:
            code, out, err = await cli(
                "restore", str(backup), "--data-dir", str(new / f"node-{i}"), "--id", i
            )
            assert code == 0, err
        code, _, err = await cli(
            "restore", str(backup), "--data-dir", str(new / "node-1"), "--id", "1"
        )
        assert code == 1 and "not an empty directory" in err

        restored = ProcessCluster(3, new)
        with trio.fail_after(60):
            await restored.start_all(nursery)
            await restored.wait_leader()
            async with ClusterClient(list(restored.urls.values())) as kv:
                for key in before_backup:
                    assert await kv.get(key) == Versioned(f"value-{key[4:]}", 1)
                await kv.put("after-restore", "x", 0)
            status = await restored.status(await restored.wait_leader())
            assert status is not None and status["term"] <= 3  # a new cluster's count
            assert status["snapshot_index"] == summary["index"]
        await restored.stop_all()
    finally:
        await cluster.stop_all()


async def open_backup_download(url: str) -> tuple[trio.SocketStream, bytes]:
    """A ``GET /backup`` whose client reads no further than the reply's head (and what came
    with it): the rest waits in the node."""
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(b"GET /backup HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    while b"\r\n\r\n" not in received:
        received += await stream.receive_some(65536)
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    return stream, received


async def backup_status(http: httpx.AsyncClient, url: str) -> tuple[int, str]:
    response = await http.get(f"{url}/backup")
    return response.status_code, "" if response.is_success else response.json()["error"]


async def node_with_16_mb(nursery: trio.Nursery, directory: Path) -> tuple[KVNode, str]:
    """A one-node cluster holding 16 MB: more than the sockets' buffers hold."""
    node = KVNode("1", {}, directory, insecure=True)
    url = await nursery.start(node.serve)
    await node.raft.wait_until(lambda raft: raft.is_leader)
    async with ClusterClient([url]) as kv:
        for k in range(32):
            await kv.put(f"key-{k}", "v" * (512 << 10), 0)
    return node, url


async def test_a_node_makes_one_backup_at_a_time(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A backup holds a serialization of the whole state until its client has it: while one
    is being sent, another request is refused with 503 (so slow downloads cannot pile up
    copies of the state); once it is sent, or its client has gone, the next is served."""
    with trio.fail_after(60):
        node, url = await node_with_16_mb(nursery, tmp_path / "d")
        async with httpx.AsyncClient(timeout=30) as http:
            stalled, received = await open_backup_download(url)
            status = await backup_status(http, url)
            assert status == (503, "another backup is being made or sent: retry once it is done")

            head, _, body = received.partition(b"\r\n\r\n")
            length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(
                b"content-length:")).split(b":")[1])  # fmt: skip
            while len(body) < length:
                body += await stalled.receive_some(1 << 20)
            info, data = read_backup(body, "the first backup")
            assert info.index == node.rsm.applied_index and len(data) > 16 << 20
            while (status := await backup_status(http, url))[0] == 503:  # noqa: ASYNC110
                await trio.sleep(0.01)  # the node lets it go once the stream has ended
            assert status == (200, "")
            await stalled.aclose()

            gone, _ = await open_backup_download(url)
            await gone.aclose()  # with most of the backup unread
            while (status := await backup_status(http, url))[0] == 503:  # noqa: ASYNC110
                await trio.sleep(0.01)
            assert status == (200, "")
    assert node.metrics.backups == 4


async def test_a_backup_taken_too_slowly_is_cut(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that takes its backup slower than the node allows (here: in under 0.5 s)
    has it cut, well before the send timeout (30 s) would close a reader that stalled: the
    next backup is served. A HEAD makes no backup."""
    monkeypatch.setattr(operate, "BACKUP_MIN_SECONDS", 0.5)
    with trio.fail_after(20):
        node, url = await node_with_16_mb(nursery, tmp_path / "d")
        async with httpx.AsyncClient(timeout=30) as http:
            assert (await http.head(f"{url}/backup")).status_code == 405
            slow, _ = await open_backup_download(url)
            while (status := await backup_status(http, url))[0] == 503:  # noqa: ASYNC110
                await trio.sleep(0.05)
            assert status == (200, "")
            rest = b""
            while chunk := await slow.receive_some(1 << 20):
                rest += chunk  # the cut reply ends short of its length: the client sees it
            assert len(rest) < 16 << 20
            await slow.aclose()
    assert node.metrics.backups == 2


async def make_data_dir(directory: Path, entries: int, unsynced: int = 0) -> None:
    """A data directory as a node leaves it: a hard state and ``entries`` log records, the
    last ``unsynced`` of them appended after the last fsync."""
    storage = FileStorage(directory)
    storage.load()
    await storage.save_hard_state(HardState(2, "1"))
    records = [
        Entry(
            1 if k < 3 else 2,
            json.dumps({"o": "1", "t": k, "ops": [{"op": "get", "key": f"k{k}"}]}),
        )
        for k in range(entries)
    ]
    synced = entries - unsynced
    storage.append(1, records[:synced])
    storage.sync_blocking()
    storage.append(synced + 1, records[synced:])
    storage.close()


def entries_bytes(directory: Path, entries: int) -> bytes:
    """The first bytes of ``directory``'s log, through its ``entries``-th record."""
    raw = (directory / "log").read_bytes()
    return raw[: parse_log(raw, "log").offsets[entries]]


def unchanged(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's content and modification time (inspect must write nothing)."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


async def test_inspect_a_clean_a_torn_and_a_flipped_data_directory(tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    await make_data_dir(clean, 10)
    seen = unchanged(clean)
    code, out, err = await cli("inspect", str(clean))
    assert code == 0 and err == ""
    assert "term 2, voted for 1" in out and "entries 1..10 (10), terms 1..2" in out
    assert "synced through index 10" in out
    code, out, _ = await cli("inspect", str(clean), "--dump")
    dumped = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert code == 0 and [e["index"] for e in dumped] == list(range(1, 11))
    assert json.loads(dumped[4]["command"])["ops"] == [{"op": "get", "key": "k4"}]
    assert unchanged(clean) == seen

    torn = tmp_path / "torn"
    await make_data_dir(torn, 10, unsynced=1)
    log = torn / "log"
    size = log.stat().st_size
    os.truncate(log, size - 5)  # the last append cut short by a crash
    seen = unchanged(torn)
    code, out, err = await cli("inspect", str(torn), "--json")
    report = json.loads(out)
    assert code == 3 and report["verdict"] == "torn" and report["log"]["last_index"] == 9
    assert report["log"]["file_bytes"] - report["log"]["valid_bytes"] > 0
    assert unchanged(torn) == seen  # reported, not cut

    # Synced records cut off at a record boundary: a well-formed log, but shorter than the
    # node had synced (and acknowledged).
    cut = tmp_path / "cut"
    await make_data_dir(cut, 10)
    os.truncate(cut / "log", len(entries_bytes(cut, 7)))
    code, out, err = await cli("inspect", str(cut))
    assert code == 1 and "CORRUPT" in out and len(err.splitlines()) == 1
    assert "the records end at index 7, but this node had synced them through index 10" in err

    flipped = tmp_path / "flipped"
    await make_data_dir(flipped, 10)
    raw = bytearray((flipped / "log").read_bytes())
    raw[len(raw) // 2] ^= 0x40  # inside a record in the middle: valid records follow
    (flipped / "log").write_bytes(bytes(raw))
    seen = unchanged(flipped)
    code, out, err = await cli("inspect", str(flipped))
    assert code == 1 and "CORRUPT" in out
    assert err.startswith("trioraft inspect: storage corrupt: ") and "offset" in err
    assert len(err.splitlines()) == 1
    assert unchanged(flipped) == seen

    (clean / "hardstate").write_bytes(b"TRP1" + (clean / "hardstate").read_bytes()[4:-1] + b"x")
    code, _, err = await cli("inspect", str(clean))
    assert code == 1 and "hardstate" in err and "checksum" in err
