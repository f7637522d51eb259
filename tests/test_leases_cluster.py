"""Leases and watches on a real 3-node cluster over HTTP.

docs/scenarios.md: lease-expiry, lease-keepalive, watch-compacted, watch-stream.

A lease's keys are deleted through the log when the leader's clock says it expired: every
replica deletes them at the same index, and a watcher on a follower sees each change once,
in order, the delete included. Keepalives keep a lease (and its keys) past its TTL.
"""

from __future__ import annotations

import itertools
import json

import httpx
import pytest
import trio

from tests.kv_cluster import wait_leader
from trioraft import ClusterClient, Compare, LeaseNotFound, RaftConfig, TxnOp, Versioned
from trioraft.kv.messages import BatchOp
from trioraft.kv.node import KVNode

pytestmark = pytest.mark.xdist_group("http-cluster")


async def call(client: httpx.AsyncClient, c, url: str, method: str, body: dict) -> dict:
    """POST ``body`` to ``method`` at ``url``, or wherever the leader went (elections happen
    on a busy machine): follow WrongLeader's hint, else try the servers in turn."""
    others = itertools.cycle(c.urls.values())
    while True:
        reply = (await client.post(f"{url}/{method}", json=body)).json()
        if reply.get("err") != "WrongLeader":
            return reply
        url = reply.get("leader") or next(others)
        await trio.sleep(0.05)


async def test_an_expired_lease_deletes_its_keys_everywhere_and_watchers_see_it(
    make_kv_cluster,
):
    c = await make_kv_cluster(3)
    leader = await wait_leader(c)
    follower = next(i for i in c.ids if i != leader)
    async with httpx.AsyncClient(timeout=30) as client:
        with trio.fail_after(30):
            url = c.urls[leader]
            # The plain key first: only the leased put has to commit before the lease runs
            # out (1-2 s after the grant, the keeper syncing once a second), busy or not.
            plain = {"key": "svc/b", "value": "stays", "version": 0}
            assert (await call(client, c, url, "put", plain))["err"] == "OK"
            grant = await call(client, c, url, "lease_grant", {"ttl": 2})
            assert grant["err"] == "OK" and grant["ttl"] == 2
            lease = grant["lease"]
            put = {"key": "svc/a", "value": "up", "version": 0, "lease": lease}
            assert (await call(client, c, url, "put", put))["err"] == "OK"

            seen: list[tuple[str, str]] = []
            after = 0
            while ("svc/a", "delete") not in seen:
                body = {"prefix": "svc/", "after": after, "wait": 5}
                reply = await call(client, c, c.urls[follower], "watch", body)
                assert reply["err"] == "OK"
                seen += [(change["key"], change["kind"]) for change in reply["changes"]]
                assert all(change["index"] > after for change in reply["changes"])
                after = reply["through"]
            assert seen == [("svc/b", "put"), ("svc/a", "put"), ("svc/a", "delete")]

            revoked = await call(client, c, url, "lease_keepalive", {"lease": lease})
            assert revoked["err"] == "NoLease"
            # Every replica deleted it at the same index (the watcher's was one of them).
            for i in c.ids:
                node = c.nodes[i]
                assert node is not None
                await node.watches.wait_past(after - 1)
                assert node.machine.kv.get("svc/a").err == "NoKey"
                assert node.machine.kv.get("svc/b").value == "stays"


async def test_keepalives_keep_a_lease_past_its_ttl_and_revoke_ends_it(make_kv_cluster):
    c = await make_kv_cluster(3)
    leader = await wait_leader(c)
    async with httpx.AsyncClient(timeout=30) as client:
        with trio.fail_after(30):
            url = c.urls[leader]
            # A TTL with room for a busy machine's slow round trips between keepalives.
            lease = (await call(client, c, url, "lease_grant", {"ttl": 3}))["lease"]
            put = {"key": "lock", "value": "me", "version": 0, "lease": lease}
            assert (await call(client, c, url, "put", put))["err"] == "OK"
            start = trio.current_time()
            while trio.current_time() - start < 7:  # over two TTLs
                kept = await call(client, c, url, "lease_keepalive", {"lease": lease})
                assert kept["err"] == "OK" and kept["ttl"] == 3
                await trio.sleep(0.25)
            assert (await call(client, c, url, "get", {"key": "lock"}))["value"] == "me"
            assert (await call(client, c, url, "lease_revoke", {"lease": lease}))["err"] == "OK"
            assert (await call(client, c, url, "get", {"key": "lock"}))["err"] == "NoKey"
            refused = await call(client, c, url, "put", put)
            assert refused["err"] == "NoLease"


