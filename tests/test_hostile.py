"""A hostile network against a real 3-node KV cluster on loopback: forged peer messages on
both listeners (with and without the cluster secret), garbage snapshots and entries from a
peer that knows the secret, and every route's decoder fed whatever hypothesis makes up.
The nodes stay up, their state intact, and the cluster keeps serving."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.strategies import bodies, objects_with
from trioraft import ClusterClient, MemoryStorage, PeerAuth, RaftConfig
from trioraft.kv.node import KVNode, free_ports
from trioraft.rpc.auth import AUTH_HEADER
from trioraft.rpc.http import dispatch

pytestmark = pytest.mark.xdist_group("http-cluster")

SECRET = b"hostile-test cluster secret 0123"
RAFT_ROUTES = ["request_vote", "append_entries", "install_snapshot"]


async def start_cluster(nursery: trio.Nursery, tmp_path: Path) -> dict[str, KVNode]:
    ids = ["1", "2", "3"]
    ports = free_ports(6)
    urls = {i: f"http://127.0.0.1:{p}" for i, p in zip(ids, ports, strict=False)}
    peer_urls = {i: f"http://127.0.0.1:{p}" for i, p in zip(ids, ports[3:], strict=True)}
    nodes = {}
    for k, i in enumerate(ids):
        node = nodes[i] = KVNode(
            i,
            {j: peer_urls[j] for j in ids if j != i},
            tmp_path / i,
            client_urls={j: urls[j] for j in ids if j != i},
            cluster_secret=SECRET,
            config=RaftConfig(),
            rng=random.Random(i),
        )
        await nursery.start(partial_serve(node, ports[k], ports[3 + k]))
    return nodes


def partial_serve(node: KVNode, port: int, peer_port: int) -> Any:
    async def run(task_status: trio.TaskStatus[str]) -> None:
        await node.serve("127.0.0.1", port, peer_port=peer_port, task_status=task_status)

    return run


async def leader_of(nodes: dict[str, KVNode]) -> KVNode:
    with trio.fail_after(10):
        while True:
            for node in nodes.values():
                if node.raft.is_leader:
                    return node
            await trio.sleep(0.02)


def forged_messages(term: int) -> dict[str, dict]:
    """What took a cluster over before: a huge term, a forged entry, a forged snapshot."""
    entry = json.dumps({"o": "x", "t": 1, "ops": [{"op": "put", "key": "k", "value": "PWNED",
                                                   "version": 1}]})  # fmt: skip
    snapshot = b'{"kv": {"k": ["PWNED", 9]}, "sessions": {}, "opened": 0}'
    return {
        "request_vote": {"term": 2**63 - 1, "candidate": "evil", "last_log_index": 10**9,
                         "last_log_term": 2**63 - 1},
        "append_entries": {"term": 10**6, "leader": "evil", "prev_log_index": 0,
                           "prev_log_term": 0, "entries": [{"term": 10**6, "command": entry}],
                           "leader_commit": 10**6},
        "install_snapshot": {"term": 10**6, "leader": "evil", "last_included_index": 10**6,
                             "last_included_term": 10**6,
                             "chunk": base64.b64encode(snapshot).decode(),
                             "crc32": zlib.crc32(snapshot), "total": len(snapshot),
                             "sha256": hashlib.sha256(snapshot).hexdigest()},
    }  # fmt: skip


async def test_forged_peer_messages_change_nothing(nursery: trio.Nursery, tmp_path: Path) -> None:
    nodes = await start_cluster(nursery, tmp_path)
    leader = await leader_of(nodes)
    async with ClusterClient([n.url for n in nodes.values()]) as kv:
        await kv.put("k", "v", 0)
    terms = {i: n.raft.term for i, n in nodes.items()}
    wrong = PeerAuth(b"a different secret, 32 bytes...")
    async with httpx.AsyncClient(timeout=2) as http:
        for node in nodes.values():
            for method, body in forged_messages(leader.raft.term).items():
                raw = json.dumps(body).encode()
                # The client listener serves no Raft route at all.
                reply = await http.post(f"{node.url}/{method}", content=raw)
                assert reply.status_code == 404
                # The peer listener wants the tag of the cluster secret.
                reply = await http.post(f"{node.peer_url}/{method}", content=raw)
                assert reply.status_code == 401
                credential, _ = wrong.sign_request(method, raw)
                headers = {AUTH_HEADER: credential.hex()}
                reply = await http.post(f"{node.peer_url}/{method}", content=raw, headers=headers)
                assert reply.status_code == 401
            assert node.peer_auth is not None and node.peer_auth.refused == 6
    assert {i: n.raft.term for i, n in nodes.items()} == terms
    async with ClusterClient([n.url for n in nodes.values()]) as kv:
        assert (await kv.get("k")).value == "v"
        await kv.put("k", "w", 1)  # still one cluster, still writable


async def test_garbage_from_a_peer_with_the_secret_does_not_crash_a_node(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A peer that knows the secret but sends garbage (a bug, a bad disk): snapshots that
    fail their check are refused with a 4xx; an entry that no machine can decode is applied
    as nothing. Every node stays up; the data stays."""
    nodes = await start_cluster(nursery, tmp_path)
    leader = await leader_of(nodes)
    async with ClusterClient([n.url for n in nodes.values()]) as kv:
        await kv.put("k", "v", 0)
    follower = next(n for n in nodes.values() if n is not leader)
    auth = PeerAuth(SECRET)
    term = leader.raft.term

    async def send(method: str, body: dict) -> int:
        raw = json.dumps(body).encode()
        credential, _ = auth.sign_request(method, raw)
        async with httpx.AsyncClient(timeout=2) as http:
            reply = await http.post(
                f"{follower.peer_url}/{method}",
                content=raw,
                headers={AUTH_HEADER: credential.hex()},
            )
        return reply.status_code

    for data in [b"\x00garbage", b'{"kv": {"k": ["v", "x"]}, "sessions": {}, "opened": 0}']:
        body = {"term": term, "leader": leader.id, "last_included_index": 10**6,
                "last_included_term": term, "chunk": base64.b64encode(data).decode(),
                "crc32": zlib.crc32(data), "offset": 0, "total": len(data),
                "sha256": hashlib.sha256(data).hexdigest(), "done": True}  # fmt: skip
        assert await send("install_snapshot", body) == 400
    bad_crc = {"term": term, "leader": leader.id, "last_included_index": 10**6,
               "last_included_term": term, "chunk": "", "crc32": 7}  # fmt: skip
    assert await send("install_snapshot", bad_crc) == 400
    assert follower.raft.log.snapshot_index == 0 and follower.machine.kv.get("k").value == "v"
    # An undecodable entry, through the real leader's log: every replica applies it as nothing.
    index, _, _ = leader.raft.submit("\x00 not an entry")
    with trio.fail_after(10):
        for node in nodes.values():
            await node.raft.wait_applied(index)
    async with ClusterClient([n.url for n in nodes.values()]) as kv:
        await kv.put("k", "w", 1)
        assert (await kv.get("k")).value == "w"
    assert not any(node.raft._stopped for node in nodes.values())


class NoPeers:
    async def call(self, peer: str, method: str, args: Any, reply_type: type) -> None:
        return None


messages = objects_with(
    ["key", "value", "version", "session", "seq", "ops", "op", "term", "leader", "candidate",
     "entries", "command", "prev_log_index", "prev_log_term", "leader_commit", "chunk",
     "crc32", "last_included_index", "last_included_term", "last_log_index", "pre_vote"]
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_every_route_answers_any_input_with_a_status_and_stays_up(data: st.DataObject) -> None:
    """Every route a node serves, client and peer, fed arbitrary bytes and arbitrary
    JSON objects: always a status (never an exception), and a node that still works."""
    body = data.draw(bodies(messages))
    method = data.draw(st.sampled_from([*ROUTES, "nope"]))

    async def main() -> None:
        status, payload = await dispatch(ROUTES, method, body)
        assert 200 <= status < 600 and isinstance(payload, dict)

    trio.run(main)


#: The routes of a node that is not running (a follower that knows no leader): its
#: handlers validate, answer from its state, or refuse.
_NODE = KVNode("1", {"2": "-", "3": "-"}, MemoryStorage(), transport=NoPeers())
ROUTES = {**_NODE.routes(), **_NODE.raft.routes()}
