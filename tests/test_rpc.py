"""RPC over HTTP/JSON: routing, validation of every endpoint's input, the client's contract."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial

import httpx
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from quart import Response

from tests.kvtest import SingleKV
from tests.strategies import bodies, objects_with
from tests.task_steps import TaskSteps
from trioraft import BadRequest, KVServer, Route, RpcClient, Versioned, make_app, serve
from trioraft.kv.clients import Servers
from trioraft.kv.messages import (
    BatchArgs,
    BatchOp,
    BatchReply,
    GetArgs,
    GetReply,
    OpResult,
    PutArgs,
    PutReply,
)
from trioraft.rpc.http import (
    GetRoute,
    StreamRoute,
    Unsent,
    bytes_response,
    dispatch,
    dump_json,
)

#: Bodies every endpoint must reject: (body, status, part of the error message).
MALFORMED_ANY = [
    (b"", 400, "malformed JSON"),
    (b"{", 400, "malformed JSON"),
    (b"\xff\xfe\x00", 400, "malformed JSON"),
    (b"[]", 400, "expected a JSON object"),
    (b'"key"', 400, "expected a JSON object"),
    (b"null", 400, "expected a JSON object"),
    (b"{}", 400, "missing field"),
    (b'{"key": 1}', 400, "key: expected a string"),
    (b'{"key": null}', 400, "key: expected a string"),
    (b'{"key": ["a"]}', 400, "key: expected a string"),
    (b'{"key": NaN}', 400, "malformed JSON"),
    (b"[" * 50_000 + b"]" * 50_000, 400, "malformed JSON"),
]
#: Bodies with a valid key whose put-only fields are wrong.
MALFORMED_PUT = [
    (b'{"key": "k"}', 400, "value: missing field"),
    (b'{"key": "k", "value": 3, "version": 0}', 400, "value: expected a string"),
    (b'{"key": "k", "value": "v", "version": -1}', 400, "out of range"),
    (b'{"key": "k", "value": "v", "version": 1.5}', 400, "expected an integer"),
    (b'{"key": "k", "value": "v", "version": true}', 400, "expected an integer"),
    (b'{"key": "k", "value": "v", "version": 99999999999999999999999}', 400, "out of range"),
    (b'{"key": "k", "value": "v", "version": Infinity}', 400, "malformed JSON"),
]
CASES = [("get", *case) for case in MALFORMED_ANY] + [
    ("put", *case) for case in MALFORMED_ANY + MALFORMED_PUT
]


@pytest.mark.parametrize(("method", "body", "status", "message"), CASES)
async def test_malformed_input_gets_4xx_and_changes_nothing(
    single_kv: SingleKV, method: str, body: bytes, status: int, message: str
) -> None:
    async with httpx.AsyncClient(base_url=single_kv.direct_url) as http:
        await http.post("/put", json={"key": "keep", "value": "safe", "version": 0})
        response = await http.post(f"/{method}", content=body)
        assert response.status_code == status, response.text
        assert message in response.json()["error"]
        assert (await http.post("/get", json={"key": "keep"})).json() == {
            "value": "safe",
            "version": 1,
            "err": "OK",
            "mod_index": 1,
            "create_index": 1,
            "index": single_kv.server.index,  # of the state it was read from
        }
    assert len(single_kv.server.state) == 1


async def test_oversized_body_is_413(nursery: trio.Nursery) -> None:
    url = await nursery.start(serve, KVServer(max_body_bytes=1000).app())
    async with httpx.AsyncClient(base_url=url) as http:
        big = json.dumps({"key": "k", "value": "x" * 2000, "version": 0})
        response = await http.post("/put", content=big)
        assert response.status_code == 413 and response.json()["error"]
        assert response.headers["connection"] == "close"  # the next request: a new connection

        async def chunks():  # streamed: no Content-Length for the server to check up front
            for _ in range(3):
                yield b"x" * 600

        response = await http.post("/put", content=chunks())
        assert response.status_code == 413
        assert (await http.post("/get", json={"key": "k"})).json()["err"] == "NoKey"


async def test_unknown_method_and_wrong_verb(single_kv: SingleKV) -> None:
    async with httpx.AsyncClient(base_url=single_kv.direct_url) as http:
        response = await http.post("/drop", json={})
        assert response.status_code == 404 and "unknown method" in response.json()["error"]
        response = await http.get("/get")
        assert response.status_code == 405 and response.json()["error"]
        response = await http.get("/status")
        assert response.json() == {"role": "kvserver", "keys": 0}


@dataclass(frozen=True)
class Echo:
    text: str


async def test_client_id_header_and_port_zero(nursery: trio.Nursery) -> None:
    from quart import request

    seen: list[str | None] = []

    async def echo(args: Echo) -> Echo:
        seen.append(request.headers.get("X-Client-Id"))
        return args

    url = await nursery.start(serve, make_app({"echo": Route(Echo, echo)}))
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
    async with RpcClient(url, "client-7") as rpc:
        assert await rpc.call("echo", Echo("hi"), Echo) == Echo("hi")
        assert await rpc.call("echo", {"text": "raw"}, Echo) == Echo("raw")
    assert seen == ["client-7", "client-7"]


def test_client_rejects_what_it_cannot_send() -> None:
    with pytest.raises(ValueError, match="http"):
        RpcClient("tcp://127.0.0.1:9000", "c")
    with pytest.raises(ValueError):
        RpcClient("http://127.0.0.1:9000", "clïent")  # a header value must be ASCII


async def test_client_returns_none_on_every_failure_and_raises_on_refusals(
    nursery: trio.Nursery,
) -> None:
    """A lost call is ``None`` (the caller may retry); a request refused for what it is
    raises ``BadRequest`` with the server's status and message (a retry would be refused
    again)."""
    release = trio.Event()

    async def slow(args: Echo) -> Echo:
        await release.wait()
        return args

    async def wrong_reply(args: Echo) -> GetArgs:
        return GetArgs("not an echo")

    routes = {"slow": Route(Echo, slow), "wrong": Route(Echo, wrong_reply)}
    url = await nursery.start(serve, make_app(routes))
    async with RpcClient(url, "c", timeout=0.2) as rpc:
        assert await rpc.call("slow", Echo("x"), Echo) is None  # timeout
        assert await rpc.call("wrong", Echo("x"), Echo) is None  # undecodable reply
        with pytest.raises(BadRequest, match="unknown method") as refused:
            await rpc.call("missing", Echo("x"), Echo)
        assert refused.value.status == 404
        with pytest.raises(BadRequest, match="text") as refused:
            await rpc.call("slow", {"nope": 1}, Echo)
        assert refused.value.status == 400
    release.set()
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with RpcClient(dead_url, "c", timeout=0.2) as rpc:
        assert await rpc.call("get", GetArgs("k"), GetReply) is None


async def test_kv_protocol_over_plain_http(single_kv: SingleKV) -> None:
    """The wire protocol as documented in the README, driven without trioraft's client."""
    async with httpx.AsyncClient(base_url=single_kv.url, headers={"X-Client-Id": "curl"}) as h:
        assert (await h.post("/get", json={"key": "a"})).json() == {
            "value": "",
            "version": 0,
            "err": "NoKey",
            "mod_index": 0,
            "create_index": 0,
            "index": single_kv.server.index,
        }
        put = {"key": "a", "value": "1", "version": 0}
        assert (await h.post("/put", json=put)).json() == {"err": "OK"}
        assert (await h.post("/put", json=put)).json() == {"err": "Version"}
        missing = {"key": "b", "value": "1", "version": 3}
        assert (await h.post("/put", json=missing)).json() == {"err": "NoKey"}
        assert (await h.post("/get", json={"key": "a"})).json()["version"] == 1
        reads = {"ops": [{"op": "get", "key": "a"}, {"op": "get", "key": "b"}]}
        answered = (await h.post("/read", json=reads)).json()
        assert [r["err"] for r in answered["results"]] == ["OK", "NoKey"]
        write = {"ops": [{"op": "get", "key": "a"}, {"op": "delete", "key": "a", "version": 1}]}
        refused = await h.post("/read", json=write)
        assert refused.status_code == 400 and "ops[1].op" in refused.json()["error"]
    assert isinstance(PutArgs("a", "1", 0), PutArgs) and PutReply("OK").err == "OK"
    assert Versioned("", 0).exists is False


