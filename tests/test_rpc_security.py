"""Authenticated peers (HMAC tags on requests and replies), client tokens and TLS, over HTTP
and framed TCP, on real loopback sockets."""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
import trustme
from quart import Response, request
from quart_trio import QuartTrio

from trioraft import BadRequest
from trioraft.rpc.auth import AUTH_HEADER, CREDENTIAL_BYTES, TAG_BYTES, PeerAuth
from trioraft.rpc.http import Route, RpcClient, dump_json, make_app, serve
from trioraft.rpc.tcp import TcpTransport, serve_tcp
from trioraft.rpc.tls import ClientTls, ServerTls, client_context
from trioraft.rpc.transport import HttpTransport

SECRET = b"cluster secret, 32 bytes long..."
OTHER = b"another cluster's secret, 32 b.."


async def refusal(call: Awaitable[object]) -> int:
    """The status of the refusal that ``call`` raises (``RpcClient`` raises for a 401)."""
    with pytest.raises(BadRequest) as refused:
        await call
    return refused.value.status


@dataclass(frozen=True)
class Echo:
    text: str


class Counted:
    """Routes whose handler counts the calls that reach it."""

    def __init__(self) -> None:
        self.calls = 0
        self.routes = {"echo": Route(Echo, self.echo)}

    async def echo(self, args: Echo) -> Echo:
        self.calls += 1
        return args


def test_tags_bind_secret_method_body_and_request() -> None:
    for bad in (b"too short", "a str, not bytes, 32 characters!"):
        with pytest.raises(ValueError, match="16 bytes"):
            PeerAuth(bad)  # type: ignore[arg-type]
    signer, checker = PeerAuth(SECRET), PeerAuth(SECRET)  # two processes, one secret
    credential, tag = signer.sign_request("echo", b"body")
    assert checker.check_request(credential, "echo", b"body") == tag
    assert checker.check_request(credential, "echo", b"bodY") is None
    assert checker.check_request(credential, "echoo", b"body") is None
    assert checker.check_request(credential[:-1], "echo", b"body") is None
    assert PeerAuth(OTHER).check_request(credential, "echo", b"body") is None
    again, other_tag = signer.sign_request("echo", b"body")
    assert again != credential  # a fresh nonce: every request has its own tag

    reply_tag = checker.sign_reply(tag, 200, b"reply")
    assert signer.check_reply(tag, 200, b"reply", reply_tag)
    assert not signer.check_reply(other_tag, 200, b"reply", reply_tag)  # replayed elsewhere
    assert not signer.check_reply(tag, 500, b"reply", reply_tag)
    assert not signer.check_reply(tag, 200, b"replY", reply_tag)


def test_a_head_tag_binds_nonce_method_and_the_body_length() -> None:
    """What a listener checks before it reads a body: only the secret's holder can announce
    a body, of this length, for this method, once."""
    signer, checker = PeerAuth(SECRET), PeerAuth(SECRET)
    credential, tag = signer.sign_request("echo", b"body")
    for method, length in [("echo", 3), ("echo", 5), ("echo", 64 << 20), ("echoo", 4)]:
        assert not checker.check_head(credential, method, length)
    for length in (-1, 1 << 63, 10**30):
        assert not checker.check_head(credential, "echo", length)
    assert not checker.check_head(credential[:-1], "echo", 4)
    assert not PeerAuth(OTHER).check_head(credential, "echo", 4)
    assert checker.check_head(credential, "echo", 4)  # right: its nonce is used up
    assert checker.check_body(credential, "echo", b"bodY") is None
    assert checker.check_body(credential, "echo", b"body") == tag
    assert not checker.check_head(credential, "echo", 4)  # replayed: refused, body unread
    assert checker.check_request(credential, "echo", b"body") is None
    # A credential seen on the wire, sent again with another body of its length: the
    # head holds once, the body not; the genuine request after it is refused as a replay.
    other, _ = signer.sign_request("echo", b"body")
    forged_body_tag = other[:-TAG_BYTES] + bytes(TAG_BYTES)
    assert checker.check_head(forged_body_tag, "echo", 4)
    assert checker.check_body(forged_body_tag, "echo", b"body") is None
    assert checker.check_request(other, "echo", b"body") is None


