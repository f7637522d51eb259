"""``GET /metrics``: scraped from real servers, parsed with prometheus_client's own parser,
and the numbers move as the load, the refusals and a leader kill say they must."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import ProcessCluster
from trioraft import ClusterClient, KVServer, serve
from trioraft.kv.node import KVNode

pytestmark = pytest.mark.xdist_group("http-cluster")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
TRIORAFT = [sys.executable, "-m", "trioraft"]


async def scrape(url: str, token: str | None = None) -> Samples:
    """Every sample of ``url``'s /metrics, by name and labels."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=2) as http:
        response = await http.get(f"{url}/metrics", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def value_or_0(samples: Samples, name: str, **labels: str) -> float:
    """For the first scrape: a labelled counter appears with its first count."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_follow_the_load_and_a_leader_kill(tmp_path: Path) -> None:
    cluster = ProcessCluster(3, tmp_path)
    urls = list(cluster.urls.values())
    writes = 60
    async with trio.open_nursery() as nursery:
        try:
            with trio.fail_after(120):
                await cluster.start_all(nursery)
                leader = await cluster.wait_leader()
                followers = [i for i in cluster.ids if i != leader]
                before = {i: await scrape(cluster.urls[i]) for i in cluster.ids}
                async with ClusterClient(urls) as kv:
                    for k in range(writes):
                        await kv.put(f"k{k}", "v", 0)
                    await kv.get("k0")
                async with httpx.AsyncClient() as http:
                    bad = await http.post(f"{cluster.urls[leader]}/put", content=b"{not json")
                    assert bad.status_code == 400

                after = await scrape(cluster.urls[leader])
                old = before[leader]

                def grew(name: str, **labels: str) -> float:
                    return value(after, name, **labels) - value_or_0(old, name, **labels)

                assert grew("trioraft_kv_ops_total", op="put", result="OK") == writes
                assert grew("trioraft_kv_ops_total", op="get", result="OK") == 1
                # Reads take no log entry: only the writes were proposed.
                assert grew("trioraft_kv_proposals_total", outcome="applied") == writes
                assert grew("trioraft_requests_refused_total", reason="bad_input") == 1
                assert grew("trioraft_raft_entries_proposed_total") >= writes
                assert grew("trioraft_raft_commit_seconds_count") >= 1
                assert grew("trioraft_raft_append_entries_entries_count") >= 1
                for peer in followers:
                    assert grew("trioraft_raft_append_entries_seconds_count", peer=peer) >= writes
                assert value(after, "trioraft_raft_role", role="leader") == 1
                assert value(after, "trioraft_raft_applied_index") >= writes + 1
                assert value(after, "process_cpu_seconds_total") > 0  # the process collectors
                assert any(name == "python_info" for name, _ in after)
                for i in followers:
                    follower = await scrape(cluster.urls[i])
                    synced = value(follower, "trioraft_raft_fsync_seconds_count")
                    assert synced - value(before[i], "trioraft_raft_fsync_seconds_count") >= 1
                    assert value(follower, "trioraft_raft_role", role="follower") == 1

                # Kill the leader: the survivors elect another, and say so.
                await cluster.nodes[leader].kill()
                while (new_leader := await cluster.leader()) is None:  # noqa: ASYNC110
                    await trio.sleep(0.05)
                for i in followers:
                    now = await scrape(cluster.urls[i])
                    then = before[i]
                    assert value(now, "trioraft_raft_term") > value(then, "trioraft_raft_term")
                    changes = "trioraft_raft_leader_changes_total"
                    assert value(now, changes) > value(then, changes)
                    assert value(now, "trioraft_raft_role", role="leader") == (i == new_leader)
                won = "trioraft_raft_elections_won_total"
                assert value(await scrape(cluster.urls[new_leader]), won) > value(
                    before[new_leader], won
                )

                # The status view: one row a server, the killed one unreachable (exit 1).
                table = await trio.run_process(
                    [*TRIORAFT, "status", "--servers", ",".join(urls)],
                    capture_stdout=True,
                    check=False,
                )
                lines = table.stdout.decode().splitlines()
                assert table.returncode == 1 and len(lines) == 4
                assert "unreachable" in lines[1 + cluster.ids.index(leader)]
                assert "leader" in lines[1 + cluster.ids.index(new_leader)]
                rows = json.loads(
                    (
                        await trio.run_process(
                            [*TRIORAFT, "status", "--json", "--servers", cluster.urls[new_leader]],
                            capture_stdout=True,
                        )
                    ).stdout
                )
                assert rows[0]["role"] == "leader" and rows[0]["reads"]["read_index"] >= 0
        finally:
            await cluster.stop_all()
            nursery.cancel_scope.cancel()


async def test_the_single_server_counts_its_ops_and_refusals(nursery: trio.Nursery) -> None:
    server = KVServer(max_body_bytes=1000)
    url = await nursery.start(serve, server.app())
    async with httpx.AsyncClient() as http:
        await http.post(f"{url}/put", json={"key": "a", "value": "v", "version": 0})
        await http.post(f"{url}/put", json={"key": "a", "value": "v", "version": 0})
        await http.post(f"{url}/batch", json={"ops": [{"op": "get", "key": "a"}]})
        assert (await http.post(f"{url}/put", json={"key": 1})).status_code == 400
        assert (await http.post(f"{url}/put", content=b"x" * 2000)).status_code == 413
        assert (await http.get(f"{url}/readyz")).status_code == 200
    samples = await scrape(url)
    assert value(samples, "trioraft_kv_ops_total", op="put", result="OK") == 1
    assert value(samples, "trioraft_kv_ops_total", op="put", result="Version") == 1
    assert value(samples, "trioraft_kv_ops_total", op="get", result="OK") == 1
    assert value(samples, "trioraft_requests_refused_total", reason="bad_input") == 1
    assert value(samples, "trioraft_requests_refused_total", reason="too_large") == 1
    assert value(samples, "trioraft_kv_keys") == 1
    assert not any(name.startswith("trioraft_raft") for name, _ in samples)


async def test_quota_and_token_refusals_are_counted(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A one-node cluster past its quota and with a client token: refused writes count as
    ``quota``, requests without the token as ``unauthenticated``; the backup needs the
    token, the metrics do not."""
    token = "operator-token-0123456789"
    node = KVNode("1", {}, tmp_path / "d", insecure=True, quota_bytes=0, client_token=token)
    url = await nursery.start(node.serve)
    auth = {"Authorization": f"Bearer {token}"}
    with trio.fail_after(10):
        await node.raft.wait_until(lambda raft: raft.is_leader)
    async with httpx.AsyncClient() as http:
        put = {"key": "a", "value": "v", "version": 0}
        assert (await http.post(f"{url}/put", json=put)).status_code == 401
        assert (await http.post(f"{url}/put", json=put, headers=auth)).json()["err"] == "NoSpace"
        batch = {"ops": [{"op": "put", **put}, {"op": "get", "key": "a"}]}
        results = (await http.post(f"{url}/batch", json=batch, headers=auth)).json()["results"]
        assert [r["err"] for r in results] == ["NoSpace", "NoKey"]
        assert (await http.get(f"{url}/backup")).status_code == 401
        assert (await http.get(f"{url}/backup", headers=auth)).status_code == 200
    samples = await scrape(url)
    assert value(samples, "trioraft_requests_refused_total", reason="unauthenticated") == 2
    assert value(samples, "trioraft_requests_refused_total", reason="quota") == 2
    assert value(samples, "trioraft_kv_ops_total", op="put", result="NoSpace") == 2
    assert value(samples, "trioraft_kv_backups_total") == 1