async def test_a_txn_puts_keys_under_a_lease_and_they_go_with_it(make_kv_cluster):
    c = await make_kv_cluster(3)
    kv = c.clerk()
    with trio.fail_after(30):
        lease = await kv.lease_grant(30)
        claim = [TxnOp("put", "job", "worker-1", lease=lease), TxnOp("put", "log", "claimed")]
        outcome = await kv.txn([Compare("job", "=", version=0)], claim)
        assert outcome.succeeded
        assert await kv.lease_revoke(lease)
        assert await kv.get("job") == Versioned("", 0)
        assert (await kv.get("log")).value == "claimed"
        with pytest.raises(LeaseNotFound):
            await kv.txn([Compare("job", "=", version=0)], claim)
        assert await kv.get("job") == Versioned("", 0)


async def test_an_append_session_lives_while_used_and_ends_with_its_lease(make_kv_cluster):
    """A client's append session is opened under a lease of ``session_ttl``: appends renew
    it, so it outlives its TTL while in use; once the client goes quiet the session ends
    with the lease (the servers forget it), and the next append opens another, applied
    once."""
    c = await make_kv_cluster(3)
    kv = c.clerk()
    kv.session_ttl = 2
    with trio.fail_after(60):
        for i in range(8):  # 4 s: twice the TTL
            await kv.append("log", f"{i},")
            await trio.sleep(0.5)
        node = c.nodes[await wait_leader(c)]
        assert node is not None
        machine = node.machine
        assert machine.opened == 1, "the session was replaced while in use"
        (session,) = machine.sessions
        (lease,) = (i for i, held in machine.leases.leases.items() if session in held.sessions)
        while session in machine.sessions:  # quiet now: it ends with its lease
            await node.rsm.wait_next_apply()
        assert lease not in machine.leases.leases
        await kv.append("log", "after")
        assert (await kv.get("log")).value == "0,1,2,3,4,5,6,7,after"
        assert machine.opened == 2 and len(machine.sessions) == 1


async def test_a_watch_from_a_compacted_index_says_so(make_kv_cluster):
    c = await make_kv_cluster(3)
    leader = await wait_leader(c)
    node = c.nodes[leader]
    assert node is not None
    node.machine.history.max_changes = 2
    async with httpx.AsyncClient(timeout=30) as client:
        with trio.fail_after(30):
            url = c.urls[leader]
            for version in range(4):
                body = {"key": "k", "value": str(version), "version": version}
                assert (await call(client, c, url, "put", body))["err"] == "OK"
            reply = await call(client, c, url, "watch", {"prefix": "", "after": 0, "wait": 0})
            assert reply["err"] == "Compacted" and reply["compacted_through"] > 0
            body = {"prefix": "", "after": reply["compacted_through"], "wait": 0}
            reply = await call(client, c, url, "watch", body)
            assert [change["value"] for change in reply["changes"]] == ["2", "3"]


async def test_a_watch_stream_sends_each_change_as_a_json_line(make_kv_cluster):
    c = await make_kv_cluster(3)
    leader = await wait_leader(c)
    follower = next(i for i in c.ids if i != leader)
    received: list[dict] = []
    async with httpx.AsyncClient(timeout=30) as client:
        with trio.fail_after(30):
            bad = await client.post(f"{c.urls[follower]}/watch_stream", json={"wait": 1000})
            assert bad.status_code == 400
            # Straight to the node: the fault proxy forwards whole responses only.
            body = {"prefix": "cfg/", "after": 0, "wait": 4}
            async with (
                client.stream("POST", f"{c.nodes[follower].url}/watch_stream", json=body) as stream,
                trio.open_nursery() as nursery,
            ):
                assert stream.headers["content-type"] == "application/x-ndjson"

                async def write() -> None:
                    for version in range(3):
                        put = {"key": "cfg/x", "value": str(version), "version": version}
                        assert (await call(client, c, c.urls[leader], "put", put))["err"] == "OK"
                        await call(client, c, c.urls[leader], "put", {**put, "key": "other"})

                nursery.start_soon(write)
                # Read to the end of the stream (its "wait"): breaking out of httpx's line
                # iterator would leave its inner generators unclosed.
                async for line in stream.aiter_lines():
                    reply = json.loads(line)
                    assert reply["err"] == "OK"
                    received += reply["changes"]
    assert [(ch["key"], ch["value"]) for ch in received] == [("cfg/x", v) for v in "012"]
    assert [ch["index"] for ch in received] == sorted({ch["index"] for ch in received})


