"""The membership routes of a KV server, on a real 3-node cluster over HTTP: list, add a
learner that catches up, promote it, remove a follower, remove the leader (it hands over
first), transfer leadership; hostile bodies and followers change nothing."""

from __future__ import annotations

import json
import sys
from typing import Any

import httpx
import pytest
import trio

from tests.kv_cluster import KVCluster, isolate, rejoin, wait_leader
from trioraft import RaftConfig
from trioraft.kv.admin import open_admin_client

pytestmark = pytest.mark.xdist_group("http-cluster")


async def post(url: str, route: str, body: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(f"{url}/{route}", json=body)


def admin_urls(c: KVCluster) -> list[str]:
    return [c.urls[i] for i in c.ids]


async def wait_config(c: KVCluster, i: str, voters: set[str], learners: set[str]) -> None:
    node = c.nodes[i]
    assert node is not None
    conf = (voters, learners)
    await node.raft.wait_until(
        lambda n: (
            (set(n.configuration.voters), set(n.configuration.learners)) == conf
            and n.commit_index >= n.log.last_index
        )
    )


async def test_member_list_answers_from_any_server_and_status_shows_the_configuration(
    make_kv_cluster,
) -> None:
    c: KVCluster = await make_kv_cluster(3)
    with trio.fail_after(30):
        await wait_leader(c)
        for i in c.ids:
            node = c.nodes[i]
            assert node is not None
            body: dict[str, Any] = {"leader": ""}
            while not body["leader"]:  # a busy machine may hold an election meanwhile
                await node.raft.wait_until(lambda n: n.leader_id is not None)
                reply = await post(c.urls[i], "member_list", {})
                assert reply.status_code == 200, reply.text
                body = reply.json()
                assert body["err"] == "OK"
            assert (body["voters"], body["learners"]) == (c.ids, [])
            assert body["leader"] in c.ids
            async with httpx.AsyncClient(timeout=10) as http:
                status = (await http.get(f"{c.urls[i]}/status")).json()
            assert (status["voters"], status["learners"]) == (c.ids, [])


async def test_add_a_learner_it_catches_up_promote_it_then_remove_a_follower(
    make_kv_cluster,
) -> None:
    c: KVCluster = await make_kv_cluster(3)
    with trio.fail_after(60):
        leader = await wait_leader(c)
        clerk = c.clerk()
        for k in range(20):
            await clerk.put(f"k{k}", "v", 0)
        await c.add_server("3")
        new = c.nodes["3"]
        assert new is not None and new.raft.configuration.members == ()
        async with open_admin_client(admin_urls(c)) as admin:
            added = await admin.member_add("3", c.peer_urls["3"], c.urls["3"])
            assert (added.voters, added.learners) == (["0", "1", "2"], ["3"])
            assert added.addresses["3"] == c.peer_urls["3"]
            caught_up = await admin.wait_caught_up("3")
            assert caught_up.match["3"] >= caught_up.commit_index
            await new.raft.wait_until(lambda n: n.last_applied >= caught_up.commit_index)
            assert new.machine.kv.get("k19").value == "v"
            promoted = await admin.member_promote("3")
            assert (promoted.voters, promoted.learners) == (["0", "1", "2", "3"], [])
            await wait_config(c, "3", {"0", "1", "2", "3"}, set())
            follower = next(i for i in ("0", "1", "2") if i != leader)
            removed = await admin.member_remove(follower)
            remaining = {"0", "1", "2", "3"} - {follower}
            assert set(removed.voters) == remaining
            # Retrying a change in effect answers OK and proposes nothing.
            again = await admin.member_remove(follower)
            assert set(again.voters) == remaining
        await clerk.put("after", "v", 0)
        assert (await clerk.get("after")).value == "v"


async def test_a_new_members_client_url_is_known_everywhere_after_leader_changes_and_restarts(
    make_kv_cluster,
) -> None:
    """The client URL given to member_add travels in the configuration entry: after the
    leadership moves and every server restarts (the founders' flags never name the new
    member), member_list on any server lists it, and followers' WrongLeader hints point at
    it once it leads."""
    c: KVCluster = await make_kv_cluster(3)
    members = {"0", "1", "2", "3"}
    with trio.fail_after(90):
        old = await wait_leader(c)
        await c.add_server("3")
        async with open_admin_client(admin_urls(c)) as admin:
            await admin.member_add("3", c.peer_urls["3"], c.urls["3"])
            await admin.wait_caught_up("3")
            await admin.member_promote("3")
            await admin.transfer_leader(next(i for i in c.ids if i not in (old, "3")))
        await wait_leader(c, exclude=(old, "3"))
        for restart in (False, True):
            if restart:
                await c.stop_all()
                await c.start_all_again()
                await wait_leader(c)
            for i in c.ids:
                await wait_config(c, i, members, set())
                reply = await post(c.urls[i], "member_list", {})
                assert reply.json()["client_urls"]["3"] == c.urls["3"], (i, reply.text)
                assert reply.json()["addresses"]["3"] == c.peer_urls["3"], (i, reply.text)
        async with open_admin_client(admin_urls(c)) as admin:
            assert (await admin.transfer_leader("3")).leader == "3"
        for i in c.founders:
            node = c.nodes[i]
            assert node is not None
            await node.raft.wait_until(lambda n: n.leader_id == "3")
            reply = await post(c.urls[i], "member_promote", {"id": "9"})
            assert reply.json()["err"] == "WrongLeader", reply.text
            assert reply.json()["leader"] == c.urls["3"], (i, reply.text)
        kv = c.clerk()
        await kv.put("k", "v", 0)  # clients find the new leader
        assert (await kv.get("k")).value == "v"


async def test_removing_the_leader_transfers_first_and_loses_no_acknowledged_write(
    make_kv_cluster,
) -> None:
    c: KVCluster = await make_kv_cluster(3)
    with trio.fail_after(60):
        old = await wait_leader(c)
        clerk = c.clerk()
        for k in range(10):
            await clerk.put(f"k{k}", f"v{k}", 0)
        async with open_admin_client(admin_urls(c)) as admin:
            reply = await admin.member_remove(old)
        assert old not in reply.voters and len(reply.voters) == 2
        assert reply.leader in reply.voters
        new = await wait_leader(c, exclude=(old,))
        assert new != old
        for k in range(10):
            assert (await clerk.get(f"k{k}")).value == f"v{k}"


async def test_a_second_learner_is_refused_with_409_until_the_first_leaves(
    make_kv_cluster,
) -> None:
    """One learner at a time by default (etcd's ``--max-learners``): a client adding
    hundreds of unreachable learners made the leader miss its heartbeats."""
    c: KVCluster = await make_kv_cluster(3)
    with trio.fail_after(30):
        leader = await wait_leader(c)
        first = {"id": "8", "peer_url": "tcp://127.0.0.1:1"}
        assert (await post(c.urls[leader], "member_add", first)).json()["learners"] == ["8"]
        reply = await post(
            c.urls[leader], "member_add", {"id": "9", "peer_url": "tcp://127.0.0.1:2"}
        )
        assert reply.status_code == 409 and "learners already" in reply.json()["error"], reply.text
        assert (await post(c.urls[leader], "member_add", first)).status_code == 200  # a retry
        await post(c.urls[leader], "member_remove", {"id": "8"})
        reply = await post(
            c.urls[leader], "member_add", {"id": "9", "peer_url": "tcp://127.0.0.1:2"}
        )
        assert reply.json()["learners"] == ["9"], reply.text


async def test_transfer_leader_to_a_given_id(make_kv_cluster) -> None:
    c: KVCluster = await make_kv_cluster(3)
    with trio.fail_after(30):
        old = await wait_leader(c)
        target = next(i for i in c.ids if i != old)
        async with open_admin_client(admin_urls(c)) as admin:
            reply = await admin.transfer_leader(target)
        assert reply.leader == target
        assert await wait_leader(c, exclude=(old,)) == target


HOSTILE: list[tuple[str, Any, str]] = [
    ("member_add", {"id": "", "peer_url": "http://h:1"}, "body.id"),
    ("member_add", {"id": "x" * 65, "peer_url": "http://h:1"}, "body.id"),
    ("member_add", {"id": "a/b", "peer_url": "http://h:1"}, "body.id"),
    ("member_add", {"id": "é", "peer_url": "http://h:1"}, "body.id"),
    ("member_add", {"id": 4, "peer_url": "http://h:1"}, "id"),
    ("member_add", {"id": "4"}, "peer_url"),
    ("member_add", {"id": "4", "peer_url": "ftp://h:1"}, "body.peer_url"),
    ("member_add", {"id": "4", "peer_url": "http://"}, "body.peer_url"),
    ("member_add", {"id": "4", "peer_url": "http://h:99999"}, "body.peer_url"),
    ("member_add", {"id": "4", "peer_url": "http://u:p@h:1"}, "body.peer_url"),
    ("member_add", {"id": "4", "peer_url": "http://h:1/?q=1"}, "body.peer_url"),
    ("member_add", {"id": "4", "peer_url": "http://h:1/" + "a" * 600}, "body.peer_url"),
    ("member_add", {"id": "4", "peer_url": "http://h:1", "client_url": "tcp://h:2"}, "client_url"),
    ("member_add", {"id": "0", "peer_url": "http://h:1"}, "member already"),
    # The cluster's peers talk framed TCP: an HTTP peer is a member none of them could reach
    # (once it crashed every node that applied the entry).
    ("member_add", {"id": "4", "peer_url": "http://h:1"}, "peer address"),
    ("member_add", [], "body"),
    ("member_promote", {"id": "nobody"}, ""),
    ("member_promote", {}, "id"),
    ("member_promote", {"id": None}, "id"),
    ("member_remove", {"id": "x\n"}, "body.id"),
    ("member_remove", {"id": ["0"]}, "id"),
    ("transfer_leader", {"to": "nobody"}, "to"),
    ("transfer_leader", {"to": 1}, "to"),
]


async def test_hostile_bodies_answer_400_and_change_nothing(make_kv_cluster) -> None:
    """At the leader (followed if an election on a busy machine moves it): 400 naming the
    field, and no node's configuration changes."""
    c: KVCluster = await make_kv_cluster(3)
    with trio.fail_after(60):
        await wait_leader(c)
        before = {i: node.raft.configuration for i, node in c.nodes.items() if node}
        for route, body, field in HOSTILE:
            while True:
                reply = await post(c.urls[await wait_leader(c)], route, body)
                if reply.status_code != 200 or reply.json().get("err") != "WrongLeader":
                    break
            assert reply.status_code == 400, (route, body, reply.text)
            assert field in reply.json()["error"], (route, body, reply.text)
        assert {i: node.raft.configuration for i, node in c.nodes.items() if node} == before


async def test_a_follower_answers_wrong_leader_with_the_hint(make_kv_cluster) -> None:
    """A follower refuses every change with the leader's client URL and changes nothing.
    (Long election timeouts: on a busy machine an election mid-test would move the leader,
    and the follower could become it.)"""
    c: KVCluster = await make_kv_cluster(3, config=RaftConfig(election_timeout=(2.0, 4.0)))
    with trio.fail_after(30):
        leader = await wait_leader(c)
        follower = next(i for i in c.ids if i != leader)
        node = c.nodes[follower]
        assert node is not None
        await node.raft.wait_until(lambda n: n.leader_id == leader)
        for route, body in [
            ("member_promote", {"id": "9"}),
            ("member_remove", {"id": leader}),
            ("member_add", {"id": "9", "peer_url": "http://127.0.0.1:1"}),
            ("transfer_leader", {"to": ""}),
        ]:
            reply = await post(c.urls[follower], route, body)
            assert reply.status_code == 200, reply.text
            assert reply.json() == {"err": "WrongLeader", "leader": c.urls[leader]} | {
                k: v for k, v in reply.json().items() if k not in ("err", "leader")
            }
            assert reply.json()["voters"] == []
        assert set(node.raft.configuration.voters) == set(c.ids)


# -- The CLI: trioraft member ..., trioraft transfer-leader ------------------------------

TRIORAFT = [sys.executable, "-m", "trioraft"]


async def cli(*args: str) -> tuple[int, str, str]:
    result = await trio.run_process(
        [*TRIORAFT, *args], capture_stdout=True, capture_stderr=True, check=False
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_cli_member_list_and_transfer_leader(make_kv_cluster) -> None:
    c: KVCluster = await make_kv_cluster(3)
    servers = ",".join(admin_urls(c))
    with trio.fail_after(60):
        old = await wait_leader(c)
        code, out, err = await cli("member", "list", "--servers", servers)
        assert code == 0, err
        listed = json.loads(out)
        assert (listed["voters"], listed["learners"], listed["leader"]) == (c.ids, [], old)
        target = next(i for i in c.ids if i != old)
        code, out, err = await cli("transfer-leader", "--to", target, "--servers", servers)
        assert code == 0, err
        assert json.loads(out)["leader"] == target
        assert await wait_leader(c, exclude=(old,)) == target
        code, out, err = await cli("transfer-leader", "--to", "nobody", "--servers", servers)
        assert (code, out) == (1, "")
        assert "refused (400)" in err and "nobody" in err


async def test_cli_member_add_waits_for_the_learner_then_promotes_it(make_kv_cluster) -> None:
    c: KVCluster = await make_kv_cluster(3)
    servers = ",".join(admin_urls(c))
    with trio.fail_after(60):
        await wait_leader(c)
        await c.add_server("3")
        code, out, err = await cli(
            "member", "add", "3", "--peer-url", c.peer_urls["3"], "--client-url", c.urls["3"],
            "--servers", servers,
        )  # fmt: skip
        assert code == 0, err
        assert (json.loads(out)["voters"], json.loads(out)["learners"]) == (c.ids, [])
        await wait_config(c, "3", set(c.ids), set())


async def test_a_change_while_another_is_in_flight_answers_409_over_http_and_the_cli(
    make_kv_cluster, nursery: trio.Nursery
) -> None:
    """The leader, cut off from the others (no check-quorum, so it goes on leading), holds
    an uncommitted configuration entry: a second change is refused for now, 409 over HTTP
    and exit status 1 with the reason from the CLI; nothing more is proposed."""
    c: KVCluster = await make_kv_cluster(3, config=RaftConfig(check_quorum=False))
    with trio.fail_after(60):
        leader = await wait_leader(c)
        node = c.nodes[leader]
        assert node is not None
        follower = next(i for i in c.ids if i != leader)
        await node.raft.wait_until(lambda n: n.commit_index >= n.log.last_index)
        isolate(c, [leader])
        first: list[httpx.Response] = []
        answered = trio.Event()

        async def add_learner() -> None:
            body = {"id": "9", "peer_url": "tcp://127.0.0.1:1", "client_url": "http://h:2"}
            first.append(await post(c.urls[leader], "member_add", body))
            answered.set()

        nursery.start_soon(add_learner)
        await node.raft.wait_until(lambda n: "9" in n.configuration.learners)
        in_flight = node.raft.log.last_index
        reply = await post(c.urls[leader], "member_promote", {"id": "9"})
        assert reply.status_code == 409, reply.text
        assert "not committed yet" in reply.json()["error"], reply.text
        code, out, err = await cli("member", "remove", follower, "--servers", c.urls[leader])
        assert (code, out) == (1, ""), err
        assert "refused (409)" in err and "not committed yet" in err, err
        assert node.raft.log.last_index == in_flight  # nothing more was proposed
        assert set(node.raft.configuration.voters) == set(c.ids)
        assert not first  # the first change still waits for its entry to commit
        rejoin(c, [leader])
        # Back in touch: the first change commits, or (if the others elected meanwhile) its
        # entry is cut away and the old leader answers WrongLeader; either way it answers.
        await answered.wait()
        assert first[0].status_code == 200 and first[0].json()["err"] in ("OK", "WrongLeader")
