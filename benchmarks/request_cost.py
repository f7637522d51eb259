"""What one request costs inside the server's app, apart from sockets: the app
:func:`~trioraft.rpc.http.make_app` builds, called in-process with a small ``POST`` whose
route answers at once, the way trioraft serves it (a prompt POST: its body read in the
request's own task) beside Quart-Trio's own way (a nursery of a body-reader task and a
view task per request), a bare ASGI function, and a nursery of two tasks alone.

    python benchmarks/request_cost.py [--requests 3000] [--rounds 5]

The four alternate ``--rounds`` times; it prints each one's wall time per request (one
process, one core: it is CPU time) and the medians. Compare the differences, not the
figures, across machines.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from quart_trio.asgi import TrioASGIHTTPConnection

from trioraft.rpc.http import IN_FLIGHT_STATE_KEY, Route, _InFlight, make_app

_BODY = b'{"text":"a"}'
App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


@dataclass
class Echo:
    text: str = ""


async def echo(args: Echo) -> Echo:
    return args


def scope() -> dict[str, Any]:
    """A small ``POST /echo`` as Hypercorn hands it over, on a connection ``serve`` runs."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/echo",
        "raw_path": b"/echo",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"x"), (b"content-length", b"%d" % len(_BODY))],
        "client": ("127.0.0.1", 5),
        "server": ("127.0.0.1", 6),
        "extensions": {},
        "state": {IN_FLIGHT_STATE_KEY: _InFlight()},
    }


async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    message = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": message["body"]})


async def nursery_of_two(scope: dict[str, Any], receive: Any, send: Any) -> None:
    async def read() -> None:
        await receive()

    async def answer() -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        nursery.start_soon(answer)


async def per_request(app: App, requests: int) -> float:
    """Seconds per request of ``app``, each request's body in one message."""
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    started = time.perf_counter()
    for _ in range(requests):
        messages = [{"type": "http.request", "body": _BODY, "more_body": False}]

        async def receive(messages: list[Any] = messages) -> Any:
            if messages:
                return messages.pop()
            await trio.sleep_forever()

        await app(scope(), receive, send)
    elapsed = (time.perf_counter() - started) / requests
    assert sent[-1]["type"] == "http.response.body", sent[-3:]
    return elapsed


async def main(requests: int, rounds: int) -> None:
    ours = make_app({"echo": Route(Echo, echo)})
    quarts = make_app({"echo": Route(Echo, echo)})
    quarts.asgi_http_class = TrioASGIHTTPConnection  # type: ignore[assignment]
    for app in (ours, quarts):
        await app.startup()
    apps: dict[str, App] = {
        "trioraft's app (prompt POST)": ours,
        "the same app, Quart-Trio's way": quarts,
        "a bare ASGI function": bare,
        "a nursery of two tasks alone": nursery_of_two,
    }
    results: dict[str, list[float]] = {name: [] for name in apps}
    for round_ in range(rounds):
        for name, app in apps.items():
            await per_request(app, requests // 10)  # warm up
            results[name].append(await per_request(app, requests))
            print(f"round {round_}: {name}: {results[name][-1] * 1e6:.1f} µs/request")
    print("\nmedians:")
    for name, samples in results.items():
        print(f"| {name} | {statistics.median(samples) * 1e6:.1f} µs |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    trio.run(main, options.requests, options.rounds)
