"""The many-clients memory scenario: the server keeps no per-client state.

Distinct clients each make a put that answers NoKey, then one put each in sequence with a
1000-byte value (docs/scenarios.md: kvsrv-memory-per-client); memory is measured after each
phase and the growth divided by the number of clients.

- 100,000 clients through the server's request path (JSON parsing, validation, handler,
  reply encoding), against the 2025 bound of 200 bytes a client;
- 3,000 clients, each with its own ``X-Client-Id``, through the whole Quart app (everything
  but the socket), against the 2026 bound of 10 bytes a client. The app's per-request
  residue is not per-client state, so this part charges the clients only with the
  difference between a run with distinct ids and the same run from one id; and trio's
  deadline heap, which keeps up to ~1,000 stale deadlines with their cancel scopes, is
  pruned before each measurement (one run measured just after a pruning, the other just
  before: 6 against 69 bytes a put).

Real sockets are left out because 200,000 HTTP requests cost minutes on this stack.
"""

from __future__ import annotations

import gc
import json
import tracemalloc
from collections.abc import Awaitable, Callable

import pytest
import trio

from trioraft import KVServer
from trioraft.rpc.http import dispatch

VALUE = "x" * 1000


def put_body(value: str, version: int) -> bytes:
    return json.dumps({"key": "k", "value": value, "version": version}).encode()


async def prune_deadlines() -> None:
    """Trio keeps each expired or cancelled deadline (and its cancel scope) in its heap until
    the stale ones outnumber the live ones by 1,000: a measurement taken just before or just
    after such a pruning differs by up to ~200 KB. Here the heap is pruned before each one
    (1,001 more stale deadlines, then a pass of the run loop, which prunes them all)."""
    far = trio.current_time() + 1e9
    for _ in range(1001):
        with trio.CancelScope(deadline=far):  # noqa: ASYNC100 (its deadline is the point)
            pass
    await trio.lowlevel.checkpoint()


async def growth_per_client(
    clients: int, put: Callable[[int, bytes], Awaitable[dict]], *, one_id: bool = False
) -> float:
    """Memory growth of the second phase, per client (``one_id``: every call from client 0)."""
    for i in range(clients):
        assert await put(0 if one_id else i, put_body("", 1)) == {"err": "NoKey"}
    tracemalloc.start()
    try:
        await prune_deadlines()
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        for i in range(clients):
            assert await put(0 if one_id else i, put_body(VALUE, i)) == {"err": "OK"}
        await prune_deadlines()
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per_client = (after - before) / clients
    who = "one client id" if one_id else f"{clients} client ids"
    print(f"{clients} puts from {who}: memory grew {after - before} bytes ({per_client:.3f}/put)")
    return per_client


@pytest.mark.slow
async def test_request_path_memory_with_100k_clients() -> None:
    server = KVServer()
    routes = server.routes()

    async def put(client: int, body: bytes) -> dict:
        status, payload = await dispatch(routes, "put", body)
        assert status == 200
        return payload

    assert await growth_per_client(100_000, put) <= 200
    assert server.state.get("k").version == 100_000


async def app_growth(clients: int, *, one_id: bool) -> float:
    app = KVServer().app()

    async def put(client: int, body: bytes) -> dict:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/put",
            "raw_path": b"/put",
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"x-client-id", f"client-{client}".encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 40000 + client % 20000),
            "server": ("127.0.0.1", 8000),
            "extensions": {},
        }
        chunks = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict] = []

        async def receive() -> dict:
            if chunks:
                return chunks.pop()
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        async def send(message: dict) -> None:
            sent.append(message)

        await app(scope, receive, send)
        assert sent[0]["status"] == 200
        return json.loads(b"".join(m.get("body", b"") for m in sent[1:]))

    return await growth_per_client(clients, put, one_id=one_id)


@pytest.mark.slow
async def test_app_memory_with_distinct_client_ids() -> None:
    baseline = await app_growth(3_000, one_id=True)
    distinct = await app_growth(3_000, one_id=False)
    assert distinct - baseline <= 10, f"{distinct - baseline:.1f} bytes per client"
