"""What the HTTP client costs per request, apart from any server: the CPU of
:class:`~trioraft.rpc.http1.Pool` (the lean client behind ``RpcClient`` over ``http://``)
against a bare exchange over a Trio ``SocketStream``, both sending one small POST at a time
to a trivial server in another process (a thread per connection, one fixed reply).

    python benchmarks/client_cost.py [--requests 3000] [--rounds 5]

The two alternate ``--rounds`` times; it prints each one's CPU per request and the medians.
The server answers at once, so what is left is the client's own work and the wake-ups its
waits cost on this machine; compare the difference, not the figures, across machines.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time

import trio

from trioraft.rpc.http1 import Pool

_REQUEST = b"POST /put HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
_BODY = b'{"err":"OK"}'
_REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY)


def serve(port: int) -> None:
    """The trivial server: every request on a connection gets the one reply."""
    listener = socket.create_server(("127.0.0.1", port))
    print("ready", flush=True)

    def answer(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = b""
        while data := conn.recv(65536):
            pending += data
            while len(pending) >= len(_REQUEST):  # every request is _REQUEST
                pending = pending[len(_REQUEST) :]
                conn.sendall(_REPLY)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=answer, args=(conn,), daemon=True).start()


async def bare(port: int, requests: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    for _ in range(requests):
        await stream.send_all(_REQUEST)
        reply = b""
        while not reply.endswith(_BODY):
            reply += await stream.receive_some(65536)
    await stream.aclose()


async def pooled(port: int, requests: int) -> None:
    pool = Pool("127.0.0.1", port)
    for _ in range(requests):
        reply = await pool.post(_REQUEST, 5.0)
        assert reply is not None and reply.status == 200, reply
    await pool.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.serve:
        serve(opts.serve)
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        cpu: dict[str, list[float]] = {"SocketStream, bare": [], "Pool": []}
        for _ in range(opts.rounds):
            for name, run in (("SocketStream, bare", bare), ("Pool", pooled)):
                started = time.process_time()
                trio.run(run, port, opts.requests)
                cpu[name].append((time.process_time() - started) / opts.requests * 1e6)
        for name, samples in cpu.items():
            each = " ".join(f"{x:.0f}" for x in samples)
            print(f"{name:20s} median {statistics.median(samples):5.0f} µs/request ({each})")
    finally:
        server.kill()


if __name__ == "__main__":
    main()