def test_a_replayed_request_is_refused_and_reordered_ones_are_not() -> None:
    signer, checker = PeerAuth(SECRET), PeerAuth(SECRET)
    signed = [signer.sign_request("append_entries", b"heartbeat") for _ in range(5)]
    for credential, tag in [signed[1], signed[0], signed[4], signed[2]]:  # out of order
        assert checker.check_request(credential, "append_entries", b"heartbeat") == tag
    for credential, _ in [signed[0], signed[4], signed[1]]:  # the same ones again
        assert checker.check_request(credential, "append_entries", b"heartbeat") is None
    assert checker.check_request(signed[3][0], "append_entries", b"heartbeat") == signed[3][1]
    later = [signer.sign_request("append_entries", b"x") for _ in range(5000)]
    assert checker.check_request(later[-1][0], "append_entries", b"x") == later[-1][1]
    # Never seen, but older than the window (4,096 counters): it cannot be told from a replay.
    assert checker.check_request(later[0][0], "append_entries", b"x") is None
    assert checker.check_request(later[-2][0], "append_entries", b"x") == later[-2][1]


async def test_http_peers_need_the_tag_checked_before_the_body_is_parsed(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "trioraft")
    auth, server = PeerAuth(SECRET), Counted()
    app = make_app(server.routes, peer_auth=auth, status=lambda: {"up": True})
    url = await nursery.start(serve, app)
    with trio.fail_after(10):
        async with RpcClient(url, "a", peer_auth=PeerAuth(SECRET)) as peer:
            assert await peer.call("echo", Echo("hi"), Echo) == Echo("hi")
        for stranger in (RpcClient(url, "x"), RpcClient(url, "x", peer_auth=PeerAuth(OTHER))):
            async with stranger:
                assert await refusal(stranger.call("echo", Echo("hi"), Echo)) == 401
        async with httpx.AsyncClient(base_url=url) as http:
            forged = {AUTH_HEADER: "00" * CREDENTIAL_BYTES}
            response = await http.post("/echo", content=b"{not json", headers=forged)
            assert response.status_code == 401  # not 400: the JSON was never looked at
            assert response.json() == {"error": "unauthenticated peer message"}
            assert response.headers["connection"] == "close"
            assert (await http.get("/status")).json() == {"up": True}  # GET stays open
    assert server.calls == 1 and auth.refused == 3
    assert caplog.text.count("refused a peer request from 127.0.0.1") == 1  # rate-limited


async def test_http_peers_refuse_a_wrong_head_before_reading_the_body(
    nursery: trio.Nursery,
) -> None:
    """A request announcing a large body with a credential that is not right for that
    length is refused at once, its body never read: strangers used to make the listener
    wait for (and hold) up to 64 MiB each before the tag was checked."""
    auth, server = PeerAuth(SECRET), Counted()
    url = await nursery.start(serve, make_app(server.routes, peer_auth=auth))
    host, port = url.removeprefix("http://").rsplit(":", 1)
    signed_for_short_body, _ = PeerAuth(SECRET).sign_request("echo", b"{}")
    forged = bytes(CREDENTIAL_BYTES)
    heard = 512 << 10  # a body the listener takes (its limit is 1 MiB)
    replayed, _ = PeerAuth(SECRET).sign_request("echo", b"x" * heard)

    def request_head(credential: bytes, length: int) -> bytes:
        head = f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
        return f"{head}{AUTH_HEADER}: {credential.hex()}\r\n\r\n".encode()

    async with await trio.open_tcp_stream(host, int(port)) as stream:  # heard once, whole
        await stream.send_all(request_head(replayed, heard) + b"y" * heard)  # another body
        assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 401")
    with trio.fail_after(5):  # the body timeout is 10 s: waiting for the body fails this
        for credential, length in [
            (signed_for_short_body, 32 << 20),
            (forged, 32 << 20),
            (replayed, heard),  # seen on the wire: the listener must not read another body
        ]:
            async with await trio.open_tcp_stream(host, int(port)) as stream:
                await stream.send_all(request_head(credential, length) + b"{")  # then nothing
                reply = b""
                while chunk := await stream.receive_some(65536):
                    reply += chunk
                assert reply.startswith(b"HTTP/1.1 401"), reply[:100]
    assert server.calls == 0 and auth.refused == 4


