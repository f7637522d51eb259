"""The HTTP fault proxy over real sockets: what reaches the server, what reaches the caller."""

from __future__ import annotations

from dataclasses import dataclass

import trio
import trio.testing
from quart import request

from trioraft import Route, RpcClient, make_app, serve
from trioraft.testing import RELIABLE, HttpProxy, Network, Profile, TcpForwarder


@dataclass(frozen=True)
class Bump:
    by: int


@dataclass(frozen=True)
class Count:
    value: int


class Counter:
    """A tiny service: ``bump`` adds to a counter; ``park`` waits until released."""

    def __init__(self) -> None:
        self.value = 0
        self.parked = trio.Event()
        self.release = trio.Event()

    async def bump(self, args: Bump) -> Count:
        self.value += args.by
        return Count(self.value)

    async def park(self, args: Bump) -> Count:
        self.parked.set()
        await self.release.wait()
        return Count(self.value)

    def app(self):
        return make_app({"bump": Route(Bump, self.bump), "park": Route(Bump, self.park)})


async def start(nursery: trio.Nursery, network: Network) -> tuple[Counter, HttpProxy, str]:
    counter = Counter()
    backend = await nursery.start(serve, counter.app())
    proxy = HttpProxy(network, "srv", backend)
    return counter, proxy, await nursery.start(proxy.run)


async def test_reliable_forwarding_and_counters(nursery: trio.Nursery) -> None:
    network = Network(1, RELIABLE)
    counter, _, url = await start(nursery, network)
    async with RpcClient(url, "alice") as rpc:
        for i in range(1, 6):
            assert await rpc.call("bump", Bump(1), Count) == Count(i)
    assert (network.rpc_total, network.rpc_count["srv"]) == (5, 5)
    assert network.bytes_total == 5 * (len('{"by":1}') + len('{"value":1}'))
    assert counter.value == 5


async def test_dropped_request_never_reaches_the_handler(nursery: trio.Nursery) -> None:
    network = Network(1, Profile(request_drop=1.0, fail_delay=(0, 0)))
    counter, _, url = await start(nursery, network)
    async with RpcClient(url, "alice") as rpc:
        for _ in range(5):
            assert await rpc.call("bump", Bump(1), Count) is None
    assert counter.value == 0 and network.rpc_count["srv"] == 0


async def test_dropped_reply_after_the_handler_ran(nursery: trio.Nursery) -> None:
    network = Network(1, Profile(reply_drop=1.0))
    counter, _, url = await start(nursery, network)
    async with RpcClient(url, "alice") as rpc:
        for _ in range(5):
            assert await rpc.call("bump", Bump(1), Count) is None
    assert counter.value == 5


async def test_unreliable_mix_is_reproducible(nursery: trio.Nursery, seed: int) -> None:
    async def outcomes() -> tuple[list[bool], int]:
        network = Network(seed, Profile(request_drop=0.3, reply_drop=0.3, fail_delay=(0, 0)))
        async with trio.open_nursery() as inner:
            counter, _, url = await start(inner, network)
            async with RpcClient(url, "alice") as rpc:
                seen = [await rpc.call("bump", Bump(1), Count) is not None for _ in range(40)]
            inner.cancel_scope.cancel()
        return seen, counter.value

    first, second = await outcomes(), await outcomes()
    assert first == second
    delivered, applied = first
    assert 0 < sum(delivered) < applied < 40  # some replies lost after the handler ran


async def test_blocks_by_client_id(nursery: trio.Nursery) -> None:
    network = Network(1, Profile(fail_delay=(0, 0)))
    _counter, _, url = await start(nursery, network)
    network.block("alice", "srv")
    async with RpcClient(url, "alice") as alice, RpcClient(url, "bob") as bob:
        assert await alice.call("bump", Bump(1), Count) is None
        assert await bob.call("bump", Bump(1), Count) == Count(1)
        network.heal()
        assert await alice.call("bump", Bump(1), Count) == Count(2)


async def test_partition_fails_a_call_in_flight(nursery: trio.Nursery) -> None:
    network = Network(1, RELIABLE)
    counter, _, url = await start(nursery, network)
    result: list[object] = []
    returned = trio.Event()

    async def call() -> None:
        async with RpcClient(url, "alice", timeout=30) as rpc:
            result.append(await rpc.call("park", Bump(0), Count))
        returned.set()

    async with trio.open_nursery() as inner:
        inner.start_soon(call)
        await counter.parked.wait()
        with trio.fail_after(1):  # far below the client's own 30 s timeout
            network.block("alice", "srv")
            await returned.wait()
    assert result == [None]
    counter.release.set()


async def test_crash_and_restart_on_a_new_port(nursery: trio.Nursery) -> None:
    network = Network(1, Profile(fail_delay=(0, 0)))
    counter, proxy, url = await start(nursery, network)
    async with RpcClient(url, "alice") as rpc:
        assert await rpc.call("bump", Bump(1), Count) == Count(1)
        network.crash("srv")
        assert await rpc.call("bump", Bump(1), Count) is None
        replacement = Counter()
        proxy.set_backend(await nursery.start(serve, replacement.app()))
        network.restart("srv")
        assert await rpc.call("bump", Bump(5), Count) == Count(5)
    assert (counter.value, replacement.value) == (1, 5)


