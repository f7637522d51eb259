"""Reading and writing a connected trio socket, waiting only when it is not ready.

trio's ``SocketStream`` ends every send and every receive with a pass of the scheduler, even
when the socket was ready. A pass costs 15-40 µs of CPU on the benchmark machine, and on a
busy process it delays the caller by a whole batch of other tasks. :func:`send_all` and
:func:`receive_some` (and :func:`write_now`, which never waits: the HTTP server's replies
start with it) write and read the socket's descriptor directly (``os.write``,
``os.read``: POSIX only, as is trioraft's storage, which fsyncs directories) and wait, which
is a checkpoint, only when the socket is not ready. So a call that never waits is not a
checkpoint: a caller that must be one checks for cancellation itself.

Invariants: one reader and one writer at a time per socket (the callers' discipline, as
with ``SocketStream``); errors are the ``OSError`` of the call (``BrokenPipeError``,
``ConnectionResetError``...), not wrapped in ``trio.BrokenResourceError``.
"""

from __future__ import annotations

import os

import trio


def write_now(sock: trio.socket.SocketType, data: bytes | memoryview) -> int:
    """Write what the socket takes of ``data`` at once; how many bytes (0 if its buffer is
    full). A closed socket's descriptor is -1: ``EBADF``, never another file."""
    try:
        return os.write(sock.fileno(), data)
    except BlockingIOError:
        return 0


async def send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    """Write all of ``data``, waiting whenever the socket's buffer is full."""
    view = memoryview(data)
    while view:
        written = write_now(sock, view)
        if written:
            view = view[written:]
        else:
            await trio.lowlevel.wait_writable(sock)


async def receive_some(sock: trio.socket.SocketType, max_bytes: int) -> bytes:
    """At most ``max_bytes`` bytes, waiting until some come; ``b""`` once the peer closed."""
    while True:
        try:
            return os.read(sock.fileno(), max_bytes)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