async def test_http_strangers_hold_at_most_max_unproven_slots_and_peers_get_through(
    nursery: trio.Nursery,
) -> None:
    """As on framed TCP: connections to an HTTP peer listener that sent no request with a
    valid tag hold at most ``max_unproven`` of its slots, past that the oldest is closed;
    one that did is never closed for a newcomer. Strangers used to fill all 128 slots
    while the peers waited in the backlog."""
    auth, server = PeerAuth(SECRET), Counted()
    app = make_app(server.routes, peer_auth=auth)
    url = await nursery.start(
        partial(serve, app, max_connections=6, max_unproven=2, keep_alive_timeout=60)
    )
    host, port = url.removeprefix("http://").rsplit(":", 1)
    signer = PeerAuth(SECRET)

    async def signed_echo(stream: trio.SocketStream, text: str) -> bytes:
        body = dump_json({"text": text})
        credential, _ = signer.sign_request("echo", body)
        head = f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        head += f"{AUTH_HEADER}: {credential.hex()}\r\n\r\n"
        await stream.send_all(head.encode() + body)
        reply = b""
        while body not in reply:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return reply  # closed
            reply += chunk
        return reply

    with trio.fail_after(10):
        proven = await trio.open_tcp_stream(host, int(port))
        assert (await signed_echo(proven, "early")).startswith(b"HTTP/1.1 200")
        strangers = [await trio.open_tcp_stream(host, int(port)) for _ in range(12)]
        await trio.testing.wait_all_tasks_blocked(cushion=0.1)
        reply = await signed_echo(proven, "still open")
        assert reply.startswith(b"HTTP/1.1 200")  # the proven connection stayed open
        async with RpcClient(url, "b", peer_auth=PeerAuth(SECRET)) as newcomer:
            assert await newcomer.call("echo", Echo("new"), Echo) == Echo("new")
        closed = 0
        for stream in strangers:
            with trio.move_on_after(0.5):
                closed += await stream.receive_some(1) == b""
            await stream.aclose()
        assert closed >= 8, closed  # all but the newest few were closed
        await proven.aclose()
    assert server.calls == 3


async def test_forged_or_replayed_replies_count_as_lost(nursery: trio.Nursery) -> None:
    url = await nursery.start(serve, make_app(Counted().routes, peer_auth=PeerAuth(SECRET)))
    signer = PeerAuth(SECRET)
    body = b'{"text": "hi"}'
    credential, request_tag = signer.sign_request("echo", body)
    async with httpx.AsyncClient(base_url=url) as http:
        genuine = await http.post("/echo", content=body, headers={AUTH_HEADER: credential.hex()})
    genuine_tag = bytes.fromhex(genuine.headers[AUTH_HEADER])
    assert signer.check_reply(request_tag, 200, genuine.content, genuine_tag)

    forged_tag = PeerAuth(OTHER).sign_reply(request_tag, 200, genuine.content)
    replies = {"replayed": genuine_tag.hex(), "forged": forged_tag.hex(), "untagged": None}
    fake = QuartTrio("fake")

    @fake.post("/echo")
    async def answer() -> Response:  # a machine in the middle, or a stale reply
        tag = replies[request.headers["X-Client-Id"]]
        return Response(genuine.content, 200, {AUTH_HEADER: tag} if tag else {})

    fake_url = await nursery.start(serve, fake)
    with trio.fail_after(10):
        for kind in replies:  # the very request recorded, but for its nonce
            async with RpcClient(fake_url, kind, peer_auth=signer) as peer:
                assert await peer.call("echo", Echo("hi"), Echo) is None
        async with RpcClient(fake_url, "replayed") as unsigned:  # unchecked, it is taken
            assert await unsigned.call("echo", Echo("hi"), Echo) == Echo("hi")


async def test_client_token_guards_posts_and_peer_methods_split_an_app(
    nursery: trio.Nursery,
) -> None:
    server = Counted()
    routes = {**server.routes, "peer_echo": Route(Echo, server.echo)}
    app = make_app(
        routes,
        client_token="t0ken",
        peer_auth=PeerAuth(SECRET),
        peer_methods={"peer_echo"},
        status=lambda: {},
    )
    url = await nursery.start(serve, app)
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=url) as http:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "t0ken"}):
                response = await http.post("/echo", json={"text": "x"}, headers=headers)
                assert response.status_code == 401, headers
                assert response.headers["www-authenticate"] == "Bearer"
            assert (await http.get("/status")).status_code == 200
        async with RpcClient(url, "c", token="t0ken") as client:
            assert await client.call("echo", Echo("x"), Echo) == Echo("x")
            assert await refusal(client.call("peer_echo", Echo("x"), Echo)) == 401  # no tag
        async with RpcClient(url, "p", peer_auth=PeerAuth(SECRET)) as peer:
            assert await peer.call("peer_echo", Echo("y"), Echo) == Echo("y")
            assert await refusal(peer.call("echo", Echo("y"), Echo)) == 401
    assert server.calls == 2
    with pytest.raises(ValueError):
        make_app(routes, client_token="two words")
    with pytest.raises(ValueError):
        RpcClient(url, "c", token="")


