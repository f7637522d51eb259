"""The framed-TCP peer transport: its wire checks, and a KV cluster replicating over it under
message loss and a leader crash, with the history checked."""

from __future__ import annotations

import json
import os
import random
import struct
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kvtest import one_client_put, run_clients
from tests.strategies import JSON_VALUES, bodies
from trioraft import ClusterClient
from trioraft.kv.messages import GetArgs, GetReply
from trioraft.kv.node import KVNode, free_ports
from trioraft.rpc.auth import PeerAuth
from trioraft.rpc.http import Route
from trioraft.rpc.tcp import TcpTransport, _answer, serve_tcp
from trioraft.testing import MIT_UNRELIABLE, History, Network


async def echo_get(args: GetArgs) -> GetReply:
    return GetReply(args.key.upper(), len(args.key), "OK")


ROUTES = {"get": Route(GetArgs, echo_get)}


async def raw_call(url: str, frame: bytes) -> dict | None:
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(frame)
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return None
            data += chunk
        return json.loads(data[4:])


def framed(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


async def test_calls_round_trip_and_reuse_connections(nursery: trio.Nursery) -> None:
    url = await nursery.start(serve_tcp, ROUTES)
    transport = TcpTransport("me", {"peer": url})
    for key in ["a", "bb", "ccc"]:
        reply = await transport.call("peer", "get", GetArgs(key), GetReply)
        assert reply == GetReply(key.upper(), len(key), "OK")
    assert len(transport._idle["peer"]) == 1  # one connection served all three calls
    await transport.aclose()


@pytest.mark.parametrize(
    ("frame", "status", "fragment"),
    [
        (framed(b"{not json"), 400, "malformed JSON"),
        (framed(b'["get"]'), 400, "expected"),
        (framed(b'{"m": "nope", "a": {}}'), 404, "unknown method"),
        (framed(b'{"m": "get", "a": {"key": 7}}'), 400, "key: expected a string"),
        (struct.pack(">I", 1 << 30), 413, "limit"),
    ],
)
async def test_bad_frames_get_4xx(
    nursery: trio.Nursery, frame: bytes, status: int, fragment: str
) -> None:
    url = await nursery.start(serve_tcp, ROUTES)
    reply = await raw_call(url, frame)
    assert reply is not None
    assert reply["s"] == status
    assert fragment in reply["p"]["error"]


async def test_failures_return_none(nursery: trio.Nursery) -> None:
    (port,) = free_ports(1)
    transport = TcpTransport("me", {"gone": f"tcp://127.0.0.1:{port}"})
    assert await transport.call("gone", "get", GetArgs("a"), GetReply) is None

    async def hang(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, hang, listeners)
    silent = f"tcp://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    transport = TcpTransport("me", {"silent": silent})
    with trio.move_on_after(0.2) as scope:
        await transport.call("silent", "get", GetArgs("a"), GetReply)
    assert scope.cancelled_caught
    assert transport._idle["silent"] == []  # a cancelled call's connection is not reused


async def test_frames_sent_together_or_in_pieces_are_answered_in_order(
    nursery: trio.Nursery,
) -> None:
    ticks = 0  # advanced by another task whenever the server lets it run
    seen: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.lowlevel.checkpoint()
            ticks += 1

    async def get(args: GetArgs) -> GetReply:
        seen.append(ticks)
        return GetReply(args.key, 0, "OK")

    nursery.start_soon(ticker)
    url = await nursery.start(serve_tcp, {"get": Route(GetArgs, get)})
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    frames = [framed(json.dumps({"m": "get", "a": {"key": f"k{i}"}}).encode()) for i in range(50)]
    long_frame = framed(json.dumps({"m": "get", "a": {"key": "x" * 300_000}}).encode())
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(b"".join(frames))  # a peer that does not wait for replies
        for k in range(0, len(long_frame), 1000):
            await stream.send_all(long_frame[k : k + 1000])
        data = b""
        replies = []
        while len(replies) < 51:
            data += await stream.receive_some(1 << 20)
            while len(data) >= 4 and len(data) >= 4 + (n := struct.unpack(">I", data[:4])[0]):
                replies.append(json.loads(data[4 : 4 + n]))
                data = data[4 + n :]
    assert [r["p"]["value"] for r in replies] == [f"k{i}" for i in range(50)] + ["x" * 300_000]
    # Frames that arrived in one read still let other tasks run between them (without that,
    # all 50 would be answered at one tick; with it, the ticker runs once per scheduler batch,
    # before or after the server's step, as the scheduler shuffles them).
    assert len(set(seen[:50])) >= 10


SECRET = b"tcp test cluster secret, 32 B..."


@pytest.mark.xdist_group("http-cluster")
async def test_kv_cluster_over_tcp_under_loss_and_leader_crash(
    nursery: trio.Nursery, seed: int, tmp_path: Path
) -> None:
    network = Network(seed, MIT_UNRELIABLE)
    ids = ["0", "1", "2"]
    ports = free_ports(6)
    http = {i: f"http://127.0.0.1:{ports[k]}" for k, i in enumerate(ids)}
    tcp_ports = {i: ports[3 + k] for k, i in enumerate(ids)}
    scopes: dict[str, trio.CancelScope] = {}
    nodes: dict[str, KVNode] = {}

    async def start(i: str) -> None:
        peers = {j: f"tcp://127.0.0.1:{tcp_ports[j]}" for j in ids if j != i}
        transport = TcpTransport(i, peers, network=network, peer_auth=PeerAuth(SECRET))
        node = nodes[i] = KVNode(
            i,
            peers,
            tmp_path / i,
            client_urls={j: http[j] for j in ids if j != i},
            cluster_secret=SECRET,
            transport=transport,
            rng=random.Random(f"{seed}-{i}"),
        )
        scope = scopes[i] = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[None]) -> None:
            with scope:
                host, port = http[i].removeprefix("http://").split(":")
                await node.serve(host, int(port), peer_port=tcp_ports[i], task_status=task_status)

        await nursery.start(run)
        network.restart(i)

    for i in ids:
        await start(i)
    history = History()
    rng = random.Random(seed)
    clerks = [
        history.recording(ClusterClient(list(http.values()), client_id=f"c{k}"), f"c{k}")
        for k in range(3)
    ]
    first = await run_clients(3, 1.0, one_client_put(clerks, "k", rng))
    leader = next(i for i in ids if nodes[i].raft.is_leader)
    network.crash(leader)
    scopes[leader].cancel()
    second = await run_clients(3, 1.0, one_client_put(clerks, "k", rng))
    await start(leader)
    assert sum(r.ok + r.maybe for r in first + second) > 0
    result = history.check(timeout=60)
    assert result.ok is True, result.account
    for clerk in clerks:
        await clerk.kv.aclose()


