"""Raft peer RPCs over plain TCP: length-prefixed JSON frames, with the HTTP routes' checks.

HTTP stays the default peer transport. This one exists because replication is many small
messages, and on this stack an HTTP request costs 15-20 times a raw TCP message (Hypercorn
on the server, httpx on the client); ``benchmarks/suite.py --peer-transport`` measures both.

Wire format: each message is a 4-byte big-endian length, then that many bytes of UTF-8
JSON. A request is ``{"m": method, "a": args}``; its reply is ``{"s": status, "p": payload}``
with the status and payload the HTTP app would answer (``dispatch`` produces both).

Invariants:
- A connection carries one call at a time: the server answers each request before reading
  the next. The client keeps a few idle connections per peer and closes any connection
  whose call failed or was cancelled, since its state is then unknown.
- The server checks every request as the HTTP app does (same routes, same ``dispatch``); a
  malformed request gets a 4xx reply; a frame over ``max_frame_bytes`` gets a 413 and the
  connection is closed (its tail cannot be trusted). No input reaches a handler unchecked.
- :meth:`TcpTransport.call` never raises for network trouble: it returns ``None``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import trio

from .._errors import BadRequest
from .codec import encode
from .http import Route, decode_reply, dispatch_parsed, parse_json

T = TypeVar("T")
_LENGTH = struct.Struct(">I")
DEFAULT_MAX_FRAME_BYTES = 64 << 20
_IDLE_CONNECTIONS_PER_PEER = 2


class FrameError(Exception):
    """The peer broke the framing: a frame too large, or a connection closed mid-frame."""


class FramedStream:
    """Length-prefixed frames over a connected Trio socket stream.

    It reads and writes the socket itself (one reader and one writer at a time) instead of
    through ``SocketStream``, whose every send and receive ends with a pass of the
    scheduler even when the socket was ready: on a busy leader each such pass delays the
    reply it just read by a whole batch of other tasks. Here a call waits (and is
    cancellable) only when the socket is not ready. (``os.read`` and ``os.write`` on the
    socket's descriptor: POSIX only, as is trioraft's storage, which fsyncs directories.)
    """

    def __init__(self, stream: trio.SocketStream, max_frame_bytes: int) -> None:
        self.stream = stream
        self.max_frame_bytes = max_frame_bytes
        self._socket = stream.socket
        self._buffer = bytearray()

    async def send(self, payload: bytes) -> None:
        data = memoryview(_LENGTH.pack(len(payload)) + payload)
        while data:
            try:
                data = data[os.write(self._socket.fileno(), data) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._socket)

    async def receive(self) -> bytes | None:
        """The next frame, or ``None`` if the peer closed cleanly between frames."""
        if self._buffer:
            # Bytes that came with the last frame (a peer sending without waiting): let the
            # other tasks run between its frames, as a wait for the socket would.
            await trio.lowlevel.checkpoint()
        if not await self._fill(_LENGTH.size):
            return None
        (length,) = _LENGTH.unpack_from(self._buffer)
        if length > self.max_frame_bytes:
            raise FrameError(f"a frame of {length} bytes; the limit is {self.max_frame_bytes}")
        if not await self._fill(_LENGTH.size + length):
            raise FrameError("the connection closed in the middle of a frame")
        frame = bytes(self._buffer[_LENGTH.size : _LENGTH.size + length])
        del self._buffer[: _LENGTH.size + length]
        return frame

    async def _fill(self, size: int) -> bool:
        while len(self._buffer) < size:
            want = min(max(65536, size - len(self._buffer)), 1 << 20)
            try:
                data = os.read(self._socket.fileno(), want)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._socket)
                continue
            if not data:
                if self._buffer:
                    raise FrameError("the connection closed in the middle of a frame")
                return False
            self._buffer += data
            if len(self._buffer) < size:
                await trio.lowlevel.checkpoint()  # a long frame must not hold the loop
        return True


async def serve_tcp(
    routes: Mapping[str, Route],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer framed calls to ``routes`` until cancelled; ``task_status`` gets ``tcp://...``."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_host, bound_port = listeners[0].socket.getsockname()[:2]
    handler = partial(_serve_connection, routes, max_frame_bytes)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.serve_listeners, handler, listeners))
        task_status.started(f"tcp://{bound_host}:{bound_port}")


async def _serve_connection(
    routes: Mapping[str, Route], max_frame_bytes: int, stream: trio.SocketStream
) -> None:
    framed = FramedStream(stream, max_frame_bytes)
    async with stream:
        try:
            while (frame := await framed.receive()) is not None:
                status, payload = await _answer(routes, frame)
                await framed.send(json.dumps({"s": status, "p": payload}).encode())
        except FrameError as exc:
            reply = {"s": 413, "p": {"error": str(exc)}}
            try:
                await framed.send(json.dumps(reply).encode())
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the caller went away


async def _answer(routes: Mapping[str, Route], frame: bytes) -> tuple[int, Any]:
    try:
        request = parse_json(frame)
        if not isinstance(request, dict) or not isinstance(request.get("m"), str):
            raise BadRequest('expected {"m": method, "a": args}')
    except BadRequest as exc:
        return exc.status, {"error": exc.message}
    return await dispatch_parsed(routes, request["m"], request.get("a"))


def parse_tcp_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
        raise ValueError(f"expected tcp://HOST:PORT, got {url!r}")
    return parts.hostname, parts.port


class TcpTransport:
    """Peers reached over framed TCP at ``tcp://HOST:PORT`` addresses.

    With ``network`` (a :class:`~trioraft.testing.Network`), every call goes through its
    fault plan, as calls through a fault proxy do over HTTP.
    """

    def __init__(
        self,
        node_id: str,
        peer_urls: Mapping[str, str],
        *,
        network: Any = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self.id = node_id
        self._addresses = {peer: parse_tcp_url(url) for peer, url in peer_urls.items()}
        self._idle: dict[str, list[FramedStream]] = {peer: [] for peer in peer_urls}
        self._network = network
        self._max_frame_bytes = max_frame_bytes
        self._closed = False

    async def call(self, peer: str, method: str, args: Any, reply_type: type[T]) -> T | None:
        request = json.dumps({"m": method, "a": encode(args)}).encode()
        if self._network is None:
            raw = await self._round_trip(peer, request)
        else:
            raw = await self._network.deliver(
                self.id,
                peer,
                lambda: self._round_trip(peer, request),
                len(request),
                lambda r: len(r) if r is not None else 0,
            )
        return None if raw is None else _decode_reply(raw, reply_type)

    async def _round_trip(self, peer: str, request: bytes) -> bytes | None:
        idle = self._idle[peer]
        connection = idle.pop() if idle else None
        try:
            if connection is None:
                host, port = self._addresses[peer]
                stream = await trio.open_tcp_stream(host, port)
                connection = FramedStream(stream, self._max_frame_bytes)
            await connection.send(request)
            reply = await connection.receive()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, FrameError):
            if connection is not None:
                await trio.aclose_forcefully(connection.stream)
            return None
        except BaseException:
            if connection is not None:
                await trio.aclose_forcefully(connection.stream)
            raise
        if reply is None or self._closed or len(idle) >= _IDLE_CONNECTIONS_PER_PEER:
            await trio.aclose_forcefully(connection.stream)
        else:
            idle.append(connection)
        return reply

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                await trio.aclose_forcefully(idle.pop().stream)


def _decode_reply(raw: bytes, reply_type: type[T]) -> T | None:
    try:
        message = parse_json(raw)
    except BadRequest:
        return None
    if not isinstance(message, dict) or message.get("s") != 200:
        return None
    return decode_reply(message.get("p"), reply_type)