async def read_frame(stream: trio.SocketStream) -> bytes | None:
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
        chunk = await stream.receive_some(1 << 16)
        if not chunk:
            return None
        data += chunk
    return data[4:]


async def exchange(url: str, payload: bytes, *, then: bool = False) -> tuple[bytes | None, bool]:
    """Send one frame; the reply frame and, if ``then``, whether the server closed after."""
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(struct.pack(">I", len(payload)) + payload)
        reply = await read_frame(stream)
        return reply, then and await read_frame(stream) is None


async def test_tcp_peers_need_the_tag_and_check_every_reply(nursery: trio.Nursery) -> None:
    auth, server = PeerAuth(SECRET), Counted()
    url = await nursery.start(partial(serve_tcp, server.routes, peer_auth=auth))
    signer = PeerAuth(SECRET)
    with trio.fail_after(10):
        peer = TcpTransport("a", {"p": url}, peer_auth=signer)
        for _ in range(2):
            assert await peer.call("p", "echo", Echo("hi"), Echo) == Echo("hi")
        assert len(peer._idle["p"]) == 1
        unsigned = TcpTransport("x", {"p": url})
        assert await unsigned.call("p", "echo", Echo("hi"), Echo) is None
        wrong = TcpTransport("x", {"p": url}, peer_auth=PeerAuth(OTHER))
        assert await wrong.call("p", "echo", Echo("hi"), Echo) is None
        assert wrong._idle["p"] == []  # a reply that fails its check ends the connection
        await peer.aclose()
        await unsigned.aclose()

        request = b'{"m": "echo", "a": {"text": "hi"}}'
        reply, closed = await exchange(url, request, then=True)  # no tag at all
        assert reply is not None and closed
        assert reply[:TAG_BYTES] == bytes(TAG_BYTES)
        assert json.loads(reply[TAG_BYTES:]) == {
            "s": 401,
            "p": {"error": "unauthenticated peer message"},
        }
        credential, request_tag = signer.sign_request("", request)
        genuine, _ = await exchange(url, credential + request)
        assert genuine is not None
        assert signer.check_reply(request_tag, 0, genuine[TAG_BYTES:], genuine[:TAG_BYTES])
    assert server.calls == 3 and auth.refused == 3

    async def replay(stream: trio.SocketStream) -> None:
        async with stream:
            while await read_frame(stream) is not None:
                await stream.send_all(struct.pack(">I", len(genuine)) + genuine)

    (listener,) = await nursery.start(partial(trio.serve_tcp, replay, 0, host="127.0.0.1"))
    fake_url = f"tcp://127.0.0.1:{listener.socket.getsockname()[1]}"
    with trio.fail_after(10):
        for transport in (
            TcpTransport("a", {"p": fake_url}, peer_auth=signer),
            TcpTransport("a", {"p": fake_url}),  # unchecked, its tag makes it not JSON
        ):
            assert await transport.call("p", "echo", Echo("hi"), Echo) is None
            await transport.aclose()


