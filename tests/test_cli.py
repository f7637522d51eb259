"""The ``trioraft`` command line, run as real processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from tests.processes import ProcessCluster
from trioraft import ClusterClient, KVClient, Versioned

TRIORAFT = [sys.executable, "-m", "trioraft"]


async def cli(*args: str) -> tuple[int, str]:
    result = await trio.run_process([*TRIORAFT, *args], capture_stdout=True, check=False)
    return result.returncode, result.stdout.decode()


async def test_kvserver_process_and_client_commands() -> None:
    async with trio.open_nursery() as nursery:
        command = [*TRIORAFT, "kvserver", "--listen", "127.0.0.1:0"]
        process = await nursery.start(
            partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
        )
        line = b""
        while not line.endswith(b"\n"):
            line += await process.stdout.receive_some(1)
        url = line.decode().split()[-1]
        assert url.startswith("http://127.0.0.1:")

        assert await cli("put", "k", "v1", "--version", "0", "--servers", url) == (
            0,
            json.dumps({"key": "k", "err": "OK", "version": 1}) + "\n",
        )
        code, out = await cli("put", "k", "v2", "--version", "0", "--servers", url)
        assert (code, json.loads(out)["err"]) == (1, "Version")
        code, out = await cli("get", "k", "--servers", url)
        assert json.loads(out) == {
            "key": "k",
            "value": "v1",
            "version": 1,
            "mod_index": 1,
            "create_index": 1,
        }
        await check_delete_range_and_txn(url)
        code, out = await cli(
            "lock", "L", "--servers", url, "--", sys.executable, "-c", "print(42)"
        )
        assert (code, out) == (0, "42\n")
        async with KVClient(url) as kv:
            assert await kv.get("L") == Versioned("", 2)  # taken, then given back

        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await process.wait() == 0


async def check_delete_range_and_txn(url: str) -> None:
    """``trioraft delete``, ``range`` and ``txn`` against the server at ``url``, which holds
    only "k" at version 1."""
    for key in ("dir/a", "dir/b", "other"):
        assert (await cli("put", key, key.upper(), "--version", "0", "--servers", url))[0] == 0
    code, out = await cli("range", "dir/", "--limit", "1", "--servers", url)
    page = json.loads(out)
    assert (code, [item["key"] for item in page["items"]], page["more"]) == (0, ["dir/a"], True)
    code, out = await cli("range", "dir/", "--start", page["next"], "--servers", url)
    assert [(item["key"], item["value"]) for item in json.loads(out)["items"]] == [
        ("dir/b", "DIR/B")
    ]
    assert json.loads(out)["index"] > page["index"]
    code, out = await cli("delete", "other", "--version", "2", "--servers", url)
    assert (code, json.loads(out)) == (1, {"key": "other", "err": "Version"})
    assert (await cli("delete", "other", "--version", "1", "--servers", url))[0] == 0
    code, out = await cli("get", "other", "--servers", url)
    assert json.loads(out)["version"] == 0
    request = {
        "compare": [{"key": "dir/a", "op": "=", "version": 1}],
        "success": [{"op": "put", "key": "dir/a", "value": "x"}, {"op": "delete", "key": "dir/b"}],
        "failure": [{"op": "get", "key": "dir/a"}],
    }
    code, out = await cli("txn", json.dumps(request), "--servers", url)
    outcome = json.loads(out)
    assert (code, outcome["succeeded"], [r["err"] for r in outcome["results"]]) == (
        0,
        True,
        ["OK", "OK"],
    )
    code, out = await cli("txn", json.dumps(request), "--servers", url)  # now at version 2
    outcome = json.loads(out)
    assert (code, outcome["succeeded"], outcome["results"][0]["value"]) == (1, False, "x")
    bad = {"compare": [{"key": "dir/a", "op": "~", "version": 1}]}
    assert (await cli("txn", json.dumps(bad), "--servers", url))[0] == 2
    assert (await cli("txn", "{not json", "--servers", url))[0] == 2


async def test_bad_usage_exits_2(tmp_path: Path) -> None:
    assert (await cli("kvserver", "--listen", "no-port"))[0] == 2
    assert (await cli("lock", "L", "--servers", "http://127.0.0.1:1"))[0] == 2
    node = ["node", "--id", "1", "--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0",
            "--data-dir", str(tmp_path / "d")]  # fmt: skip
    assert (await cli(*node))[0] == 2  # neither a cluster secret nor --insecure
    short = tmp_path / "short-secret"
    short.write_text("too short")
    code, _ = await cli(*node, "--cluster-token-file", str(short))
    assert code == 1 and not (tmp_path / "d").exists()


async def test_json_logs_carry_the_node_its_term_and_role(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    cluster = ProcessCluster(1, tmp_path, extra=["--log-format", "json"])
    node = cluster.nodes["1"]
    with trio.fail_after(30):
        await cluster.start_all(nursery)
        # Another process's output: polling it is the only signal there is.
        while b"leads in term" not in node.stderr:  # noqa: ASYNC110
            await trio.sleep(0.05)
        await cluster.stop_all()
    lines = [json.loads(line) for line in node.stderr.decode().splitlines()]
    (leads,) = [line for line in lines if "leads in term" in line["event"]]
    assert {k: leads[k] for k in ("level", "logger", "node", "term", "role")} == {
        "level": "INFO",
        "logger": "trioraft",
        "node": "1",
        "term": 1,
        "role": "leader",
    }
    assert leads["time"].endswith("+00:00") and leads["event"] == "node 1: leads in term 1"
    assert (await cli("kvserver", "--log-format", "xml"))[0] == 2


async def test_a_node_started_with_join_is_added_promoted_and_the_leader_removed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Process level: ``trioraft node --join`` with an empty data directory, knowing the
    members only to reach them; ``member add`` makes it a voter; ``member remove`` of the
    leader hands over first and loses no acknowledged write."""
    cluster = ProcessCluster(3, tmp_path)
    servers = ",".join(cluster.urls.values())
    joiner = await cluster.add_node("4", nursery)
    url, peer_url = cluster.urls["4"], cluster.peer_urls["4"]
    with trio.fail_after(60):
        for i in ("1", "2", "3"):
            assert await cluster.nodes[i].start(nursery), cluster.nodes[i].stderr.decode()
        leader = await cluster.wait_leader()
        assert await joiner.start(nursery), joiner.stderr.decode()
        async with httpx.AsyncClient(timeout=5) as http:
            status = (await http.get(f"{url}/status")).json()
        # It knows no configuration, so it never campaigns: a learner-to-be.
        assert (status["voters"], status["learners"], status["role"]) == ([], [], "follower")
        async with ClusterClient(list(cluster.urls.values())) as kv:
            await kv.put("before", "v", 0)
            code, out = await cli(
                "member", "add", "4", "--peer-url", peer_url, "--client-url", url,
                "--servers", servers,
            )  # fmt: skip
            assert code == 0, joiner.stderr.decode()
            assert json.loads(out)["voters"] == ["1", "2", "3", "4"]
            assert json.loads(out)["client_urls"]["4"] == url  # from the configuration entry
            code, out = await cli("member", "remove", leader, "--servers", servers)
            assert code == 0
            after = json.loads(out)
            assert leader not in after["voters"] and after["leader"] in after["voters"]
            assert await kv.get("before") == Versioned("v", 1)
    await cluster.stop_all()


