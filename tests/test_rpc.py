"""RPC over HTTP/JSON: routing, validation of every endpoint's input, the client's contract."""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
import pytest
import trio

from tests.conftest import SingleKV
from trioraft import KVServer, Route, RpcClient, Versioned, make_app, serve
from trioraft.kv.messages import GetArgs, GetReply, PutArgs, PutReply

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
        }
    assert len(single_kv.server.state) == 1


async def test_oversized_body_is_413(nursery: trio.Nursery) -> None:
    url = await nursery.start(serve, KVServer(max_body_bytes=1000).app())
    async with httpx.AsyncClient(base_url=url) as http:
        big = json.dumps({"key": "k", "value": "x" * 2000, "version": 0})
        response = await http.post("/put", content=big)
        assert response.status_code == 413 and response.json()["error"]

        async def chunks():  # streamed: no Content-Length for the server to check up front
            for _ in range(3):
                yield b"x" * 600

        response = await http.post("/put", content=chunks())
        assert response.status_code == 413
        assert (await http.post("/get", json={"key": "k"})).json()["err"] == "NoKey"


async def test_unknown_method_and_wrong_verb(single_kv: SingleKV) -> None:
    async with httpx.AsyncClient(base_url=single_kv.direct_url) as http:
        response = await http.post("/delete", json={})
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


async def test_client_returns_none_on_every_failure(nursery: trio.Nursery) -> None:
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
        assert await rpc.call("missing", Echo("x"), Echo) is None  # 404
        assert await rpc.call("slow", {"nope": 1}, Echo) is None  # 400
        assert await rpc.call("wrong", Echo("x"), Echo) is None  # undecodable reply
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
        }
        put = {"key": "a", "value": "1", "version": 0}
        assert (await h.post("/put", json=put)).json() == {"err": "OK"}
        assert (await h.post("/put", json=put)).json() == {"err": "Version"}
        missing = {"key": "b", "value": "1", "version": 3}
        assert (await h.post("/put", json=missing)).json() == {"err": "NoKey"}
        assert (await h.post("/get", json={"key": "a"})).json()["version"] == 1
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

    from trioraft.rpc.http import _tls_context

    context = _tls_context()
    assert context is _tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