async def read_frames(stream: trio.SocketStream, count: int) -> list[dict]:
    data, replies = b"", []
    while len(replies) < count:
        chunk = await stream.receive_some(65536)
        assert chunk, "closed"
        data += chunk
        while len(data) >= 4 and len(data) >= 4 + (n := struct.unpack(">I", data[:4])[0]):
            replies.append(json.loads(data[4 : 4 + n]))
            data = data[4 + n :]
    return replies


async def connect(url: str) -> trio.SocketStream:
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


async def test_idle_and_stalled_connections_are_closed(nursery: trio.Nursery) -> None:
    url = await nursery.start(partial(serve_tcp, ROUTES, idle_timeout=0.3, frame_timeout=0.3))
    get = framed(b'{"m": "get", "a": {"key": "k"}}')
    silent, half_length, half_frame = b"", get[:2], get[:10]
    with trio.fail_after(5):
        for opening in [silent, half_length, half_frame, get + half_frame]:
            started = trio.current_time()
            async with await connect(url) as stream:
                await stream.send_all(opening)
                if opening.startswith(get):
                    assert (await read_frames(stream, 1))[0]["s"] == 200
                assert await stream.receive_some(100) == b""  # closed by the server
                assert trio.current_time() - started >= 0.3


async def test_handler_exceptions_are_500_logged_and_survived(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(args: GetArgs) -> GetReply:
        raise RuntimeError(f"kaboom {args.key}")

    url = await nursery.start(serve_tcp, {**ROUTES, "boom": Route(GetArgs, boom)})
    with trio.fail_after(5):
        async with await connect(url) as stream:
            for method in ["boom", "get"]:  # one connection: it stays up
                await stream.send_all(framed(json.dumps({"m": method, "a": {"key": "k"}}).encode()))
            replies = await read_frames(stream, 2)
    assert replies[0] == {"s": 500, "p": {"error": "internal error"}}
    assert replies[1]["s"] == 200
    assert "Traceback" in caplog.text and "RuntimeError: kaboom k" in caplog.text


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_connection_cap_bounds_descriptors(nursery: trio.Nursery) -> None:
    url = await nursery.start(partial(serve_tcp, ROUTES, max_connections=3, idle_timeout=0.5))
    with trio.fail_after(10):
        before = open_descriptors()
        idle = [await connect(url) for _ in range(10)]  # connect, send nothing
        await trio.testing.wait_all_tasks_blocked(cushion=0.1)
        assert open_descriptors() - before - len(idle) == 3  # the server took 3 of them
        transport = TcpTransport("me", {"peer": url})  # behind them in the backlog
        assert await transport.call("peer", "get", GetArgs("a"), GetReply) is not None
        assert open_descriptors() <= before + len(idle) + 3 + 1
        await transport.aclose()
        for stream in idle:
            await stream.aclose()


async def was_closed(stream: trio.SocketStream) -> bool:
    """Whether the server closed ``stream`` (it reads nothing but the end)."""
    with trio.move_on_after(0.5):
        return await stream.receive_some(65536) == b""
    return False


async def test_strangers_hold_at_most_max_unproven_slots_and_peers_get_through(
    nursery: trio.Nursery,
) -> None:
    """Connections that sent no frame with a valid tag hold at most ``max_unproven`` slots:
    past that the oldest is closed. Strangers used to fill every slot for the idle timeout
    (30 s by default) while the peers waited in the backlog, and failover slowed to ~10 s."""
    auth = PeerAuth(b"k" * 32)
    serve = partial(
        serve_tcp, ROUTES, peer_auth=auth, max_connections=6, max_unproven=2, idle_timeout=60
    )
    url = await nursery.start(serve)
    transport = TcpTransport("me", {"peer": url}, peer_auth=auth)
    with trio.fail_after(10):
        strangers = [await connect(url) for _ in range(12)]  # twice the slots, silent
        await strangers[-1].send_all(framed(b'{"m": "get", "a": {"key": "k"}}'))  # no tag
        await trio.testing.wait_all_tasks_blocked(cushion=0.1)
        assert await transport.call("peer", "get", GetArgs("a"), GetReply) == GetReply("A", 1, "OK")
        closed = [await was_closed(stream) for stream in strangers]
        assert sum(closed) >= 8, closed  # all but the newest few were closed
        for stream in strangers:
            await stream.aclose()
    await transport.aclose()


REQUESTS = st.fixed_dictionaries(
    {"m": st.sampled_from(["get", "boom", "nope"]) | JSON_VALUES},
    optional={"a": st.fixed_dictionaries({"key": st.text()}) | JSON_VALUES},
)


@given(frame=bodies(REQUESTS))
@settings(max_examples=300, deadline=None)
def test_answer_handles_any_frame(frame: bytes) -> None:
    async def boom(args: GetArgs) -> GetReply:
        raise RuntimeError("kaboom")

    routes = {**ROUTES, "boom": Route(GetArgs, boom)}
    status, payload = trio.run(_answer, routes, frame, lambda *args: None)
    assert status in (200, 400, 404, 500), payload
    json.dumps(payload)