@pytest.mark.parametrize("server", ["kvserver", "node"])
async def test_an_address_s_connections_past_its_share_are_closed(
    tmp_path: Path, server: str
) -> None:
    """``--max-connections-per-address``: one address holds that many connections to the
    client listener; its next one is closed at once, while those it holds are served."""
    async with trio.open_nursery() as nursery:
        command = [*TRIORAFT, server, "--listen", "127.0.0.1:0"]
        if server == "node":  # a cluster of one
            command += ["--id", "1", "--peer-listen", "127.0.0.1:0", "--insecure"]
            command += ["--data-dir", str(tmp_path / "d")]
        command += ["--max-connections-per-address", "2"]
        process = await nursery.start(
            partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
        )
        line = b""
        while not line.endswith(b"\n"):
            line += await process.stdout.receive_some(1)
        url = line.decode().split()[-1] if server == "kvserver" else line.decode().split()[5]
        host, port = url.removeprefix("http://").rsplit(":", 1)
        with trio.fail_after(10):
            held = [await trio.open_tcp_stream(host, int(port)) for _ in range(2)]
            extra = await trio.open_tcp_stream(host, int(port))
            assert await extra.receive_some(1) == b""  # closed by the server at once
            body = b'{"key": "k"}'
            head = f"POST /get HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
            await held[0].send_all(head.encode() + body)
            assert (await held[0].receive_some(65536)).startswith(b"HTTP/1.1 200")
        for stream in [*held, extra]:
            await stream.aclose()
        process.send_signal(signal.SIGTERM)


