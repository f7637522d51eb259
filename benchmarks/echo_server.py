"""The stack's own limit: a bare quart-trio app under Hypercorn whose ``POST /echo`` returns
the request body, configured as trioraft serves its apps.

    python benchmarks/echo_server.py --listen 127.0.0.1:9100 [--bare]

``--bare`` serves a plain ASGI callable instead of the Quart app (Hypercorn alone), so that
the two rows side by side show what Quart adds to each request. ``--ours`` serves the same
Quart app through ``trioraft.rpc.http.serve``, Hypercorn's parts as trioraft's nodes run
them (replies written on the spot, one idle timer per connection): the floor of a request
to a node.
"""

from __future__ import annotations

import argparse

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

app = QuartTrio("echo")


@app.post("/echo")
async def echo() -> Response:
    return Response(await request.get_data(), content_type="application/json")


async def bare(scope: dict, receive, send) -> None:
    """The same echo as a plain ASGI app: every HTTP request is answered with its body."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def main(host: str, port: int, plain: bool, ours: bool) -> None:
    if ours:
        from trioraft.rpc.http import serve as serve_ours

        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_ours, app, host, port)
            print(f"echo listening on {url}", flush=True)
        return
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.loglevel = "WARNING"
    print(f"echo listening on http://{host}:{port}", flush=True)
    await serve(bare if plain else app, config)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:9100")
    parser.add_argument("--bare", action="store_true", help="Hypercorn alone, no Quart")
    parser.add_argument("--ours", action="store_true", help="through trioraft.rpc.http.serve")
    options = parser.parse_args()
    host, port = options.listen.rsplit(":", 1)
    trio.run(main, host, int(port), options.bare, options.ours)
