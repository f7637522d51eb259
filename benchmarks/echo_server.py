"""The stack's own limit: a bare quart-trio app under Hypercorn whose ``POST /echo`` returns
the request body, configured as trioraft serves its apps.

    python benchmarks/echo_server.py --listen 127.0.0.1:9100
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


async def main(host: str, port: int) -> None:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.loglevel = "WARNING"
    print(f"echo listening on http://{host}:{port}", flush=True)
    await serve(app, config)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:9100")
    host, port = parser.parse_args().listen.rsplit(":", 1)
    trio.run(main, host, int(port))