@pytest.mark.parametrize("value", ["0", "-1", "x"])
async def test_max_connections_per_address_must_be_a_positive_integer(value: str) -> None:
    result = await trio.run_process(
        [*TRIORAFT, "kvserver", "--max-connections-per-address", value],
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert b"--max-connections-per-address" in result.stderr, result.stderr


@pytest.mark.parametrize("value", ["-1", "x", "", "1e3"])
async def test_max_learners_must_be_a_non_negative_integer(tmp_path: Path, value: str) -> None:
    node = ["node", "--id", "1", "--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0",
            "--data-dir", str(tmp_path / "d"), "--insecure"]  # fmt: skip
    result = await trio.run_process(
        [*TRIORAFT, *node, "--max-learners", value], capture_stderr=True, check=False
    )
    assert result.returncode == 2 and b"--max-learners" in result.stderr, result.stderr
    assert not (tmp_path / "d").exists()  # refused before anything was made


@pytest.mark.parametrize(
    ("flags", "code", "message"),
    [
        (["--heartbeat-interval", "300"], 1, b"--heartbeat-interval 300 must be below"),
        (["--heartbeat-interval", "50", "--election-timeout", "50"], 1, b"must be below"),
        (["--election-timeout", "0"], 2, b"argument --election-timeout: expected a positive"),
        (["--heartbeat-interval", "x"], 2, b"argument --heartbeat-interval: expected a positive"),
        (["--election-timeout", "-5"], 2, b"argument --election-timeout: expected a positive"),
        (["--lease-reads", "1"], 1, b"--lease-reads"),
        (["--election-timeout", "500", "--lease-reads", "0.6"], 1, b"--lease-reads"),
        (["--election-timeout", "1" + "0" * 400], 2, b"argument --election-timeout: expected"),
        (["--heartbeat-interval", str(2**63)], 2, b"argument --heartbeat-interval: expected"),
    ],
)
async def test_timing_flags_out_of_range_exit_naming_the_flag(
    tmp_path: Path, flags: list[str], code: int, message: bytes
) -> None:
    """The heartbeat interval must be below the election timeout (300 ms by default), and
    a lease below the election timeout given; nothing is made before the refusal."""
    node = ["node", "--id", "1", "--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0",
            "--data-dir", str(tmp_path / "d"), "--insecure"]  # fmt: skip
    result = await trio.run_process([*TRIORAFT, *node, *flags], capture_stderr=True, check=False)
    assert result.returncode == code and message in result.stderr, result.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--peer", "2=tcp://127.0.0.1"], b"argument --peer: '2=tcp://127.0.0.1': URL: expected"),
        (["--peer", "2=tcp://127.0.0.1:99999"], b"argument --peer:"),
        (["--peer", "2=http://127.0.0.1:abc"], b"argument --peer:"),
        (["--peer", "two words=tcp://127.0.0.1:9"], b"argument --peer:"),
        (["--client-url", "2=ftp://127.0.0.1:9"], b"argument --client-url:"),
        (["--client-url", "2=tcp://127.0.0.1:9"], b"argument --client-url:"),  # clients: HTTP
        (["--id", ""], b"argument --id: the id: a member id is 1..64 characters"),
        (["--id", "a\nb"], b"argument --id:"),
    ],
)
async def test_malformed_ids_and_urls_exit_2_naming_the_flag(
    tmp_path: Path, flags: list[str], message: bytes
) -> None:
    node = ["node", "--id", "1", "--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0",
            "--data-dir", str(tmp_path / "d"), "--insecure"]  # fmt: skip
    with trio.fail_after(30):  # a node that took them would serve for good
        result = await trio.run_process(
            [*TRIORAFT, *node, *flags], capture_stderr=True, check=False
        )
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert b"Traceback" not in result.stderr and not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("flag", "content", "message"),
    [
        ("--cluster-token-file", None, b"must be at most 4096 bytes"),  # /dev/zero: never ends
        ("--client-token-file", b"\xff\xfe" * 16, b"must be printable ASCII without spaces"),
        ("--client-token-file", b"two words, and more of them", b"printable ASCII without"),
    ],
)
async def test_token_files_that_cannot_be_tokens_exit_1_naming_them(
    tmp_path: Path, flag: str, content: bytes | None, message: bytes
) -> None:
    path = "/dev/zero"
    if content is not None:
        (tmp_path / "token").write_bytes(content)
        path = str(tmp_path / "token")
    secret = tmp_path / "secret"
    secret.write_text("a cluster secret of enough bytes")
    node = ["node", "--id", "1", "--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0",
            "--data-dir", str(tmp_path / "d")]  # fmt: skip
    if flag != "--cluster-token-file":
        node += ["--cluster-token-file", str(secret)]
    with trio.fail_after(30):
        result = await trio.run_process(
            [*TRIORAFT, *node, flag, path], capture_stderr=True, check=False
        )
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert b"Traceback" not in result.stderr and not (tmp_path / "d").exists()