async def test_server_closing_keep_alive_is_not_a_lost_call(nursery: trio.Nursery) -> None:
    """Hypercorn closes a connection after its keep-alive request limit; the proxy must open
    a new one for the caller's next request instead of losing it."""
    from hypercorn.config import Config

    network = Network(1, RELIABLE)
    _, _, url = await start(nursery, network)
    limit = Config().keep_alive_max_requests
    async with RpcClient(url, "alice") as rpc:
        for i in range(1, limit + 20):
            assert await rpc.call("bump", Bump(1), Count) == Count(i), f"call {i} was lost"


async def test_a_caller_connection_keeps_its_backend_connection(nursery: trio.Nursery) -> None:
    """Calls on one caller connection reach the server on one connection too: a connection
    per call would cost the server an accept and a set-up for every call (a busy cluster
    test spent much of its CPU on those)."""
    ports: list[int] = []

    async def where(args: Bump) -> Count:
        ports.append(request.scope["client"][1])  # the proxy's end of the connection
        return Count(len(ports))

    backend = await nursery.start(serve, make_app({"where": Route(Bump, where)}))
    network = Network(1, RELIABLE)
    proxy = HttpProxy(network, "srv", backend)
    url = await nursery.start(proxy.run)
    async with RpcClient(url, "alice") as rpc:
        for i in range(1, 11):
            assert await rpc.call("where", Bump(0), Count) == Count(i)
    assert len(set(ports)) == 1, f"{len(set(ports))} backend connections for 10 calls"


async def test_an_idle_or_retargeted_backend_connection_is_replaced(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    """A backend connection idle for ``backend_idle`` is not reused (the server's keep-alive
    timeout may be closing it), nor one to the server the proxy forwarded to before. (The
    clock only moves when told to.)"""
    ports: list[int] = []

    async def where(args: Bump) -> Count:
        ports.append(request.scope["client"][1])
        return Count(args.by)

    app = make_app({"where": Route(Bump, where)})
    proxy = HttpProxy(Network(1, RELIABLE), "srv", await nursery.start(serve, app))
    url = await nursery.start(proxy.run)
    async with RpcClient(url, "alice") as rpc:
        assert await rpc.call("where", Bump(1), Count) == Count(1)
        mock_clock.jump(proxy.backend_idle * 0.5)
        assert await rpc.call("where", Bump(2), Count) == Count(2)
        assert ports[1] == ports[0]
        mock_clock.jump(proxy.backend_idle * 1.5)
        assert await rpc.call("where", Bump(3), Count) == Count(3)
        assert ports[2] != ports[1]
        proxy.set_backend(await nursery.start(serve, app))
        assert await rpc.call("where", Bump(4), Count) == Count(4)
        assert len(ports) == 4 and ports[3] != ports[2]


async def echo_server(stream: trio.SocketStream) -> None:
    async for data in stream:
        await stream.send_all(data)


async def test_tcp_forwarder_splices_to_the_backend_of_the_moment(nursery: trio.Nursery) -> None:
    """No backend: refused. A backend: bytes both ways. Retargeted: new connections go to the
    new backend; a backend that goes away closes its callers' connections."""
    forwarder = TcpForwarder()
    url = await nursery.start(forwarder.run)
    host, port = url.removeprefix("tcp://").split(":")
    with trio.fail_after(10):
        refused = await trio.open_tcp_stream(host, int(port))
        assert await refused.receive_some(10) == b""  # closed: nowhere to go

        first_scope, second_scope = trio.CancelScope(), trio.CancelScope()
        addresses = []
        for scope in (first_scope, second_scope):

            async def serve(scope=scope, task_status=trio.TASK_STATUS_IGNORED) -> None:
                with scope:
                    await trio.serve_tcp(echo_server, 0, host="127.0.0.1", task_status=task_status)

            listeners = await nursery.start(serve)
            addresses.append(listeners[0].socket.getsockname()[1])

        forwarder.set_backend(f"tcp://127.0.0.1:{addresses[0]}")
        caller = await trio.open_tcp_stream(host, int(port))
        await caller.send_all(b"ping")
        assert await caller.receive_some(10) == b"ping"

        forwarder.set_backend(f"tcp://127.0.0.1:{addresses[1]}")
        await caller.send_all(b"still the first")  # an open pair keeps its backend
        assert await caller.receive_some(100) == b"still the first"
        second = await trio.open_tcp_stream(host, int(port))
        await second.send_all(b"pong")
        assert await second.receive_some(10) == b"pong"

        second_scope.cancel()  # the second backend goes away, its connections with it
        assert await second.receive_some(10) == b""
        await caller.aclose()
        await second.aclose()
        await refused.aclose()
        first_scope.cancel()