async def test_tcp_peers_refuse_a_wrong_head_before_reading_the_body(
    nursery: trio.Nursery,
) -> None:
    """A frame announcing a large body whose head tag is not right for its length is
    answered 401 at once and its connection closed, its body never read."""
    auth, server = PeerAuth(SECRET), Counted()
    url = await nursery.start(partial(serve_tcp, server.routes, peer_auth=auth))
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    signed_for_short_body, _ = PeerAuth(SECRET).sign_request("", b"{}")
    with trio.fail_after(5):  # the frame timeout is 30 s: waiting for the body fails this
        for credential in (signed_for_short_body, bytes(CREDENTIAL_BYTES), b"short"):
            async with await trio.open_tcp_stream(host, int(port)) as stream:
                announced = 32 << 20 if len(credential) == CREDENTIAL_BYTES else len(credential)
                await stream.send_all(struct.pack(">I", announced) + credential)
                reply = await read_frame(stream)
                assert reply is not None
                assert json.loads(reply[TAG_BYTES:])["s"] == 401
                assert await read_frame(stream) is None  # closed
        genuine_body = b'{"m": "echo", "a": {"text": "hi"}}'
        credential, _ = PeerAuth(SECRET).sign_request("", genuine_body)
        reply, _ = await exchange(url, credential + genuine_body)
        assert reply is not None and json.loads(reply[TAG_BYTES:])["s"] == 200
        # A credential seen on the wire, sent with another body of its length (read once,
        # refused), then again with no body: refused at once, the body never awaited.
        heard = 1 << 20
        replayed, _ = PeerAuth(SECRET).sign_request("", b"x" * heard)
        for body in (b"y" * heard, b""):
            async with await trio.open_tcp_stream(host, int(port)) as stream:
                frame = struct.pack(">I", CREDENTIAL_BYTES + heard) + replayed + body
                await stream.send_all(frame)
                reply = await read_frame(stream)
                assert reply is not None and json.loads(reply[TAG_BYTES:])["s"] == 401
    assert server.calls == 1 and auth.refused == 5


@dataclass
class Certs:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    where: Path = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("peer-a.trioraft.test")
    files = {
        "ca": ca.cert_pem,
        "server_cert": server.cert_chain_pems[0],
        "server_key": server.private_key_pem,
        "client_cert": client.cert_chain_pems[0],
        "client_key": client.private_key_pem,
    }
    for name, blob in files.items():
        blob.write_to_path(str(where / name))
    return Certs(**{name: str(where / name) for name in files})


async def test_https_and_mutual_tls(nursery: trio.Nursery, certs: Certs) -> None:
    routes = Counted().routes
    server_tls = ServerTls(certs.server_cert, certs.server_key)
    url = await nursery.start(partial(serve, make_app(routes), tls=server_tls))
    mutual = ServerTls(certs.server_cert, certs.server_key, ca_file=certs.ca)
    mutual_url = await nursery.start(partial(serve, make_app(routes), tls=mutual))
    assert url.startswith("https://127.0.0.1:")
    trusting = ClientTls(ca_file=certs.ca)
    with_cert = ClientTls(certs.ca, certs.client_cert, certs.client_key)
    assert client_context(with_cert) is client_context(ClientTls(*with_cert.__dict__.values()))
    with trio.fail_after(10):
        for target, tls, works in [
            (url, trusting, True),
            (url, None, False),  # the default bundle does not know this CA
            (mutual_url, trusting, False),  # no client certificate
            (mutual_url, with_cert, True),
        ]:
            async with RpcClient(target, "c", tls=tls) as rpc:
                reply = await rpc.call("echo", Echo("s"), Echo)
                assert (reply == Echo("s")) is works, (target, tls)
        transport = HttpTransport("a", {"p": mutual_url}, tls=with_cert)
        assert await transport.call("p", "echo", Echo("t"), Echo) == Echo("t")
        await transport.aclose()
    with pytest.raises(ValueError, match="plain http"):
        RpcClient(url.replace("https", "http"), "c", tls=trusting)


async def test_framed_tcp_over_mutual_tls(nursery: trio.Nursery, certs: Certs) -> None:
    mutual = ServerTls(certs.server_cert, certs.server_key, ca_file=certs.ca)
    url = await nursery.start(
        partial(serve_tcp, Counted().routes, tls=mutual, peer_auth=PeerAuth(SECRET))
    )
    with_cert = ClientTls(certs.ca, certs.client_cert, certs.client_key)
    with trio.fail_after(10):
        peer = TcpTransport("a", {"p": url}, tls=with_cert, peer_auth=PeerAuth(SECRET))
        for text in ["one", "x" * 300_000]:  # the second reuses the connection
            assert await peer.call("p", "echo", Echo(text), Echo) == Echo(text)
        assert len(peer._idle["p"]) == 1
        await peer.aclose()
        for tls in [None, ClientTls(ca_file=certs.ca)]:  # plain TCP; TLS without a cert
            stranger = TcpTransport("x", {"p": url}, tls=tls, peer_auth=PeerAuth(SECRET))
            assert await stranger.call("p", "echo", Echo("s"), Echo) is None