async def test_a_cluster_started_with_a_long_election_timeout_waits_it_out(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """With ``--election-timeout 1500``, once the leader is killed no follower campaigns
    for 1.5 s after it last heard from it; then one leads. (With the default 300 ms a new
    leader is in within ~0.7 s.) The bound allows 0.3 s between the followers' last
    heartbeat and the kill as seen here: a busy machine may hold the old leader that long."""
    flags = ["--heartbeat-interval", "50", "--election-timeout", "1500"]
    cluster = ProcessCluster(3, tmp_path, extra=flags)
    with trio.fail_after(60):
        await cluster.start_all(nursery)
        old = await cluster.wait_leader()
        await cluster.nodes[old].kill()
        killed = trio.current_time()
        cluster.ids.remove(old)
        new = await cluster.wait_leader()
        assert trio.current_time() - killed >= 1.2, "a follower campaigned early"
        assert new != old
        await cluster.stop_all()


async def test_a_node_started_with_lease_reads_serves_reads_by_lease(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """``--lease-reads`` out of range exits naming the flag; in range, the node's gets are
    served by lease (its /status counts them), not by a heartbeat round."""
    node = ["node", "--id", "1", "--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0",
            "--data-dir", str(tmp_path / "d"), "--insecure"]  # fmt: skip
    result = await trio.run_process(
        [*TRIORAFT, *node, "--lease-reads", "5"], capture_stderr=True, check=False
    )
    assert result.returncode == 1 and b"--lease-reads" in result.stderr
    (tmp_path / "c").mkdir()
    cluster = ProcessCluster(1, tmp_path / "c", extra=["--lease-reads", "0.25"])
    with trio.fail_after(60):
        await cluster.start_all(nursery)
        url = cluster.urls["1"]
        assert (await cli("put", "k", "v", "--version", "0", "--servers", url))[0] == 0
        code, out = await cli("get", "k", "--servers", url)
        assert (code, json.loads(out)["value"]) == (0, "v")
        async with httpx.AsyncClient() as http:
            status = (await http.get(f"{url}/status")).json()
        assert status["reads"]["lease"] >= 1, status
        await cluster.stop_all()
