"""The machine's floor for one HTTP request on trio: a raw trio TCP server that answers each
HTTP/1.1 request with its own body, with no framework at all (no Hypercorn, no Quart).

    python benchmarks/raw_echo.py --listen 127.0.0.1:9100

It parses only what wrk sends (a request line, headers with ``Content-Length``, a body) and
keeps connections alive. Beside the quart-trio echo endpoint it shows what the HTTP stack
costs on top of trio's sockets; it is not a server for anything else.
"""

from __future__ import annotations

import argparse

import trio

HEAD_END = b"\r\n\r\n"
LENGTH = b"\r\ncontent-length:"


async def answer(stream: trio.SocketStream) -> None:
    """Echo the body of each request on ``stream`` until the peer closes it."""
    buffer = bytearray()
    try:
        while True:
            end = buffer.find(HEAD_END)
            while end < 0:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buffer += chunk
                end = buffer.find(HEAD_END)
            head = bytes(buffer[:end]).lower()
            at = head.find(LENGTH)
            length = 0
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + len(LENGTH) : stop if stop >= 0 else None])
            start = end + len(HEAD_END)
            while len(buffer) < start + length:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buffer += chunk
            body = bytes(buffer[start : start + length])
            del buffer[: start + length]
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body)
            )
    except trio.BrokenResourceError:
        return


async def main(host: str, port: int) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)
    print(f"raw echo listening on http://{host}:{port}", flush=True)
    await trio.serve_listeners(answer, listeners)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:9100")
    host, port = parser.parse_args().listen.rsplit(":", 1)
    trio.run(main, host, int(port))