def test_cancelled_calls_leave_nothing_to_finalize(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call cancelled mid-send (an RPC deadline) must not leave an unfinished async
    generator behind: Trio reports those when they are collected after the run."""
    import gc
    import sys

    reports: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reports.append(repr(u.exc_value)))

    async def main() -> None:
        async def slow(args: Echo) -> Echo:
            await trio.sleep(1)
            return args

        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve, make_app({"slow": Route(Echo, slow)}))
            async with RpcClient(url, "c") as rpc:
                for i in range(200):
                    with trio.move_on_after(0.0005 * (i % 7)):
                        await rpc.call("slow", Echo("x" * 100_000), Echo)
            nursery.cancel_scope.cancel()

    trio.run(main)
    gc.collect()
    assert reports == []


def test_clients_share_one_verifying_tls_context() -> None:
    """Building a TLS context reads the CA bundle (~70 ms on the loop): one per process,
    and still a verifying one."""
    import ssl

    from trioraft.rpc.tls import ClientTls, client_context

    context = client_context()
    assert context is client_context() is client_context(ClientTls())
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


async def connect(url: str) -> trio.SocketStream:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


def post_head(path: str, length: int) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()


async def read_head(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, data
        data += chunk
    return data.lower()


async def closed_by_server(stream: trio.SocketStream) -> bool:
    try:
        while chunk := await stream.receive_some(65536):
            assert b"HTTP/1.1" not in chunk  # no second response
    except trio.BrokenResourceError:
        pass  # reset: the server closed with our unread bytes
    return True


async def test_413_and_408_close_their_connection(nursery: trio.Nursery) -> None:
    """Both are answered before the body is all in; the connection then cannot carry
    another request, and must be closed rather than left hanging."""
    app = make_app({"echo": Route(Echo, echo_route)}, max_body_bytes=1000, body_timeout=0.3)
    url = await nursery.start(serve, app)
    with trio.fail_after(5):
        async with await connect(url) as stream:
            await stream.send_all(post_head("/echo", 5000))  # too large, said up front
            head = await read_head(stream)
            assert head.startswith(b"http/1.1 413") and b"connection: close" in head
            await stream.send_all(b"x" * 100 + post_head("/echo", 2) + b"{}")
            assert await closed_by_server(stream)
        async with await connect(url) as stream:
            await stream.send_all(post_head("/echo", 100) + b'{"text": ')  # then nothing
            head = await read_head(stream)
            assert head.startswith(b"http/1.1 408") and b"connection: close" in head
            assert await closed_by_server(stream)
        async with RpcClient(url, "c") as rpc:
            assert await rpc.call("echo", Echo("fine"), Echo) == Echo("fine")


async def test_a_refused_body_still_sent_cannot_wedge_its_connection(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 413 that cannot leave at once (its client is slow to read) while the client goes on
    sending the refused body: the server must keep taking that body in while it answers
    (Hypercorn hands it over through a queue of 10 pieces: full, its reader and the reply's
    last step both waited on it for good), then close the connection and free its slot."""
    import trioraft.rpc.http as rpc_http

    connection = rpc_http._Connection
    send_on_the_spot = connection.protocol_send

    async def refusal_held_up(self: rpc_http._Connection, event: object) -> None:
        data = getattr(event, "data", b"")
        if isinstance(data, bytes) and data.startswith(b"HTTP/1.1 413"):
            await trio.sleep(0.2)  # as if the socket's buffer were full
        await send_on_the_spot(self, event)

    monkeypatch.setattr(connection, "protocol_send", refusal_held_up)
    app = make_app({"echo": Route(Echo, echo_route)}, max_body_bytes=5000)
    url = await nursery.start(partial(serve, app, max_connections=1))
    stream = await connect(url)

    async def send_chunks() -> None:
        with trio.move_on_after(5):
            try:
                await stream.send_all(
                    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                for _ in range(2000):
                    await stream.send_all(b"400\r\n" + b"x" * 1024 + b"\r\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    nursery.start_soon(send_chunks)
    with trio.fail_after(10):
        assert (await read_head(stream)).startswith(b"http/1.1 413")
        assert await closed_by_server(stream)
        async with RpcClient(url, "c") as rpc:  # the one slot is free again
            assert await rpc.call("echo", Echo("fine"), Echo) == Echo("fine")
    await stream.aclose()


async def test_a_reply_taken_too_slowly_is_cut_at_the_response_timeout(
    nursery: trio.Nursery,
) -> None:
    """A client that takes a large reply steadily but slowly (every piece within the send
    timeout) still has it cut, and its connection closed, once Quart's RESPONSE_TIMEOUT has
    passed, as Quart-Trio's own request handling does."""
    size = 32 << 20

    async def large(args: Echo) -> Echo:
        return Echo("x" * size)

    app = make_app({"large": Route(Echo, large)})
    app.config["RESPONSE_TIMEOUT"] = 0.5
    url = await nursery.start(serve, app)
    taken = 0
    with trio.fail_after(20):
        async with await connect(url) as stream:
            body = dump_json({"text": ""})
            await stream.send_all(post_head("/large", len(body)) + body)
            try:
                while chunk := await stream.receive_some(256 << 10):
                    taken += len(chunk)
                    await trio.sleep(0.05)  # ~5 MB/s: the whole reply would take ~7 s
            except trio.BrokenResourceError:
                pass
    assert taken < size


async def test_a_body_deadline_passed_as_its_last_piece_came_does_not_cut_the_view(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The body's last piece is handed over just as its deadline passes: the cancellation is
    called but cannot be delivered any more (the piece is in). The body is all in time, so
    the view runs and answers, undisturbed by a cancellation meant for the reading."""
    import outcome

    from trioraft.rpc.http import IN_FLIGHT_STATE_KEY, _InFlight

    ran: list[str] = []

    async def checkpointing(args: Echo) -> Echo:
        await trio.lowlevel.checkpoint()
        ran.append("answered")
        return args

    body = dump_json({"text": "late"})
    app = make_app({"echo": Route(Echo, checkpointing)}, body_timeout=1.0)
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/echo", "raw_path": b"/echo", "query_string": b"",
        "root_path": "", "headers": [(b"host", b"x"), (b"content-length", b"%d" % len(body))],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2), "extensions": {},
        "state": {IN_FLIGHT_STATE_KEY: _InFlight()},
    }  # fmt: skip
    pieces = [body[:3], body[3:]]
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        piece = pieces.pop(0)
        message = {"type": "http.request", "body": piece, "more_body": bool(pieces)}
        if pieces:
            return message
        task = trio.lowlevel.current_task()

        async def hand_over_late() -> None:
            mock_clock.jump(2.0)  # past the body's deadline
            await trio.lowlevel.checkpoint()  # the deadline is seen: its cancel is called
            trio.lowlevel.reschedule(task, outcome.Value(message))

        nursery.start_soon(hand_over_late)
        return await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)

    async with trio.open_nursery() as nursery:
        await app.startup()
        await app(scope, receive, send)
    assert ran == ["answered"]
    assert sent[0]["status"] == 200 and sent[1]["body"] == body


async def echo_route(args: Echo) -> Echo:
    return args


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_connection_cap_bounds_descriptors(nursery: trio.Nursery) -> None:
    app = make_app({"echo": Route(Echo, echo_route)})
    url = await nursery.start(partial(serve, app, max_connections=4, keep_alive_timeout=0.5))
    with trio.fail_after(10):
        before = open_descriptors()
        idle = [await connect(url) for _ in range(12)]  # a slowloris: connect, send nothing
        await trio.testing.wait_all_tasks_blocked(cushion=0.1)
        assert open_descriptors() - before - len(idle) == 4  # the server took 4 of them
        async with RpcClient(url, "c", timeout=8) as rpc:  # behind them in the backlog
            assert await rpc.call("echo", Echo("x"), Echo) == Echo("x")
            assert open_descriptors() <= before + len(idle) + 4 + 1
        for stream in idle:
            await stream.aclose()


async def connect_from(source: str, url: str) -> trio.SocketStream:
    """A connection to ``url`` from the loopback address ``source`` (any of 127.0.0.0/8)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect((host, int(port)))
    return trio.SocketStream(sock)


async def test_one_address_holds_at_most_its_share_of_the_connections(
    nursery: trio.Nursery,
) -> None:
    """A client that keeps opening connections and sending nothing (a slowloris) gets
    ``max_connections_per_address`` of them; its next ones are closed at once, and a client
    at another address is served as soon as it connects."""
    app = make_app({"echo": Route(Echo, echo_route)})
    url = await nursery.start(
        partial(serve, app, max_connections=8, max_connections_per_address=3, keep_alive_timeout=30)
    )
    with trio.fail_after(10):
        held = [await connect_from("127.0.0.1", url) for _ in range(3)]
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        for _ in range(6):  # would fill the other five slots and queue in the backlog
            refused = await connect_from("127.0.0.1", url)
            assert await refused.receive_some(1) == b""  # closed by the server at once
            await refused.aclose()
        async with await connect_from("127.0.0.2", url) as other:
            assert b'"text":"other"' in await echo_over(other, "other")
        await held.pop().aclose()  # its share frees up as its connections close
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        async with await connect_from("127.0.0.1", url) as again:
            assert b'"text":"again"' in await echo_over(again, "again")
        for stream in held:
            await stream.aclose()


@pytest.mark.parametrize(
    "opening",
    [
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2 with prior knowledge
        b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    ],
    ids=["preface", "upgrade"],
)
async def test_a_plain_connection_asking_for_http2_is_closed(
    nursery: trio.Nursery, opening: bytes
) -> None:
    """HTTP/1.1 only: over HTTP/2 a client granting no flow-control window would hold its
    reply in Hypercorn, outside the bounds on unsent replies (and Hypercorn allowed 100
    requests at once on one connection)."""
    app = make_app({"echo": Route(Echo, echo_route)})
    url = await nursery.start(serve, app)
    with trio.fail_after(10):
        stream = await connect(url)
        await stream.send_all(opening)
        received = b""
        while chunk := await stream.receive_some(65536):
            received += chunk
        await stream.aclose()
        # Nothing spoken in HTTP/2 (an upgrade is answered 101 before the connection closes).
        assert received == b"" or (
            received.startswith(b"HTTP/1.1 101 ") and received.endswith(b"\r\n\r\n")
        )
        async with httpx.AsyncClient() as http:  # HTTP/1.1 is served as before
            reply = await http.post(f"{url}/echo", content=dump_json({"text": "x"}))
            assert reply.json() == {"text": "x"}


def test_unsent_replies_close_the_stalest_and_count_a_large_one_as_a_quarter() -> None:
    unsent = Unsent(100)
    assert unsent.wait("huge", 10_000) == [] and unsent.total == 25  # a backup, say
    assert unsent.wait("tiny", 1) == []  # room for it: the huge reply goes on
    unsent.done("tiny")
    assert unsent.wait("a", 30) == [] and unsent.wait("b", 20) == [] and unsent.total == 70
    unsent.progressed("huge", 9_000)  # its client reads: to the back of the line
    assert unsent.wait("c", 25) == [] and unsent.total == 95
    assert unsent.wait("d", 20) == ["a"]  # took nothing for longest
    unsent.done("a")  # closed for room: nothing more to take back
    assert unsent.total == 90
    assert unsent.wait("e", 50) == ["b"] and unsent.total == 95  # e counts 25 too
    for connection in ("huge", "c", "d", "e"):
        unsent.done(connection)
    assert unsent.total == 0


async def test_replies_waiting_for_their_clients_are_bounded_in_all(
    nursery: trio.Nursery,
) -> None:
    """Clients that do not read pin no more than ``max_unsent_bytes`` of replies in all
    (each counted for at most a quarter of it): the connection whose client took nothing
    for longest is closed for a newcomer's, whose reply then arrives whole."""
    size = 4 << 20

    async def big(args: Echo) -> Echo:
        return Echo("x" * size)

    app = make_app({"big": Route(Echo, big)})
    url = await nursery.start(partial(serve, app, max_unsent_bytes=8 << 20))  # 2 MiB a reply
    host, port = url.removeprefix("http://").rsplit(":", 1)
    body = dump_json({"text": ""})
    with trio.fail_after(20):
        streams = []
        for _ in range(5):
            sock = trio.socket.socket()
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
            await sock.connect((host, int(port)))
            stream = trio.SocketStream(sock)
            await stream.send_all(post_head("/big", len(body)) + body)
            streams.append(stream)
            if len(streams) == 1:
                # Its reply has begun, so the rest waits before the next request is read.
                taken = len(await stream.receive_some(1024))
        first, second = streams[0], streams[-1]
        received = 0
        while chunk := await second.receive_some(1 << 20):
            received += len(chunk)
            if received > size:
                break
        assert received > size  # the newcomer's reply, whole
        try:
            while chunk := await first.receive_some(1 << 20):
                taken += len(chunk)
        except trio.BrokenResourceError:
            pass
        assert taken < size  # closed for room before its client took it
        for stream in streams:
            await stream.aclose()


def server_task(name: str) -> bool:
    return name.startswith(("hypercorn.", "quart", "trioraft."))


async def echo_over(stream: trio.SocketStream, text: str) -> bytes:
    """One ``POST /echo`` on a kept-alive connection; the reply's body."""
    body = dump_json({"text": text})
    await stream.send_all(post_head("/echo", len(body)) + body)
    reply = b""
    while not reply.endswith(body):
        chunk = await stream.receive_some(65536)
        assert chunk, reply
        reply += chunk
    return reply


async def test_a_small_reply_costs_few_passes_of_the_scheduler(nursery: trio.Nursery) -> None:
    """Hypercorn sent each piece of a reply under a lock and a send that each yield, and
    restarted its idle timer as a new task per request: 23 steps of the server's tasks per
    request. Written on the spot, with one idle watcher per connection: 12. With the body
    read in the request's own task rather than Quart-Trio's nursery of two: 8; and handed
    to the view as read (no wait on the body's event): 7."""
    app = make_app({"echo": Route(Echo, echo_route)})
    url = await nursery.start(serve, app)
    steps = TaskSteps(server_task)
    with trio.fail_after(10):
        async with await connect(url) as stream:
            await echo_over(stream, "warm")
            trio.lowlevel.add_instrument(steps)
            for k in range(50):
                await echo_over(stream, f"t{k}")
            trio.lowlevel.remove_instrument(steps)
    assert steps.steps / 50 <= 8


async def test_a_client_gone_mid_request_has_its_handler_cancelled(nursery: trio.Nursery) -> None:
    """A client that closes its connection while its request is handled is reported gone to
    the app, which cancels the handler: nothing waits on for an answer no one will read."""
    started, cancelled = trio.Event(), trio.Event()

    async def hang(args: Echo) -> Echo:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    url = await nursery.start(serve, make_app({"hang": Route(Echo, hang)}))
    with trio.fail_after(10):
        stream = await connect(url)
        body = dump_json({"text": "x"})
        await stream.send_all(post_head("/hang", len(body)) + body)
        await started.wait()
        await stream.aclose()
        await cancelled.wait()


async def test_a_kept_alive_connection_is_closed_once_idle_and_never_mid_request(
    nursery: trio.Nursery,
) -> None:
    """The idle timer restarts at each reply and stops while a request is handled: requests
    closer together than the timeout keep a connection; a handler slower than it is
    answered; a connection then left idle is closed after the timeout, not before."""

    async def slow(args: Echo) -> Echo:
        await trio.sleep(float(args.text))
        return args

    app = make_app({"echo": Route(Echo, echo_route), "slow": Route(Echo, slow)})
    url = await nursery.start(partial(serve, app, keep_alive_timeout=1.0))
    with trio.fail_after(15):
        async with await connect(url) as stream:
            for k in range(8):  # 1.6 s on one connection, more than the timeout
                await echo_over(stream, f"t{k}")
                await trio.sleep(0.2)
            body = dump_json({"text": "2.0"})
            await stream.send_all(post_head("/slow", len(body)) + body)
            assert body in await read_reply(stream)
            idle_since = trio.current_time()  # a little after the server's own start
            assert await closed_by_server(stream)
            assert trio.current_time() - idle_since >= 0.9


async def test_a_connection_is_closed_once_idle_after_a_streamed_reply(
    nursery: trio.Nursery,
) -> None:
    """A stream keeps its connection while it lasts; once it ends, the idle timer runs."""

    async def count(args: Echo) -> AsyncIterator[Echo]:
        for k in range(int(args.text)):
            await trio.sleep(0.4)
            yield Echo(str(k))

    app = make_app({}, stream_routes={"count": StreamRoute(Echo, count)})
    url = await nursery.start(partial(serve, app, keep_alive_timeout=1.0))
    with trio.fail_after(15):
        async with await connect(url) as stream:
            body = dump_json({"text": "4"})  # 1.6 s: more than the timeout
            await stream.send_all(post_head("/count", len(body)) + body)
            reply = b""
            while not reply.endswith(b"\r\n0\r\n\r\n"):  # the last chunk
                reply += await stream.receive_some(65536)
            assert reply.count(b'{"text":') == 4
            idle_since = trio.current_time()  # a little after the server's own start
            assert await closed_by_server(stream)
            assert trio.current_time() - idle_since >= 0.9


@pytest.mark.parametrize("closing", ["Connection: close", "HTTP/1.0"])
async def test_a_reply_that_closes_its_connection_closes_it(
    nursery: trio.Nursery, closing: str
) -> None:
    """A request that asks for its connection to close (``Connection: close``, or HTTP/1.0)
    gets a reply and then a closed connection, not one held open until the client leaves:
    with every slot so held, nobody else was served. (The close, cancelled by the request's
    own ending, was cut short.)"""
    app = make_app({"echo": Route(Echo, echo_route)})
    url = await nursery.start(partial(serve, app, max_connections=2, keep_alive_timeout=30))
    body = b'{"text":"bye"}'  # as the reply will carry it
    head = post_head("/echo", len(body))
    if closing == "HTTP/1.0":
        head = head.replace(b"HTTP/1.1", b"HTTP/1.0")
    else:
        head = head.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n")
    with trio.fail_after(5):
        held = [await connect(url) for _ in range(2)]
        for stream in held:
            await stream.send_all(head + body)
        for stream in held:
            reply = b""
            while chunk := await stream.receive_some(65536):  # to the server's close
                reply += chunk
            assert reply.endswith(body)
        async with RpcClient(url, "c", timeout=4) as rpc:
            assert await rpc.call("echo", Echo("next"), Echo) == Echo("next")
        for stream in held:
            await stream.aclose()


async def test_a_slow_reader_gets_a_large_reply_whole(nursery: trio.Nursery) -> None:
    """``send_timeout`` bounds a stall, not a reply's whole time: a client that reads the
    32 MiB steadily, slower than ``send_timeout`` allows for all of it, is not cut off."""
    app = make_app({}, get_routes={"big": big_page()})
    url = await nursery.start(partial(serve, app, send_timeout=0.5))
    with trio.fail_after(30):
        async with await connect(url) as stream:
            await stream.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            started = trio.current_time()
            while len(data) < len(BIG):
                chunk = await stream.receive_some(1 << 20)
                assert chunk, "cut off"
                data += chunk
                await trio.sleep(0.02)  # ~50 MiB/s at most
            assert data.endswith(BIG)
            assert trio.current_time() - started > 0.5


async def test_a_stream_handler_that_fails_is_logged(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """The reply is cut short, and the handler's exception is logged (Hypercorn's own log
    is off)."""

    async def fails(args: Echo) -> AsyncIterator[Echo]:
        yield Echo("first")
        raise RuntimeError(f"stream broke {args.text}")

    app = make_app({}, stream_routes={"fails": StreamRoute(Echo, fails)})
    url = await nursery.start(serve, app)
    with trio.fail_after(5):
        async with await connect(url) as stream:
            body = dump_json({"text": "here"})
            await stream.send_all(post_head("/fails", len(body)) + body)
            reply = b""
            while chunk := await stream.receive_some(65536):
                reply += chunk
    assert b'{"text":"first"}' in reply and not reply.endswith(b"\r\n0\r\n\r\n")
    assert "stream broke here" in caplog.text


async def read_reply(stream: trio.SocketStream) -> bytes:
    """A whole reply whose head gives its length."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = await stream.receive_some(1 << 20)
        assert chunk
        body += chunk
    return head + b"\r\n\r\n" + body


BIG = bytes(range(256)) * (1 << 17)  # 32 MiB: more than loopback's socket buffers hold


def big_page() -> GetRoute:
    async def page() -> Response:
        return bytes_response(BIG, "application/octet-stream")

    return GetRoute(page)


async def test_a_reply_larger_than_the_socket_takes_arrives_whole(nursery: trio.Nursery) -> None:
    """What the socket does not take at once follows, in order, with the next reply after."""
    app = make_app({"echo": Route(Echo, echo_route)}, get_routes={"big": big_page()})
    url = await nursery.start(serve, app)
    with trio.fail_after(20):
        async with await connect(url) as stream:
            await stream.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)  # the server waits on us
            reply = await read_reply(stream)
            assert reply.endswith(BIG) and reply.startswith(b"HTTP/1.1 200")
            assert b"next" in await echo_over(stream, "next")


async def test_a_client_that_stops_reading_loses_its_connection(nursery: trio.Nursery) -> None:
    """Hypercorn waited for ever on a client that takes no more of a reply, holding its
    connection slot: it is closed after ``send_timeout``."""
    app = make_app({"echo": Route(Echo, echo_route)}, get_routes={"big": big_page()})
    url = await nursery.start(partial(serve, app, max_connections=1, send_timeout=0.5))
    with trio.fail_after(10):
        async with await connect(url) as stuck:
            await stuck.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")  # never read
            async with RpcClient(url, "c", timeout=8) as rpc:  # behind it in the backlog
                assert await rpc.call("echo", Echo("x"), Echo) == Echo("x")


async def test_handler_exceptions_are_500_logged_and_survived(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(args: Echo) -> Echo:
        raise RuntimeError(f"kaboom {args.text}")

    def broken_status() -> dict:
        raise RuntimeError("status kaboom")

    routes = {"boom": Route(Echo, boom), "echo": Route(Echo, echo_route)}
    url = await nursery.start(serve, make_app(routes, name="boom"))
    status_url = await nursery.start(serve, make_app({}, name="boom", status=broken_status))
    with trio.fail_after(5):
        async with httpx.AsyncClient() as http:
            for response in [
                await http.post(f"{url}/boom", json={"text": "1"}),
                await http.get(f"{status_url}/status"),
            ]:
                assert response.status_code == 500
                assert response.json() == {"error": "internal error"}
            assert (await http.post(f"{url}/echo", json={"text": "2"})).json() == {"text": "2"}
    assert "Traceback" in caplog.text and "RuntimeError: kaboom 1" in caplog.text
    assert "RuntimeError: status kaboom" in caplog.text
    assert {r.name for r in caplog.records} == {"trioraft"}  # not Quart's app logger


#: Objects shaped like the KV messages, with any values in their fields.
KV_SHAPED = objects_with(["key", "value", "version", "ops", "op", "session", "seq"], 5)


@given(
    method=st.sampled_from(["get", "put", "batch", "nope"]),
    body=bodies(KV_SHAPED),
)
@settings(max_examples=300, deadline=None)
def test_dispatch_answers_any_bytes(method: str, body: bytes) -> None:
    status, payload = trio.run(dispatch, KVServer().routes(), method, body)
    assert status in (200, 400, 404), payload
    assert status == 200 or isinstance(payload["error"], str)
    json.dumps(payload)


async def test_on_arrival_runs_before_the_body_and_its_result_reaches_the_handler(
    nursery: trio.Nursery,
) -> None:
    """A route's ``on_arrival`` runs once the request's head is in, before its body has
    come; the handler gets what it returned. A request without the client token runs
    nothing ahead, and one dispatched another way gets ``None``."""
    arrived = trio.Event()
    handed: list[object] = []

    def on_arrival() -> str:
        arrived.set()
        return "started"

    async def handler(args: Echo, started: object) -> Echo:
        handed.append(started)
        return args

    routes = {"echo": Route(Echo, handler, on_arrival=on_arrival)}
    url = await nursery.start(serve, make_app(routes, client_token="secret"))
    body = dump_json({"text": "hi"})
    head = post_head("/echo", len(body)).replace(b"\r\n\r\n", b"\r\n")
    with trio.fail_after(5):
        async with await connect(url) as stream:
            await stream.send_all(head + b"Authorization: Bearer secret\r\n\r\n")
            await arrived.wait()  # with the body still unsent
            assert handed == []
            await stream.send_all(body)
            assert (await read_reply(stream)).endswith(body)
        assert handed == ["started"]
        arrived = trio.Event()
        async with await connect(url) as stream:
            await stream.send_all(head + b"\r\n" + body)  # no token
            assert (await read_reply(stream)).startswith(b"HTTP/1.1 401")
        assert not arrived.is_set() and handed == ["started"]
    assert await dispatch(routes, "echo", body) == (200, {"text": "hi"})
    assert handed == ["started", None]


async def test_a_client_sends_its_reads_as_a_batch_to_a_server_without_read(
    nursery: trio.Nursery,
) -> None:
    """A server from before ``/read`` answers it 404: the client then sends reads to
    ``/batch``, at once and from then on."""
    seen: list[list[str]] = []

    async def batch(args: BatchArgs) -> BatchReply:
        seen.append([op.op for op in args.ops])
        return BatchReply([OpResult("OK", "v", 1) for _ in args.ops])

    url = await nursery.start(serve, make_app({"batch": Route(BatchArgs, batch)}))
    servers = Servers([url], "c")
    with trio.fail_after(10):
        for requests in (2, 3):
            results, _ = await servers.call([BatchOp("get", "k")])
            assert [r.value for r in results] == ["v"]
            assert servers.requests == requests  # the 404 once, then /batch only
    await servers.aclose()
    assert seen == [["get"], ["get"]] and not servers.read_route