async def test_a_keepalive_past_its_lease_deadline_never_says_it_lives(
    nursery: trio.Nursery, tmp_path
):
    """A keepalive that reaches the leader after the lease's deadline, while its revocation
    is still on its way through the log, waits for that revocation and answers NoLease (it
    answered OK, promising a TTL the lease would not see: a lock holder would have gone on
    while its lock was given away)."""
    node = KVNode("1", {}, tmp_path / "d", insecure=True)
    url = await nursery.start(node.serve)
    keeper = node.lease_keeper
    revoke = keeper._revoke
    due, go_on = trio.Event(), trio.Event()

    async def revoke_later(leases: list[int]) -> bool:
        due.set()
        await go_on.wait()
        return await revoke(leases)

    keeper._revoke = revoke_later
    answered = trio.Event()
    with trio.fail_after(30):
        await node.raft.wait_until(lambda raft: raft.is_leader)
        async with ClusterClient([url]) as kv:
            lease = await kv.lease_grant(1)
            await kv.put("holder", "me", 0, lease=lease)
            await due.wait()  # past its deadline, its revocation held back

            async def keepalive() -> None:
                with pytest.raises(LeaseNotFound):
                    await kv.lease_keepalive(lease)
                answered.set()

            nursery.start_soon(keepalive)
            await trio.sleep(0.3)  # (time for a wrong answer to come)
            assert not answered.is_set()
            go_on.set()
            await answered.wait()
            assert (await kv.get("holder")).version == 0  # gone with its lease


async def test_leases_expiring_together_are_revoked_a_thousand_to_an_entry(
    nursery: trio.Nursery, tmp_path
):
    """2,500 leases due at once go in a few log entries (three, if the keeper sees them due
    together), not one each (a flood of short leases delayed every expiry by minutes)."""
    node = KVNode("1", {}, tmp_path / "d", insecure=True)
    url = await nursery.start(node.serve)
    with trio.fail_after(60):
        await node.raft.wait_until(lambda raft: raft.is_leader)
        async with ClusterClient([url]) as kv:
            grants = [BatchOp("lease_grant", "", ttl=1) for _ in range(2500)]
            results, _ = await kv.servers.call(grants)
            leases = [result.lease for result in results]
            assert len(set(leases)) == 2500
            before = node.raft.commit_index
            await node.raft.wait_until(lambda _: not node.machine.leases.leases)
            assert node.raft.commit_index - before <= 5


async def test_a_keepalive_whose_lease_revocation_does_not_come_answers_wrong_leader(
    nursery: trio.Nursery, tmp_path
):
    """Past its deadline, with the revocation held back beyond ``op_timeout``: the
    keepalive neither says the lease lives nor that it is gone (it is still there), but
    WrongLeader, which the client retries."""
    node = KVNode("1", {}, tmp_path / "d", insecure=True, op_timeout=0.5)
    url = await nursery.start(node.serve)
    due = trio.Event()

    async def never(leases: list[int]) -> bool:
        due.set()
        await trio.sleep_forever()
        raise AssertionError

    node.lease_keeper._revoke = never
    with trio.fail_after(30):
        await node.raft.wait_until(lambda raft: raft.is_leader)
        async with httpx.AsyncClient(timeout=10) as client:
            lease = (await client.post(f"{url}/lease_grant", json={"ttl": 1})).json()["lease"]
            await due.wait()
            reply = (await client.post(f"{url}/lease_keepalive", json={"lease": lease})).json()
            assert reply["err"] == "WrongLeader" and lease in node.machine.leases.leases


async def test_revocations_too_large_for_one_entry_go_in_halves(nursery: trio.Nursery, tmp_path):
    """With a small message bound, 1,000 revocations do not fit one entry: the keeper
    splits them (it raised EntryTooLarge, which stopped the node)."""
    config = RaftConfig(max_message_bytes=128 << 10)
    node = KVNode("1", {}, tmp_path / "d", insecure=True, config=config)
    url = await nursery.start(node.serve)
    with trio.fail_after(60):
        await node.raft.wait_until(lambda raft: raft.is_leader)
        async with ClusterClient([url]) as kv:
            for _ in range(10):
                await kv.servers.call([BatchOp("lease_grant", "", ttl=1)] * 100)
            assert len(node.machine.leases.leases) == 1000
            await node.raft.wait_until(lambda _: not node.machine.leases.leases)
    assert node.raft.failure is None
