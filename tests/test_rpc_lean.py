"""The lean plain-HTTP client under ``RpcClient`` (``trioraft.rpc.http1``) against raw trio
servers: every hostile reply (garbage, oversized, dripped, truncated, doubled, unframed) is a
lost call (``None``) within the call's time limit, never an exception or a wrong answer; and
its pooling: a connection is reused after a clean reply, never when it has been idle too
long, was closed by the server, carries stray bytes, or its call failed or was cancelled."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import pytest
import trio
import trio.lowlevel
import trio.testing

from trioraft import BadRequest, Route, RpcClient, make_app, serve
from trioraft.rpc.http1 import Pool

#: (stream, method, request index on this connection) -> keep serving this connection?
Behaviour = Callable[[trio.SocketStream, str, int], Awaitable[bool]]


@dataclass(frozen=True)
class Echo:
    text: str


@dataclass
class RawServer:
    url: str
    connections: int = 0
    requests: list[str] = field(default_factory=list)
    client_closed: trio.Event = field(default_factory=trio.Event)


def reply(text: str, *, extra_headers: bytes = b"") -> bytes:
    body = json.dumps({"text": text}).encode()
    head = b"HTTP/1.1 200 \r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(body)
    return head + extra_headers + b"\r\n" + body


async def read_request(stream: trio.SocketStream, buffer: bytearray) -> str | None:
    """The method of the next request on ``stream`` (its body read and dropped)."""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        buffer += chunk
    lines = bytes(buffer[:end]).split(b"\r\n")
    length = next(
        int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length")
    )
    while len(buffer) < end + 4 + length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        buffer += chunk
    del buffer[: end + 4 + length]
    return lines[0].split(b" ")[1][1:].decode()


async def start_raw_server(nursery: trio.Nursery, behaviour: Behaviour) -> RawServer:
    server = RawServer(url="")

    async def handle(stream: trio.SocketStream) -> None:
        server.connections += 1
        buffer = bytearray()
        try:
            for index in range(1000):
                method = await read_request(stream, buffer)
                if method is None:
                    server.client_closed.set()
                    return
                server.requests.append(method)
                if not await behaviour(stream, method, index):
                    return
        except trio.BrokenResourceError:
            server.client_closed.set()

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    server.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    return server


async def wait_forever() -> None:
    await trio.sleep_forever()


def sends(data: bytes, *, then_close: bool = False, then_hang: bool = True) -> Behaviour:
    async def behaviour(stream: trio.SocketStream, method: str, index: int) -> bool:
        await stream.send_all(data)
        if then_close:
            return False
        if then_hang:
            await stream.receive_some(1)  # until the client goes away
            return True  # and see that it has
        return True

    return behaviour


async def slow_drip(stream: trio.SocketStream, method: str, index: int) -> bool:
    await stream.send_all(b"HTTP/1.1 200 \r\n")
    while True:  # an endless head, one byte at a time, each well within the read timeout
        await stream.send_all(b"x")
        await trio.sleep(0.02)


GOOD = reply("ok")
HOSTILE: dict[str, Behaviour] = {
    "garbage": sends(b"\x00\x01\xffgarbage\r\n\r\n"),
    "not HTTP at all": sends(b"SSH-2.0-OpenSSH_9.2\r\n"),
    "huge Content-Length": sends(
        b"HTTP/1.1 200 \r\ncontent-length: 99999999999999999999\r\n\r\n{}"
    ),
    "slow drip": slow_drip,
    "closes before replying": sends(b"", then_close=True),
    "closes mid-head": sends(GOOD[:20], then_close=True),
    "closes mid-body": sends(GOOD[:-3], then_close=True),
    "two replies to one request": sends(GOOD + reply("stray")),
    "no Content-Length, framed by closing": sends(
        b'HTTP/1.1 200 \r\ncontent-type: application/json\r\n\r\n{"text": "ok"}', then_close=True
    ),
    "no Content-Length, left open": sends(b'HTTP/1.1 200 \r\n\r\n{"text": "ok"}'),
    "chunked": sends(
        b'HTTP/1.1 200 \r\ntransfer-encoding: chunked\r\n\r\ne\r\n{"text": "ok"}\r\n0\r\n\r\n'
    ),
    "two Content-Lengths": sends(GOOD.replace(b"\r\n\r\n", b"\r\ncontent-length: 14\r\n\r\n")),
    "negative Content-Length": sends(b"HTTP/1.1 200 \r\ncontent-length: -1\r\n\r\n"),
    "a header line without a colon": sends(GOOD.replace(b"content-type:", b"content-type")),
    "a folded header line": sends(GOOD.replace(b"\r\ncontent-type", b"\r\n content-type")),
    "a head over 16 KiB": sends(
        GOOD.replace(b"\r\n\r\n", b"\r\nx-pad: " + b"a" * 20_000 + b"\r\n\r\n")
    ),
    "chunked, with a Content-Length too": sends(
        GOOD.replace(b"\r\n\r\n", b"\r\ntransfer-encoding: chunked\r\n\r\n")
    ),
    "HTTP/2 status line": sends(GOOD.replace(b"HTTP/1.1", b"HTTP/2.0")),
    "a 200 whose body is not JSON": sends(
        b"HTTP/1.1 200 \r\ncontent-length: 5\r\n\r\n\xff\xfe{[\x00", then_hang=False
    ),
    "a 500": sends(GOOD.replace(b"200", b"500"), then_hang=False),
}


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_a_hostile_reply_is_a_lost_call_within_the_time_limit(
    nursery: trio.Nursery, name: str
) -> None:
    server = await start_raw_server(nursery, HOSTILE[name])
    async with RpcClient(server.url, "c", timeout=0.5) as rpc:
        with trio.fail_after(5):  # the call's limit plus scheduling slack on a loaded machine
            assert await rpc.call("echo", Echo("hi"), Echo) is None
    assert server.requests == ["echo"]


async def test_an_oversized_reply_is_refused_before_its_body(nursery: trio.Nursery) -> None:
    """A ``Content-Length`` over the client's bound ends the call at once (the connection
    closed, the body never read), not at the deadline after buffering it."""
    head = b"HTTP/1.1 200 \r\ncontent-length: 1001\r\n\r\n"
    server = await start_raw_server(nursery, sends(head + b"x" * 1000))
    async with RpcClient(server.url, "c", timeout=600, max_reply_bytes=1000) as rpc:
        with trio.fail_after(10):
            assert await rpc.call("echo", Echo("hi"), Echo) is None
            await server.client_closed.wait()


async def test_a_reply_at_the_size_bound_is_taken(nursery: trio.Nursery) -> None:
    text = "x" * (1000 - len('{"text": ""}'))
    server = await start_raw_server(nursery, sends(reply(text), then_hang=False))
    async with RpcClient(server.url, "c", timeout=5, max_reply_bytes=1000) as rpc:
        assert await rpc.call("echo", Echo("hi"), Echo) == Echo(text)


def answers(make: Callable[[str, int], bytes]) -> Behaviour:
    async def behaviour(stream: trio.SocketStream, method: str, index: int) -> bool:
        await stream.send_all(make(method, index))
        return True

    return behaviour


async def test_a_connection_is_reused_after_a_clean_reply(nursery: trio.Nursery) -> None:
    server = await start_raw_server(nursery, answers(lambda method, index: reply(f"{index}")))
    async with RpcClient(server.url, "c", timeout=5) as rpc:
        for expected in ("0", "1", "2"):
            assert await rpc.call("echo", Echo("hi"), Echo) == Echo(expected)
    assert server.connections == 1


async def test_an_idle_connection_is_reused_only_within_keep_alive_for(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    server = await start_raw_server(nursery, answers(lambda method, index: reply(f"{index}")))
    async with RpcClient(server.url, "c", timeout=5, keep_alive_for=2.0) as rpc:
        assert await rpc.call("echo", Echo("hi"), Echo) == Echo("0")
        mock_clock.jump(1.5)
        assert await rpc.call("echo", Echo("hi"), Echo) == Echo("1")  # reused
        mock_clock.jump(2.5)
        assert await rpc.call("echo", Echo("hi"), Echo) == Echo("0")  # a new connection
    assert server.connections == 2


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    nursery: trio.Nursery,
) -> None:
    closed = trio.Event()

    async def once_then_close(stream: trio.SocketStream, method: str, index: int) -> bool:
        await stream.send_all(reply(method))
        await stream.aclose()
        closed.set()
        return False

    server = await start_raw_server(nursery, once_then_close)
    async with RpcClient(server.url, "c", timeout=5) as rpc:
        assert await rpc.call("first", Echo("hi"), Echo) == Echo("first")
        await closed.wait()
        assert await rpc.call("second", Echo("hi"), Echo) == Echo("second")
    assert server.connections == 2


async def test_stray_bytes_after_a_reply_are_never_taken_for_the_next_reply(
    nursery: trio.Nursery,
) -> None:
    stray_sent = trio.Event()

    async def reply_then_stray(stream: trio.SocketStream, method: str, index: int) -> bool:
        await stream.send_all(reply(method))
        if index == 0:
            await trio.lowlevel.checkpoint()  # a separate write, after the client has its reply
            await stream.send_all(reply("stray"))
            stray_sent.set()
        return True

    server = await start_raw_server(nursery, reply_then_stray)
    async with RpcClient(server.url, "c", timeout=5) as rpc:
        assert await rpc.call("first", Echo("hi"), Echo) == Echo("first")
        await stray_sent.wait()
        assert await rpc.call("second", Echo("hi"), Echo) == Echo("second")
    assert server.connections == 2


async def test_a_failed_calls_connection_is_not_reused(nursery: trio.Nursery) -> None:
    """The server would go on answering on that connection: the client must not."""

    def make(method: str, index: int) -> bytes:
        return b"HTTP/1.1 200 \r\nbroken\r\n\r\n" if method == "bad" else reply(method)

    server = await start_raw_server(nursery, answers(make))
    async with RpcClient(server.url, "c", timeout=5) as rpc:
        assert await rpc.call("good", Echo("hi"), Echo) == Echo("good")
        assert await rpc.call("bad", Echo("hi"), Echo) is None
        assert await rpc.call("good", Echo("hi"), Echo) == Echo("good")
    assert server.connections == 2


async def test_a_cancelled_calls_connection_is_closed(nursery: trio.Nursery) -> None:
    """Its reply could come late on that connection: it must not be kept for another call."""
    received, closed = trio.Event(), trio.Event()

    async def never_answers(stream: trio.SocketStream, method: str, index: int) -> bool:
        if method == "slow":
            received.set()
            if not await stream.receive_some(1):  # the client closed its end
                closed.set()
            return False
        await stream.send_all(reply(method))
        return True

    server = await start_raw_server(nursery, never_answers)
    async with RpcClient(server.url, "c", timeout=600) as rpc:
        assert await rpc.call("warm", Echo("hi"), Echo) == Echo("warm")
        async with trio.open_nursery() as calls:

            async def slow_call() -> None:
                await rpc.call("slow", Echo("hi"), Echo)
                raise AssertionError("not cancelled")

            calls.start_soon(slow_call)
            await received.wait()
            calls.cancel_scope.cancel()
        with trio.fail_after(10):
            await closed.wait()
        assert await rpc.call("next", Echo("hi"), Echo) == Echo("next")
    assert server.connections == 2


async def test_an_endless_head_is_cut_off_at_its_bound(nursery: trio.Nursery) -> None:
    """A head that never ends is refused once it is over 16 KiB, not buffered to the
    deadline."""
    server = await start_raw_server(nursery, sends(b"HTTP/1.1 200 \r\nx-pad: " + b"a" * (4 << 20)))
    async with RpcClient(server.url, "c", timeout=600) as rpc:
        with trio.fail_after(10):
            assert await rpc.call("echo", Echo("hi"), Echo) is None
            await server.client_closed.wait()


async def test_connection_close_is_honoured(nursery: trio.Nursery) -> None:
    server = await start_raw_server(
        nursery,
        answers(lambda method, index: reply(method, extra_headers=b"Connection: close\r\n")),
    )
    async with RpcClient(server.url, "c", timeout=5) as rpc:
        assert await rpc.call("one", Echo("hi"), Echo) == Echo("one")
        assert await rpc.call("two", Echo("hi"), Echo) == Echo("two")
    assert server.connections == 2


async def test_open_connections_are_bounded(nursery: trio.Nursery) -> None:
    """At most 64 connections to one server at once; more calls wait for a free one."""
    release = trio.Event()
    open_now = peak = 0

    async def held(stream: trio.SocketStream, method: str, index: int) -> bool:
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        await release.wait()
        await stream.send_all(reply(method))
        open_now -= 1
        return True

    server = await start_raw_server(nursery, held)
    results: list[Echo | None] = []
    async with RpcClient(server.url, "c", timeout=30) as rpc, trio.open_nursery() as calls:

        async def one() -> None:
            results.append(await rpc.call("echo", Echo("hi"), Echo))

        for _ in range(70):
            calls.start_soon(one)
        with trio.fail_after(20):
            while len(server.requests) < 64:
                await trio.testing.wait_all_tasks_blocked(0.01)
            await trio.testing.wait_all_tasks_blocked(0.2)
        assert len(server.requests) == 64  # the other 6 wait for a free connection
        release.set()
    assert results == [Echo("echo")] * 70
    assert peak == 64


async def test_a_connection_whose_request_was_cut_short_is_not_reused(
    nursery: trio.Nursery,
) -> None:
    """A server may answer before reading the whole request (a 413 does) and then close;
    the client takes that answer, but its connection, with the rest of the request unsent,
    is never kept for another call, even if the answer says nothing of closing."""
    answered = trio.Event()

    async def answer_early(stream: trio.SocketStream) -> None:
        buffer = bytearray()
        while b"\r\n\r\n" not in buffer:
            buffer += await stream.receive_some(65536)
        await stream.send_all(reply("early"))  # keep-alive, by the reply's own say
        answered.set()
        await stream.aclose()  # the unread body makes this a reset: the client's send fails

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    for listener in listeners:  # a small receive window, so the request cannot all be sent
        listener.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    await nursery.start(trio.serve_listeners, answer_early, listeners)
    pool = Pool("127.0.0.1", listeners[0].socket.getsockname()[1])
    body = b"x" * (16 << 20)  # far more than the kernel's buffers hold
    request = b"POST /echo HTTP/1.1\r\nHost: x\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    with trio.fail_after(20):
        answer = await pool.post(request, 15)
    assert answered.is_set()
    assert answer is not None and json.loads(answer.content) == {"text": "early"}
    assert pool.idle_connections == 0
    await pool.aclose()


def test_a_client_id_cannot_add_header_lines() -> None:
    """The lean client writes ``X-Client-Id`` as it is: a CR or LF in it would end the
    header line and start another (a header or a whole request of the caller's choosing)."""
    for client_id in ("c\r\nX-Injected: 1", "c\nx", "c\rx", "c\x00"):
        with pytest.raises(ValueError, match="client id"):
            RpcClient("http://127.0.0.1:9000", client_id)
    RpcClient("http://127.0.0.1:9000", "a client id with spaces")  # printable is fine


async def test_against_hypercorn_connections_are_kept_unless_the_reply_closes_them(
    nursery: trio.Nursery,
) -> None:
    """What our own server sends: every reply framed by ``Content-Length``; answers and
    refusals after the whole body (200, 400, 404, 500) keep the connection, a refusal before
    it (413, with ``Connection: close``) ends it, and the next call opens another."""

    async def echo(args: Echo) -> Echo:
        if args.text == "boom":
            raise RuntimeError("a handler's bug")
        return args

    app = make_app({"echo": Route(Echo, echo)}, max_body_bytes=1000)
    url = await nursery.start(serve, app)
    async with RpcClient(url, "c", timeout=10) as rpc:
        pool = rpc._pool
        assert pool is not None
        with trio.fail_after(30):
            assert await rpc.call("echo", Echo("a"), Echo) == Echo("a")
            with pytest.raises(BadRequest) as refused:
                await rpc.call("missing", Echo("a"), Echo)
            assert refused.value.status == 404
            with pytest.raises(BadRequest) as refused:
                await rpc.call("echo", {"nope": 1}, Echo)
            assert refused.value.status == 400
            assert await rpc.call("echo", Echo("boom"), Echo) is None  # a 500
            assert (pool.connections_opened, pool.idle_connections) == (1, 1)
            with pytest.raises(BadRequest) as refused:
                await rpc.call("echo", Echo("x" * 2000), Echo)
            assert refused.value.status == 413
            assert pool.idle_connections == 0
            assert await rpc.call("echo", Echo("b"), Echo) == Echo("b")
            assert (pool.connections_opened, pool.idle_connections) == (2, 1)
